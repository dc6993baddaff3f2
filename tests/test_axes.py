"""Export axis presets: proper rotations / documented reflections, covariances mapped exactly."""

import math

import pytest
import torch

from matrix_world.axes import PRESETS, from_axes, get_preset, points_to_axes, to_axes
from matrix_world.errors import InputError
from matrix_world.gaussians import Gaussians, eval_sh_basis, quat_to_rotmat, rotmat_to_quat

F64 = torch.float64


def anisotropic_gaussian():
    """One Gaussian, 1.5 m ahead and 0.5 m right, 4 x 1 x 0.25 std devs, turned 30 deg about y
    then 20 deg about x (so its covariance has every off-diagonal term)."""
    a, b = math.radians(30), math.radians(20)
    q_y = torch.tensor([math.cos(a / 2), 0, math.sin(a / 2), 0], dtype=F64)
    q_x = torch.tensor([math.cos(b / 2), math.sin(b / 2), 0, 0], dtype=F64)
    rot = quat_to_rotmat(q_x) @ quat_to_rotmat(q_y)
    g = Gaussians(
        means=torch.tensor([[0.5, 0.0, 1.5]], dtype=F64),
        quats=rotmat_to_quat(rot)[None],
        log_scales=torch.log(torch.tensor([[4.0, 1.0, 0.25]], dtype=F64)),
        opacity_logits=torch.zeros(1, dtype=F64),
        sh_dc=torch.zeros(1, 1, 3, dtype=F64),
        sh_rest=torch.randn(1, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(0)),
    )
    return g, rot


def test_presets_are_orthogonal_with_documented_handedness():
    expected_det = {"opencv": 1, "opengl": 1, "gltf": 1, "blender": 1, "unity": -1, "unreal": -1}
    for name, preset in PRESETS.items():
        m = torch.tensor(preset.matrix, dtype=F64)
        assert torch.allclose(m @ m.T, torch.eye(3, dtype=F64)), name
        assert torch.linalg.det(m).item() == pytest.approx(expected_det[name]), name
        assert preset.is_reflection == (expected_det[name] < 0)
    assert get_preset("unreal").scale == 100.0 and get_preset("three.js").name == "opengl"
    with pytest.raises(InputError, match="unknown axis preset"):
        get_preset("maya")


def test_presets_map_known_directions():
    # our axes: right (+x), down (+y), forward (+z)
    right, down, forward = torch.eye(3, dtype=F64)
    up = -down
    cases = {
        "opengl": (right, up, forward, [1, 0, 0], [0, 1, 0], [0, 0, -1]),
        "blender": (right, up, forward, [1, 0, 0], [0, 0, 1], [0, 1, 0]),
        "unity": (right, up, forward, [1, 0, 0], [0, 1, 0], [0, 0, 1]),
        "unreal": (right, up, forward, [0, 100, 0], [0, 0, 100], [100, 0, 0]),
    }
    for name, (r, u, f, r_exp, u_exp, f_exp) in cases.items():
        pts = points_to_axes(torch.stack((r, u, f)), name)
        assert torch.allclose(pts, torch.tensor([r_exp, u_exp, f_exp], dtype=F64)), name


@pytest.mark.parametrize("name", list(PRESETS))
def test_rotated_anisotropic_gaussian_covariance(name):
    g, rot = anisotropic_gaussian()
    preset = get_preset(name)
    lin = preset.linear()
    sigma = rot @ torch.diag(torch.tensor([16.0, 1.0, 0.0625], dtype=F64)) @ rot.T
    h = to_axes(g, name)
    assert torch.allclose(h.means[0], lin @ g.means[0], atol=1e-12)
    assert torch.allclose(h.covariances()[0], lin @ sigma @ lin.T, atol=1e-9)
    # stored rotation stays a proper unit quaternion even for the left-handed presets
    assert h.quats.norm().item() == pytest.approx(1.0)
    assert torch.linalg.det(h.rotations()[0]).item() == pytest.approx(1.0)
    # the long axis (4 m) is the same physical direction in both frames
    long_ours = rot[:, 0]
    long_new = h.rotations()[0] @ torch.tensor([1.0, 0, 0], dtype=F64) * h.scales[0, 0]
    assert torch.allclose(long_new.abs(), (lin @ long_ours * 4.0).abs(), atol=1e-9)
    # view-dependent colour is carried along: the new frame's colour towards M d equals ours towards d
    d = torch.nn.functional.normalize(torch.tensor([[0.3, -0.2, 0.9]], dtype=F64), dim=-1)
    m = torch.tensor(preset.matrix, dtype=F64)
    c_ours = (eval_sh_basis(1, d)[..., None] * g.sh_coeffs()).sum(-2)
    c_new = (eval_sh_basis(1, d @ m.T)[..., None] * h.sh_coeffs()).sum(-2)
    assert torch.allclose(c_new, c_ours, atol=1e-10)
    # and back
    back = from_axes(h, name)
    assert torch.allclose(back.means, g.means, atol=1e-12)
    assert torch.allclose(back.covariances(), g.covariances(), atol=1e-9)
    assert torch.allclose(back.sh_rest, g.sh_rest, atol=1e-10)


def test_unreal_centimetres_scale_the_log_scales():
    g, _ = anisotropic_gaussian()
    h = to_axes(g, "unreal")
    assert torch.allclose(h.log_scales, g.log_scales + math.log(100.0), atol=1e-12)
    assert torch.equal(h.opacity_logits, g.opacity_logits) and torch.equal(h.sh_dc, g.sh_dc)
