"""Argus' camera-motion simulation (§3.2): perspective videos cut from 360° videos along hand-held-like
orientation paths, the training pairs of the perspective-video -> 360° video model.

Per frame k (degrees), with every parameter drawn once per clip from :class:`CameraMotionConfig`:

    roll(k)  = N(0, eta_r) + a_r sin(w k + tau_r)
    pitch(k) = N(0, eta_p) + a_p sin(w k + tau_p) + d_p k
    yaw(k)   = N(0, eta_y) + a_y sin(w k + tau_y) + d_y k + phi_0

(linear drift + oscillation + noise; phi_0 a random offset, which also plays Argus' random circular
shift). Horizontal and vertical fields of view are drawn in [30, 120] degrees (the paper's range).
The camera rotation is ``R_y(yaw) R_x(pitch) R_z(roll)`` in the 360° video's frame (DESIGN §3: yaw
turns right, pitch up).

A pair (:func:`simulated_pair`): the perspective video (the input), its rotations relative to frame 0
and the 360° video turned into frame 0's camera (the target: world = frame 0's camera, as the
video2pano canvas is), and the canvas of the perspective video (the condition), made by the one
canvas builder :func:`matrix_world.scaffold.canvas.paste_video`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from matrix_world.cameras import crop_camera, intrinsics_from_fov, rotation_yaw_pitch_roll
from matrix_world.equirect import equirect_directions, sample_equirect_directions
from matrix_world.errors import InputError


@dataclass
class CameraMotionConfig:
    """Ranges the per-clip parameters are drawn from (uniform), degrees and frames."""

    fov_range: tuple[float, float] = (30.0, 120.0)  # horizontal and vertical FOV, each drawn here
    amplitude: tuple[float, float, float] = (3.0, 8.0, 15.0)  # max oscillation amplitude: roll, pitch, yaw
    frequency: tuple[float, float] = (0.03, 0.25)  # omega, radians per frame
    noise: tuple[float, float, float] = (0.3, 0.5, 0.5)  # max noise std: roll, pitch, yaw
    drift: tuple[float, float] = (0.3, 2.0)  # max |drift| per frame: pitch, yaw
    max_pitch: float = 60.0  # the pitch path is clipped to +-this


@dataclass
class CameraMotion:
    """A simulated path: yaw, pitch, roll [F] degrees; the horizontal and vertical FOV, degrees."""

    yaw: Tensor
    pitch: Tensor
    roll: Tensor
    fov_x: float
    fov_y: float

    def rotations(self) -> Tensor:
        """Camera -> 360° frame rotations [F, 3, 3] float64."""
        return torch.stack([rotation_yaw_pitch_roll(float(y), float(p), float(r))
                            for y, p, r in zip(self.yaw, self.pitch, self.roll)])

    def frame_size(self, width: int) -> tuple[int, int]:
        """(width, height) of frames ``width`` wide with these FOVs (square pixels), height even."""
        h = width * math.tan(math.radians(self.fov_y) / 2.0) / math.tan(math.radians(self.fov_x) / 2.0)
        return width, max(2, 2 * round(h / 2.0))


def simulate_camera_motion(frames: int, generator: torch.Generator, config: CameraMotionConfig | None = None) -> CameraMotion:
    """Draw one clip's path (module docstring, Argus eq. 3) with ``generator`` (CPU)."""
    config = config or CameraMotionConfig()
    if frames < 1:
        raise InputError(f"a camera path needs at least 1 frame, got {frames}")

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))

    k = torch.arange(frames, dtype=torch.float64)
    omega = uniform(*config.frequency)
    angles = []
    for axis in range(3):  # roll, pitch, yaw
        amp = uniform(0.0, config.amplitude[axis])
        tau = uniform(0.0, 2.0 * math.pi)
        eta = uniform(0.0, config.noise[axis])
        path = eta * torch.randn(frames, generator=generator, dtype=torch.float64) + amp * torch.sin(omega * k + tau)
        if axis > 0:
            path = path + uniform(-config.drift[axis - 1], config.drift[axis - 1]) * k
        angles.append(path)
    roll, pitch, yaw = angles
    yaw = yaw + uniform(-180.0, 180.0)
    pitch = pitch.clamp(-config.max_pitch, config.max_pitch)
    fov_x, fov_y = uniform(*config.fov_range), uniform(*config.fov_range)
    # keep the frames' aspect between 1:2 and 2:1
    ratio = math.tan(math.radians(fov_y) / 2.0) / math.tan(math.radians(fov_x) / 2.0)
    if not 0.5 <= ratio <= 2.0:
        fov_y = math.degrees(2.0 * math.atan(min(max(ratio, 0.5), 2.0) * math.tan(math.radians(fov_x) / 2.0)))
    return CameraMotion(yaw, pitch, roll, fov_x, fov_y)


def perspective_video(video: Tensor, rotations: Tensor, fov_x: float, width: int, height: int) -> Tensor:
    """Perspective frames cut from 360° frames.

    video: Tensor  # [F, 3, H, 2H] float in [0, 1] (360° frames, all in one frame of axes)
    rotations: Tensor  # [F, 3, 3] camera -> that frame
    returns: Tensor  # [F, 3, height, width]
    """
    K = intrinsics_from_fov(fov_x, width, height)
    return torch.cat([crop_camera(video[i:i + 1], K, rotations[i], width, height) for i in range(len(video))])


def turn_video(video: Tensor, rotation: Tensor) -> Tensor:
    """360° frames [F, 3, H, 2H] re-expressed in a camera turned by ``rotation`` [3, 3] (camera ->
    the frames' axes): new pixel d shows old direction R d (bilinear resampling)."""
    h = video.shape[-2]
    dirs = equirect_directions(h, device=video.device, dtype=torch.float64) @ rotation.to(torch.float64).T
    return sample_equirect_directions(video, dirs)


def simulated_pair(video: Tensor, generator: torch.Generator, *, width: int, height: int | None = None,
                   canvas_height: int | None = None, config: CameraMotionConfig | None = None) -> dict:
    """A perspective-video / 360°-video training pair from 360° frames [F, 3, H, 2H] in [0, 1].

    width: perspective frame width (its height follows the drawn FOVs); height: the target's and the
    canvas's height (default: the video's). Returns {"perspective" [F, 3, h, w], "rotations" [F, 3, 3]
    relative to frame 0, "fov" (horizontal, degrees), "target" [F, 3, H, 2H] (the 360° video in frame
    0's camera), "scaffold" [F, 3, H, 2H] float (the canvas, 0 where unknown), "mask" [F, H, 2H] bool,
    "motion" (the CameraMotion)}.
    """
    from matrix_world.equirect import resize_equirect
    from matrix_world.scaffold.canvas import paste_video

    frames = len(video)
    motion = simulate_camera_motion(frames, generator, config)
    rot = motion.rotations()
    w, h = motion.frame_size(width)
    persp = perspective_video(video.to(torch.float64), rot, motion.fov_x, w, h).clamp(0, 1).float()
    rel = rot[0].T @ rot  # [F, 3, 3] relative to frame 0
    target = turn_video(video.to(torch.float64), rot[0]).clamp(0, 1).float()
    out_h = canvas_height or height or video.shape[-2]
    target = resize_equirect(target, out_h)
    canvas = paste_video(np.round(persp.permute(0, 2, 3, 1).numpy() * 255.0).astype(np.uint8), rel, motion.fov_x, out_h)
    return {"perspective": persp, "rotations": rel, "fov": motion.fov_x, "target": target,
            "scaffold": torch.from_numpy(canvas.rgb).permute(0, 3, 1, 2).float() / 255.0,
            "mask": torch.from_numpy(canvas.mask), "motion": motion}
