"""The `lift` backend and the keyframe alignment (CPU, analytic room of tests/_recon_scene.py)."""

import math

import pytest
import torch
from _recon_scene import render_clip, render_panorama, trajectory

from matrix_world.cameras import crop_perspective, crops_12
from matrix_world.equirect import direction_to_pixel
from matrix_world.errors import InputError
from matrix_world.metrics import psnr
from matrix_world.reconstruction.align import AlignConfig, align_to_previous, fit_scale_shift
from matrix_world.reconstruction.keyframes import KeyframeConfig, prepare_keyframes, select_keyframes
from matrix_world.reconstruction.lift import LiftConfig, lift_keyframes, longitude_groups
from matrix_world.reconstruction.render import Cameras, render

EYE = torch.eye(4, dtype=torch.float64)


def _single(rgb, dist, **kw):
    return prepare_keyframes(rgb[None], EYE[None], dist, **kw)


@pytest.fixture(scope="module")
def pano64():
    return render_panorama(EYE, 64)


def test_lift_reproduces_panorama_on_crops(pano64):
    rgb, dist = pano64
    g, info = lift_keyframes(_single(rgb, dist))
    # one Gaussian per pixel, fewer near the poles (latitude merge)
    assert 0.7 * 64 * 128 < len(g) < 64 * 128 and info["added"] == [len(g)]
    views = crops_12(64)
    out = render(g, Cameras.from_views(views), backend="cpu")
    target = torch.stack([crop_perspective(rgb.permute(2, 0, 1), v)[0] for v in views])
    assert float(psnr(out.rgb.clamp(0, 1), target)) >= 30.0
    assert float(out.alpha.min()) > 0.85  # closed surface, no holes
    # means lie on the rays at the pixel distances: every Gaussian's distance matches the map
    px, py = direction_to_pixel(g.means.double(), 64, 128)
    d_map = dist[py.long().clamp(0, 63), px.long().clamp(0, 127)]
    assert torch.allclose(g.means.double().norm(dim=-1), d_map.double(), rtol=0.05)


def test_isotropic_scale_is_pixel_footprint(pano64):
    rgb, dist = pano64
    cfg = LiftConfig(shape="isotropic", scale_factor=0.5, merge_longitude=False)
    g, _ = lift_keyframes(_single(rgb, dist), cfg)
    assert len(g) == 64 * 128
    sigma = g.scales
    assert torch.allclose(sigma[:, 0], sigma[:, 1]) and torch.allclose(sigma[:, 0], sigma[:, 2])
    expected = 0.5 * (math.pi / 64) * g.means.norm(dim=-1)
    assert torch.allclose(sigma[:, 0], expected, rtol=1e-4)
    assert torch.allclose(g.opacities, torch.full_like(g.opacities, cfg.opacity), atol=1e-5)


def test_longitude_groups_follow_latitude():
    group, g_row, g_col = longitude_groups(32, 64)
    assert group.shape == (32, 64) and int(group.max()) + 1 == g_row.numel()
    per_row = torch.bincount(g_row, minlength=32)
    assert per_row[15] == 64 and per_row[16] == 64  # equator: one Gaussian per pixel
    assert per_row[0] < 8 and per_row[0] == per_row[31]  # poles merged, symmetric
    assert bool((g_col >= 0).all() and (g_col < 64).all())


def test_lift_skips_unknown_and_sky_and_respects_budget(pano64):
    rgb, dist = pano64
    masks = torch.ones(1, 64, 128, dtype=torch.bool)
    masks[0, :, :64] = False  # left half unknown
    sky = torch.zeros(64, 128, dtype=torch.bool)
    sky[:8] = True  # pretend the top rows are sky
    kf = prepare_keyframes(rgb[None], EYE[None], dist, masks=masks, sky0=sky)
    g_skip, _ = lift_keyframes(kf, LiftConfig(sky="skip"))
    lon = torch.atan2(g_skip.means[:, 0], g_skip.means[:, 2])
    assert bool((lon > -0.05).all())  # nothing in the unknown half (lon < 0)
    lat = torch.asin(-g_skip.means[:, 1] / g_skip.means.norm(dim=-1))
    assert float(lat.max()) < math.pi / 2 - 8 * math.pi / 64 + 0.05  # no sky rows
    g_shell, _ = lift_keyframes(kf, LiftConfig(sky="shell", sky_radius=50.0))
    far = g_shell.means.norm(dim=-1) > 45.0
    assert 0 < int(far.sum()) and torch.allclose(g_shell.means[far].norm(dim=-1), torch.tensor(50.0), rtol=1e-4)
    g_budget, _ = lift_keyframes(kf, LiftConfig(budget=500))
    assert len(g_budget) == 500


def test_lift_dedupes_covered_points():
    c2w = trajectory(3, length=0.6)
    rgb, dist = render_clip(c2w, 32)
    # the same frame twice: the second adds nothing
    kf = prepare_keyframes(rgb[[0, 0]], c2w[[0, 0]], dist[0], depth_fn=lambda i, _: dist[[0] * len(i)],
                           config=KeyframeConfig(stride=1, align_distances=False))
    _, info = lift_keyframes(kf)
    assert info["added"][1] == 0 and info["covered"][1] > 0.9 * info["added"][0]
    # a moved camera adds only what the first did not see (or sees much closer)
    kf = prepare_keyframes(rgb, c2w, dist[0], depth_fn=lambda i, _: dist[i], config=KeyframeConfig(stride=2))
    _, info = lift_keyframes(kf)
    assert 0 < info["added"][1] < 0.3 * info["added"][0]
    _, info_all = lift_keyframes(kf, LiftConfig(dedupe=False))
    assert info_all["added"][1] > 3 * info["added"][1]


def test_fit_scale_shift_recovers_known_values_despite_outliers():
    gen = torch.Generator().manual_seed(0)
    ref = 1.0 + 9.0 * torch.rand(64, 128, generator=gen, dtype=torch.float64)
    scale, shift = 1.7, -0.4
    distance = (ref - shift) / scale
    s, t = fit_scale_shift(distance, ref)
    assert s == pytest.approx(scale, rel=1e-9) and t == pytest.approx(shift, abs=1e-8)
    noisy_ref = ref.clone()
    bad = torch.rand(64, 128, generator=gen) < 0.15
    noisy_ref[bad] *= 3.0  # 15 % gross outliers (occlusion errors)
    noisy_ref[0, 0] = float("nan")
    s, t = fit_scale_shift(distance, noisy_ref)
    assert s == pytest.approx(scale, rel=1e-3) and t == pytest.approx(shift, abs=1e-2)
    with pytest.raises(InputError):
        fit_scale_shift(distance, torch.full_like(ref, float("nan")))


def test_alignment_to_previous_keyframe_recovers_scale_and_shift():
    c2w = trajectory(2, length=0.8)
    _, dist = render_clip(c2w, 48)
    scale, shift = 0.8, 0.3
    wrong = (dist[1] - shift) / scale  # a depth model's output: right shape, wrong scale/offset
    aligned, s, t = align_to_previous(wrong, c2w[1], dist[0], c2w[0], config=AlignConfig())
    assert s == pytest.approx(scale, rel=0.02) and t == pytest.approx(shift, abs=0.05)
    assert float(((aligned - dist[1]).abs() / dist[1]).median()) < 0.01


def test_prepare_keyframes_aligns_depth_fn_output():
    c2w = trajectory(6, length=1.0)
    rgb, dist = render_clip(c2w, 32)
    kf = prepare_keyframes(rgb, c2w, dist[0], depth_fn=lambda i, _: 2.0 * dist[i] + 1.0, config=KeyframeConfig(stride=5))
    assert kf.indices == [0, 5]
    s, t = kf.alignment[1]
    assert s == pytest.approx(0.5, rel=0.03) and t == pytest.approx(-0.5, abs=0.1)
    assert float(((kf.distance[1] - dist[5]).abs() / dist[5]).median()) < 0.02
    assert select_keyframes(81, 5) == list(range(0, 81, 5)) and select_keyframes(12, 5) == [0, 5, 10, 11]


def test_bad_inputs_are_clear_errors(pano64):
    rgb, dist = pano64
    with pytest.raises(InputError, match="same length"):
        prepare_keyframes(rgb[None].expand(3, -1, -1, -1), EYE[None].expand(2, 4, 4), dist)
    with pytest.raises(InputError, match="W = 2H"):
        prepare_keyframes(rgb[None, :, :100], EYE[None], dist[:, :100])
    with pytest.raises(InputError, match="distance0"):
        prepare_keyframes(rgb[None], EYE[None], dist[:32])
    bad = EYE.clone()
    bad[0, 0] = 2.0
    with pytest.raises(InputError, match="rigid"):
        prepare_keyframes(rgb[None], bad[None], dist)
    with pytest.raises(InputError):
        LiftConfig(sky="dome")
