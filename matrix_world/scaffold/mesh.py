"""The occlusion-aware scaffold mesh of a panorama with per-pixel distance (Matrix-3D).

Layout (conventions of :mod:`matrix_world.equirect`, OpenCV frames):

* One vertex per pixel of the (optionally decimated) ``h x w`` grid, at
  ``direction(pixel centre) * distance``, in the panorama camera's frame. Vertex index
  ``i * w + j`` for row ``i``, column ``j``; then one vertex per pole: index ``h * w`` is the
  north pole (straight up, -y), ``h * w + 1`` the south pole.
* Two triangles per pixel quad (rows ``i, i+1``, columns ``j, j+1 mod w``): the mesh wraps in
  longitude (column ``w-1`` joins column 0), so there is no crack at the seam.
* Each pole is closed by a cap of ``w`` triangles joining the edge row to the pole vertex.
  The pole vertex sits straight up (down) at the median distance of the edge row, so no cap
  triangle has zero area; it takes the edge row's mean colour and is visible only if the edge
  row is smooth ((max - min) / min <= threshold).
* Triangles face the panorama camera (counter-clockwise seen from the centre, normals
  pointing inwards), so the mesh is front-facing when opened in Blender from the inside.

Occlusion rule: a vertex is *invisible* where (max - min) / d over its 3x3 neighbourhood
exceeds ``occlusion_threshold`` (neighbourhoods wrap in longitude and are clamped at the
poles). Invisible vertices are black; a rendered pixel is known only where all three
vertices of its triangle are visible.

Sky and invalid distance (sky mask, +inf, NaN, <= 0) become ``sky_factor`` x the largest
valid distance. Small floating components (connected regions of smooth distance, smaller
than ``floater_max_pixels`` and nearer than ``floater_near_ratio`` x the largest valid
distance) are pushed to the same background distance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from matrix_world.equirect import equirect_directions
from matrix_world.errors import InputError

# Matrix-3D's floater size limit is 1600 pixels at 1920 x 960; we scale it with the area.
_FLOATER_REFERENCE_PIXELS = 1600
_FLOATER_REFERENCE_AREA = 1920 * 960


@dataclass
class ScaffoldConfig:
    """How a panorama + distance becomes a scaffold mesh."""

    occlusion_threshold: float = 0.05  # invisible where (max - min) / d over 3x3 exceeds this
    sky_factor: float = 2.0  # sky / invalid distance = sky_factor x max valid distance
    floater_max_pixels: int | None = None  # None -> 1600 x H*W / (1920*960); 0 disables
    floater_near_ratio: float = 0.99  # only components nearer than this x max valid move
    decimate: int = 1  # integer factor: one vertex per decimate x decimate pixel block


@dataclass
class ScaffoldMesh:
    """A scaffold mesh (see the module docstring for the vertex layout)."""

    vertices: Tensor  # [V, 3] float32, panorama camera frame (or world after .transformed)
    faces: Tensor  # [T, 3] int64
    colors: Tensor  # [V, 3] float32 in [0, 1]; invisible vertices are black
    visible: Tensor  # [V] bool
    grid_height: int
    grid_width: int

    def transformed(self, c2w: Tensor) -> ScaffoldMesh:
        """The same mesh with its vertices mapped by ``c2w`` [4, 4] (panorama camera -> world)."""
        c2w = torch.as_tensor(c2w).to(device=self.vertices.device, dtype=torch.float64)
        if c2w.shape != (4, 4):
            raise InputError(f"c2w must be a 4x4 matrix, got shape {tuple(c2w.shape)}")
        verts = self.vertices.to(torch.float64) @ c2w[:3, :3].T + c2w[:3, 3]
        return replace(self, vertices=verts.to(self.vertices.dtype))

    def to(self, device) -> ScaffoldMesh:
        return replace(
            self,
            vertices=self.vertices.to(device),
            faces=self.faces.to(device),
            colors=self.colors.to(device),
            visible=self.visible.to(device),
        )

    @property
    def known_faces(self) -> Tensor:
        """[T] bool: triangles whose three vertices are visible."""
        return self.visible[self.faces].all(dim=1)


# --------------------------------------------------------------------------- inputs


def _as_tensor(x, name: str, device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x if device is None else x.to(device)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)).to(device)
    raise InputError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _check_distance_shape(distance: Tensor) -> None:
    if distance.dim() != 2:
        raise InputError(f"distance must be a 2-D [H, W] array, got shape {tuple(distance.shape)}")
    h, w = distance.shape
    if w != 2 * h or h < 2:
        raise InputError(f"distance must be an equirectangular H x 2H map (H >= 2), got {h} x {w}")


def prepare_distance(distance, sky_mask=None, sky_factor: float = 2.0) -> tuple[Tensor, Tensor]:
    """Replace sky and invalid distances by ``sky_factor`` x the largest valid distance.

    distance: [H, W] float (numpy or torch); invalid where NaN, +-inf or <= 0
    sky_mask: [H, W] bool or None; True marks sky (treated as invalid)
    returns (filled [H, W] float32 torch, valid [H, W] bool: True where the input was used)
    """
    distance = _as_tensor(distance, "distance")
    _check_distance_shape(distance)
    d = distance.to(torch.float32)
    valid = torch.isfinite(d) & (d > 0)
    if sky_mask is not None:
        sky = _as_tensor(sky_mask, "sky_mask", device=d.device)
        if tuple(sky.shape) != tuple(d.shape):
            raise InputError(f"sky_mask has shape {tuple(sky.shape)} but distance has {tuple(d.shape)}; they must match")
        valid = valid & ~sky.to(torch.bool)
    if not bool(valid.any()):
        raise InputError("distance has no valid value (all sky, NaN, inf or <= 0); expected positive finite distances")
    if sky_factor < 1.0:
        raise InputError(f"sky_factor must be >= 1 (sky lies behind everything), got {sky_factor}")
    far = d[valid].max() * sky_factor
    filled = torch.where(valid, d, far)
    return filled, valid


def _neighbourhood_max_min(distance: Tensor) -> tuple[Tensor, Tensor]:
    """3x3 max and min of [H, W], wrapping in longitude and clamped at the poles."""
    x = distance[None, None]
    x = torch.cat((x[..., -1:], x, x[..., :1]), dim=-1)  # wrap columns
    x = torch.cat((x[..., :1, :], x, x[..., -1:, :]), dim=-2)  # clamp rows
    mx = torch.nn.functional.max_pool2d(x, 3, stride=1)[0, 0]
    mn = -torch.nn.functional.max_pool2d(-x, 3, stride=1)[0, 0]
    return mx, mn


def occlusion_mask(distance: Tensor, threshold: float = 0.05) -> Tensor:
    """Visible vertices: (max - min) / d over the 3x3 neighbourhood <= threshold.

    distance: [H, W] positive finite (run :func:`prepare_distance` first)
    returns: [H, W] bool (False = invisible: near a depth discontinuity)
    """
    distance = _as_tensor(distance, "distance").to(torch.float32)
    mx, mn = _neighbourhood_max_min(distance)
    return (mx - mn) <= threshold * distance


# --------------------------------------------------------------------------- floaters


def _smooth_edges(distance: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Smooth 4-neighbour links: ok_h [H, W] (pixel j to j+1 mod W), ok_v [H-1, W] (row i to i+1)."""
    d = distance.to(torch.float32)
    right = torch.roll(d, -1, dims=1)
    ok_h = (d - right).abs() <= threshold * torch.minimum(d, right)
    ok_v = (d[:-1] - d[1:]).abs() <= threshold * torch.minimum(d[:-1], d[1:])
    return ok_h, ok_v


def smooth_components(distance: Tensor, threshold: float) -> tuple[np.ndarray, int]:
    """Connected components of smooth distance, wrapping in longitude (scipy, CPU).

    Two 4-neighbours are connected when |d1 - d2| <= threshold * min(d1, d2). Implemented
    with ``scipy.ndimage.label`` on a doubled grid whose odd cells are the links between
    pixels, then labels touching across the longitude seam are merged.

    distance: [H, W] positive finite
    returns (labels [H, W] int64 numpy in [0, n), n)
    """
    from scipy import ndimage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ok_h, ok_v = (x.cpu().numpy() for x in _smooth_edges(distance, threshold))
    h, w = ok_h.shape
    grid = np.zeros((2 * h - 1, 2 * w), dtype=bool)
    grid[::2, ::2] = True
    grid[::2, 1::2] = ok_h  # the last odd column holds the seam links (W-1 -> 0)
    grid[1::2, ::2] = ok_v
    labels, n = ndimage.label(grid)  # 4-connectivity; pixel cells get labels 1..n
    rows = np.nonzero(ok_h[:, -1])[0] * 2
    a, b = labels[rows, -1], labels[rows, 0]
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n + 1, n + 1))
    _, merged = connected_components(graph, directed=False)
    node = merged[labels[::2, ::2]]
    used = np.zeros(merged.max() + 1, dtype=bool)
    used[node] = True
    remap = np.cumsum(used) - 1
    return remap[node].astype(np.int64), int(used.sum())


def smooth_components_torch(distance: Tensor, threshold: float) -> Tensor:
    """Same partition as :func:`smooth_components`, in PyTorch on any device (GPU friendly).

    Parallel union-find: every round hooks the root of each link's larger label onto the
    smaller one (scatter amin) and compresses paths by pointer jumping, until no link joins
    two labels. Returns labels [H, W] int64: the smallest pixel index of each component.
    """
    ok_h, ok_v = _smooth_edges(distance, threshold)
    h, w = ok_h.shape
    idx = torch.arange(h * w, device=distance.device).view(h, w)
    u = torch.cat((idx[ok_h], idx[:-1][ok_v]))
    v = torch.cat((torch.roll(idx, -1, dims=1)[ok_h], idx[1:][ok_v]))
    labels = idx.reshape(-1).clone()
    while True:
        lu, lv = labels[u], labels[v]
        differ = lu != lv
        if not bool(differ.any()):
            return labels.view(h, w)
        lu, lv = lu[differ], lv[differ]
        low = torch.minimum(lu, lv)
        labels.scatter_reduce_(0, torch.maximum(lu, lv), low, reduce="amin")
        while True:  # pointer jumping until every pixel points at its root
            jumped = labels[labels]
            if torch.equal(jumped, labels):
                break
            labels = jumped


def floater_mask(
    distance: Tensor,
    max_valid: float,
    *,
    threshold: float,
    max_pixels: int,
    near_ratio: float,
) -> Tensor:
    """[H, W] bool: pixels of smooth components smaller than ``max_pixels`` whose farthest
    pixel is nearer than ``near_ratio * max_valid`` (Matrix-3D's floating fragments).

    Components come from scipy on CPU tensors and from :func:`smooth_components_torch` on
    GPU tensors (no host round trip)."""
    if max_pixels <= 0:
        return torch.zeros_like(distance, dtype=torch.bool)
    if distance.is_cuda:
        labels = smooth_components_torch(distance, threshold).reshape(-1)
        n = labels.numel()
    else:
        labels_np, n = smooth_components(distance, threshold)
        labels = torch.from_numpy(labels_np).to(distance.device).reshape(-1)
    size = torch.bincount(labels, minlength=n)
    far = torch.zeros(n, dtype=distance.dtype, device=distance.device)
    far = far.scatter_reduce(0, labels, distance.reshape(-1), reduce="amax", include_self=False)
    floating = (size > 0) & (size < max_pixels) & (far < near_ratio * max_valid)
    return floating[labels].reshape(distance.shape)


# --------------------------------------------------------------------------- mesh


def grid_faces(height: int, width: int, *, device=None) -> Tensor:
    """Triangles of an ``height x width`` equirect vertex grid with longitude wrap and pole caps.

    Vertex ``i * width + j`` is grid row i, column j; ``height * width`` the north pole,
    ``height * width + 1`` the south pole.
    returns: [2 * height * width, 3] int64 (2 (H-1) W quad triangles, then W + W cap triangles)
    """
    i = torch.arange(height - 1, device=device)[:, None]
    j = torch.arange(width, device=device)[None, :]
    j1 = (j + 1) % width
    a = i * width + j  # (i, j)
    b = (i + 1) * width + j  # (i+1, j)
    c = i * width + j1  # (i, j+1)
    d = (i + 1) * width + j1  # (i+1, j+1)
    # Seen from the centre, columns go right and rows go down: (a, b, c) is counter-clockwise.
    quads = torch.stack((torch.stack((a, b, c), -1), torch.stack((c, b, d), -1)), dim=2).reshape(-1, 3)
    jj = torch.arange(width, device=device)
    north = torch.full_like(jj, height * width)
    south = torch.full_like(jj, height * width + 1)
    top = torch.stack((north, jj, (jj + 1) % width), -1)
    last = (height - 1) * width
    bottom = torch.stack((south, last + (jj + 1) % width, last + jj), -1)
    return torch.cat((quads, top, bottom)).to(torch.int64)


def _decimate(x: Tensor, k: int) -> Tensor:
    """Block mean over k x k blocks: [C, H, W] -> [C, H/k, W/k]."""
    return torch.nn.functional.avg_pool2d(x[None], k)[0]


def build_scaffold_mesh(rgb, distance, config: ScaffoldConfig | None = None, sky_mask=None) -> ScaffoldMesh:
    """Build the occlusion-aware scaffold mesh of a panorama.

    rgb: [H, W, 3] float in [0, 1] (numpy or torch; uint8 is scaled by 1/255)
    distance: [H, W] distance along each pixel's ray (W = 2H); NaN / inf / <= 0 = invalid
    sky_mask: [H, W] bool or None (True = sky)
    returns: ScaffoldMesh on ``distance``'s device, in the panorama camera's frame.

    Steps: 1. fill sky / invalid distance; 2. push small floating components to the
    background; 3. (optional) decimate; 4. occlusion rule; 5. vertices, pole caps, faces.
    """
    config = config or ScaffoldConfig()
    distance = _as_tensor(distance, "distance")
    rgb = _as_tensor(rgb, "rgb", device=distance.device)
    _check_distance_shape(distance)
    h, w = distance.shape
    if rgb.dim() != 3 or rgb.shape[-1] != 3 or tuple(rgb.shape[:2]) != (h, w):
        raise InputError(f"rgb must be [H, W, 3] matching distance {h} x {w}, got shape {tuple(rgb.shape)}")
    rgb = rgb.to(torch.float32) / 255.0 if rgb.dtype == torch.uint8 else rgb.to(torch.float32)
    if not bool(torch.isfinite(rgb).all()) or float(rgb.min()) < -1e-3 or float(rgb.max()) > 1.0 + 1e-3:
        raise InputError("rgb must be finite floats in [0, 1] (or uint8); scale 0-255 images by 1/255")
    rgb = rgb.clamp(0.0, 1.0)
    k = int(config.decimate)
    if k < 1 or h % k or w % k or h // k < 2:
        raise InputError(f"decimate must be a positive integer dividing {h} and {w} (leaving >= 2 rows), got {config.decimate}")

    # 1. sky / invalid -> background
    filled, valid = prepare_distance(distance, sky_mask, config.sky_factor)
    max_valid = float(filled[valid].max())
    far = max_valid * config.sky_factor

    # 2. floating fragments -> background
    max_pixels = config.floater_max_pixels
    if max_pixels is None:
        max_pixels = int(round(_FLOATER_REFERENCE_PIXELS * h * w / _FLOATER_REFERENCE_AREA))
    floating = floater_mask(
        filled, max_valid, threshold=config.occlusion_threshold, max_pixels=max_pixels, near_ratio=config.floater_near_ratio
    )
    filled = torch.where(floating, torch.full_like(filled, far), filled)

    # 3. decimation: block means; a block is visible only if all its pixels are
    visible_full = occlusion_mask(filled, config.occlusion_threshold)
    colors = rgb.permute(2, 0, 1)
    if k > 1:
        filled = _decimate(filled[None], k)[0]
        colors = _decimate(colors, k)
        visible = (_decimate(visible_full[None].float(), k)[0] > 0.999) & occlusion_mask(filled, config.occlusion_threshold)
    else:
        visible = visible_full
    gh, gw = filled.shape

    # 4./5. vertices on the rays of the (decimated) pixel centres, pole vertices
    dirs = equirect_directions(gh, gw, device=filled.device, dtype=torch.float32)
    verts = (dirs * filled[..., None]).reshape(-1, 3)
    colors = colors.permute(1, 2, 0).reshape(-1, 3)
    poles_v, poles_c, poles_vis = [], [], []
    for row, sign in ((filled[0], -1.0), (filled[-1], 1.0)):
        r = 0 if sign < 0 else gh - 1
        poles_v.append(torch.tensor([0.0, sign, 0.0], device=filled.device) * row.median())
        poles_c.append(colors[r * gw : (r + 1) * gw].mean(0))
        poles_vis.append((row.max() - row.min()) <= config.occlusion_threshold * row.min())
    verts = torch.cat((verts, torch.stack(poles_v)))
    colors = torch.cat((colors, torch.stack(poles_c)))
    visible = torch.cat((visible.reshape(-1), torch.stack(poles_vis)))
    colors = colors * visible[:, None]
    faces = grid_faces(gh, gw, device=filled.device)
    return ScaffoldMesh(verts.contiguous(), faces, colors.contiguous(), visible, gh, gw)


def export_mesh(mesh: ScaffoldMesh, path) -> None:
    """Write the mesh with vertex colours (invisible vertices black) as .ply or .glb via trimesh.

    Blender imports both (File > Import > Stanford PLY / glTF 2.0). Written atomically.
    """
    from pathlib import Path

    import trimesh

    from matrix_world.io import atomic_write

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".ply", ".glb"):
        raise InputError(f"mesh path must end in .ply or .glb, got {path.name!r}")
    colors = (mesh.colors * mesh.visible[:, None]).clamp(0, 1)
    rgba = np.concatenate(
        [(colors.cpu().numpy() * 255.0 + 0.5).astype(np.uint8), np.full((colors.shape[0], 1), 255, np.uint8)], axis=1
    )
    tm = trimesh.Trimesh(
        vertices=mesh.vertices.detach().cpu().numpy().astype(np.float64),
        faces=mesh.faces.cpu().numpy(),
        vertex_colors=rgba,
        process=False,
    )
    with atomic_write(path) as tmp:
        tm.export(tmp, file_type=suffix[1:])
