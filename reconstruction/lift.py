"""Backend ``lift``: one Gaussian per panorama pixel of the keyframes, no training.

The offline default (CPU-fast). For every kept pixel of a keyframe:

* mean: on the pixel's ray at its (aligned) distance, in the world frame;
* scale: ``sigma = scale_factor * distance * pixel_angle`` with ``pixel_angle = pi / H``
  (the angular height of an equirect pixel). The angular width of a pixel shrinks with the
  latitude factor ``cos(lat)``, so near the poles ``m = floor(1 / cos lat)`` neighbouring
  pixels of a row are merged into one Gaussian (their mean colour): every Gaussian then
  covers a near-square footprint and the poles do not get ``1 / cos lat`` times too many.
  ``shape="isotropic"`` makes a ball of that sigma. ``shape="surfel"`` (default) keeps the
  same footprint seen from the keyframe but lays it on the surface where the distance map
  is locally planar: flat along the normal, stretched by 1 / cos(incidence) along the
  ray's tilt, so that a surface seen at a grazing angle (the ground) stays closed from
  other poses, where balls leave gaps (measured: see ``benchmarks/recon.py``);
* opacity: high (``opacity``); colour: the pixel's (SH DC only).

Skipped: pixels the video does not know (mask), sky (or, with ``sky="shell"``, sky pixels
become Gaussians on a sphere of radius ``sky_radius`` around the keyframes' mean camera
centre; sky pixels at silhouettes take the colour of nearby pure sky, so that the object's
blended rim does not stay behind on the shell as a ghost outline), and pixels whose 3D
point is already well covered by an earlier keyframe: the point is projected into every
earlier keyframe's equirect and counts as covered when the pixel it falls in holds a
surface within ``dedupe_tolerance`` (relative) of the point's distance, or when it lies
between the distances of its four neighbouring pixel centres on one smooth surface —
unless the new keyframe sees it ``refine_ratio`` times closer (then it adds finer detail).

Conventions: DESIGN.md §3 (OpenCV c2w, equirect pixel centres, distance along rays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from matrix_world.cameras import invert_pose
from matrix_world.equirect import direction_to_pixel, equirect_directions, resize_equirect
from matrix_world.errors import InputError
from matrix_world.gaussians import Gaussians, rotmat_to_quat
from matrix_world.reconstruction.keyframes import Keyframes


@dataclass
class LiftConfig:
    """scale_factor: Gaussian sigma in units of ``distance * pixel_angle``.
    opacity: opacity of every lifted Gaussian.
    shape: "isotropic" (a ball of that sigma) or "surfel": where the distance map is locally
        planar (second differences of 1 / distance below ``planarity`` x 1 / distance), a
        flat Gaussian in the surface's tangent plane, stretched by 1 / cos(incidence) (at
        most ``max_stretch``) along the ray's tilt so that it covers the pixel's footprint ON
        the surface, and ``surfel_thickness`` x sigma thin along the normal. Seen from the
        keyframe both project to the same pixel footprint; from other poses surfels keep a
        grazing surface (the ground) closed where balls leave gaps. Elsewhere (edges, sky)
        Gaussians stay isotropic.
    downsample: lift a panorama resized to H / downsample (area-averaged colours).
    merge_longitude: merge ``floor(1 / cos lat)`` pixels of a row near the poles.
    sky: "skip" (no Gaussians for sky) or "shell" (a sphere of radius ``sky_radius``).
    sky_radius: None -> the median distance keyframe 0 gives its sky pixels, or when they
        have none, ``sky_radius_factor`` x its largest surface distance.
    dedupe: skip points already covered by earlier keyframes.
    dedupe_tolerance: relative distance agreement that counts as covered.
    refine_ratio: a covered point is still added when the new keyframe is at least this many
        times closer than the earlier one that covers it (None: never).
    budget: keep at most this many Gaussians (the most important ones), None: all.
    """

    scale_factor: float = 0.55
    opacity: float = 0.99
    shape: str = "surfel"
    max_stretch: float = 8.0
    surfel_thickness: float = 0.1
    planarity: float = 0.05
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
        if self.shape not in ("isotropic", "surfel"):
            raise InputError(f"lift shape must be 'isotropic' or 'surfel', got {self.shape!r}")
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
    """Distance along unit ``dirs`` [..., 3] from ``origin`` [3] (inside) to the sphere |x| = radius."""
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
            # exact: the pixel the point falls in represents a surface at the point's distance
            near = dmap[torch.floor(py).long().clamp(0, h - 1), torch.floor(px).long().clamp(0, w - 1)]
            hit = (r - near).abs() <= tol * near  # NaN compares False
            # smooth: on one surface (the 4 pixel centres around the point agree within
            # smooth_ratio, e.g. a ground at a grazing angle) the point lies between their distances
            d = torch.stack([dmap[(y0 + dy).clamp(0, h - 1), torch.remainder(x0 + dx, w)] for dy in (0, 1) for dx in (0, 1)], -1)
            lo, hi = d.amin(-1), d.amax(-1)
            smooth = hi <= (1.0 + self.smooth_ratio) * lo
            hit |= smooth & (r >= (1.0 - tol) * lo) & (r <= (1.0 + tol) * hi)
            if refine_ratio is not None:
                hit &= r < refine_ratio * own_distance
            out |= hit
        return out


def lift_keyframes(keyframes: Keyframes, config: LiftConfig | None = None) -> tuple[Gaussians, dict]:
    """Lift the keyframes to Gaussians (see the module docstring).

    returns (Gaussians on the keyframes' device, info: per keyframe Gaussians added and
    pixels skipped as covered, the sky radius used)
    """
    config = config or LiftConfig()
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

    shell_centre = kf.c2w[:, :3, 3].mean(0)  # the sky shell surrounds the keyframes' cameras
    sky_radius = config.sky_radius
    if config.sky == "shell" and sky_radius is None:
        sky_d = kf.distance[0][kf.sky[0] & kf.known[0] & torch.isfinite(kf.distance[0])]
        d0 = kf.distance[0][kf.geometry(0)]
        if sky_d.numel():  # the depth stage / ground truth gave the sky a distance: use it
            sky_radius = float(sky_d.median())
        elif d0.numel():
            sky_radius = config.sky_radius_factor * float(d0.max())
        else:
            raise InputError("keyframe 0 has no pixel with a distance to size the sky shell; pass sky_radius")

    coverage = _Coverage()
    means, scales, rotations, colours = [], [], [], []
    info: dict[str, Any] = {"added": [], "covered": [], "sky_radius": sky_radius}
    for k in range(len(kf.indices)):
        rgb = resize_equirect(kf.rgb[k].permute(2, 0, 1)[None], h, mode="area")[0].permute(1, 2, 0)
        dist = resize_equirect(kf.distance[k][None, None].double(), h, mode="nearest")[0, 0]
        known = resize_equirect(kf.known[k][None, None].float(), h, mode="nearest")[0, 0] > 0.5
        sky = resize_equirect(kf.sky[k][None, None].float(), h, mode="nearest")[0, 0] > 0.5
        surface = known & ~sky & torch.isfinite(dist) & (dist > 0)
        c2w = kf.c2w[k]
        origin = c2w[:3, 3]
        if config.sky == "shell":
            shell = shell_distance(origin - shell_centre, dirs @ c2w[:3, :3].T, sky_radius)
            dist = torch.where(known & sky, shell, dist)
            surface = surface | (known & sky)
            rgb = clean_sky_rim(rgb, known & sky)
        dist = torch.where(surface, dist, torch.full_like(dist, float("nan")))

        # merge pixel groups: mean colour of the group's kept pixels, centre pixel's distance
        flat_group = group.reshape(-1)
        keep_px = surface.reshape(-1)
        counts = torch.zeros(n_groups, device=device, dtype=torch.float64).index_add_(0, flat_group[keep_px], torch.ones_like(flat_group[keep_px], dtype=torch.float64))
        col_sum = torch.zeros(n_groups, 3, device=device, dtype=torch.float64).index_add_(0, flat_group[keep_px], rgb.reshape(-1, 3)[keep_px].double())
        g_dist = dist[g_row, g_col]
        g_keep = (counts > 0) & torch.isfinite(g_dist)
        g_rgb = col_sum / counts.clamp_min(1.0)[:, None]

        world_dirs = g_dirs @ c2w[:3, :3].T
        pts = origin + world_dirs * g_dist[:, None]
        n_covered = 0
        if config.dedupe and k > 0:
            cov = coverage.covered(pts[g_keep], g_dist[g_keep], config.dedupe_tolerance, config.refine_ratio)
            idx = torch.nonzero(g_keep)[:, 0]
            g_keep[idx[cov]] = False
            n_covered = int(cov.sum())
        coverage.add(dist, c2w)
        sigma = config.scale_factor * pixel_angle * g_dist[g_keep]
        scale = sigma[:, None].expand(-1, 3).clone()
        rot = torch.eye(3, device=device, dtype=torch.float64).expand(len(sigma), 3, 3)
        if config.shape == "surfel":
            rot_px, stretch_px = surfel_frames(dist, dirs @ c2w[:3, :3].T,
                                               config.max_stretch, config.planarity)
            rot, stretch = rot_px[g_row, g_col][g_keep], stretch_px[g_row, g_col][g_keep]
            flat = stretch > 0
            scale[flat, 0] *= stretch[flat]
            scale[flat, 2] *= config.surfel_thickness
            rot = torch.where(flat[:, None, None], rot, torch.eye(3, device=device, dtype=torch.float64))
        means.append(pts[g_keep])
        scales.append(scale)
        rotations.append(rot)
        colours.append(g_rgb[g_keep])
        info["added"].append(int(g_keep.sum()))
        info["covered"].append(n_covered)

    quats = rotmat_to_quat(torch.cat(rotations)).float()
    scale_t = torch.cat(scales).float().clamp_min(1e-8)
    gaussians = Gaussians.from_values(torch.cat(means).float(), torch.cat(colours).float().clamp(0.0, 1.0), scale_t,
                                      torch.full((len(quats),), config.opacity, device=device), quats=quats)
    if config.budget is not None and len(gaussians) > config.budget:
        gaussians = gaussians.prune(config.budget)
    info["num_gaussians"] = len(gaussians)
    return gaussians, info


def clean_sky_rim(
    rgb: Tensor,  # [h, w, 3]
    sky: Tensor,  # [h, w] bool
    radius: int = 2,
) -> Tensor:
    """Recolour sky pixels next to non-sky ones with the mean of nearby pure-sky pixels.

    At silhouettes a sky pixel's colour is blended with the object in front; on the far sky
    shell that blend becomes a dark ghost outline once the object moves with parallax.
    """
    k = 2 * radius + 1
    pool = lambda x: torch.nn.functional.avg_pool2d(  # longitude wraps, rows clamp
        torch.nn.functional.pad(torch.nn.functional.pad(x[None], (radius, radius, 0, 0), mode="circular"),
                                (0, 0, radius, radius), mode="replicate"), k, stride=1)[0]
    sky_f = sky.to(rgb.dtype)[None]
    rim = sky & (pool(sky_f)[0] < 1.0 - 1e-6)
    pure = sky & ~rim
    pure_f = pure.to(rgb.dtype)[None]
    total = pool(pure_f)[0]
    mean = pool(rgb.permute(2, 0, 1) * pure_f) / total.clamp_min(1e-12)
    fix = rim & (total > 0)
    return torch.where(fix[..., None], mean.permute(1, 2, 0), rgb)


def surfel_frames(
    distance: Tensor,  # [h, w] distance along each pixel's ray (NaN: no surface)
    dirs: Tensor,  # [h, w, 3] unit world directions of the pixels
    max_stretch: float,
    planarity: float,
) -> tuple[Tensor, Tensor]:
    """Per pixel: rotation [h, w, 3, 3] with columns (tilt axis, side axis, normal) and the
    stretch 1 / cos(incidence) along the tilt axis [h, w], clamped to ``max_stretch``; 0
    where the surface is not locally planar (a Gaussian there stays isotropic).

    Normals come from central differences of the lifted points (longitude wraps); planarity
    is checked on 1 / distance, which is nearly linear across a plane.
    """
    pts = dirs * distance[..., None]
    right, left = torch.roll(pts, -1, dims=1), torch.roll(pts, 1, dims=1)
    down = torch.cat((pts[1:], pts[-1:]))
    up = torch.cat((pts[:1], pts[:-1]))
    normal = torch.nn.functional.normalize(torch.cross(right - left, down - up, dim=-1), dim=-1)
    inv = 1.0 / distance
    d2x = (torch.roll(inv, -1, 1) + torch.roll(inv, 1, 1) - 2.0 * inv).abs()
    d2y = (torch.cat((inv[1:], inv[-1:])) + torch.cat((inv[:1], inv[:-1])) - 2.0 * inv).abs()
    planar = (d2x <= planarity * inv) & (d2y <= planarity * inv) & torch.isfinite(normal).all(-1)
    cos = (normal * dirs).sum(-1)
    tilt = dirs - cos[..., None] * normal
    head_on = tilt.norm(dim=-1) < 1e-6
    helper = torch.tensor([1.0, 0.0, 0.0], device=dirs.device, dtype=dirs.dtype).expand_as(tilt)
    tilt = torch.where(head_on[..., None], torch.cross(normal, helper, dim=-1), tilt)
    tilt = torch.nn.functional.normalize(tilt, dim=-1)
    side = torch.cross(normal, tilt, dim=-1)
    rot = torch.stack((tilt, side, normal), dim=-1)
    stretch = (1.0 / cos.abs().clamp_min(1e-6)).clamp(max=max_stretch)
    return rot, torch.where(planar, stretch, torch.zeros_like(stretch))
