"""The ViewPoint map (matrix_world/viewpoint.py): exact coordinate round trips, the fusion weights, the
ERP round trip error, the area-scale distortion against the equirect, and the representation option
of the video stage (fill and the tiny random Wan) and of the trainer."""

import math

import numpy as np
import pytest
import torch

from matrix_world import viewpoint as vp
from matrix_world.cameras import rotation_yaw
from matrix_world.equirect import equirect_directions, pixel_grid


def _smooth(d: torch.Tensor) -> torch.Tensor:  # a smooth colour function of the direction: [..., 3] -> [3, ...]
    return torch.stack([0.5 + 0.5 * d[..., 0], 0.5 + 0.5 * d[..., 1], 0.5 + 0.5 * d[..., 2] * d[..., 0]]).float()


def test_map_pixels_round_trip_exactly_and_cover_the_sphere():
    size = 48
    half = size // 2
    d = vp.viewpoint_directions(size, dtype=torch.float64)
    px, py = pixel_grid(size, size, dtype=torch.float64)
    for k, (col, row) in enumerate(vp.QUADRANT_CELLS):
        ys, xs = slice(row * half, (row + 1) * half), slice(col * half, (col + 1) * half)
        p, q, covered, _ = vp.camera_to_net(d[ys, xs] @ rotation_yaw(vp.QUADRANT_YAWS[k]))
        assert covered.all()
        a, b = vp.net_to_square(p, q, k)
        assert torch.allclose((a + 1) / 2 * half + col * half, px[ys, xs], atol=1e-9)
        assert torch.allclose((b + 1) / 2 * half + row * half, py[ys, xs], atol=1e-9)
    # the centre of the map is straight up (U assembled there), the outer corners straight down
    centre = vp.viewpoint_directions(2, dtype=torch.float64)  # 2 x 2: one pixel per quadrant, at its square's centre
    assert torch.allclose(centre[0, 0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-12)  # F centre
    _, _, weight = vp.viewpoint_lookup(64, size)
    assert torch.allclose(weight.sum(0), torch.ones(64, 128, dtype=torch.float64))  # every direction, weights sum to 1


def test_lateral_overlap_weights_are_complementary_linear_ramps():
    # a direction in the rhombus across the F|L edge (yaw -40 degrees, on the horizon) is in F and L only
    d = torch.tensor([[-math.sin(math.radians(40)), 0.0, math.cos(math.radians(40))]], dtype=torch.float64)
    got = {}
    for k, yaw in enumerate(vp.QUADRANT_YAWS):
        p, q, covered, w = vp.camera_to_net(d @ rotation_yaw(yaw))
        if covered.any():
            got[vp.QUADRANT_NAMES[k]] = (float(p), float(w))
    assert set(got) == {"F", "L"}
    assert math.isclose(got["F"][1] + got["L"][1], 1.0, abs_tol=1e-12)
    assert math.isclose(got["F"][1], 1.0 - abs(got["F"][0]) / 2.0)  # falls from 1 at F's centre


def test_erp_round_trip_error_and_distortion_against_the_equirect():
    h = 128
    pano = _smooth(equirect_directions(h, dtype=torch.float64))[None]  # [1, 3, H, 2H]
    back = vp.viewpoint_to_erp(vp.erp_to_viewpoint(pano, 192), h)
    assert float((back - pano).abs().mean()) < 2e-4 and float((back - pano).abs().max()) < 0.02  # resampling only
    exact = _smooth(vp.viewpoint_directions(192, dtype=torch.float64))[None]
    assert float((vp.erp_to_viewpoint(pano, 192) - exact).abs().max()) < 5e-3  # the map samples its own directions
    erp, view = vp.distortion_summary("erp", 128), vp.distortion_summary("viewpoint", 192)
    assert math.isclose(erp["coverage"], 1.0, rel_tol=1e-6)  # solid angles add up to the sphere
    assert erp["max_over_min"] > 50 and view["max_over_min"] < 10  # measured: 81.5 vs 7.1 (no pole rows)
    assert 1.4 < view["coverage"] < 1.7  # the overlaps: measured 1.54 (54 % of the sphere twice or more)


def test_real_panorama_round_trip_psnr():
    from pathlib import Path

    from matrix_world.io import read_image
    from matrix_world.metrics import psnr

    path = Path("/work/shared/data/panoramas/city.png")
    if not path.is_file():
        pytest.skip("the shared CC0 panoramas are not on this machine")
    pano = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None]  # [1, 3, 512, 1024]
    back = vp.viewpoint_to_erp(vp.erp_to_viewpoint(pano, 1024), 512)
    value = float(psnr(back[0].permute(1, 2, 0), pano[0].permute(1, 2, 0)))
    assert value > 38.0, value  # measured 40.6 dB: two bilinear resamplings at about the same pixel density


def _scaffold(f=5, h=32):
    d = equirect_directions(h, dtype=torch.float64)
    rgb = _smooth(d).permute(1, 2, 0).numpy()[None].repeat(f, 0)
    mask = np.zeros((f, h, 2 * h), bool)
    mask[:, h // 4: 3 * h // 4, h // 2: 3 * h // 2] = True
    return rgb * mask[..., None], mask, np.tile(np.eye(4), (f, 1, 1))


def test_video_stage_runs_on_viewpoint_maps_and_returns_equirect_frames():
    from matrix_world.generation.video import VideoConfig, generate_video

    rgb, mask, c2w = _scaffold()
    out = generate_video(VideoConfig(backend="fill", height=32, representation="viewpoint"), scaffold_rgb=rgb,
                         scaffold_mask=mask, prompt="", c2w=c2w)
    assert out.frames.shape == rgb.shape and out.info["viewpoint_size"] == 48
    inner = mask.copy()
    inner[:, :, : 32 // 2 + 2] = inner[:, :, 3 * 32 // 2 - 2:] = False
    inner[:, : 32 // 4 + 2] = inner[:, 3 * 32 // 4 - 2:] = False
    err = np.abs(out.frames - rgb)[inner].mean()
    assert err < 0.02  # known pixels survive ERP -> map -> fill -> ERP (resampled twice)


def test_tiny_wan_runs_on_viewpoint_maps(monkeypatch):
    from tiny_wan import load_tiny_pipeline

    from matrix_world.generation.video import VideoConfig, generate_video

    rgb, mask, c2w = _scaffold()
    config = VideoConfig(backend="wan", height=32, representation="viewpoint", num_inference_steps=2, lora=None,
                         memory="full", dtype="float32", viewpoint_size=32)
    out = generate_video(config, scaffold_rgb=rgb, scaffold_mask=mask, prompt="a room", c2w=c2w,
                         pipeline=load_tiny_pipeline())
    assert out.frames.shape == rgb.shape and np.isfinite(out.frames).all()
    assert out.latents.shape[-2:] == (4, 4)  # the model saw 32 x 32 maps (latent / 8), not 32 x 64 equirects
    assert out.info["seam"] == "none"


def test_trainer_representation_uses_the_same_conversion():
    from matrix_world.generation.train_video_lora import VideoLoraTrainConfig, to_representation

    rgb, mask, _ = _scaffold()
    item = {"video": torch.from_numpy(rgb).permute(0, 3, 1, 2).float(), "scaffold": torch.from_numpy(rgb).permute(0, 3, 1, 2).float(),
            "mask": torch.from_numpy(mask), "prompt": ""}
    got = to_representation(item, "viewpoint", 32)
    want_rgb, want_mask = vp.scaffold_to_viewpoint(item["scaffold"], item["mask"], 32)
    assert torch.equal(got["scaffold"], want_rgb.float()) and torch.equal(got["mask"], want_mask)
    assert got["video"].shape == (5, 3, 32, 32) and to_representation(item, "erp", 32) is item
    config = VideoLoraTrainConfig(out="x", steps=1, tiny=True, height=32, frames=5, representation="viewpoint")
    config.check()
    assert config.video_config().representation == "viewpoint"
    from matrix_world.errors import InputError

    with pytest.raises(InputError, match="representation"):
        VideoLoraTrainConfig(out="x", steps=1, tiny=True, height=32, frames=5, representation="cube").check()
