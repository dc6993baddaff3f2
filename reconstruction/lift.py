"""Backend ``lift``: one Gaussian per panorama pixel of the keyframes, no training.

The offline default (CPU-fast). For every kept pixel of a keyframe:

* mean: on the pixel's ray at its (aligned) distance, in the world frame;
* scale: isotropic, ``scale_factor * distance * pixel_angle`` with ``pixel_angle = pi / H``
  (the angular height of an equirect pixel). The angular width of a pixel shrinks with the
  latitude factor ``cos(lat)``, so near the poles ``m = floor(1 / cos lat)`` neighbouring
  pixels of a row are merged into one Gaussian (their mean colour): every Gaussian then
  covers a near-square footprint and the poles do not get ``1 / cos lat`` times too many;
* opacity: high (``opacity``); rotation: identity; colour: the pixel's (SH DC only).

Skipped: pixels the video does not know (mask), sky (or, with ``sky="shell"``, sky pixels
become Gaussians on a sphere of radius ``sky_radius`` around the world origin), and pixels
whose 3D point is already well covered by an earlier keyframe: the point is projected into
every earlier keyframe's equirect and counts as covered when that keyframe represents a
surface within ``dedupe_tolerance`` (relative) of the point's distance there — unless the
new keyframe sees it ``refine_ratio`` times closer (then it adds finer detail).

Conventions: DESIGN.md §3 (OpenCV c2w, equirect pixel centres, distance along rays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from matrix_world.cameras import invert_pose
from matrix_world.equirect import direction_to_pixel, equirect_directions, resize_equirect
from matrix_world.errors import InputError
from matrix_world.gaussians import Gaussians
from matrix_world.reconstruction.keyframes import Keyframes


@dataclass
class LiftConfig:
    """scale_factor: Gaussian sigma in units of ``distance * pixel_angle``.
    opacity: opacity of every lifted Gaussian.
    downsample: lift a panorama resized to H / downsample (area-averaged colours).
    merge_longitude: merge ``floor(1 / cos lat)`` pixels of a row near the poles.
    sky: "skip" (no Gaussians for sky) or "shell" (a sphere of radius ``sky_radius``).
    sky_radius: None -> ``sky_radius_factor`` x the largest surface distance of keyframe 0.
    dedupe: skip points already covered by earlier keyframes.
    dedupe_tolerance: relative distance agreement that counts as covered.
    refine_ratio: a covered point is still added when the new keyframe is at least this many
        times closer than the earlier one that covers it (None: never).
    budget: keep at most this many Gaussians (the most important ones), None: all.
    """

    scale_factor: float = 0.7
    opacity: float = 0.95
    downsample: int = 1
    merge_longitude: bool = True
    sky: str = "skip"
    sky_radius: float | None = None
    sky_radius_factor: float = 3.0
    dedupe: bool = True
    dedupe_tolerance: float = 0.03
    refine_ratio: float | None = 2.0
    budget: int | None = None

    def __post_init__(self):
        if self.sky not in ("skip", "shell"):
            raise InputError(f"lift sky must be 'skip' or 'shell', got {self.sky!r}")
        if self.downsample < 1:
            raise InputError(f"lift downsample must be >= 1, got {self.downsample}")


def longitude_groups(height: int, width: int, merge: bool = True, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel groups of an equirect: each row's pixels merged ``floor(1 / cos lat)`` at a time.

    returns (group [H, W] long: group id of every pixel, centre_row [G] long,
    centre_col [G] long: the pixel at the middle of each group).
    """
    lat = (0.5 - (torch.arange(height, device=device, dtype=torch.float64) + 0.5) / height) * math.pi
    m = torch.floor(1.0 / torch.cos(lat).clamp_min(1e-6)).long().clamp(1, width) if merge else torch.ones(height, dtype=torch.long, device=device)
    per_row = (width + m - 1) // m  # groups per row
    offset = torch.cumsum(per_row, 0) - per_row
    cols = torch.arange(width, device=device)
    group = offset[:, None] + cols[None, :] // m[:, None]
    g_row = torch.repeat_interleave(torch.arange(height, device=device), per_row)
    g_idx = torch.arange(int(per_row.sum()), device=device) - offset[g_row]
    g_col = (g_idx * m[g_row] + m[g_row] // 2).clamp(max=width - 1)
    return group, g_row, g_col


def shell_distance(origin: Tensor, dirs: Tensor, radius: float) -> Tensor:
    """Distance along unit ``dirs`` [..., 3] from ``origin`` [3] to the sphere |x| = radius."""
    b = (dirs * origin).sum(-1)
    c = (origin * origin).sum() - radius * radius
    return -b + torch.sqrt((b * b - c).clamp_min(0.0))


class _Coverage:
    """What the earlier keyframes represent: per keyframe a distance map (NaN = nothing)."""

    smooth_ratio = 0.15  # neighbours within 15% of each other belong to one surface

    def __init__(self):
        self.maps: list[Tensor] = []  # [H, W] float64
        self.w2c: list[Tensor] = []

    def add(self, distance: Tensor, c2w: Tensor) -> None:
        self.maps.append(distance.to(torch.float64))
        self.w2c.append(invert_pose(c2w.to(torch.float64)))

    def covered(self, points: Tensor, own_distance: Tensor, tol: float, refine_ratio: float | None) -> Tensor:
        """[N] bool: points [N, 3] (seen at ``own_distance`` [N]) already represented."""
        out = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
        for dmap, w2c in zip(self.maps, self.w2c):
            h, w = dmap.shape
            cam = points @ w2c[:3, :3].T + w2c[:3, 3]
            r = cam.norm(dim=-1)
            px, py = direction_to_pixel(cam, h, w)
            x0 = torch.floor(px - 0.5).long()
            y0 = torch.floor(py - 0.5).long()
            # the 4 pixel centres around the point: [N, 4] (NaN where nothing is represented)
            d = torch.stack([dmap[(y0 + dy).clamp(0, h - 1), torch.remainder(x0 + dx, w)] for dy in (0, 1) for dx in (0, 1)], -1)
            hit = ((r[:, None] - d).abs() <= tol * d).any(-1)  # NaN compares False
            # on a smooth (e.g. grazing) surface the point lies between its neighbours' distances
            lo, hi = d.amin(-1), d.amax(-1)
            smooth = hi <= (1.0 + self.smooth_ratio) * lo
            hit |= smooth & (r >= (1.0 - tol) * lo) & (r <= (1.0 + tol) * hi)
            if refine_ratio is not None:
                hit &= r < refine_ratio * own_distance
            out |= hit
        return out


def lift_keyframes(keyframes: Keyframes, config: LiftConfig = LiftConfig()) -> tuple[Gaussians, dict]:
    """Lift the keyframes to Gaussians (see the module docstring).

    returns (Gaussians on the keyframes' device, info: per keyframe Gaussians added and
    pixels skipped as covered, the sky radius used)
    """
    kf = keyframes
    device = kf.rgb.device
    h = kf.height // config.downsample
    w = 2 * h
    if h < 2:
        raise InputError(f"lift downsample {config.downsample} leaves fewer than 2 rows of {kf.height}")
    dirs = equirect_directions(h, w, device=device, dtype=torch.float64)  # [h, w, 3]
    group, g_row, g_col = longitude_groups(h, w, config.merge_longitude, device=device)
    n_groups = g_row.numel()
    g_dirs = dirs[g_row, g_col]
    pixel_angle = math.pi / h

    sky_radius = config.sky_radius
    if config.sky == "shell" and sky_radius is None:
        d0 = kf.distance[0][kf.geometry(0)]
        if d0.numel() == 0:
            raise InputError("keyframe 0 has no surface pixel to size the sky shell; pass sky_radius")
        sky_radius = config.sky_radius_factor * float(d0.max())

    coverage = _Coverage()
    means, sigmas, colours = [], [], []
    info = {"added": [], "covered": [], "sky_radius": sky_radius}
    for k in range(len(kf.indices)):
        rgb = resize_equirect(kf.rgb[k].permute(2, 0, 1)[None], h, mode="area")[0].permute(1, 2, 0)
        dist = resize_equirect(kf.distance[k][None, None].double(), h, mode="nearest")[0, 0]
        known = resize_equirect(kf.known[k][None, None].float(), h, mode="nearest")[0, 0] > 0.5
        sky = resize_equirect(kf.sky[k][None, None].float(), h, mode="nearest")[0, 0] > 0.5
        surface = known & ~sky & torch.isfinite(dist) & (dist > 0)
        c2w = kf.c2w[k]
        origin = c2w[:3, 3]
        if config.sky == "shell":
            shell = shell_distance(origin, dirs @ c2w[:3, :3].T, sky_radius)
            dist = torch.where(known & sky, shell, dist)
            surface = surface | (known & sky)
        dist = torch.where(surface, dist, torch.full_like(dist, float("nan")))

        # merge pixel groups: mean colour of the group's kept pixels, centre pixel's distance
        flat_group = group.reshape(-1)
        keep_px = surface.reshape(-1)
        counts = torch.zeros(n_groups, device=device, dtype=torch.float64).index_add_(0, flat_group[keep_px], torch.ones_like(flat_group[keep_px], dtype=torch.float64))
        col_sum = torch.zeros(n_groups, 3, device=device, dtype=torch.float64).index_add_(0, flat_group[keep_px], rgb.reshape(-1, 3)[keep_px].double())
        g_dist = dist[g_row, g_col]
        g_keep = (counts > 0) & torch.isfinite(g_dist)
        g_rgb = col_sum / counts.clamp_min(1.0)[:, None]

        pts = origin + (g_dirs @ c2w[:3, :3].T) * g_dist[:, None]
        n_covered = 0
        if config.dedupe and k > 0:
            cov = coverage.covered(pts[g_keep], g_dist[g_keep], config.dedupe_tolerance, config.refine_ratio)
            idx = torch.nonzero(g_keep)[:, 0]
            g_keep[idx[cov]] = False
            n_covered = int(cov.sum())
        coverage.add(dist, c2w)
        means.append(pts[g_keep])
        sigmas.append(config.scale_factor * pixel_angle * g_dist[g_keep])
        colours.append(g_rgb[g_keep])
        info["added"].append(int(g_keep.sum()))
        info["covered"].append(n_covered)

    means_t = torch.cat(means).float()
    sigma = torch.cat(sigmas).float()
    rgb_t = torch.cat(colours).float().clamp(0.0, 1.0)
    gaussians = make_gaussians(means_t, sigma, rgb_t, config.opacity)
    if config.budget is not None and len(gaussians) > config.budget:
        gaussians = gaussians.prune(config.budget)
    info["num_gaussians"] = len(gaussians)
    return gaussians, info


def make_gaussians(
    means: Tensor,  # [N, 3]
    sigma: Tensor,  # [N] isotropic standard deviation
    rgb: Tensor,  # [N, 3] in [0, 1]
    opacity: float,
) -> Gaussians:
    """Isotropic Gaussians with identity rotation and one opacity; colour as SH DC."""
    return Gaussians.from_values(means, rgb, sigma.clamp_min(1e-8), torch.full_like(sigma, opacity))
