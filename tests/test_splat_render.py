"""Splat renderer: CPU reference vs analytic images, compositing rules, SH, gradients, panoramas, CUDA parity."""

import math

import pytest
import torch

from matrix_world.cameras import make_pose, rotation_yaw
from matrix_world.equirect import direction_to_lonlat, equirect_directions, lonlat_to_direction
from matrix_world.errors import InputError
from matrix_world.gaussians import SH_C0, Gaussians, eval_sh_basis
from matrix_world.reconstruction.render import Cameras, render, render_panorama

F64 = torch.float64


def pinhole(size=64, f=40.0, dtype=F64):
    return torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]], dtype=dtype)


def make(means, scales, opac, rgb, quats=None, sh_rest=None, dtype=F64):
    means = torch.as_tensor(means, dtype=dtype)
    n = means.shape[0]
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=dtype) if quats is None else torch.as_tensor(quats, dtype=dtype)
    g = Gaussians(means, quats, torch.log(torch.as_tensor(scales, dtype=dtype)), torch.logit(torch.as_tensor(opac, dtype=dtype)),
                  ((torch.as_tensor(rgb, dtype=dtype) - 0.5) / SH_C0)[:, None, :], sh_rest)
    return g


def analytic_alpha(mean, cov, opacity, K, size, eps2d=0.3):
    """gsplat's EWA splat of one Gaussian (camera = world), evaluated at pixel centres (+0.5)."""
    x, y, z = mean.tolist()
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    J = torch.tensor([[fx / z, 0, -fx * x / z**2], [0, fy / z, -fy * y / z**2]], dtype=F64)
    cov2 = J @ cov @ J.T + eps2d * torch.eye(2, dtype=F64)
    mu = torch.tensor([fx * x / z + cx, fy * y / z + cy], dtype=F64)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=F64) + 0.5, torch.arange(size, dtype=F64) + 0.5, indexing="ij")
    d = torch.stack((xs - mu[0], ys - mu[1]), -1)
    sigma = 0.5 * torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(cov2), d)
    alpha = torch.clamp(opacity * torch.exp(-sigma), max=0.999)
    return torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))


def test_single_rotated_anisotropic_gaussian_matches_analytic_image():
    q = torch.nn.functional.normalize(torch.tensor([0.9, 0.3, -0.2, 0.25], dtype=F64), dim=0)
    g = make([[0.2, -0.1, 2.0]], [[0.25, 0.05, 0.12]], [0.8], [[0.9, 0.4, 0.1]], quats=q[None])
    K = pinhole()
    out = render(g, Cameras(torch.eye(4, dtype=F64), K, 64, 64), backend="cpu")
    alpha = analytic_alpha(g.means[0], g.covariances()[0], 0.8, K, 64)
    assert alpha.max() > 0.7 and (alpha > 0).sum() > 100  # a sizeable, elongated splat
    assert torch.allclose(out.alpha[0, 0], alpha, atol=1e-9)
    assert torch.allclose(out.rgb[0], torch.tensor([0.9, 0.4, 0.1], dtype=F64)[:, None, None] * alpha, atol=1e-9)
    assert torch.allclose(out.depth[0, 0], torch.where(alpha > 0, torch.full_like(alpha, 2.0), torch.zeros_like(alpha)), atol=1e-9)
    assert out.rgb.shape == (1, 3, 64, 64) and out.alpha.shape == out.depth.shape == (1, 1, 64, 64)


def test_front_to_back_compositing_of_two_gaussians_any_order():
    K = pinhole(32, 20.0)
    cam = Cameras(torch.eye(4, dtype=F64), K, 32, 32)
    near = ([0.0, 0.0, 2.0], [0.3] * 3, 0.6, [1.0, 0.0, 0.0])
    far = ([0.05, 0.0, 4.0], [0.6] * 3, 0.7, [0.0, 0.0, 1.0])
    for order in ((near, far), (far, near)):
        g = make([o[0] for o in order], [o[1] for o in order], [o[2] for o in order], [o[3] for o in order])
        out = render(g, cam, backend="cpu")
        a1 = analytic_alpha(torch.tensor(near[0], dtype=F64), torch.eye(3, dtype=F64) * 0.09, 0.6, K, 32)
        a2 = analytic_alpha(torch.tensor(far[0], dtype=F64), torch.eye(3, dtype=F64) * 0.36, 0.7, K, 32)
        w2 = (1 - a1) * a2
        assert torch.allclose(out.alpha[0, 0], a1 + w2, atol=1e-9)
        assert torch.allclose(out.rgb[0, 0], a1, atol=1e-9) and torch.allclose(out.rgb[0, 2], w2, atol=1e-9)
        depth = (a1 * 2.0 + w2 * 4.0) / (a1 + w2).clamp(min=1e-10)
        assert torch.allclose(out.depth[0, 0], depth, atol=1e-9)


def test_saturation_stops_a_pixel_like_gsplat():
    # alpha is clamped to 0.999; after it T = 1e-3, and the next one would take T to 1e-6 <= 1e-4: skipped
    # both project exactly onto the centre of pixel (8, 8): (8.5, 8.5) with f = 8, c = 8
    g = make([[0.125, 0.125, 2.0], [0.1875, 0.1875, 3.0]], [[0.5] * 3, [0.5] * 3], [0.99999, 0.99999], [[1.0, 0, 0], [0, 1.0, 0]])
    out = render(g, Cameras(torch.eye(4, dtype=F64), pinhole(16, 8.0), 16, 16), backend="cpu")
    c = out.rgb[0, :, 8, 8]
    assert c[0].item() == pytest.approx(0.999, abs=1e-9) and abs(c[1].item()) < 1e-12  # green one: not composited
    assert out.alpha[0, 0, 8, 8].item() == pytest.approx(0.999, abs=1e-9)


def test_view_dependent_colour_and_background():
    rest = torch.tensor([[[0.3, -0.2, 0.1], [0.2, 0.1, -0.3], [-0.25, 0.3, 0.2]]], dtype=F64)
    g = make([[0.3, 0.2, 3.0]], [[0.3] * 3], [0.9], [[0.4, 0.5, 0.6]], sh_rest=rest)
    c2w = make_pose(rotation_yaw(10.0), torch.tensor([0.5, -0.2, 0.0], dtype=F64))
    cams = Cameras.from_c2w(c2w, pinhole(32, 20.0), 32, 32)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    out = render(g, cams, backend="cpu", background=bg)
    d = torch.nn.functional.normalize(g.means[0] - c2w[:3, 3], dim=0)
    colour = (0.5 + (eval_sh_basis(1, d)[:, None] * g.sh_coeffs()[0]).sum(0)).clamp(min=0)
    a = out.alpha[0, :, :, :]
    expected = colour[:, None, None] * a + (1 - a) * bg[:, None, None]
    assert torch.allclose(out.rgb[0], expected, atol=1e-9)
    dc_only = render(g, cams, backend="cpu", sh_degree=0)
    assert not torch.allclose(dc_only.rgb, out.rgb - (1 - a) * bg[:, None, None], atol=1e-3)


def test_empty_gaussians_render_background():
    out = render(Gaussians.empty(dtype=F64), Cameras(torch.eye(4), pinhole(8, 4.0), 8, 8), background=torch.tensor([1.0, 0.5, 0.0]))
    assert torch.equal(out.alpha, torch.zeros(1, 1, 8, 8, dtype=F64))
    assert torch.equal(out.rgb[0, :, 3, 3], torch.tensor([1.0, 0.5, 0.0], dtype=F64))


def test_compositor_is_differentiable_gradcheck():
    g = make([[0.1, 0.0, 2.0], [-0.2, 0.1, 2.5], [0.0, -0.1, 3.0]], [[0.2, 0.1, 0.15], [0.3] * 3, [0.25, 0.3, 0.2]],
             [0.6, 0.5, 0.7], [[0.8, 0.2, 0.1], [0.1, 0.7, 0.3], [0.3, 0.3, 0.9]],
             quats=torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0, 0.1], [1.0, 0, 0.3, 0], [0.9, 0, 0, 0.4]], dtype=F64), dim=-1))
    cams = Cameras(torch.eye(4, dtype=F64), pinhole(12, 10.0), 12, 12)
    weights = torch.rand(5, 12, 12, generator=torch.Generator().manual_seed(0), dtype=F64)

    def fn(means, log_scales, logits, dc, quats):
        out = render(Gaussians(means, quats, log_scales, logits, dc), cams, backend="cpu")
        images = torch.cat((out.rgb, out.alpha, out.depth), dim=1)[0]  # [5, 12, 12]
        return (images * weights).sum(dim=(1, 2))  # 5 random projections keep the check cheap

    inputs = tuple(t.clone().requires_grad_(True) for t in (g.means, g.log_scales, g.opacity_logits, g.sh_dc, g.quats))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_info_for_densification_strategies():
    g = make([[0.0, 0, 2.0], [0, 0, -2.0]], [[0.2] * 3] * 2, [0.5, 0.5], [[0.5] * 3] * 2, dtype=torch.float32)
    g = Gaussians(g.means.requires_grad_(True), g.quats, g.log_scales, g.opacity_logits, g.sh_dc)
    cams = Cameras(torch.eye(4).expand(3, 4, 4), pinhole(16, 8.0, torch.float32), 16, 16)
    out = render(g, cams, backend="cpu")
    info = out.info
    assert info["radii"].shape == (3, 2, 2) and info["means2d"].shape == (3, 2, 2)
    assert (info["radii"][:, 0] > 0).all() and (info["radii"][:, 1] == 0).all()  # the one behind is culled
    assert info["width"] == 16 and info["n_cameras"] == 3
    info["means2d"].retain_grad()
    out.rgb.sum().backward()
    assert info["means2d"].grad.shape == (3, 2, 2) and g.means.grad is not None


def test_bad_cameras_and_backend():
    g = make([[0.0, 0, 2.0]], [[0.2] * 3], [0.5], [[0.5] * 3])
    with pytest.raises(InputError, match="w2c"):
        Cameras(torch.eye(3), pinhole(), 64, 64)
    with pytest.raises(InputError, match="finite"):
        Cameras(torch.full((4, 4), float("nan")), pinhole(), 64, 64)
    with pytest.raises(InputError, match="CUDA"):
        render(g, Cameras(torch.eye(4), pinhole(), 64, 64), backend="cuda")
    with pytest.raises(InputError, match="backend"):
        render(g, Cameras(torch.eye(4), pinhole(), 64, 64), backend="vulkan")


def fibonacci_shell(n, radius, dtype=torch.float32):
    i = torch.arange(n, dtype=F64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt(1 - z * z)
    phi = i * math.pi * (3 - math.sqrt(5))
    return (radius * torch.stack((r * torch.cos(phi), r * torch.sin(phi), z), -1)).to(dtype)


def test_panorama_of_a_shell_is_seamless():
    n = 1200
    g = make(fibonacci_shell(n, 2.0), torch.full((n, 3), 0.12), torch.full((n,), 0.95), torch.tensor([[0.2, 0.6, 0.4]]).expand(n, 3),
             dtype=torch.float32)
    pano = render_panorama(g, torch.eye(4), 32, backend="cpu")
    assert pano.rgb.shape == (3, 32, 64) and pano.alpha.shape == pano.distance.shape == (1, 32, 64)
    assert (pano.alpha > 0.95).float().mean() > 0.97
    covered = pano.alpha[0] > 0.95
    # splat depth is the alpha-weighted z of the Gaussians' centres, so it sits a little in front
    # of the shell, most towards the corners of the cube faces (rays 45-55 degrees off-axis)
    assert ((pano.distance[0][covered] - 2.0).abs() < 0.25).all()
    # no seams: neighbouring columns (and the wrap-around) differ little, like the rows do
    dist = pano.distance[0]
    col_step = (dist - torch.roll(dist, 1, dims=1)).abs().max()
    row_step = (dist[1:] - dist[:-1]).abs().max()
    assert col_step < 0.06 and row_step < 0.06
    colour = pano.rgb[:, covered] / pano.alpha[0][covered]
    assert torch.allclose(colour.mean(1), torch.tensor([0.2, 0.6, 0.4]), atol=0.01)


def test_panorama_places_a_gaussian_in_its_direction():
    lon, lat, dist = math.radians(60.0), math.radians(20.0), 3.0
    c2w = make_pose(rotation_yaw(30.0), torch.tensor([0.3, 0.0, -0.2], dtype=F64))
    local = lonlat_to_direction(torch.tensor(lon, dtype=F64), torch.tensor(lat, dtype=F64)) * dist
    world = c2w[:3, :3] @ local + c2w[:3, 3]
    g = make(world[None], [[0.05] * 3], [0.9], [[1.0, 1.0, 1.0]], dtype=torch.float32)
    pano = render_panorama(g, c2w, 64, backend="cpu")
    idx = pano.alpha[0].argmax()
    peak = equirect_directions(64, dtype=F64).reshape(-1, 3)[idx]
    plon, plat = direction_to_lonlat(peak)
    assert abs(plon - lon) < math.radians(3.0) and abs(plat - lat) < math.radians(3.0)
    assert pano.distance[0].reshape(-1)[idx].item() == pytest.approx(dist, rel=0.01)


@pytest.mark.cuda
def test_cuda_matches_cpu_reference():
    """gsplat's CUDA rasterizer vs the pure-PyTorch reference, same tensors on the GPU."""
    gen = torch.Generator().manual_seed(0)
    n = 2000
    means = torch.randn(n, 3, generator=gen) * torch.tensor([1.0, 0.6, 0.8]) + torch.tensor([0, 0, 4.0])
    g = Gaussians(means, torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
                  torch.log(torch.rand(n, 3, generator=gen) * 0.08 + 0.01), torch.randn(n, generator=gen) * 2,
                  torch.randn(n, 1, 3, generator=gen) * 0.5, torch.randn(n, 15, 3, generator=gen) * 0.1).to("cuda")
    c2w = torch.stack([make_pose(rotation_yaw(a), torch.tensor([0.2 * i, 0.0, 0.0], dtype=F64)) for i, a in enumerate((-10.0, 0.0, 10.0, 20.0))])
    cams = Cameras.from_c2w(c2w, pinhole(64, 50.0), 64, 64)
    params = [t.requires_grad_(True) for t in (g.means, g.log_scales, g.opacity_logits, g.sh_dc, g.sh_rest)]
    outs, grads = {}, {}
    for backend in ("cuda", "cpu"):
        out = render(g, cams, backend=backend)
        outs[backend] = out
        loss = (out.rgb * torch.linspace(0, 1, 64, device="cuda")).sum() + out.alpha.sum() + 0.1 * out.depth.sum()
        grads[backend] = torch.autograd.grad(loss, params)
    # depth is compared as accumulated depth (alpha x depth): where a pixel's alpha is ~1/255 the
    # expected depth flips between 0 and z when float32 rounding moves alpha across the threshold
    images = {b: {"rgb": o.rgb, "alpha": o.alpha, "depth": o.alpha * o.depth} for b, o in outs.items()}
    for key in ("rgb", "alpha", "depth"):
        d = (images["cuda"][key] - images["cpu"][key]).abs()
        assert d.mean() < 1e-4 and d.max() < 2e-2, (key, float(d.mean()), float(d.max()))
    for ga, gb in zip(grads["cuda"], grads["cpu"]):
        cos = torch.nn.functional.cosine_similarity(ga.flatten(), gb.flatten(), dim=0)
        assert cos > 0.99
    # screen radii (integer ceil of float32 maths) agree but for rare rounding at integer boundaries
    diff = (outs["cuda"].info["radii"] - outs["cpu"].info["radii"]).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99
