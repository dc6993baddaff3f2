"""Preview: fly-through video along the trajectory and the panorama at frame 0 (CPU)."""

import numpy as np
import pytest
import torch
from _recon_scene import render_clip, render_view, trajectory

from matrix_world.cameras import PerspectiveView
from matrix_world.errors import InputError
from matrix_world.io import read_image, read_video
from matrix_world.metrics import psnr
from matrix_world.reconstruction.keyframes import prepare_keyframes
from matrix_world.reconstruction.lift import lift_keyframes
from matrix_world.reconstruction.preview import PreviewConfig, render_flythrough, write_preview


@pytest.fixture(scope="module")
def scene():
    c2w = trajectory(4, length=0.6)
    rgb, dist = render_clip(c2w, 48)
    gaussians, _ = lift_keyframes(prepare_keyframes(rgb[:1], c2w[:1], dist[0]))
    return c2w, rgb, gaussians


def test_flythrough_follows_the_trajectory(scene):
    c2w, _, gaussians = scene
    cfg = PreviewConfig(width=40, height=32)
    frames = render_flythrough(gaussians, c2w, cfg)
    assert frames.shape == (4, 32, 40, 3) and frames.dtype == np.uint8
    K = PerspectiveView(0.0, 0.0, 90.0, 40, 32).intrinsics()
    for f in (0, 3):
        exact = render_view(c2w[f], K, 40, 32)  # the room seen forward from pose f
        assert float(psnr(torch.from_numpy(frames[f]).float() / 255.0, exact)) > 22.0
    # the camera moves forward: the frames differ
    assert np.abs(frames[0].astype(int) - frames[3].astype(int)).mean() > 2.0
    with pytest.raises(InputError):
        render_flythrough(gaussians, c2w[0], cfg)


def test_write_preview_writes_video_and_panorama(scene, tmp_path):
    c2w, rgb, gaussians = scene
    paths = write_preview(tmp_path, gaussians, c2w, PreviewConfig(width=40, height=32, panorama_height=48))
    video = read_video(paths["video"])
    assert video.shape == (4, 32, 40, 3)
    pano = read_image(paths["panorama"])
    assert pano.shape == (48, 96, 3)
    # the panorama at frame 0 reproduces the input frame 0 (lifted from it)
    assert float(psnr(torch.from_numpy(pano), rgb[0])) > 24.0
