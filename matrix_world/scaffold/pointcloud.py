"""Point-cloud renderer: z-buffered splats straight into equirect panoramas.

The alternative to the scaffold mesh in Matrix-3D's ablation (mesh renders beat point
renders), and the renderer of a multi-panorama "3D cache" (concatenate the points of
several panoramas, each in the world frame).

A point at direction (lon, lat) and distance d from the camera covers the pixels whose
centres lie within ``radius_px`` of it on the sphere, measured in pixels of latitude
(``(dx cos lat)^2 + dy^2 <= r^2`` with dx, dy in pixels; wraps in longitude), plus always
the pixel it falls in. The nearest point wins (z-buffer on distance; ties to the lower
index). Points with ``valid`` False still occlude but render as unknown (mask False, rgb 0),
like the invisible vertices of the scaffold mesh.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from matrix_world.cameras import invert_pose
from matrix_world.equirect import direction_to_pixel
from matrix_world.errors import InputError
from matrix_world.scaffold.render import ScaffoldFrames, _check_poses

_EMPTY = torch.iinfo(torch.int64).max
_MAX_STRETCH = 8  # horizontal footprint is at most this many times the radius (near the poles)


def _splat(keys: Tensor, px: Tensor, py: Tensor, dist: Tensor, pid: Tensor, lat: Tensor, radius: float,
           height: int, width: int, budget: int) -> None:
    """Write (distance bits << 32 | point id) of every footprint pixel into keys [H*W] (amin)."""
    r = max(0, math.ceil(radius))
    cos_lat = lat.cos().clamp(min=1.0 / _MAX_STRETCH)
    rx = torch.ceil(radius / cos_lat).clamp(max=_MAX_STRETCH * max(r, 1)).long()
    bits = dist.to(torch.float32).view(torch.int32).to(torch.int64) << 32
    base_x = torch.floor(px).long()
    base_y = torch.floor(py).long()
    for kx in torch.unique(rx).tolist():
        sel = (rx == kx).nonzero()[:, 0]
        dx = torch.arange(-kx, kx + 1, device=px.device)
        dy = torch.arange(-r, r + 1, device=px.device)
        ox = dx.repeat(len(dy))
        oy = dy.repeat_interleave(len(dx))
        step = max(1, budget // len(ox))
        for s in range(0, len(sel), step):
            part = sel[s : s + step]
            cx = base_x[part, None] + ox[None]  # [n, K]
            cy = base_y[part, None] + oy[None]
            ex = (cx.to(px.dtype) + 0.5 - px[part, None]) * cos_lat[part, None]
            ey = cy.to(py.dtype) + 0.5 - py[part, None]
            inside = (ex * ex + ey * ey <= radius * radius) | ((ox[None] == 0) & (oy[None] == 0))
            inside &= (cy >= 0) & (cy < height)
            m = inside.nonzero(as_tuple=True)
            pix = cy[m] * width + torch.remainder(cx[m], width)
            key = bits[part][m[0]] | pid[part][m[0]]
            keys.scatter_reduce_(0, pix, key, reduce="amin")


def scaffold_points(mesh) -> tuple[Tensor, Tensor, Tensor]:
    """The per-pixel points of a scaffold mesh (poles left out): (points [N, 3], colors [N, 3],
    valid [N] bool = visible). Concatenate several (``mesh.transformed(c2w)`` first) for a
    multi-panorama 3D cache."""
    n = mesh.grid_height * mesh.grid_width
    return mesh.vertices[:n], mesh.colors[:n], mesh.visible[:n]


def render_pointcloud(
    points: Tensor,  # [N, 3] world coordinates
    colors: Tensor,  # [N, 3] float in [0, 1]
    c2w: Tensor,  # [F, 4, 4] panoramic camera -> world
    height: int,
    *,
    radius_px: float = 1.0,
    valid: Tensor | None = None,  # [N] bool; False = occludes but unknown
    chunk: int = 1 << 22,
) -> ScaffoldFrames:
    """Render coloured points as z-buffered splats into equirect panoramas [F, H, 2H]."""
    if points.dim() != 2 or points.shape[-1] != 3 or colors.shape != points.shape:
        raise InputError(f"points and colors must both be [N, 3], got {tuple(points.shape)} and {tuple(colors.shape)}")
    if radius_px < 0:
        raise InputError(f"radius_px must be >= 0, got {radius_px}")
    device = points.device
    c2w = _check_poses(c2w).to(device=device, dtype=torch.float64)
    n = points.shape[0]
    if n >= 1 << 31:
        raise InputError(f"at most 2^31 - 1 points, got {n}")
    valid = torch.ones(n, dtype=torch.bool, device=device) if valid is None else valid.to(device=device, dtype=torch.bool)
    colors = colors.to(device=device, dtype=torch.float32)
    width = 2 * height
    w2c = invert_pose(c2w).to(torch.float32)
    rgb_out, mask_out, dist_out = [], [], []
    pid = torch.arange(n, device=device)
    for f in range(c2w.shape[0]):
        cam = points.to(torch.float32) @ w2c[f, :3, :3].T + w2c[f, :3, 3]
        dist = cam.norm(dim=-1)
        ok = dist > 0
        px, py = direction_to_pixel(cam[ok], height, width)
        lat = (0.5 - py / height) * math.pi
        keys = torch.full((height * width,), _EMPTY, dtype=torch.int64, device=device)
        _splat(keys, px, py, dist[ok], pid[ok], lat, float(radius_px), height, width, chunk)
        hit = keys != _EMPTY
        winner = torch.where(hit, keys & 0xFFFFFFFF, torch.zeros_like(keys))
        known = hit & valid[winner]
        rgb_out.append((colors[winner] * known[:, None]).reshape(height, width, 3))
        mask_out.append(known.reshape(height, width))
        d = torch.where(hit, dist[winner], torch.full_like(dist[winner], float("inf")))
        dist_out.append(d.reshape(height, width))
    return ScaffoldFrames(rgb=torch.stack(rgb_out), mask=torch.stack(mask_out), distance=torch.stack(dist_out))
