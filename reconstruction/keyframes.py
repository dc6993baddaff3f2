"""Keyframes of a panoramic clip: selection, input checks, per-keyframe aligned distance.

Shared by the ``lift`` and ``optimize`` backends. A clip is

* ``frames``   [F, H, W, 3] float32 in [0, 1], or uint8 in [0, 255] (numpy or torch), equirect,
  W = 2H; only the keyframes are converted (on the device), never the whole clip;
* ``c2w``      [F, 4, 4] camera-to-world poses (OpenCV; world = frame 0's camera);
* ``distance0`` [H, W] distance of frame 0 (from the depth stage);
* ``masks``    [F, H, W] bool, True where a pixel is known (None: all known);
* ``sky0``     [H, W] bool sky mask of frame 0 (None: only non-finite distances are sky).

The other keyframes' distances come from one call ``depth_fn(indices, rgb [K, H, W, 3]) ->
distance [K, H, W]`` (or a pair ``(distance, sky [K, H, W])``) for all of them at once (so a
model can batch them): MoGe, the ``prior`` heuristic, or ground truth. Each is aligned
to the previous keyframe's warped distance by a weighted least-squares scale + shift
(:mod:`reconstruction.align`). Without a ``depth_fn`` only frame 0 carries geometry; the
other keyframes then only supervise the optimisation.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from matrix_world.cameras import rigidity_error
from matrix_world.errors import InputError
from matrix_world.reconstruction.align import AlignConfig, align_to_previous

# (frame indices [K], their rgb [K, H, W, 3]) -> distance [K, H, W] or (distance, sky [K, H, W] bool)
DepthFn = Callable[[list[int], Tensor], "Tensor | tuple[Tensor, Tensor]"]


@dataclass
class KeyframeConfig:
    """stride: every ``stride``-th frame is a keyframe (paper: 5; Matrix-3D's code: 10).
    include_last: also make the last frame a keyframe.
    align: scale+shift alignment of each keyframe's distance to the previous one's
        (set ``align_distances=False`` for distances already in one metric frame).
    """

    stride: int = 5
    include_last: bool = True
    align_distances: bool = True
    align: AlignConfig = field(default_factory=AlignConfig)


@dataclass
class Keyframes:
    """The prepared keyframes (K of them), all on one device.

    indices: frame index of each keyframe in the clip.
    rgb: [K, H, W, 3] float32.  distance: [K, H, W] float32, aligned; NaN where unknown.
    known: [K, H, W] bool (pixel known in the video).  sky: [K, H, W] bool.
    c2w: [K, 4, 4] float64.  alignment: (scale, shift) per keyframe ((1, 0) for frame 0).
    """

    indices: list[int]
    rgb: Tensor
    distance: Tensor
    known: Tensor
    sky: Tensor
    c2w: Tensor
    alignment: list[tuple[float, float]]

    @property
    def height(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[2])

    def geometry(self, k: int) -> Tensor:
        """[H, W] bool: pixels of keyframe k with a usable surface distance (known, not sky)."""
        return self.known[k] & ~self.sky[k] & torch.isfinite(self.distance[k]) & (self.distance[k] > 0)


def select_keyframes(num_frames: int, stride: int, include_last: bool = True) -> list[int]:
    """Indices 0, stride, 2*stride, ... (and the last frame when ``include_last``)."""
    if stride < 1:
        raise InputError(f"keyframe stride must be >= 1, got {stride}")
    out = list(range(0, num_frames, stride))
    if include_last and out[-1] != num_frames - 1:
        out.append(num_frames - 1)
    return out


def as_tensor(x, *, device, dtype) -> Tensor:
    """numpy array or tensor -> tensor on ``device`` with ``dtype``."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.to(device=device, dtype=dtype)


def frame_rgb(frames, index: int, device) -> Tensor:
    """Frame ``index`` of a clip (float [0, 1] or uint8) as float32 [H, W, 3] in [0, 1] on ``device``."""
    frame = frames[index]
    if frame.dtype in (np.uint8, torch.uint8):
        return as_tensor(frame, device=device, dtype=torch.uint8).to(torch.float32) / 255.0
    return as_tensor(frame, device=device, dtype=torch.float32)


def validate_clip(frames, c2w, distance0, masks=None, sky0=None) -> None:
    """Raise InputError when the clip's arrays do not fit together (see module docstring)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames must be [F, H, W, 3], got shape {tuple(frames.shape)}")
    f, h, w = frames.shape[:3]
    if w != 2 * h:
        raise InputError(f"frames must be equirect panoramas with W = 2H, got {h}x{w}")
    if c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4):
        raise InputError(f"c2w must be [F, 4, 4], got shape {tuple(c2w.shape)}")
    if c2w.shape[0] != f:
        raise InputError(f"got {f} frames but {c2w.shape[0]} poses; frames and poses must have the same length")
    c2w_t = torch.as_tensor(np.asarray(c2w) if isinstance(c2w, np.ndarray) else c2w.detach().cpu(), dtype=torch.float64)
    if not bool(torch.isfinite(c2w_t).all()):
        raise InputError("c2w contains NaN or Inf")
    err = float(rigidity_error(c2w_t).max())
    if err > 1e-3:
        raise InputError(f"c2w must be rigid camera-to-world transforms; worst deviation {err:.3g}")
    if tuple(distance0.shape) != (h, w):
        raise InputError(f"distance0 must be [H, W] = {(h, w)} like the frames, got {tuple(distance0.shape)}")
    if masks is not None and tuple(masks.shape) != (f, h, w):
        raise InputError(f"masks must be [F, H, W] = {(f, h, w)}, got {tuple(masks.shape)}")
    if sky0 is not None and tuple(sky0.shape) != (h, w):
        raise InputError(f"sky0 must be [H, W] = {(h, w)}, got {tuple(sky0.shape)}")


def _call_depth_fn(depth_fn: DepthFn, indices: list[int], rgb: Tensor, shape: tuple[int, int], device) -> tuple[Tensor, Tensor]:
    """One call of ``depth_fn`` for the keyframes ``indices`` (rgb [K, H, W, 3]) -> (distance, sky) [K, H, W]."""
    out = depth_fn(indices, rgb)
    sky = None
    if isinstance(out, tuple):
        out, sky = out
    dist = as_tensor(out, device=device, dtype=torch.float32)
    expected = (len(indices), *shape)
    if tuple(dist.shape) != expected:
        raise InputError(f"depth_fn returned a distance of shape {tuple(dist.shape)} for frames {indices}; expected {expected}")
    sky = torch.zeros(expected, dtype=torch.bool, device=device) if sky is None else as_tensor(sky, device=device, dtype=torch.bool)
    if tuple(sky.shape) != expected:
        raise InputError(f"depth_fn returned a sky mask of shape {tuple(sky.shape)} for frames {indices}; expected {expected}")
    return dist, sky | ~torch.isfinite(dist)


def prepare_keyframes(
    frames,  # [F, H, W, 3] float32 in [0, 1] or uint8
    c2w,  # [F, 4, 4]
    distance0,  # [H, W]
    *,
    masks=None,  # [F, H, W] bool or None
    sky0=None,  # [H, W] bool or None
    depth_fn: DepthFn | None = None,
    config: KeyframeConfig | None = None,
    device: torch.device | str = "cpu",
) -> Keyframes:
    """Select keyframes and give each an aligned distance (see the module docstring)."""
    config = config or KeyframeConfig()
    validate_clip(frames, c2w, distance0, masks, sky0)
    f, h, w = frames.shape[:3]
    indices = select_keyframes(f, config.stride, config.include_last)
    rgb = torch.stack([frame_rgb(frames, i, device) for i in indices])
    poses = torch.stack([as_tensor(c2w[i], device=device, dtype=torch.float64) for i in indices])
    if masks is None:
        known = torch.ones(len(indices), h, w, dtype=torch.bool, device=device)
    else:
        known = torch.stack([as_tensor(masks[i], device=device, dtype=torch.bool) for i in indices])
    d0 = as_tensor(distance0, device=device, dtype=torch.float32)
    s0 = ~torch.isfinite(d0) if sky0 is None else as_tensor(sky0, device=device, dtype=torch.bool) | ~torch.isfinite(d0)
    distances, skies, alignment = [d0], [s0], [(1.0, 0.0)]
    if depth_fn is not None and len(indices) > 1:  # all keyframes after frame 0 in one call
        dists, skys = _call_depth_fn(depth_fn, indices[1:], rgb[1:], (h, w), device)
    for k in range(1, len(indices)):
        if depth_fn is None:
            distances.append(torch.full((h, w), float("nan"), device=device))
            skies.append(torch.zeros(h, w, dtype=torch.bool, device=device))
            alignment.append((float("nan"), float("nan")))
            continue
        dist, sky = dists[k - 1], skys[k - 1]
        if config.align_distances:
            prev = k - 1
            while prev > 0 and not bool(torch.isfinite(distances[prev]).any()):
                prev -= 1
            prev_valid = known[prev] & ~skies[prev] & torch.isfinite(distances[prev])
            valid = known[k] & ~sky
            try:
                dist, scale, shift = align_to_previous(
                    torch.where(sky, torch.nan, dist), poses[k], distances[prev], poses[prev],
                    valid=valid, prev_valid=prev_valid, config=config.align,
                )
            except InputError as exc:  # too little overlap, or distances that disagree: keep it unaligned
                warnings.warn(f"keyframe {indices[k]}: alignment skipped ({exc})", stacklevel=2)
                scale, shift = 1.0, 0.0
            alignment.append((scale, shift))
        else:
            alignment.append((1.0, 0.0))
        distances.append(dist)
        skies.append(sky)
    distance = torch.stack(distances).float()
    distance = torch.where(known, distance, torch.full_like(distance, float("nan")))
    return Keyframes(indices, rgb, distance, known, torch.stack(skies), poses, alignment)
