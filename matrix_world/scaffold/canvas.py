"""The panoramic canvas of a perspective video (Argus, ViewPoint): every frame pasted into the equirect
at its camera orientation, with its coverage as the mask — a scaffold video like any other.

World = frame 0's camera (DESIGN §3), so frame 0's centre sits at lon 0, lat 0 and the canvas does
not turn with the camera (Argus' view-based frame alignment: the sky stays at the top, the ground
at the bottom). Frame i of the canvas holds input frame i only: what the camera does not see at
that moment is unknown, for the video model to fill. The canvas is a :class:`Scaffold` in the one
layout (``rgb`` [F, H, 2H, 3] uint8, 0 where unknown; ``mask`` [F, H, 2H] bool; ``distance``
+inf: no geometry is known), written with :func:`~matrix_world.scaffold.build.save_scaffold`.

Frames larger than the canvas needs are shrunk first (area), to about 1.5 canvas pixels per frame
pixel, so the bilinear paste does not alias.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from matrix_world.cameras import intrinsics_from_fov, paste_camera
from matrix_world.errors import InputError
from matrix_world.io import to_uint8
from matrix_world.scaffold.build import Scaffold


def canvas_frame_size(width: int, height: int, fov: float, canvas_height: int) -> tuple[int, int]:
    """(w, h) a frame of ``width`` x ``height`` pixels and horizontal ``fov`` is shrunk to before pasting
    into a canvas ``canvas_height`` high: about 1.5 frame pixels per canvas pixel, never enlarged."""
    needed = 1.5 * math.radians(fov) / (math.pi / canvas_height)
    scale = min(1.0, needed / width)
    return max(2, round(width * scale)), max(2, round(height * scale))


def paste_video(
    frames: np.ndarray,  # [F, h, w, 3] uint8 (or float32 in [0, 1]) perspective frames
    rotations: Tensor,  # [F, 3, 3] camera-to-world rotations, world = frame 0's camera
    fov: float,  # horizontal field of view of the frames, degrees
    height: int,  # canvas height (width 2 x height)
) -> Scaffold:
    """The canvas of a perspective video (see the module docstring) -> Scaffold."""
    import cv2

    frames = np.asarray(frames)
    rotations = torch.as_tensor(rotations, dtype=torch.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames must be [F, h, w, 3], got {frames.shape}")
    if rotations.shape != (len(frames), 3, 3):
        raise InputError(f"{len(frames)} frames but rotations of shape {tuple(rotations.shape)}; expected [F, 3, 3]")
    f, h, w = frames.shape[:3]
    sw, sh = canvas_frame_size(w, h, fov, height)
    K = intrinsics_from_fov(fov, sw, sh)  # square pixels, centred principal point
    rgb = np.zeros((f, height, 2 * height, 3), np.uint8)
    mask = np.zeros((f, height, 2 * height), bool)
    for i in range(f):
        frame = frames[i].astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames[i].astype(np.float32)
        if (sw, sh) != (w, h):
            frame = cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_AREA)
        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)  # [3, sh, sw]
        pano, coverage = paste_camera(image, K, rotations[i], height)
        mask[i] = coverage.numpy()
        rgb[i] = to_uint8(pano.permute(1, 2, 0).clamp(0, 1).numpy()) * mask[i][..., None]
    distance = np.full(mask.shape, np.inf, np.float16)
    return Scaffold(rgb, mask, distance)
