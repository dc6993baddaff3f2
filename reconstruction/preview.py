"""Offline preview of reconstructed Gaussians: a fly-through video and a panorama.

* ``preview.mp4``: one perspective frame per trajectory pose, looking along the camera's
  forward axis (+z of its c2w, OpenCV) with a 90 degree horizontal FOV (``yaw``/``pitch``
  turn the view inside each panoramic camera, as for crops: yaw right, pitch up);
* ``preview_panorama.png``: the equirect render (cube faces stitched,
  :func:`render_panorama`) at the first pose.

Rendering goes through :mod:`matrix_world.reconstruction.render` (gsplat on CUDA, the
pure-PyTorch reference on CPU), a few frames at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from matrix_world.cameras import PerspectiveView
from matrix_world.errors import InputError
from matrix_world.gaussians import Gaussians
from matrix_world.io import write_image, write_video
from matrix_world.reconstruction.render import Cameras, render, render_panorama


@dataclass
class PreviewConfig:
    """width/height: video frame size; fov: horizontal FOV in degrees; yaw/pitch: view
    direction inside each camera; panorama_height: equirect height (width 2x); fps;
    background: RGB in [0, 1] where no Gaussian is; batch: frames rendered per call."""

    width: int = 512
    height: int = 512
    fov: float = 90.0
    yaw: float = 0.0
    pitch: float = 0.0
    panorama_height: int = 512
    fps: float = 16.0
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    batch: int = 8


@torch.no_grad()
def render_flythrough(
    gaussians: Gaussians,
    c2w: Tensor,  # [F, 4, 4] camera-to-world of the trajectory (panoramic cameras)
    config: PreviewConfig | None = None,
    *,
    backend: str = "auto",
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Perspective frames along the trajectory: uint8 [F, h, w, 3].

    progress: called with the number of frames after each rendered batch (e.g. ``tqdm.update``).
    """
    config = config or PreviewConfig()
    c2w = torch.as_tensor(c2w, dtype=torch.float64)
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4) or len(c2w) == 0:
        raise InputError(f"c2w must be [F, 4, 4] with F >= 1, got {tuple(c2w.shape)}")
    view = PerspectiveView(config.yaw, config.pitch, config.fov, config.width, config.height)
    local = view.c2w()  # crop camera -> panoramic camera
    K = view.intrinsics()
    frames = []
    for start in range(0, len(c2w), config.batch):
        poses = c2w[start : start + config.batch] @ local
        cams = Cameras.from_c2w(poses, K.expand(len(poses), 3, 3), config.width, config.height)
        out = render(gaussians, cams, backend=backend, background=torch.tensor(config.background))
        rgb = out.rgb.clamp(0, 1).permute(0, 2, 3, 1)
        frames.append((rgb * 255.0 + 0.5).to(torch.uint8).cpu().numpy())
        if progress is not None:
            progress(len(poses))
    return np.concatenate(frames)


def write_preview(
    out_dir: str | os.PathLike,
    gaussians: Gaussians,
    c2w: Tensor,  # [F, 4, 4]
    config: PreviewConfig | None = None,
    *,
    backend: str = "auto",
    progress: Callable[[int], object] | None = None,
) -> dict[str, Path]:
    """Write ``preview.mp4`` and ``preview_panorama.png`` into ``out_dir`` (atomically).

    returns {"video": path, "panorama": path}
    """
    config = config or PreviewConfig()
    out_dir = Path(out_dir)
    frames = render_flythrough(gaussians, c2w, config, backend=backend, progress=progress)
    video = out_dir / "preview.mp4"
    write_video(video, frames, fps=config.fps)
    pose0 = torch.as_tensor(c2w, dtype=torch.float64)[0]
    with torch.no_grad():
        pano = render_panorama(gaussians, pose0, config.panorama_height, backend=backend,
                               background=torch.tensor(config.background, dtype=gaussians.dtype, device=gaussians.device))
    panorama = out_dir / "preview_panorama.png"
    write_image(panorama, pano.rgb.clamp(0, 1).permute(1, 2, 0).cpu().numpy())
    return {"video": video, "panorama": panorama}
