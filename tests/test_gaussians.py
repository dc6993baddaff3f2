"""Gaussians container: construction, rotations, SH, selection, pruning, transforms, validation."""

import math

import pytest
import torch

from matrix_world.errors import InputError
from matrix_world.gaussians import (
    SH_C0,
    Gaussians,
    eval_sh_basis,
    quat_multiply,
    quat_to_rotmat,
    rgb_to_sh_dc,
    rotmat_to_quat,
    sh_dc_to_rgb,
    sh_rotation_matrix,
)


def random_gaussians(n=64, degree=0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)
    rest = 0.3 * r(n, (degree + 1) ** 2 - 1, 3) if degree else None
    return Gaussians(r(n, 3), torch.nn.functional.normalize(r(n, 4), dim=-1), r(n, 3) - 2.0, 2.0 * r(n), r(n, 1, 3), rest)


def test_from_values_roundtrip_and_activations():
    means = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    rgb = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]])
    g = Gaussians.from_values(means, rgb, torch.tensor([0.1, 0.5]), torch.tensor([0.25, 0.9]))
    assert torch.allclose(g.scales, torch.tensor([[0.1] * 3, [0.5] * 3]))
    assert torch.allclose(g.opacities, torch.tensor([0.25, 0.9]))
    assert torch.allclose(g.rgb, rgb, atol=1e-6)
    assert torch.equal(g.quats, torch.tensor([[1.0, 0, 0, 0]] * 2))
    assert sh_dc_to_rgb(rgb_to_sh_dc(torch.tensor(0.7))).item() == pytest.approx(0.7)
    assert SH_C0 == pytest.approx(1.0 / (2.0 * math.sqrt(math.pi)))


def test_quaternion_matrix_roundtrip_including_half_turns():
    gen = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(500, 4, generator=gen, dtype=torch.float64), dim=-1)
    half_turns = torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0.6, 0.8, 0]], dtype=torch.float64)
    q = torch.cat((q, half_turns))
    rot = quat_to_rotmat(q)
    assert torch.allclose(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(rot), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(q), dtype=torch.float64))
    back = rotmat_to_quat(rot)
    assert (back[:, 0] >= 0).all()
    sign = torch.where((back * q).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    assert torch.allclose(back, sign * q, atol=1e-12)
    # Hamilton product composes rotations: R(a*b) = R(a) R(b)
    a, b = q[:10], q[10:20]
    assert torch.allclose(quat_to_rotmat(quat_multiply(a, b)), quat_to_rotmat(a) @ quat_to_rotmat(b), atol=1e-12)


def test_covariance_is_r_s2_rt():
    # 90 degrees about z: local x -> world y
    q = torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]], dtype=torch.float64)
    g = Gaussians(torch.zeros(1, 3, dtype=torch.float64), q, torch.log(torch.tensor([[3.0, 1.0, 0.5]], dtype=torch.float64)),
                  torch.zeros(1, dtype=torch.float64), torch.zeros(1, 1, 3, dtype=torch.float64))
    assert torch.allclose(g.covariances()[0], torch.diag(torch.tensor([1.0, 9.0, 0.25], dtype=torch.float64)), atol=1e-12)


def test_sh_basis_matches_gsplat():
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    gen = torch.Generator().manual_seed(2)
    dirs = torch.nn.functional.normalize(torch.randn(100, 3, generator=gen, dtype=torch.float64), dim=-1)
    coeffs = torch.randn(100, 16, 3, generator=gen, dtype=torch.float64)
    ours = (eval_sh_basis(3, dirs)[..., None] * coeffs).sum(-2)
    assert torch.allclose(ours, impl._spherical_harmonics(3, dirs, coeffs), atol=1e-12)


@pytest.mark.parametrize("reflect", [False, True])
def test_sh_rotation_matrix_rotates_the_colour_function(reflect):
    gen = torch.Generator().manual_seed(3)
    q = quat_to_rotmat(torch.nn.functional.normalize(torch.randn(4, generator=gen, dtype=torch.float64), dim=0))
    if reflect:
        q = q @ torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
    coeffs = torch.randn(15, 3, generator=gen, dtype=torch.float64)
    new = sh_rotation_matrix(q, 3) @ coeffs
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen, dtype=torch.float64), dim=-1)
    before = eval_sh_basis(3, dirs)[:, 1:] @ coeffs  # c(d)
    after = eval_sh_basis(3, dirs @ q.T)[:, 1:] @ new  # c'(Q d)
    assert torch.allclose(before, after, atol=1e-10)


def test_concatenate_pads_sh_and_assigns_segments():
    a, b = random_gaussians(5, degree=0, seed=1), random_gaussians(7, degree=2, seed=2)
    c = Gaussians.concatenate([a, b], assign_segments=True)
    assert len(c) == 12 and c.sh_degree == 2
    assert torch.equal(c.sh_rest[:5], torch.zeros(5, 8, 3))
    assert torch.equal(c.sh_rest[5:], b.sh_rest)
    assert torch.equal(c.means, torch.cat((a.means, b.means)))
    assert c.segment.tolist() == [0] * 5 + [1] * 7
    d = Gaussians.concatenate([c, random_gaussians(2, seed=3)])
    assert d.segment.tolist() == [0] * 5 + [1] * 7 + [-1, -1]
    assert Gaussians.concatenate([a, Gaussians.empty()]).means.shape == (5, 3)
    assert Gaussians.concatenate([a, b]).segment is None
    with pytest.raises(InputError):
        Gaussians.concatenate([])


def test_filters_by_opacity_box_and_distance():
    means = torch.tensor([[0.0, 0, 1], [0, 0, 3], [5, 0, 0], [-1, -1, -1]])
    g = Gaussians.from_values(means, torch.full((4, 3), 0.5), torch.full((4,), 0.1), torch.tensor([0.9, 0.1, 0.5, 0.95]))
    assert g.filter_opacity(0.5).means.tolist() == [[0, 0, 1], [5, 0, 0], [-1, -1, -1]]
    assert g.filter_box([-0.5, -0.5, 0], [0.5, 0.5, 2]).means.tolist() == [[0, 0, 1]]
    assert g.filter_distance(2.0).means.tolist() == [[0, 0, 1], [-1, -1, -1]]
    assert g.filter_distance(10.0, center=(5, 0, 0), min_distance=1.0).means.tolist() == [[0, 0, 1], [0, 0, 3], [-1, -1, -1]]
    assert g.select(torch.tensor([2, 0])).means.tolist() == [[5, 0, 0], [0, 0, 1]]
    with pytest.raises(InputError):
        g.select(torch.tensor([True, False]))


def test_prune_keeps_the_most_important_in_order():
    means = torch.zeros(5, 3)
    scales = torch.tensor([0.1, 1.0, 0.5, 2.0, 0.1])
    opac = torch.tensor([0.9, 0.1, 0.9, 0.01, 0.5])
    g = Gaussians.from_values(means, torch.zeros(5, 3), scales, opac)
    # importance = opacity * volume: [9e-4, 0.1, 0.1125, 0.08, 5e-4]
    kept = g.prune(3)
    assert torch.allclose(kept.scales[:, 0], torch.tensor([1.0, 0.5, 2.0]))
    assert torch.allclose(g.prune(2, score=torch.tensor([5.0, 1, 2, 3, 4])).scales[:, 0], torch.tensor([0.1, 0.1]))
    assert g.prune(10) is g and len(g.prune(0)) == 0
    with pytest.raises(InputError):
        g.prune(2, score=torch.ones(3))


@pytest.mark.parametrize("reflect", [False, True])
def test_similarity_transform_maps_means_covariances_and_sh(reflect):
    g = random_gaussians(40, degree=1, seed=4, dtype=torch.float64)
    q = quat_to_rotmat(torch.tensor([0.8, 0.2, -0.4, 0.4], dtype=torch.float64))
    if reflect:
        q = q @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    s, t = 2.5, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3], m[:3, 3] = s * q, t
    h = g.transform(m)
    assert torch.allclose(h.means, g.means @ (s * q).T + t, atol=1e-12)
    assert torch.allclose(h.covariances(), s**2 * q @ g.covariances() @ q.T, atol=1e-10)
    assert torch.allclose(torch.linalg.det(h.rotations()), torch.ones(40, dtype=torch.float64))
    assert torch.allclose(h.quats.norm(dim=-1), torch.ones(40, dtype=torch.float64))
    # view-dependent colour seen from direction q d equals the original seen from d
    d = torch.nn.functional.normalize(torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)), dim=-1)
    col = lambda gg, dirs: (eval_sh_basis(1, dirs)[..., None] * gg.sh_coeffs()).sum(-2)
    assert torch.allclose(col(h, d @ q.T), col(g, d), atol=1e-10)
    with pytest.raises(InputError, match="similarity"):
        g.transform(torch.diag(torch.tensor([1.0, 2.0, 1.0, 1.0], dtype=torch.float64)))


def test_to_device_and_dtype_keeps_segment_ints():
    g = Gaussians.concatenate([random_gaussians(3), random_gaussians(2)], assign_segments=True)
    h = g.to("cpu", torch.float64)
    assert h.dtype == torch.float64 and h.segment.dtype == torch.int64
    assert torch.equal(h.means.float(), g.means)


def test_validated_rejects_nan_and_zero_quats_drops_on_request():
    g = random_gaussians(6)
    bad = Gaussians(g.means.clone(), g.quats.clone(), g.log_scales, g.opacity_logits, g.sh_dc)
    bad.means[1, 0] = float("nan")
    bad.quats[4] = 0.0
    with pytest.raises(InputError, match="2 of 6"):
        bad.validated()
    with pytest.warns(UserWarning, match="dropped 2"):
        clean = bad.validated(drop_invalid=True)
    assert torch.equal(clean.means, g.means[[0, 2, 3, 5]])


def test_validated_clamps_zero_scales_and_normalises_quats():
    g = random_gaussians(4)
    quats = g.quats * torch.tensor([[2.0], [1.0], [1.0], [0.5]])
    log_scales = g.log_scales.clone()
    log_scales[2, 1] = -math.inf  # a zero scale
    with pytest.warns(UserWarning) as record:
        h = Gaussians(g.means, quats, log_scales, g.opacity_logits, g.sh_dc).validated()
    messages = " ".join(str(r.message) for r in record)
    assert "zero" in messages and "normalised" in messages
    assert torch.allclose(h.quats, g.quats, atol=1e-6)
    assert h.log_scales[2, 1] == pytest.approx(math.log(1e-7)) and torch.isfinite(h.log_scales).all()


def test_shape_errors_and_empty():
    g = random_gaussians(3)
    with pytest.raises(InputError, match="quats"):
        Gaussians(g.means, g.quats[:2], g.log_scales, g.opacity_logits, g.sh_dc)
    with pytest.raises(InputError, match="sh_rest"):
        Gaussians(g.means, g.quats, g.log_scales, g.opacity_logits, g.sh_dc, torch.zeros(3, 5, 3))
    e = Gaussians.empty(sh_degree=1)
    assert len(e) == 0 and e.sh_degree == 1 and len(e.validated()) == 0 and len(e.prune(3)) == 0
