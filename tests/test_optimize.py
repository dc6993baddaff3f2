"""The `optimize` backend on CPU: a tiny analytic room, ~2000 Gaussians, 32x32 crops."""

import pytest
import torch
from _recon_scene import render_clip, render_view, trajectory

from matrix_world.cameras import crops_12, intrinsics_from_fov, rotation_from_yaw_pitch
from matrix_world.errors import InputError
from matrix_world.metrics import psnr
from matrix_world.reconstruction.keyframes import KeyframeConfig, prepare_keyframes
from matrix_world.reconstruction.lift import LiftConfig, lift_keyframes
from matrix_world.reconstruction.optimize import OptimizeConfig, cut_crops, masked_loss, optimize_keyframes
from matrix_world.reconstruction.render import Cameras, render
from matrix_world.reconstruction.stage import ReconConfig, reconstruct


def _config(**kw) -> OptimizeConfig:
    base = dict(iterations=40, crop_size=32, batch_size=1, densify=False, progress=False, log_every=1,
                init=LiftConfig(sky="shell", downsample=1, opacity=0.9))
    base.update(kw)
    return OptimizeConfig(**base)


@pytest.fixture(scope="module")
def clip():
    c2w = trajectory(11, length=1.0)
    rgb, dist = render_clip(c2w, 32)
    kf = prepare_keyframes(rgb, c2w, dist[0], depth_fn=lambda i, _: dist[i], config=KeyframeConfig(stride=5))
    return c2w, rgb, dist, kf


def _heldout_psnr(gaussians, c2w) -> float:
    """Mean PSNR over 9 novel views: poses between keyframes, turned away from the crop grid."""
    K = intrinsics_from_fov(90.0, 48, 48)
    values = []
    for frame in (2, 7, 9):
        for yaw, pitch in ((30.0, 10.0), (150.0, -20.0), (250.0, 5.0)):
            pose = c2w[frame].clone()
            pose[:3, :3] = pose[:3, :3] @ rotation_from_yaw_pitch(yaw, pitch)
            target = render_view(pose, K, 48, 48).permute(2, 0, 1)[None]
            out = render(gaussians, Cameras.from_c2w(pose[None], K[None], 48, 48), backend="cpu")
            values.append(float(psnr(out.rgb.clamp(0, 1), target)))
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def trained(clip):
    _, _, _, kf = clip
    cfg = _config()
    gaussians, info = optimize_keyframes(kf, cfg, generator=torch.Generator().manual_seed(0))
    return cfg, gaussians, info


def test_crops_have_exact_cameras(clip):
    kf = clip[3]
    views = cut_crops(kf, 24)
    assert len(views) == 12 * len(kf.indices) and views.images.shape[1:] == (3, 24, 24)
    # each crop equals an exact pinhole render of the room from its camera (up to resampling)
    for v in (0, 13, 30):
        c2w_crop = torch.linalg.inv(views.w2c[v].double())
        exact = render_view(c2w_crop, views.K[v].double(), 24, 24).permute(2, 0, 1)
        assert float(psnr(views.images[v], exact)) > 24.0
    # crop v of keyframe k has rotation c2w_k @ R(yaw, pitch)
    k, view = int(views.keyframe[13]), crops_12(24)[13 // len(kf.indices)]
    expected = kf.c2w[k] @ view.c2w()
    assert torch.allclose(torch.linalg.inv(views.w2c[13].double()), expected, atol=1e-5)


def test_optimize_decreases_loss_and_beats_init_on_heldout(clip, trained):
    c2w, _, _, kf = clip
    cfg, gaussians, info = trained
    losses = info["train"]["loss"]
    assert len(losses) == cfg.iterations
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.85 * first
    init, _ = lift_keyframes(kf, cfg.init)
    assert info["num_init"] == len(init) <= 2500
    before, after = _heldout_psnr(init, c2w), _heldout_psnr(gaussians, c2w)
    assert after > before + 0.5


def test_optimize_is_deterministic_with_a_seed(clip):
    _, _, _, kf = clip
    cfg = _config(iterations=12, densify=True, densify_start=2, densify_every=4, densify_stop=10, grow_grad2d=1e-4)
    runs = [optimize_keyframes(kf, cfg, generator=torch.Generator().manual_seed(s))[0] for s in (3, 3, 4)]
    a, b, c = runs
    assert len(a) == len(b) > 0
    # same seed: the same crops, the same splits, bit-identical values (one thread here;
    # with several, multi-threaded scatter-adds may differ in the last bit)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh_dc"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert len(a) != len(c) or float((a.sh_dc - c.sh_dc).abs().max()) > 1e-3


def test_densification_runs_on_cpu_with_default_strategy(clip):
    _, _, _, kf = clip
    cfg = _config(iterations=8, densify=True, densify_start=2, densify_every=3, densify_stop=7, grow_grad2d=1e-5,
                  prune_opacity=0.5)
    gaussians, info = optimize_keyframes(kf, cfg, generator=torch.Generator().manual_seed(0))
    assert len(gaussians) != info["num_init"]  # clone/split/prune happened
    assert all(torch.isfinite(torch.tensor(info["train"]["loss"])))
    assert bool(torch.isfinite(gaussians.means).all()) and gaussians.sh_dc.shape == (len(gaussians), 1, 3)


def test_masked_loss_ignores_unknown_pixels():
    gen = torch.Generator().manual_seed(0)
    render_img = torch.rand(2, 3, 24, 24, generator=gen)
    target = torch.rand(2, 3, 24, 24, generator=gen)
    mask = torch.ones(2, 1, 24, 24, dtype=torch.bool)
    mask[:, :, :, :12] = False
    other = target.clone()
    other[:, :, :, :12] = 0.0  # differs only where unknown
    assert torch.allclose(masked_loss(render_img, target, mask, 0.2), masked_loss(render_img, other, mask, 0.2))
    assert float(masked_loss(target, target, torch.ones_like(mask), 0.2)) == pytest.approx(0.0, abs=1e-6)


def test_reconstruct_stage_backends_and_bad_input(clip):
    c2w, rgb, dist, _ = clip
    g, info = reconstruct(ReconConfig(backend="lift"), frames=rgb, distance0=dist[0], c2w=c2w,
                          depth_fn=lambda i, _: dist[i])
    assert info["backend"] == "lift" and info["num_gaussians"] == len(g) > 0
    with pytest.raises(InputError, match="pipeline.reconstruction.choose"):  # auto: the pipeline's one rule
        ReconConfig(backend="auto")
    with pytest.raises(InputError, match="same length"):
        reconstruct(ReconConfig(backend="lift"), frames=rgb[:5], distance0=dist[0], c2w=c2w)
    with pytest.raises(InputError, match="generator"):
        reconstruct(ReconConfig(backend="optimize"), frames=rgb, distance0=dist[0], c2w=c2w)
    with pytest.raises(InputError):
        ReconConfig(backend="nerf")
    with pytest.raises(InputError):
        OptimizeConfig(batch_size=0)


def test_super_resolution_hook_scales_crops_and_intrinsics(clip):
    kf = clip[3]
    up = lambda x: torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")  # noqa: E731
    base, sr = cut_crops(kf, 16), cut_crops(kf, 16, super_resolution=up)
    assert sr.images.shape[-2:] == (32, 32) and sr.masks.shape[-2:] == (32, 32)
    assert torch.allclose(sr.K[:, :2], 2.0 * base.K[:, :2]) and torch.equal(sr.w2c, base.w2c)
    with pytest.raises(InputError, match="super_resolution"):
        cut_crops(kf, 16, super_resolution=lambda x: x[:, :, :8])
