"""Evaluation metrics against known values: PSNR of known errors, SSIM = 1 for identical
images, crop geometry, coverage, LPIPS never faked, pose error of known perturbations."""

import importlib.util
import math

import numpy as np
import pytest
import torch
from matrix_world.datasets.evaluation import (
    align_poses,
    image_metrics,
    load_lpips,
    perspective_crops,
    pose_error,
    scaffold_coverage,
    umeyama,
    view_set,
)

from matrix_world.cameras import make_pose, rotation_pitch, rotation_yaw
from matrix_world.equirect import equirect_directions
from matrix_world.metrics import psnr_from_noise_std


def _pano(h=48, seed=0):
    """A smooth test panorama [H, 2H, 3] in [0.2, 0.8] (no clipping when errors are added)."""
    d = equirect_directions(h, dtype=torch.float64).numpy()
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, 3))
    return (0.5 + 0.3 * np.sin(3 * d @ w)).astype(np.float32)


def test_psnr_of_a_constant_error_is_exact_on_crops():
    gt = _pano()
    out = image_metrics(gt + 0.02, gt, views="12", size=32, lpips=False)
    assert out["crops"] == 12
    assert abs(out["psnr"] - (-20 * math.log10(0.02))) < 1e-3  # 33.98 dB


def test_psnr_of_gaussian_noise_matches_the_noise_level():
    gt = np.full((64, 128, 3), 0.5, np.float32)
    noisy = gt + np.random.default_rng(1).normal(0, 0.05, gt.shape).astype(np.float32)
    out = image_metrics(noisy, gt, views="horizontal", size=48, lpips=False, mode="nearest")
    assert abs(out["psnr"] - psnr_from_noise_std(0.05)) < 0.15  # 26.02 dB


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    gt = _pano()
    same = image_metrics(gt, gt.copy(), views="cube", size=32, lpips=False)
    assert same["ssim"] == pytest.approx(1.0, abs=1e-6) and same["psnr"] > 100
    noisy = np.clip(gt + np.random.default_rng(2).normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
    assert image_metrics(noisy, gt, views="cube", size=32, lpips=False)["ssim"] < 0.9


def test_masked_psnr_scores_only_the_masked_pixels():
    gt = _pano()
    pred = gt.copy()
    pred[:, :48] += 0.1  # error only in the left half (lon < 0)
    mask = np.zeros(gt.shape[:2], bool)
    mask[:, 48:] = True
    out = image_metrics(pred, gt, views="horizontal", size=32, lpips=False, mask=mask, mode="nearest")
    assert out["psnr"] > 100


def test_crop_sets_and_crop_geometry():
    assert len(view_set("12")) == 12 and len(view_set("horizontal")) == 4 and len(view_set("cube")) == 6
    with pytest.raises(ValueError, match="unknown view set"):
        view_set("13")
    # a panorama whose colour is its viewing direction: crop centres see their optical axis
    d = equirect_directions(64, dtype=torch.float64).numpy()
    crops = perspective_crops((d + 1) / 2, views="12", size=33)  # [1, 12, 3, 33, 33]
    for k, view in enumerate(view_set("12", 33)):
        axis = view.rotation()[:, 2].numpy()
        centre = crops[0, k, :, 16, 16].numpy() * 2 - 1
        assert np.abs(centre - axis).max() < 0.05


def test_lpips_is_reported_missing_never_faked():
    gt = _pano()
    out = image_metrics(gt, gt, views="horizontal", size=32, lpips=True)
    model, note = load_lpips()
    if model is None:
        assert out["lpips"] is None and "LPIPS skipped" in out["lpips_note"]
        if importlib.util.find_spec("lpips") is None:
            assert "not installed" in note
    else:
        assert out["lpips"] == pytest.approx(0.0, abs=1e-4)


def test_scaffold_coverage_on_known_masks():
    m = np.zeros((3, 8, 16), bool)
    m[1, :, :8] = True
    m[2] = True
    assert np.allclose(scaffold_coverage(m), [0.0, 0.5, 1.0])
    top = np.zeros((8, 16), bool)
    top[0] = True  # the polar row covers far less of the sphere than 1/8
    assert scaffold_coverage(top)[0] == pytest.approx(1 / 8)
    assert scaffold_coverage(top, solid_angle=True)[0] == pytest.approx(
        math.cos(math.radians(90 - 11.25)) / sum(math.cos(math.radians(90 - 11.25 - 22.5 * i)) for i in range(8)))
    assert scaffold_coverage(torch.ones(2, 4, 8, dtype=torch.bool), solid_angle=True) == pytest.approx([1.0, 1.0])


def _curved_path(frames=30):
    t = np.linspace(0, 1, frames)
    yaw = 60 * t
    pos = np.stack([8 * np.sin(2 * t), -1.6 + 0.3 * t, 10 * t], 1)
    return torch.stack([make_pose(rotation_yaw(float(a)) @ rotation_pitch(5 * math.sin(7 * s)),
                                  torch.tensor(p)) for a, s, p in zip(yaw, t, pos)]).numpy()


def _similarity(c2w, s, rot, t):
    out = c2w.copy()
    out[:, :3, :3] = rot @ c2w[:, :3, :3]
    out[:, :3, 3] = s * c2w[:, :3, 3] @ rot.T + t
    return out


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 3))
    rot = (rotation_yaw(40.0) @ rotation_pitch(-25.0)).numpy()
    s, r, t = umeyama(src, 2.5 * src @ rot.T + [1.0, -2.0, 3.0])
    assert s == pytest.approx(2.5) and np.allclose(r, rot) and np.allclose(t, [1.0, -2.0, 3.0])


@pytest.mark.parametrize("straight", [False, True])
def test_pose_error_is_zero_after_aligning_a_similarity(straight):
    gt = _curved_path()
    if straight:  # collinear centres: orientations must pin the rotation down
        gt[:, :3, 3] = np.stack([np.zeros(30), np.full(30, -1.6), np.linspace(0, 10, 30)], 1)
    rot = (rotation_yaw(-70.0) @ rotation_pitch(20.0)).numpy()
    pred = _similarity(gt, 0.37, rot, np.array([5.0, 1.0, -2.0]))
    for method in ("umeyama", "first"):
        err = pose_error(pred, gt, align=method)
        assert err["R_err"] < 1e-9 and err["T_err"] < 1e-9
    assert pose_error(pred, gt, align="none")["T_err"] > 1.0


def test_pose_error_of_known_perturbations():
    gt = _curved_path()
    theta = 2.0
    pred = gt.copy()
    pred[:, :3, :3] = gt[:, :3, :3] @ rotation_yaw(theta).numpy()  # every camera turned by 2 degrees
    err = pose_error(pred, gt, align="none")
    assert err["R_err_deg"] == pytest.approx(theta, abs=1e-9) and err["T_err"] == pytest.approx(0.0, abs=1e-12)
    # alignment may not create error: with it, the error can only shrink
    assert pose_error(pred, gt, align="umeyama")["R_err_deg"] <= theta + 1e-6
    shifted = gt.copy()
    shifted[:, 0, 3] += np.where(np.arange(30) % 2 == 0, 0.1, -0.1)  # +-10 cm sideways, zero mean
    err = pose_error(shifted, gt, align="none")
    assert err["T_err"] == pytest.approx(0.1, abs=1e-12) and err["R_err"] == pytest.approx(0.0, abs=1e-7)
    aligned = pose_error(shifted, gt, align="umeyama")
    assert 0.05 < aligned["T_err"] <= 0.1 + 1e-9


def test_align_poses_rejects_mismatched_shapes_and_methods():
    gt = _curved_path()
    with pytest.raises(ValueError, match="both be"):
        align_poses(gt[:5], gt)
    with pytest.raises(ValueError, match="unknown alignment"):
        align_poses(gt, gt, method="icp")
