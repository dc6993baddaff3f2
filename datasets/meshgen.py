"""Mesh primitives for the synthetic scenes: grids, boxes, cylinders, cones, blobs, dome, ground.

Conventions (DESIGN.md §3): world frame is OpenCV-like with y pointing DOWN, so the ground
is the plane y = 0 and "up" is -y. Heights above ground are negative y values.

Every primitive returns plain numpy arrays: ``vertices [V, 3] float64``, ``faces [T, 3]
int64`` and ``normals [V, 3]`` (used only to bake a simple sun/ambient shading into the
vertex colours). Colour "texture" comes from vertex colours: surfaces are subdivided and
each vertex gets a colour from deterministic value noise or from a per-cell pattern
(``flat=True`` grids give every cell its own four vertices, so a cell is one crisp colour:
windows, tiles, planks).

Everything is deterministic: noise is a hash of integer lattice coordinates and a seed,
no global random state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

UP = np.array([0.0, -1.0, 0.0])

# --------------------------------------------------------------------------- noise

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)


def hash_unit(*ints: np.ndarray, seed: int = 0) -> np.ndarray:
    """Deterministic hash of integer arrays (broadcast together) -> floats in [0, 1)."""
    h = np.full(np.broadcast(*ints).shape, np.uint64((seed * 0x9E3779B1 + 0x632BE5AB) & 0xFFFFFFFFFFFF))
    primes = (0x8DA6B343, 0xD8163841, 0xCB1AB31F, 0x165667B1)
    with np.errstate(over="ignore"):
        for k, a in enumerate(ints):
            h = h ^ (np.asarray(a).astype(np.int64).astype(np.uint64) * np.uint64(primes[k % 4]))
            h = h ^ (h >> np.uint64(33))
            h = h * _M1
            h = h ^ (h >> np.uint64(33))
            h = h * _M2
            h = h ^ (h >> np.uint64(33))
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def value_noise(points: np.ndarray, frequency: float, seed: int) -> np.ndarray:
    """Smooth value noise of 3D points [N, 3] -> [N] in [0, 1] (trilinear, smoothstep)."""
    p = np.asarray(points, dtype=np.float64) * frequency
    base = np.floor(p)
    f = p - base
    f = f * f * (3.0 - 2.0 * f)
    i = base.astype(np.int64)
    out = np.zeros(len(p))
    for dx in (0, 1):
        wx = f[:, 0] if dx else 1.0 - f[:, 0]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1.0 - f[:, 1]
            for dz in (0, 1):
                wz = f[:, 2] if dz else 1.0 - f[:, 2]
                out += wx * wy * wz * hash_unit(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz, seed=seed)
    return out


def fbm(points: np.ndarray, frequency: float, seed: int, octaves: int = 3) -> np.ndarray:
    """Fractal sum of value noise [N, 3] -> [N], roughly in [-1, 1] (mean 0)."""
    total, amp, norm = np.zeros(len(points)), 1.0, 0.0
    for k in range(octaves):
        total += amp * (value_noise(points, frequency * 2.0**k, seed + 1013 * k) - 0.5)
        norm += amp * 0.5
        amp *= 0.5
    return total / norm


# --------------------------------------------------------------------------- mesh parts


@dataclass
class Part:
    """One primitive: vertices [V, 3], faces [T, 3], normals [V, 3] and an optional cell index [V, 2]."""

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    cells: np.ndarray | None = None


@dataclass
class MeshBuilder:
    """Accumulates coloured parts into one mesh (vertices, faces, colours, sky flag)."""

    vertices: list = field(default_factory=list)
    faces: list = field(default_factory=list)
    colors: list = field(default_factory=list)
    sky: list = field(default_factory=list)
    count: int = 0

    def add(self, part: Part, colors: np.ndarray, sky: bool = False) -> None:
        v = np.asarray(part.vertices, dtype=np.float64)
        c = np.broadcast_to(np.asarray(colors, dtype=np.float64), v.shape)
        self.vertices.append(v)
        self.faces.append(np.asarray(part.faces, dtype=np.int64) + self.count)
        self.colors.append(np.clip(c, 0.0, 1.0))
        self.sky.append(np.full(len(v), sky))
        self.count += len(v)

    def build(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> vertices [V, 3] float32, faces [T, 3] int64, colors [V, 3] float32, sky [V] bool."""
        return (
            np.concatenate(self.vertices).astype(np.float32),
            np.concatenate(self.faces).astype(np.int64),
            np.concatenate(self.colors).astype(np.float32),
            np.concatenate(self.sky).astype(bool),
        )


def shade(part: Part, base: np.ndarray, light: np.ndarray, ambient: float = 0.55) -> np.ndarray:
    """Bake Lambert shading into colours: base [V, 3] or [3] -> [V, 3]."""
    lam = np.clip(part.normals @ light, 0.0, 1.0)
    return np.asarray(base) * (ambient + (1.0 - ambient) * lam)[:, None]


def noisy(part: Part, base, amount: float, frequency: float, seed: int) -> np.ndarray:
    """Base colour [3] or [V, 3] modulated by value noise of the vertex positions -> [V, 3]."""
    n = fbm(part.vertices, frequency, seed)
    base = np.asarray(base, dtype=np.float64)
    return np.atleast_2d(base) * (1.0 + amount * n)[:, None]


# --------------------------------------------------------------------------- primitives


def quad_grid(origin, u, v, nu: int, nv: int, *, flat: bool = False) -> Part:
    """A planar parallelogram origin + s*u + t*v, s, t in [0, 1], cut into nu x nv cells.

    flat=False shares vertices (smooth colour); flat=True gives each cell its own four
    vertices so a per-cell colour stays crisp. ``cells`` holds each vertex's (i, j) cell
    index (flat) or grid index (shared).
    """
    origin, u, v = (np.asarray(a, dtype=np.float64) for a in (origin, u, v))
    normal = np.cross(u, v)
    normal = normal / max(np.linalg.norm(normal), 1e-12)
    if flat:
        i, j = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
        i, j = i.ravel(), j.ravel()
        corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])
        s = (i[:, None] + corners[None, :, 0]) / nu  # [cells, 4]
        t = (j[:, None] + corners[None, :, 1]) / nv
        verts = origin + s.reshape(-1, 1) * u + t.reshape(-1, 1) * v
        base = 4 * np.arange(len(i))[:, None]
        faces = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]])
        cells = np.repeat(np.stack([i, j], 1), 4, axis=0)
    else:
        s, t = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
        verts = origin + s.reshape(-1, 1) * u + t.reshape(-1, 1) * v
        idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
        a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
        faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
        cells = np.stack(np.meshgrid(np.arange(nu + 1), np.arange(nv + 1), indexing="ij"), -1).reshape(-1, 2)
    return Part(verts, faces, np.broadcast_to(normal, verts.shape).copy(), cells)


def box_sides(bmin, bmax, cell: float | None = None, *, flat: bool = True, inward: bool = False) -> list[tuple[str, Part]]:
    """The six faces of an axis-aligned box as grids, named by outward side.

    Sides: "xmin", "xmax", "ymin" (top, y is down), "ymax" (bottom), "zmin", "zmax".
    cell: target cell size in metres (None -> one cell per face). inward=True flips the
    normals (the inside of a room).
    """
    x0, y0, z0 = (float(a) for a in bmin)
    x1, y1, z1 = (float(a) for a in bmax)
    dx, dy, dz = x1 - x0, y1 - y0, z1 - z0

    def n(length):
        return 1 if cell is None else max(1, round(length / cell))

    # origin, u, v chosen so that cross(u, v) points outward
    specs = {
        "xmin": ((x0, y0, z1), (0, 0, -dz), (0, dy, 0)),
        "xmax": ((x1, y0, z0), (0, 0, dz), (0, dy, 0)),
        "zmin": ((x0, y0, z0), (dx, 0, 0), (0, dy, 0)),
        "zmax": ((x1, y0, z1), (-dx, 0, 0), (0, dy, 0)),
        "ymin": ((x0, y0, z0), (0, 0, dz), (dx, 0, 0)),
        "ymax": ((x0, y1, z0), (dx, 0, 0), (0, 0, dz)),
    }
    out = []
    for name, (o, u, v) in specs.items():
        part = quad_grid(o, u, v, n(np.linalg.norm(u)), n(np.linalg.norm(v)), flat=flat)
        if inward:
            part.normals = -part.normals
        out.append((name, part))
    return out


def _ring(cx: float, cz: float, radius: float, y: float, segments: int, phase: float = 0.0) -> np.ndarray:
    a = phase + np.arange(segments) * (2.0 * math.pi / segments)
    return np.stack([cx + radius * np.sin(a), np.full(segments, y), cz + radius * np.cos(a)], 1)


def cylinder(cx: float, cz: float, radius: float, y_bottom: float, y_top: float, segments: int = 8) -> Part:
    """Vertical cylinder (y_top < y_bottom: y is down) with a top cap; smooth side normals."""
    bottom = _ring(cx, cz, radius, y_bottom, segments)
    top = _ring(cx, cz, radius, y_top, segments)
    centre = np.array([[cx, y_top, cz]])
    verts = np.concatenate([bottom, top, centre])
    k = np.arange(segments)
    k1 = (k + 1) % segments
    side = np.concatenate([np.stack([k, k1, segments + k1], 1), np.stack([k, segments + k1, segments + k], 1)])
    cap = np.stack([segments + k, segments + k1, np.full(segments, 2 * segments)], 1)
    radial = (verts - [cx, 0.0, cz]) * [1.0, 0.0, 1.0]
    normals = radial / np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)
    normals[2 * segments] = UP
    normals[segments : 2 * segments] = 0.5 * normals[segments : 2 * segments] + 0.5 * UP
    return Part(verts, np.concatenate([side, cap]), normals)


def cone(cx: float, cz: float, radius: float, y_base: float, y_apex: float, segments: int = 10) -> Part:
    """Vertical cone with a closed base; apex above the base (y_apex < y_base)."""
    base = _ring(cx, cz, radius, y_base, segments)
    verts = np.concatenate([base, [[cx, y_apex, cz]], [[cx, y_base, cz]]])
    k = np.arange(segments)
    k1 = (k + 1) % segments
    faces = np.concatenate([
        np.stack([k, k1, np.full(segments, segments)], 1),
        np.stack([k1, k, np.full(segments, segments + 1)], 1),
    ])
    height = y_base - y_apex
    radial = (base - [cx, 0.0, cz]) * [1.0, 0.0, 1.0] / radius
    side_n = radial * height + UP * radius
    side_n /= np.linalg.norm(side_n, axis=1, keepdims=True)
    normals = np.concatenate([side_n, [UP], [-UP]])
    return Part(verts, faces, normals)


def _icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    phi = (1.0 + math.sqrt(5.0)) / 2.0
    verts = [(-1, phi, 0), (1, phi, 0), (-1, -phi, 0), (1, -phi, 0), (0, -1, phi), (0, 1, phi),
             (0, -1, -phi), (0, 1, -phi), (phi, 0, -1), (phi, 0, 1), (-phi, 0, -1), (-phi, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
             (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = [np.array(p, dtype=np.float64) / np.linalg.norm(p) for p in verts]
    f = list(faces)
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}

        def mid(a, b, cache=cache):
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = v[a] + v[b]
                v.append(m / np.linalg.norm(m))
                cache[key] = len(v) - 1
            return cache[key]

        new = []
        for a, b, c in f:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        f = new
    return np.array(v), np.array(f, dtype=np.int64)


_ICO_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def blob(centre, radii, subdivisions: int = 1, roughness: float = 0.2, seed: int = 0) -> Part:
    """A noisy ellipsoid (rocks, round tree crowns): icosphere scaled by ``radii`` [3]."""
    if subdivisions not in _ICO_CACHE:
        _ICO_CACHE[subdivisions] = _icosphere(subdivisions)
    unit, faces = _ICO_CACHE[subdivisions]
    bump = 1.0 + roughness * fbm(unit * 1.7, 1.0, seed, octaves=2)
    verts = np.asarray(centre, dtype=np.float64) + unit * bump[:, None] * np.asarray(radii, dtype=np.float64)
    return Part(verts, faces.copy(), unit.copy())


def ground_disk(radius: float, radii_inner: float = 26.0, segments: int = 160, spacing: float = 0.5) -> Part:
    """Ground plane y = 0 as a polar grid: rings every ``spacing`` up to ``radii_inner``, then geometric ones."""
    rings = np.concatenate([np.linspace(spacing, radii_inner, int(radii_inner / spacing)),
                            np.geomspace(radii_inner * 1.08, radius, 14)])
    a = np.arange(segments) * (2.0 * math.pi / segments)
    rr, aa = np.meshgrid(rings, a, indexing="ij")  # [R, S]
    verts = np.concatenate([[[0.0, 0.0, 0.0]], np.stack([rr * np.sin(aa), 0 * rr, rr * np.cos(aa)], -1).reshape(-1, 3)])
    k = np.arange(segments)
    k1 = (k + 1) % segments
    faces = [np.stack([np.zeros(segments, np.int64), 1 + k1, 1 + k], 1)]
    for r in range(len(rings) - 1):
        a0, b0 = 1 + r * segments + k, 1 + r * segments + k1
        a1, b1 = a0 + segments, b0 + segments
        faces += [np.stack([a0, b0, b1], 1), np.stack([a0, b1, a1], 1)]
    return Part(verts, np.concatenate(faces), np.broadcast_to(UP, verts.shape).copy())


def sky_dome(radius: float, rings: int = 20, segments: int = 96) -> Part:
    """Upper hemisphere of ``radius`` centred on the ground origin (rim on the ground circle).

    Normals point inward (towards the viewer); elevation of each vertex is -y / radius.
    """
    elev = np.linspace(0.0, math.pi / 2.0, rings + 1)[:-1]
    a = np.arange(segments) * (2.0 * math.pi / segments)
    ee, aa = np.meshgrid(elev, a, indexing="ij")
    ring_verts = np.stack([radius * np.cos(ee) * np.sin(aa), -radius * np.sin(ee), radius * np.cos(ee) * np.cos(aa)], -1)
    verts = np.concatenate([ring_verts.reshape(-1, 3), [[0.0, -radius, 0.0]]])
    k = np.arange(segments)
    k1 = (k + 1) % segments
    faces = []
    for r in range(rings - 1):
        a0, b0 = r * segments + k, r * segments + k1
        faces += [np.stack([a0, b0, b0 + segments], 1), np.stack([a0, b0 + segments, a0 + segments], 1)]
    top = rings * segments
    faces.append(np.stack([(rings - 1) * segments + k, (rings - 1) * segments + k1, np.full(segments, top)], 1))
    return Part(verts, np.concatenate(faces), -verts / radius)


def skyline_ring(radius: float, heights: np.ndarray) -> Part:
    """A ring of vertical quads at ``radius`` whose top follows ``heights`` [S] (mountains, hills)."""
    s = len(heights)
    a = np.arange(s) * (2.0 * math.pi / s)
    bottom = np.stack([radius * np.sin(a), np.zeros(s), radius * np.cos(a)], 1)
    top = bottom.copy()
    top[:, 1] = -np.asarray(heights, dtype=np.float64)
    verts = np.concatenate([bottom, top])
    k = np.arange(s)
    k1 = (k + 1) % s
    faces = np.concatenate([np.stack([k, k1, s + k1], 1), np.stack([k, s + k1, s + k], 1)])
    normals = -bottom / radius * 0.7 + UP * 0.3
    return Part(verts, faces, np.concatenate([normals, normals]))
