"""The ViewPoint map (ViewPoint, §3.2 and §3.4): a square panorama layout of four pseudo-perspective
subregions, and its exact conversion to and from the equirect.

Layout (our reading of the paper, written out so it can be checked):

* A subregion is built around one horizontal cube face X in {F, R, B, L} (yaw 0, 90, 180, 270; DESIGN
  §3 yaw turns right). In X's unfolded cube net with coordinates (p, q) in half-face units (p right,
  q down, X = the square |p|, |q| <= 1, its camera ray (p, q, 1)), the subregion is the diamond
  |p| + |q| <= 2: X plus, from each of its four neighbours, the quarter triangle whose base is the
  shared edge (the neighbour cut along both diagonals). The lateral quarters (R, L of X) are unfolded
  exactly. For U and D the paper projects a semicircle of the face into that triangle: the half-disc
  of radius one half-face centred at the middle of the shared edge, scaled radially about that
  centre by d'/a = 1 / (sin t + |cos t|) (t: the angle from the edge), which maps the half-disc onto
  the triangle. Four such half-discs cover the whole U (D) face with overlaps.
* The diamond is turned by 45 degrees into an S x S square, so U's triangle sits in one corner. The
  map is 2S x 2S: F top-left, L top-right, B bottom-right, R bottom-left, each turned so its U
  corner is the map's centre (the four U triangles assemble the U face there, continuous) and its D
  corner is an outer corner of the map. Next to each quadrant boundary the two subregions hold the
  same rhombus of the sphere (X's quarter next to its neighbour and the neighbour's quarter next to
  X): the overlaps of §3.4.
* Fusion (§3.4): in a lateral overlap a subregion's weight falls linearly along the line from its
  face centre (1) to the neighbour's centre (0), w = 1 - |p| / 2, so the two weights sum to 1
  everywhere in the rhombus; X's own pixels next to U and D have weight 1; on a U/D half-disc the
  weight falls from 1 at the shared edge to 0 at the face centre (1 - r, floored at 1e-3) and the
  overlapping half-discs are normalised by their sum.

Map pixels follow the pixel-centre convention of the rest of the project: pixel (i, j) of the map
has its centre at (j + 0.5, i + 0.5). Directions are in the panorama (world) frame, OpenCV axes.
All functions are pure PyTorch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from matrix_world.cameras import rotation_yaw
from matrix_world.equirect import equirect_directions, pixel_grid, sample_equirect_directions

# quadrant k of the map: its face's yaw (degrees) and its (column, row) in the 2 x 2 layout
QUADRANT_YAWS = (0.0, 270.0, 180.0, 90.0)  # F, L, B, R
QUADRANT_NAMES = ("F", "L", "B", "R")
QUADRANT_CELLS = ((0, 0), (1, 0), (1, 1), (0, 1))  # TL, TR, BR, BL: k-th turn by 90 degrees clockwise
MIN_WEIGHT = 1e-3  # floor of the U/D half-disc weight (its centre is covered by four half-discs at 0)


# --------------------------------------------------------------------------- net <-> subregion square


def _turn(a: Tensor, b: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Turn (a, b) (x right, y down) by k quarter turns clockwise on screen: (a, b) -> (-b, a)."""
    for _ in range(k % 4):
        a, b = -b, a
    return a, b


def net_to_square(p: Tensor, q: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Net coordinates of quadrant k's face -> its square's local coordinates (a, b) in [-1, 1]^2."""
    return _turn((-p - q) / 2.0, (p - q) / 2.0, k)


def square_to_net(a: Tensor, b: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`net_to_square`."""
    a, b = _turn(a, b, -k)
    return b - a, -(a + b)


# --------------------------------------------------------------------------- net <-> directions


def net_to_camera(p: Tensor, q: Tensor) -> Tensor:
    """Net coordinates [...] inside the diamond |p| + |q| <= 2 -> unnormalised rays [..., 3] in the
    face's camera frame (its forward axis +z, x right, y down)."""
    one = torch.ones_like(p)
    ray = torch.stack((p, q, one), dim=-1)
    side = (p.abs() > 1) & (q.abs() <= p.abs())
    lateral = torch.stack((torch.sign(p), q, 2.0 - p.abs()), dim=-1)  # R (p > 1) / L (p < -1), unfolded exactly
    ray = torch.where(side[..., None], lateral, ray)
    pole = (q.abs() > 1) & ~side
    dy = (q.abs() - 1.0).clamp_min(0.0)  # distance from the shared edge, in the triangle
    tri_r = torch.sqrt(p * p + dy * dy)
    semi_r = p.abs() + dy  # the half-disc radius that the triangle radius tri_r came from
    scale = torch.where(tri_r > 0, semi_r / tri_r.clamp_min(1e-12), torch.ones_like(tri_r))
    vertical = torch.stack((scale * p, torch.sign(q), 1.0 - scale * dy), dim=-1)  # U (q < -1) / D (q > 1)
    return torch.where(pole[..., None], vertical, ray)


def camera_to_net(d: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rays [..., 3] in a face's camera frame -> (p, q, covered, weight) of that face's subregion.

    covered: the ray is in the subregion (X, its lateral quarter triangles, its U/D half-discs);
    weight: the fusion weight there (0 where not covered).
    """
    x, y, z = d.unbind(-1)
    ax, ay, az = x.abs(), y.abs(), z.abs()
    tiny = torch.full_like(x, 1e-300)
    # the face X itself
    front = (z > 0) & (ax <= z) & (ay <= z)
    zf = torch.where(front, z, torch.ones_like(z))
    p, q = x / zf, y / zf
    # lateral neighbours: the quarter next to X (|y| <= z on that face)
    side = ~front & (ax >= ay) & (ax >= az) & (ay <= z)
    xs = torch.where(side, ax, torch.ones_like(ax))
    p = torch.where(side, torch.sign(x) * (2.0 - z / xs), p)
    q = torch.where(side, y / xs, q)
    # U / D: the half-disc of radius 1 about the middle of the shared edge, squashed into the triangle
    polar = ~front & ~side & (ay >= ax) & (ay >= az)
    ys = torch.where(polar, ay, torch.ones_like(ay))
    fx, dy = x / ys, 1.0 - z / ys
    semi_r = torch.sqrt(fx * fx + dy * dy)
    in_disc = polar & (semi_r <= 1.0 + 1e-9)
    shrink = torch.where(semi_r > 0, semi_r / torch.maximum(fx.abs() + dy, tiny), torch.ones_like(semi_r))
    p = torch.where(in_disc, shrink * fx, p)
    q = torch.where(in_disc, torch.sign(y) * (1.0 + shrink * dy), q)
    covered = front | side | in_disc
    weight = torch.where(q.abs() <= p.abs(), 1.0 - p.abs() / 2.0, torch.ones_like(p))
    weight = torch.where(in_disc, (1.0 - semi_r).clamp_min(MIN_WEIGHT), weight)
    return p, q, covered, torch.where(covered, weight, torch.zeros_like(weight))


# --------------------------------------------------------------------------- the map


def viewpoint_directions(size: int, *, device=None, dtype=torch.float32) -> Tensor:
    """World direction (unit) of every pixel centre of a size x size ViewPoint map: [size, size, 3]."""
    if size < 2 or size % 2:
        raise ValueError(f"a ViewPoint map has an even size (2 x the subregion side), got {size}")
    half = size // 2
    px, py = pixel_grid(size, size, device=device, dtype=torch.float64)
    out = torch.zeros(size, size, 3, dtype=torch.float64, device=device)
    for k, (col, row) in enumerate(QUADRANT_CELLS):
        ys, xs = slice(row * half, (row + 1) * half), slice(col * half, (col + 1) * half)
        a = (px[ys, xs] - col * half) / half * 2.0 - 1.0
        b = (py[ys, xs] - row * half) / half * 2.0 - 1.0
        ray = net_to_camera(*square_to_net(a, b, k))
        rot = rotation_yaw(QUADRANT_YAWS[k]).to(device)
        out[ys, xs] = ray @ rot.T
    return (out / out.norm(dim=-1, keepdim=True)).to(dtype)


def erp_to_viewpoint(pano: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    """Equirect [B, C, H, 2H] -> ViewPoint map [B, C, size, size] (each map pixel samples its direction)."""
    dirs = viewpoint_directions(size, device=pano.device, dtype=torch.float64)
    return sample_equirect_directions(pano, dirs, mode=mode)


def scaffold_to_viewpoint(rgb: Tensor, mask: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """A scaffold in ViewPoint maps without bleeding unknown pixels: the one conversion of the video stage
    and the trainer.

    rgb: Tensor  # [F, 3, H, 2H] float in [0, 1] (0 where unknown)
    mask: Tensor  # [F, H, 2H] bool
    returns (rgb [F, 3, size, size], mask [F, size, size]): colours premultiplied by the mask, a map
    pixel known only where all it blends is known (>= 0.999), 0 elsewhere.
    """
    known = mask.to(rgb.dtype)[:, None]
    vp_known = erp_to_viewpoint(known, size)
    vp_mask = vp_known >= 0.999
    vp_rgb = erp_to_viewpoint(rgb * known, size)
    vp_rgb = torch.where(vp_mask, vp_rgb / vp_known.clamp_min(1e-6), torch.zeros_like(vp_rgb)).clamp(0.0, 1.0)
    return vp_rgb, vp_mask[:, 0]


def viewpoint_lookup(height: int, size: int, *, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """Where each equirect pixel is in a size x size map: (px [4, H, 2H], py [4, H, 2H], weight [4, H, 2H]).

    One entry per quadrant k: the map coordinates of the pixel's direction in subregion k (clamped to
    the subregion's pixel centres) and its normalised fusion weight (0 where k does not hold it).
    """
    half = size // 2
    dirs = equirect_directions(height, device=device, dtype=torch.float64)  # [H, 2H, 3]
    pxs, pys, ws = [], [], []
    for k, (col, row) in enumerate(QUADRANT_CELLS):
        rot = rotation_yaw(QUADRANT_YAWS[k]).to(device)
        p, q, covered, w = camera_to_net(dirs @ rot)  # R^T d
        a, b = net_to_square(p, q, k)
        lo, hi = 0.5, half - 0.5
        pxs.append(((a + 1.0) / 2.0 * half).clamp(lo, hi) + col * half)
        pys.append(((b + 1.0) / 2.0 * half).clamp(lo, hi) + row * half)
        ws.append(torch.where(covered, w, torch.zeros_like(w)))
    weight = torch.stack(ws)
    total = weight.sum(0)
    if bool((total <= 0).any()):
        raise AssertionError("a direction is in no ViewPoint subregion (the layout must cover the sphere)")
    return torch.stack(pxs), torch.stack(pys), weight / total


def viewpoint_to_erp(vp: Tensor, height: int, mode: str = "bilinear") -> Tensor:
    """ViewPoint map [B, C, S2, S2] -> equirect [B, C, height, 2*height], overlaps fused (§3.4)."""
    from matrix_world.cameras import sample_image

    size = vp.shape[-1]
    if vp.shape[-2] != size:
        raise ValueError(f"a ViewPoint map is square, got {tuple(vp.shape[-2:])}")
    px, py, weight = viewpoint_lookup(height, size, device=vp.device)
    out = torch.zeros(vp.shape[0], vp.shape[1], height, 2 * height, dtype=vp.dtype, device=vp.device)
    for k in range(4):
        used = weight[k] > 0
        if bool(used.any()):
            out = out + sample_image(vp, px[k], py[k], mode=mode) * weight[k].to(vp.dtype)
    return out


# --------------------------------------------------------------------------- distortion


def _triangle_solid_angle(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Solid angle of spherical triangles with unit vertices [..., 3] (Van Oosterom & Strackee)."""
    num = (a * torch.cross(b, c, dim=-1)).sum(-1).abs()
    den = 1.0 + (a * b).sum(-1) + (b * c).sum(-1) + (c * a).sum(-1)
    return 2.0 * torch.atan2(num, den)


def pixel_solid_angles(corners: Tensor) -> Tensor:
    """Solid angle of every pixel of a grid from its corner directions [h+1, w+1, 3] -> [h, w]."""
    c = corners / corners.norm(dim=-1, keepdim=True)
    tl, tr, bl, br = c[:-1, :-1], c[:-1, 1:], c[1:, :-1], c[1:, 1:]
    return _triangle_solid_angle(tl, tr, br) + _triangle_solid_angle(tl, br, bl)


def area_scale(representation: str, size: int) -> Tensor:
    """Solid angle of every pixel of an equirect of height ``size`` ([size, 2 size]) or of a size x size
    ViewPoint map (per quadrant, exact corner directions), float64 steradians."""
    if representation == "erp":
        ys = torch.arange(size + 1, dtype=torch.float64)
        xs = torch.arange(2 * size + 1, dtype=torch.float64)
        py, px = torch.meshgrid(ys, xs, indexing="ij")
        from matrix_world.equirect import pixel_to_direction

        return pixel_solid_angles(pixel_to_direction(px, py, size, 2 * size))
    if representation != "viewpoint":
        raise ValueError(f"representation must be 'erp' or 'viewpoint', got {representation!r}")
    half = size // 2
    t = torch.arange(half + 1, dtype=torch.float64) / half * 2.0 - 1.0
    b, a = torch.meshgrid(t, t, indexing="ij")
    out = torch.zeros(size, size, dtype=torch.float64)
    for k, (col, row) in enumerate(QUADRANT_CELLS):
        ray = net_to_camera(*square_to_net(a, b, k))
        out[row * half:(row + 1) * half, col * half:(col + 1) * half] = pixel_solid_angles(ray)
    return out


def distortion_summary(representation: str, size: int) -> dict[str, float]:
    """How unevenly a representation spends its pixels on the sphere: the pixel solid angle's
    max / min, its coefficient of variation, and the sphere coverage (sum of solid angles / 4 pi; > 1
    where pixels overlap)."""
    omega = area_scale(representation, size)
    return {"pixels": int(omega.numel()), "max_over_min": float(omega.max() / omega.min()),
            "coefficient_of_variation": float(omega.std() / omega.mean()),
            "coverage": float(omega.sum() / (4.0 * math.pi))}
