"""A tiny analytic scene for the reconstruction tests: a textured box room with a ball.

Rays are intersected exactly, so any panoramic or perspective camera gets exact rgb and
distance. Textures are smooth (a few cycles per wall) so a panorama of 32-64 rows still
resolves them. OpenCV world frame: y points down, the floor is at y = +1.5.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from matrix_world.cameras import camera_rays
from matrix_world.equirect import equirect_directions

ROOM_MIN = torch.tensor([-4.0, -2.0, -5.0], dtype=torch.float64)
ROOM_MAX = torch.tensor([4.0, 1.5, 6.0], dtype=torch.float64)
BALL_CENTRE = torch.tensor([1.2, 0.6, 2.5], dtype=torch.float64)
BALL_RADIUS = 0.8
# one base colour per box face: -x, +x, -y (ceiling), +y (floor), -z, +z
FACE_COLOURS = torch.tensor(
    [[0.8, 0.3, 0.2], [0.2, 0.6, 0.8], [0.9, 0.9, 0.7], [0.4, 0.5, 0.2], [0.6, 0.3, 0.7], [0.3, 0.7, 0.4]],
    dtype=torch.float64,
)


def _texture(p: Tensor, base: Tensor, a: int, b: int) -> Tensor:
    """Smooth pattern on the plane spanned by axes a and b at points p [..., 3]."""
    s = torch.sin(1.3 * p[..., a]) * torch.cos(1.1 * p[..., b]) + 0.5 * torch.sin(0.7 * p[..., a] + 0.9 * p[..., b])
    return (base * (0.75 + 0.2 * s[..., None])).clamp(0.0, 1.0)


def cast(origin: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Intersect rays from ``origin`` [3] along unit ``dirs`` [..., 3] (world).

    returns (rgb [..., 3] float64 in [0, 1], distance [...] float64)
    """
    origin = origin.to(torch.float64)
    dirs = dirs.to(torch.float64)
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t_max = (ROOM_MAX - origin) / safe
    t_min = (ROOM_MIN - origin) / safe
    t_exit = torch.where(safe > 0, t_max, t_min)  # [..., 3] distance to the wall hit along each axis
    t_box, axis = t_exit.min(dim=-1)
    hit = origin + dirs * t_box[..., None]
    positive = torch.gather(safe, -1, axis[..., None])[..., 0] > 0
    face = axis * 2 + positive.long()
    rgb = torch.zeros(*dirs.shape[:-1], 3, dtype=torch.float64)
    planes = {0: (1, 2), 1: (0, 2), 2: (0, 1)}
    for f in range(6):
        sel = face == f
        if bool(sel.any()):
            a, b = planes[f // 2]
            rgb[sel] = _texture(hit[sel], FACE_COLOURS[f], a, b)
    # ball
    oc = origin - BALL_CENTRE
    bq = (dirs * oc).sum(-1)
    c = (oc * oc).sum() - BALL_RADIUS**2
    disc = bq * bq - c
    t_ball = -bq - torch.sqrt(disc.clamp_min(0.0))
    ball = (disc > 0) & (t_ball > 0) & (t_ball < t_box)
    dist = torch.where(ball, t_ball, t_box)
    if bool(ball.any()):
        p = origin + dirs[ball] * t_ball[ball][..., None]
        n = (p - BALL_CENTRE) / BALL_RADIUS
        shade = 0.55 + 0.35 * (-n[..., 1]) + 0.1 * torch.sin(4.0 * math.pi * n[..., 0])
        rgb[ball] = (torch.tensor([0.9, 0.75, 0.3], dtype=torch.float64) * shade[..., None]).clamp(0.0, 1.0)
    return rgb, dist


def render_panorama(c2w: Tensor, height: int) -> tuple[Tensor, Tensor]:
    """Equirect of the room from a panoramic camera: (rgb [H, 2H, 3] float32, distance [H, 2H] float32)."""
    dirs = equirect_directions(height, dtype=torch.float64) @ c2w[:3, :3].to(torch.float64).T
    rgb, dist = cast(c2w[:3, 3], dirs)
    return rgb.float(), dist.float()


def render_view(c2w: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """Perspective image of the room: rgb [h, w, 3] float32 (c2w of the pinhole camera)."""
    rays = camera_rays(K.to(torch.float64), width, height)
    rays = rays / rays.norm(dim=-1, keepdim=True)
    dirs = rays @ c2w[:3, :3].to(torch.float64).T
    return cast(c2w[:3, 3], dirs)[0].float()


def trajectory(frames: int, length: float = 1.0) -> Tensor:
    """A straight walk forward (+z) with a slight sideways drift: c2w [F, 4, 4] float64."""
    out = torch.eye(4, dtype=torch.float64).repeat(frames, 1, 1)
    s = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)
    out[:, 2, 3] = length * s
    out[:, 0, 3] = 0.2 * length * s
    return out


def render_clip(c2w: Tensor, height: int) -> tuple[Tensor, Tensor]:
    """Panoramic frames along ``c2w`` [F, 4, 4]: (rgb [F, H, 2H, 3], distance [F, H, 2H]) float32."""
    pairs = [render_panorama(p, height) for p in c2w]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
