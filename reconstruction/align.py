"""Aligning a keyframe's distance to the geometry already reconstructed.

A monocular depth model (MoGe) or the ``prior`` heuristic gives each keyframe a distance
map whose scale and offset are arbitrary. Matrix-3D fixes them per keyframe by a weighted
least-squares fit of ``scale * distance + shift`` to the previous keyframe's distance
*warped* into the new pose; near pixels weigh more (their depth is better known and
matters more for parallax). This module does both steps:

* warping: the previous keyframe's pixels are lifted to world points and seen from the
  new pose; :func:`warp_distance` z-buffers them (nearest pixel, the smallest distance
  wins) to find which are visible, and each visible point pairs its distance from the new
  camera with the new keyframe's distance sampled at the point's exact projection;
* :func:`fit_scale_shift` solves the weighted least squares, robustly: after each solve,
  residuals above ``outlier_factor`` times their weighted median are dropped (points that
  bleed through gaps between foreground points, disocclusions) and the fit is repeated.

Conventions (DESIGN.md §3): OpenCV frames, ``c2w`` camera-to-world 4x4, equirect H x 2H
with the pixel centres and directions of :mod:`matrix_world.equirect`; ``distance`` is the
length along each pixel's ray (never z-depth).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from matrix_world.cameras import invert_pose
from matrix_world.equirect import direction_to_pixel, equirect_directions, sample_equirect
from matrix_world.errors import InputError


@dataclass
class AlignConfig:
    """Weighted, outlier-trimmed least-squares scale + shift.

    weight_power: weights are ``reference_distance ** -weight_power`` (near pixels weigh more;
        0 gives an unweighted fit).
    iterations: solves; each one after the first drops the outliers of the previous fit.
    outlier_factor: a pixel is an outlier when its |residual| exceeds this many times the
        weighted median |residual| (and more than ``min_residual`` x its reference distance).
    min_residual: relative residual below which a pixel is never an outlier.
    min_pixels: fewer valid pixels than this raises InputError (nothing to fit).
    shift: fit a shift as well as a scale (False: scale only, shift = 0).
    visibility_tolerance: a warped point is visible when its distance is within this
        fraction of the nearest point landing in the same pixel.
    """

    weight_power: float = 1.0
    iterations: int = 3
    outlier_factor: float = 3.0
    min_residual: float = 0.01
    min_pixels: int = 16
    shift: bool = True
    visibility_tolerance: float = 0.05


def weighted_median(values: Tensor, weights: Tensor) -> Tensor:
    """Weighted median of 1-D ``values`` [N] with non-negative ``weights`` [N]."""
    order = torch.argsort(values)
    cum = torch.cumsum(weights[order], 0)
    idx = torch.searchsorted(cum, 0.5 * cum[-1])
    return values[order][idx.clamp(max=values.numel() - 1)]


def fit_scale_shift(
    distance: Tensor,  # [...] distance to align (arbitrary scale and offset); inf/nan = unknown
    reference: Tensor,  # [...] target distance, same shape (e.g. the warped previous keyframe)
    valid: Tensor | None = None,  # [...] bool, extra restriction of the samples used
    config: AlignConfig | None = None,
) -> tuple[float, float]:
    """Scale and shift with ``scale * distance + shift ≈ reference`` (weighted least squares).

    Weights are ``reference ** -weight_power`` so near pixels weigh more. Returns python
    floats (scale, shift). Raises InputError when fewer than ``config.min_pixels`` pixels are
    usable or the fit is degenerate (a non-positive scale).
    """
    config = config or AlignConfig()
    if distance.shape != reference.shape:
        raise InputError(f"distance {tuple(distance.shape)} and reference {tuple(reference.shape)} must have one shape")
    d = distance.reshape(-1).to(torch.float64)
    r = reference.reshape(-1).to(torch.float64)
    use = torch.isfinite(d) & torch.isfinite(r) & (d > 0) & (r > 0)
    if valid is not None:
        use &= valid.reshape(-1).to(torch.bool)
    d, r = d[use], r[use]
    if d.numel() < config.min_pixels:
        raise InputError(f"alignment needs at least {config.min_pixels} pixels seen in both keyframes, got {d.numel()}")
    w = r.pow(-config.weight_power)
    keep = torch.ones_like(d, dtype=torch.bool)
    scale, shift = 1.0, 0.0
    for it in range(max(1, config.iterations)):
        dk, rk, wk = d[keep], r[keep], w[keep]
        if config.shift:
            a = torch.stack((dk, torch.ones_like(dk)), dim=-1) * wk.sqrt()[:, None]
            sol = torch.linalg.lstsq(a, rk * wk.sqrt()).solution
            scale, shift = float(sol[0]), float(sol[1])
        else:
            scale, shift = float((wk * dk * rk).sum() / (wk * dk * dk).sum()), 0.0
        if it + 1 == config.iterations:
            break
        res = (scale * d + shift - r).abs()
        cutoff = config.outlier_factor * weighted_median(res[keep], w[keep])
        new_keep = (res <= cutoff) | (res <= config.min_residual * r)
        if int(new_keep.sum()) < config.min_pixels or bool((new_keep == keep).all()):
            break
        keep = new_keep
    if not scale > 0:
        raise InputError(f"alignment gave a non-positive scale ({scale:.4g}): the two distances do not agree")
    return scale, shift


def lift_equirect(
    distance: Tensor,  # [H, W] distance along each pixel's ray
    c2w: Tensor,  # [4, 4] camera-to-world of the panorama
) -> Tensor:
    """World points of every pixel of a panorama: [H, W, 3] (non-finite where distance is)."""
    h, w = distance.shape
    dirs = equirect_directions(h, w, device=distance.device, dtype=torch.float64)
    c2w = c2w.to(device=distance.device, dtype=torch.float64)
    pts_cam = dirs * distance.to(torch.float64)[..., None]
    return pts_cam @ c2w[:3, :3].T + c2w[:3, 3]


def warp_distance(
    points: Tensor,  # [N, 3] world points
    c2w: Tensor,  # [4, 4] camera-to-world of the target panorama
    height: int,
    width: int | None = None,
) -> Tensor:
    """Z-buffered distance of ``points`` seen from a panoramic camera: [H, W] (inf where empty).

    Each point lands on its nearest pixel; the smallest distance wins. Non-finite points
    are ignored.
    """
    width = 2 * height if width is None else width
    points = points.reshape(-1, 3).to(torch.float64)
    points = points[torch.isfinite(points).all(-1)]
    w2c = invert_pose(c2w.to(device=points.device, dtype=torch.float64))
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    dist = cam.norm(dim=-1)
    ok = dist > 1e-9
    cam, dist = cam[ok], dist[ok]
    px, py = direction_to_pixel(cam, height, width)
    col = torch.floor(px).long().clamp(0, width - 1)
    row = torch.floor(py).long().clamp(0, height - 1)
    out = torch.full((height * width,), float("inf"), dtype=torch.float64, device=points.device)
    out.scatter_reduce_(0, row * width + col, dist, reduce="amin")
    return out.reshape(height, width)


def align_to_previous(
    distance: Tensor,  # [H, W] new keyframe's distance (arbitrary scale/offset)
    c2w: Tensor,  # [4, 4] new keyframe's camera-to-world
    prev_distance: Tensor,  # [H', W'] previous keyframe's (already aligned) distance
    prev_c2w: Tensor,  # [4, 4] previous keyframe's camera-to-world
    *,
    valid: Tensor | None = None,  # [H, W] bool, pixels of the new keyframe that may be used
    prev_valid: Tensor | None = None,  # [H', W'] bool, pixels of the previous keyframe to warp
    config: AlignConfig | None = None,
) -> tuple[Tensor, float, float]:
    """Align a keyframe's distance to the previous keyframe's, warped into the new pose.

    The previous keyframe's pixels are lifted to world points and seen from the new pose:
    each point that survives the z-buffer (:func:`warp_distance`, within
    ``visibility_tolerance``) gives one pair (new distance sampled bilinearly at the point's
    exact projection, the point's distance from the new camera). Comparing at the exact
    projection, not at the pixel the point falls in, avoids a bias where the distance
    changes fast across pixels (the ground at grazing angles).

    Returns (aligned distance [H, W] in the input dtype, scale, shift).
    """
    config = config or AlignConfig()
    h, w = distance.shape
    points = lift_equirect(prev_distance, prev_c2w)
    if prev_valid is not None:
        points = points[prev_valid.to(torch.bool)]
    points = points.reshape(-1, 3)
    points = points[torch.isfinite(points).all(-1)]
    zbuf = warp_distance(points, c2w, h, w)
    w2c = invert_pose(c2w.to(device=points.device, dtype=torch.float64))
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    r = cam.norm(dim=-1)
    px, py = direction_to_pixel(cam, h, w)
    pix = torch.floor(py).long().clamp(0, h - 1) * w + torch.floor(px).long().clamp(0, w - 1)
    visible = r <= zbuf.reshape(-1)[pix] * (1.0 + config.visibility_tolerance)
    source = distance.to(torch.float64)
    if valid is not None:
        source = torch.where(valid.to(torch.bool), source, torch.full_like(source, float("nan")))
    # interpolate inverse distance: it is close to linear across a plane (a ground seen at a
    # grazing angle), where distance itself is strongly convex
    sampled = 1.0 / sample_equirect(1.0 / source[None], px[visible], py[visible])[0]  # NaN where a corner is invalid
    scale, shift = fit_scale_shift(sampled, r[visible], None, config)
    return (distance.to(torch.float64) * scale + shift).to(distance.dtype), scale, shift
