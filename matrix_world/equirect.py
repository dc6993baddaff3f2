"""Equirectangular panorama geometry: pixel <-> lon/lat <-> direction, wrapped sampling.

The one definition used everywhere (DESIGN.md §3):

* A panorama is H x W with W = 2H. Image coordinates are continuous: pixel (row i,
  column j) covers [j, j+1) x [i, i+1) and its centre is (j + 0.5, i + 0.5). So
  u = px / W and v = py / H, with px = j + 0.5 at pixel centres.
* lon = (u - 0.5) * 2 pi  in [-pi, pi),   lat = (0.5 - v) * pi  in (-pi/2, pi/2).
* direction d = (cos lat sin lon, -sin lat, cos lat cos lon)   (OpenCV: x right, y down,
  z forward). The centre column looks forward (+z), u = 0.75 looks right (+x), the top row
  looks up (-y).

All functions are pure PyTorch and work on any device and float dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def pixel_to_lonlat(px: Tensor, py: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Continuous image coordinates (centre of pixel j is j + 0.5) -> (lon, lat) radians."""
    lon = (px / width - 0.5) * (2.0 * math.pi)
    lat = (0.5 - py / height) * math.pi
    return lon, lat


def lonlat_to_pixel(lon: Tensor, lat: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """(lon, lat) radians -> continuous image coordinates. px is NOT wrapped."""
    px = (lon / (2.0 * math.pi) + 0.5) * width
    py = (0.5 - lat / math.pi) * height
    return px, py


def lonlat_to_direction(lon: Tensor, lat: Tensor) -> Tensor:
    """(lon, lat) [...] -> unit directions [..., 3] in the OpenCV camera frame."""
    cos_lat = torch.cos(lat)
    return torch.stack((cos_lat * torch.sin(lon), -torch.sin(lat), cos_lat * torch.cos(lon)), dim=-1)


def direction_to_lonlat(directions: Tensor) -> tuple[Tensor, Tensor]:
    """Directions [..., 3] (any length > 0) -> (lon in [-pi, pi], lat in [-pi/2, pi/2])."""
    x, y, z = directions.unbind(-1)
    lon = torch.atan2(x, z)
    lat = torch.atan2(-y, torch.sqrt(x * x + z * z))
    return lon, lat


def pixel_to_direction(px: Tensor, py: Tensor, height: int, width: int) -> Tensor:
    """Continuous image coordinates [...] -> unit directions [..., 3]."""
    return lonlat_to_direction(*pixel_to_lonlat(px, py, height, width))


def direction_to_pixel(directions: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Directions [..., 3] -> continuous image coordinates, px wrapped into [0, W)."""
    px, py = lonlat_to_pixel(*direction_to_lonlat(directions), height, width)
    return torch.remainder(px, width), py


def pixel_grid(height: int, width: int, *, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates (px, py), each [H, W]."""
    ys = torch.arange(height, device=device, dtype=dtype) + 0.5
    xs = torch.arange(width, device=device, dtype=dtype) + 0.5
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    return px, py


def equirect_directions(height: int, width: int | None = None, *, device=None, dtype=torch.float32) -> Tensor:
    """Unit viewing direction of every pixel centre: [H, W, 3] (W defaults to 2H)."""
    width = 2 * height if width is None else width
    px, py = pixel_grid(height, width, device=device, dtype=torch.float64)
    return pixel_to_direction(px, py, height, width).to(dtype)


def sample_equirect(pano: Tensor, px: Tensor, py: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample a panorama at continuous image coordinates, wrapping in longitude.

    pano: Tensor  # [B, C, H, W] (or [C, H, W])
    px, py: Tensor  # [...] continuous coordinates (pixel centre j is at j + 0.5), shared by the batch
    returns: Tensor  # [B, C, ...] (or [C, ...])

    Columns wrap around (column -1 is column W-1); rows are clamped at the first and last
    row centres (the poles).
    """
    squeeze = pano.dim() == 3
    if squeeze:
        pano = pano[None]
    b, c, h, w = pano.shape
    shape = px.shape
    fx = px.reshape(-1).to(torch.float64 if pano.dtype == torch.float64 else torch.float32) - 0.5
    fy = (py.reshape(-1).to(fx.dtype) - 0.5).clamp(0.0, h - 1.0)
    flat = pano.reshape(b, c, h * w)
    if mode == "nearest":
        xi = torch.remainder(torch.floor(fx + 0.5).long(), w)
        yi = torch.floor(fy + 0.5).long().clamp(0, h - 1)
        out = flat[:, :, yi * w + xi]
    elif mode == "bilinear":
        x0f = torch.floor(fx)
        y0f = torch.floor(fy)
        ax = (fx - x0f).to(pano.dtype)
        ay = (fy - y0f).to(pano.dtype)
        x0 = torch.remainder(x0f.long(), w)
        x1 = torch.remainder(x0 + 1, w)
        y0 = y0f.long().clamp(0, h - 1)
        y1 = (y0 + 1).clamp(max=h - 1)
        top = flat[:, :, y0 * w + x0] * (1 - ax) + flat[:, :, y0 * w + x1] * ax
        bottom = flat[:, :, y1 * w + x0] * (1 - ax) + flat[:, :, y1 * w + x1] * ax
        out = top * (1 - ay) + bottom * ay
    else:
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    out = out.reshape(b, c, *shape)
    return out[0] if squeeze else out


def sample_equirect_directions(pano: Tensor, directions: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample a panorama [B, C, H, W] along world directions [..., 3] -> [B, C, ...]."""
    h, w = pano.shape[-2:]
    px, py = direction_to_pixel(directions, h, w)
    return sample_equirect(pano, px, py, mode=mode)


def resize_equirect(pano: Tensor, height: int, mode: str = "area") -> Tensor:
    """Resize a panorama [B, C, H, W] to [B, C, height, 2*height].

    ``area`` averages when shrinking (integer or not) and is bilinear with wrap when
    enlarging; ``nearest`` picks the nearest source pixel centre (use it for masks and
    distances that must not blend across edges).
    """
    h, w = pano.shape[-2:]
    if (h, w) == (height, 2 * height):
        return pano
    if mode == "area" and height < h:
        return torch.nn.functional.interpolate(pano, size=(height, 2 * height), mode="area")
    px, py = pixel_grid(height, 2 * height, device=pano.device, dtype=torch.float64)
    px, py = px * (w / (2.0 * height)), py * (h / float(height))
    return sample_equirect(pano, px, py, mode="nearest" if mode == "nearest" else "bilinear")


def spherical_plucker(c2w: Tensor, height: int, width: int | None = None) -> Tensor:
    """Spherical Plücker rays of a panoramic camera.

    c2w: Tensor  # [F, 4, 4] camera-to-world poses (or [4, 4])
    returns: Tensor  # [F, H, W, 6] channels (d_x, d_y, d_z, m_x, m_y, m_z) with d the unit
        world ray direction of each pixel centre and m = o x d its moment (o = camera centre)
    """
    single = c2w.dim() == 2
    if single:
        c2w = c2w[None]
    dirs_cam = equirect_directions(height, width, device=c2w.device, dtype=c2w.dtype)  # [H, W, 3]
    rot, origin = c2w[:, :3, :3], c2w[:, :3, 3]
    dirs = torch.einsum("fij,hwj->fhwi", rot, dirs_cam)
    moment = torch.cross(origin[:, None, None, :].expand_as(dirs), dirs, dim=-1)
    out = torch.cat((dirs, moment), dim=-1)
    return out[0] if single else out
