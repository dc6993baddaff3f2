"""A collider mesh of a splat world for game engines: ``world_collider.glb``.

Gaussians are not a surface; engines want a closed, coarse triangle mesh to collide with. Steps
(:func:`collider_mesh`):

1. keep the Gaussians a player could touch: opacity >= ``min_opacity``, within ``max_distance``
   of ``centre``. With ``max_distance=None`` the reach is :func:`collider_radius` of the distances:
   a sky shell (a sharp peak of the distances, :func:`sky_shell_radius`) is dropped, then 1.5 x
   the 90th percentile of what is left: the neighbourhood a walk explores, not the horizon (a
   world of near ground and far mountains would otherwise get voxels metres wide);
2. voxelise them on a grid of ``resolution`` voxels along the longest side of their robust
   bounding box (0.5 / 99.5 percentiles): each Gaussian marks the voxels of its centre and of the
   six points one standard deviation along its principal axes, so large flat splats mark the area
   they cover;
3. close pinholes (binary closing, ``closing`` voxels), smooth the occupancy (Gaussian filter of
   ``smooth`` voxels) and extract its ``level`` set by surface nets on a padded grid. The surface
   is closed by construction (no boundary edges; a ground or wall of splats becomes a slab about
   two voxels thick, centred on the splats), faces wound counter-clockwise seen from outside;
   where two slabs touch along a voxel edge, that edge is shared by four triangles (about 0.1 %
   of the edges of a lifted world: closed, not strictly 2-manifold; physics engines' triangle
   colliders accept it);
4. decimate by quadric edge collapse to ``target_faces`` (fast-simplification).

The mesh is written in glTF axes (the ``gltf`` preset: +Y up, the frame of ``world.glb``), with no
material, so ``world.glb`` and ``world_collider.glb`` line up when both are imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from matrix_world.axes import points_to_axes
from matrix_world.errors import InputError, require
from matrix_world.gaussians import Gaussians
from matrix_world.io import atomic_write


@dataclass
class ColliderConfig:
    """How the collider is made from the Gaussians (see the module docstring)."""

    resolution: int = 128  # voxels along the longest side of the kept Gaussians' robust bounding box
    target_faces: int = 50_000  # quadric decimation target (0 keeps the surface-nets mesh)
    min_opacity: float = 0.3
    max_distance: float | None = None  # from ``centre``; None: drop a detected sky shell, keep the rest
    closing: int = 1  # voxels of binary closing (fills pinholes between neighbouring splats)
    smooth: float = 1.0  # Gaussian filter sigma in voxels
    level: float = 0.25  # level set of the smoothed occupancy (a one-voxel sheet peaks at ~0.38 after smoothing)

    def check(self) -> None:
        if not 8 <= self.resolution <= 1024:
            raise InputError(f"collider resolution must be between 8 and 1024 voxels, got {self.resolution}")
        if self.target_faces < 0:
            raise InputError(f"collider target faces must be >= 0, got {self.target_faces}")
        if not 0.0 <= self.min_opacity < 1.0:
            raise InputError(f"collider min opacity must be in [0, 1), got {self.min_opacity}")
        if not 0.0 < self.level < 1.0:
            raise InputError(f"collider level must be in (0, 1), got {self.level}")
        if self.max_distance is not None and not self.max_distance > 0:
            raise InputError(f"collider max distance must be > 0, got {self.max_distance}")


@dataclass
class ColliderMesh:
    vertices: np.ndarray  # [V, 3] float64, our (OpenCV) world frame
    faces: np.ndarray  # [T, 3] int64, counter-clockwise seen from outside
    voxel_size: float
    gaussians_used: int


def sky_shell_radius(distances: np.ndarray, *, min_fraction: float = 0.05, width: float = 0.04) -> float | None:
    """The radius of a sky shell among ``distances`` [N] (a sphere of splats around the cameras), or None.

    A shell is a bin of width ``width`` in log-distance, beyond the median, holding at least
    ``min_fraction`` of all Gaussians (surfaces spread over many distances; a shell does not).
    Returns the inner edge of the shell's bin less one bin, so the whole shell is cut.
    """
    d = distances[np.isfinite(distances) & (distances > 0)]
    if d.size < 100:
        return None
    logd = np.log(d)
    lo, hi = float(np.median(logd)), float(logd.max())
    if hi - lo < 2 * width:
        return None
    counts, edges = np.histogram(logd, bins=max(2, int(np.ceil((hi - lo) / width))), range=(lo, hi + 1e-9))
    peak = int(np.argmax(counts))
    if counts[peak] < min_fraction * d.size:
        return None
    return float(np.exp(edges[peak] - width))


def collider_radius(surface_distances: np.ndarray, reach: float = 0.0) -> float:
    """How far from the centre the collider reaches: 1.5 x the 90th percentile of the surface
    distances [N] (a detected sky shell removed first) plus ``reach`` (how far the cameras go)."""
    d = np.asarray(surface_distances, np.float64)
    d = d[np.isfinite(d) & (d > 0)]
    if d.size == 0:
        raise InputError("no surface distances to size the collider")
    shell = sky_shell_radius(d)
    if shell is not None:
        d = d[d < shell]
    return 1.5 * float(np.percentile(d, 90)) + float(reach)


def _voxelise(gaussians: Gaussians, lo: np.ndarray, voxel: float, shape: tuple[int, int, int]) -> np.ndarray:
    """Occupancy [X, Y, Z] bool: the voxels of each centre and of centre +- one sigma along its axes."""
    means = gaussians.means.detach().double().cpu()
    axes = gaussians.rotations().detach().double().cpu() * gaussians.scales.detach().double().cpu()[:, None, :]  # [N, 3, 3]
    points = [means] + [means + sign * axes[:, :, k] for k in range(3) for sign in (-1.0, 1.0)]
    pts = torch.cat(points).numpy()
    idx = np.floor((pts - lo) / voxel).astype(np.int64)
    ok = ((idx >= 0) & (idx < np.asarray(shape))).all(1)
    occ = np.zeros(shape, bool)
    occ[tuple(idx[ok].T)] = True
    return occ


def surface_nets(field: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed triangle mesh of ``{field > level}`` by surface nets: (vertices [V, 3] in voxel-index units,
    faces [T, 3]). ``field`` [X, Y, Z] must be below ``level`` on its border (pad it)."""
    inside = field > level
    cells = tuple(s - 1 for s in field.shape)
    total = np.zeros(cells + (3,))
    count = np.zeros(cells)
    quads = []
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        f0, f1 = field[tuple(a)], field[tuple(b)]
        crossing = inside[tuple(a)] != inside[tuple(b)]
        e = np.argwhere(crossing)  # edge (i, j, k) -> (i, j, k) + unit(axis)
        t = (level - f0[crossing]) / (f1[crossing] - f0[crossing])
        point = e.astype(np.float64)
        point[:, axis] += t
        others = [d for d in range(3) if d != axis]
        # the four cells around the edge, in counter-clockwise order seen from +axis
        offsets = [(0, 0), (1, 0), (1, 1), (0, 1)]
        around = []
        for o1, o2 in offsets:
            c = e.copy()
            c[:, others[0]] -= 1 - o1
            c[:, others[1]] -= 1 - o2
            around.append(c)
        for c in around:
            valid = (c >= 0).all(1) & (c < np.asarray(cells)).all(1)
            np.add.at(total, tuple(c[valid].T), point[valid])
            np.add.at(count, tuple(c[valid].T), 1.0)
        if axis == 1:  # (z, x) is the right-handed order of the plane normal to y
            around = [around[0], around[3], around[2], around[1]]
        outward_positive = inside[tuple(a)][crossing]  # inside at the edge's start: the normal points along +axis
        quad = np.stack([np.ravel_multi_index(tuple(c.T), cells) for c in around], axis=1)
        quads.append(np.where(outward_positive[:, None], quad, quad[:, ::-1]))
    has = count > 0
    index = np.full(cells, -1, np.int64)
    index[has] = np.arange(int(has.sum()))
    vertices = total[has] / count[has][:, None]
    q = index.reshape(-1)[np.concatenate(quads)] if quads else np.zeros((0, 4), np.int64)
    if (q < 0).any():
        raise InputError("surface nets: the field touches the grid border; pad it")
    faces = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    return vertices, faces


def collider_mesh(gaussians: Gaussians, config: ColliderConfig | None = None, *,
                  centre: torch.Tensor | None = None) -> ColliderMesh:
    """Gaussians (our frame) -> a closed, decimated collider mesh (our frame). ``centre`` [3]: the
    point ``max_distance`` is measured from (default: the world origin, the first camera)."""
    from scipy import ndimage

    config = config or ColliderConfig()
    config.check()
    g = gaussians.detach().to("cpu")
    c = np.zeros(3) if centre is None else torch.as_tensor(centre, dtype=torch.float64).cpu().numpy()
    dist = np.linalg.norm(g.means.double().numpy() - c, axis=1)
    opaque = (g.opacities.detach().numpy() >= config.min_opacity) & np.isfinite(dist)
    if opaque.sum() < 4:
        raise InputError(f"too few Gaussians for a collider ({int(opaque.sum())} with opacity >= {config.min_opacity})")
    limit = config.max_distance if config.max_distance is not None else collider_radius(dist[opaque])
    keep = opaque & (dist <= limit)
    if keep.sum() < 4:
        raise InputError(f"too few Gaussians for a collider ({int(keep.sum())} with opacity >= {config.min_opacity} "
                         f"within {limit:.3g} of the centre)")
    g = g.select(torch.from_numpy(keep))
    means = g.means.double().numpy()
    lo, hi = np.percentile(means, 0.5, axis=0), np.percentile(means, 99.5, axis=0)
    extent = float((hi - lo).max())
    if not extent > 0:
        raise InputError("the Gaussians have no extent (all at one point): no collider can be made")
    voxel = extent / config.resolution
    pad = config.closing + int(np.ceil(3 * config.smooth)) + 2
    lo = lo - pad * voxel
    shape = tuple(int(s) for s in np.ceil((hi - lo) / voxel).astype(int) + pad + 1)
    occ = _voxelise(g, lo, voxel, shape)
    if config.closing:
        occ = ndimage.binary_closing(occ, structure=ndimage.generate_binary_structure(3, 1), iterations=config.closing)
    field = ndimage.gaussian_filter(occ.astype(np.float32), config.smooth) if config.smooth > 0 else occ.astype(np.float32)
    field[[0, -1]] = field[:, [0, -1]] = field[:, :, [0, -1]] = 0.0
    verts, faces = surface_nets(field, config.level)
    if len(faces) == 0:
        raise InputError("the Gaussians enclose no volume at this collider resolution; raise --collider-resolution")
    if config.target_faces and len(faces) > config.target_faces:
        fs = require("fast_simplification", "pip install fast-simplification")
        verts, faces = fs.simplify(verts.astype(np.float32), faces.astype(np.int64),
                                   target_reduction=1.0 - config.target_faces / len(faces))
    vertices = (np.asarray(verts, np.float64) + 0.5) * voxel + lo  # voxel-index units -> voxel centres in metres
    return ColliderMesh(vertices, np.asarray(faces, np.int64), voxel, int(len(g)))


def write_collider(path: str | os.PathLike, mesh: ColliderMesh) -> None:
    """Write the collider as a .glb (glTF axes, no material), atomically."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise InputError(f"a collider is written as .glb, got {path.name!r}")
    verts = points_to_axes(torch.from_numpy(mesh.vertices), "gltf").numpy()  # a rotation: winding is kept
    tm = trimesh.Trimesh(vertices=verts, faces=mesh.faces, process=False)
    with atomic_write(path) as tmp:
        tm.export(tmp, file_type="glb")
