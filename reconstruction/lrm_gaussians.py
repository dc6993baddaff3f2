"""The panoramic LRM's raw outputs -> our Gaussians (world frame, DESIGN.md §3 conventions).

What the official inference (``pano_infer.py`` with ``GaussianAdapter_pano(0.5, 25.0, sh_degree=0)``)
makes of each pixel (row i, column j) of the (H/2, W/2) output grid of frame f, written once
here in our conventions:

* distance d = 30 * sigmoid(mean(depth_raw[..., 0:3])) along the pixel's ray;
* position = o + d * R u: u our equirect direction of the pixel centre
  (:func:`matrix_world.equirect.equirect_directions`), (R, o) the frame's c2w (OUR pose). The
  official code unprojects with its own spherical convention and its axis rotation
  ``[[0, 1, 0], [0, 0, -1], [-1, 0, 0]]``, which gives exactly u (OpenCV camera frame);
* ``gaussians_raw`` channels (their adapter reads ``raw[..., 3:13]`` and ``raw[..., 13]``)::

      0:3    read by nothing in the official code (ignored)
      3:6    scale s = 0.5 + 24.5 * sigmoid(raw), then sigma = s * d * 0.04 * (1/w + 1/h)
             (h, w the output grid; the official normalised intrinsics fx = fy = 0.5, its
             0.1 multiplier and its /5 for panoramas), stored as log(sigma)
      6:10   rotation quaternion in (x, y, z, w) order (scipy's), normalised, in the camera
             frame; the world rotation is R @ rot(q), stored as (w, x, y, z)
      10:13  SH DC coefficients (r, g, b) (degree 0, mask 1): stored unchanged
      13     opacity = sigmoid(raw): the raw value IS our opacity logit (their .ply writes
             sigmoid(raw) into the opacity field; we never do)

* every ``frame_stride``-th frame is kept (the official export: every 2nd, 41 of 81).

Not carried over: the official .ply export also moves the scene so that its median Gaussian
is at the origin; our Gaussians stay in the world frame of the poses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from matrix_world.cameras import rigidity_error
from matrix_world.equirect import equirect_directions
from matrix_world.errors import InputError
from matrix_world.gaussians import MIN_LOG_SCALE, Gaussians, quat_multiply, rotmat_to_quat
from matrix_world.reconstruction.lrm import LRMOutput

RAW_SCALE = slice(3, 6)
RAW_QUAT_XYZW = slice(6, 10)
RAW_SH_DC = slice(10, 13)
RAW_OPACITY = 13
RAW_CHANNELS = 14
SCALE_MIN, SCALE_MAX = 0.5, 25.0  # GaussianAdapter_pano(gaussian_scale_min, gaussian_scale_max)


def raw_to_camera_fields(
    raw: Tensor,  # [..., 14] gaussians_raw
    distance: Tensor,  # [...] distance along each pixel's ray
    grid: tuple[int, int],  # (h, w) of the output grid
    *,
    scale_min: float = SCALE_MIN,
    scale_max: float = SCALE_MAX,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The official adapter in our conventions, in the camera frame (see the module docstring).

    returns (log_scales [..., 3], quats [..., 4] (w, x, y, z) camera -> Gaussian frame,
    opacity_logits [...], sh_dc [..., 3])
    """
    h, w = grid
    s = scale_min + (scale_max - scale_min) * torch.sigmoid(raw[..., RAW_SCALE])
    log_pixel = math.log(0.1 * (2.0 / w + 2.0 / h) / 5.0)  # 0.1 * K^-1 (1/w, 1/h) summed, / 5 (panorama)
    log_scales = (torch.log(s) + torch.log(distance)[..., None] + log_pixel).clamp_min(MIN_LOG_SCALE)
    xyzw = raw[..., RAW_QUAT_XYZW]
    norm = xyzw.norm(dim=-1, keepdim=True)
    identity = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=raw.dtype, device=raw.device)
    xyzw = torch.where(norm > 1e-12, xyzw / norm.clamp_min(1e-12), identity)  # a zero quaternion: identity, as theirs
    quats = torch.cat((xyzw[..., 3:], xyzw[..., :3]), dim=-1)
    return log_scales, quats, raw[..., RAW_OPACITY], raw[..., RAW_SH_DC]


def lrm_to_gaussians(
    output: LRMOutput,
    c2w: Tensor,  # [F, 4, 4] or [B, F, 4, 4], OUR camera-to-world poses of the frames
    *,
    frame_stride: int = 2,
    min_opacity: float = 0.0,
    batch_index: int = 0,
    scale_min: float = SCALE_MIN,
    scale_max: float = SCALE_MAX,
) -> Gaussians:
    """One batch item of the LRM's raw outputs -> Gaussians in the world frame of ``c2w``.

    frame_stride: keep frames 0, k, 2k, ... (2: the official export).
    min_opacity: drop Gaussians below this opacity (0: keep all, as the official export).
    returns: Gaussians (float32, on the outputs' device), N = kept frames x H/2 x W/2 before
        pruning, ordered (frame, row, column); SH degree 0.
    """
    raw, depth = output.gaussians_raw, output.depth_raw
    b, f, h, w, ch = raw.shape
    if ch != RAW_CHANNELS or tuple(depth.shape[:4]) != (b, f, h, w):
        raise InputError(f"LRM outputs must be gaussians_raw [B, F, h, w, {RAW_CHANNELS}] and depth_raw [B, F, h, w, C], "
                         f"got {tuple(raw.shape)} and {tuple(depth.shape)}")
    if not 0 <= batch_index < b or frame_stride < 1 or not 0.0 <= min_opacity < 1.0:
        raise InputError(f"batch_index must be in [0, {b}), frame_stride >= 1 and min_opacity in [0, 1); got "
                         f"{batch_index}, {frame_stride}, {min_opacity}")
    if c2w.dim() == 3:
        c2w = c2w[None].expand(b, -1, -1, -1)
    if c2w.dim() != 4 or tuple(c2w.shape) != (b, f, 4, 4):
        raise InputError(f"c2w must be [{f}, 4, 4] or [{b}, {f}, 4, 4] for outputs of {f} frames, got {tuple(c2w.shape)}")
    c2w = c2w[batch_index, ::frame_stride].to(device=raw.device, dtype=torch.float32)  # [F', 4, 4]
    if not bool(torch.isfinite(c2w).all()) or float(rigidity_error(c2w).max()) > 1e-4:
        raise InputError("c2w must hold finite rigid camera-to-world poses (rotation + translation)")
    raw = raw[batch_index, ::frame_stride].float()  # [F', h, w, 14]
    distance = output.distance()[batch_index, ::frame_stride]  # [F', h, w] float32
    if not bool(torch.isfinite(raw).all()) or not bool(torch.isfinite(distance).all()):
        raise InputError("the LRM outputs hold NaN/Inf values")

    log_scales, quats_cam, logits, sh_dc = raw_to_camera_fields(raw, distance, (h, w), scale_min=scale_min,
                                                                scale_max=scale_max)
    rot, origin = c2w[:, :3, :3], c2w[:, :3, 3]  # [F', 3, 3], [F', 3]
    dirs = equirect_directions(h, w, device=raw.device, dtype=torch.float32)  # [h, w, 3] camera frame
    means = origin[:, None, None] + torch.einsum("fij,hwj->fhwi", rot, dirs) * distance[..., None]  # [F', h, w, 3]
    q_c2w = rotmat_to_quat(rot)[:, None, None].expand_as(quats_cam)  # [F', h, w, 4]
    quats = quat_multiply(q_c2w, quats_cam)  # world rotation R @ rot(q)
    gaussians = Gaussians(
        means=means.reshape(-1, 3),
        quats=torch.nn.functional.normalize(quats.reshape(-1, 4), dim=-1),
        log_scales=log_scales.reshape(-1, 3),
        opacity_logits=logits.reshape(-1),
        sh_dc=sh_dc.reshape(-1, 1, 3),
    )
    return gaussians.filter_opacity(min_opacity) if min_opacity > 0 else gaussians
