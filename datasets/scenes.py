"""Seeded procedural scenes with exact ground truth: coloured triangle meshes you can render.

A :class:`Scene` is one vertex-coloured triangle mesh (ground, sky dome, objects) plus the
facts a sampler needs: the objects' axis-aligned bounding boxes and a walkable rectangle.
``make_scene(kind, seed)`` is deterministic: the same kind and seed give bit-identical
arrays (no global random state; numpy ``default_rng(seed)`` and hashed value noise only).
What each kind looks like (``SceneStyle``, ``STYLES``) and which kind a prompt maps to are
in :mod:`styles`.

World frame (DESIGN.md §3, OpenCV): x right, y DOWN, z forward. The ground is the plane
y = 0, so a point h metres above the ground has y = -h. Units are metres. Cameras are
panoramic; ``Scene.render`` takes camera-to-world poses ``c2w`` in this world frame.

Outdoor scenes are closed by a hemispherical sky dome (radius ``SKY_RADIUS``) whose rim
sits on the ground disk's rim, so every ray hits something; sky pixels carry the distance
to the dome (finite) and are flagged in the ``sky`` mask. Indoor scenes are closed boxes
(floor y = 0, ceiling y = -room height) with no sky.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from matrix_world.datasets import meshgen as mg
from torch import Tensor

from matrix_world.cameras import make_pose, rotation_yaw
from matrix_world.datasets.styles import (  # noqa: F401  (KINDS, OUTDOOR_KINDS, INDOOR_KINDS: re-exported)
    INDOOR_KINDS,
    KINDS,
    OUTDOOR_KINDS,
    STYLES,
    SceneStyle,
    style_for_prompt,
)
from matrix_world.errors import InputError

SKY_RADIUS = 150.0
OUTDOOR_HALF_SIZE = 20.0  # walkable square [-20, 20]^2 metres


# --------------------------------------------------------------------------- scene


@dataclass
class SceneObject:
    """An object's kind and axis-aligned bounding box in world coordinates (y down)."""

    kind: str
    box_min: np.ndarray  # [3]
    box_max: np.ndarray  # [3]


@dataclass
class Scene:
    """A renderable synthetic scene with ground truth.

    vertices: np.ndarray  # [V, 3] float32, world (OpenCV, y down, ground y = 0, metres)
    faces: np.ndarray     # [T, 3] int64
    colors: np.ndarray    # [V, 3] float32 in [0, 1] (shading baked in)
    sky: np.ndarray       # [V] bool, True on the sky dome
    objects: list[SceneObject] (obstacles for trajectories; ground/dome/room shell excluded)
    walkable: (x_min, z_min, x_max, z_max) rectangle on the ground where cameras may go
        (objects' footprints, grown by a clearance, are cut out of it by ``is_walkable``)
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    sky: np.ndarray
    objects: list[SceneObject]
    walkable: tuple[float, float, float, float]
    kind: str
    seed: int
    indoor: bool
    camera_height: float = 1.6
    min_path_length: float = 18.0  # default minimum trajectory length for this scene (metres)
    style: SceneStyle | None = field(default=None, repr=False)
    room: tuple | None = None  # indoor: interior box (x_min, y_min, z_min, x_max, y_max, z_max)

    @property
    def boxes(self) -> np.ndarray:
        """Objects' bounding boxes [K, 2, 3] (min corner, max corner)."""
        if not self.objects:
            return np.zeros((0, 2, 3))
        return np.stack([np.stack([o.box_min, o.box_max]) for o in self.objects]).astype(np.float64)

    def footprints(self, clearance: float = 0.0) -> np.ndarray:
        """Objects' ground footprints grown by ``clearance``: [K, 4] (x_min, z_min, x_max, z_max)."""
        b = self.boxes
        return np.stack([b[:, 0, 0] - clearance, b[:, 0, 2] - clearance, b[:, 1, 0] + clearance, b[:, 1, 2] + clearance], 1)

    def is_walkable(self, xz: np.ndarray, clearance: float = 0.0) -> np.ndarray:
        """Ground points [N, 2] (x, z) -> [N] bool: inside the walkable rectangle shrunk by
        ``clearance`` and outside every object footprint grown by ``clearance``."""
        xz = np.atleast_2d(np.asarray(xz, dtype=np.float64))
        x0, z0, x1, z1 = self.walkable
        ok = (xz[:, 0] >= x0 + clearance) & (xz[:, 0] <= x1 - clearance) & (xz[:, 1] >= z0 + clearance) & (xz[:, 1] <= z1 - clearance)
        fp = self.footprints(clearance)
        if len(fp):
            inside = (xz[:, None, 0] > fp[None, :, 0]) & (xz[:, None, 0] < fp[None, :, 2]) & (xz[:, None, 1] > fp[None, :, 1]) & (xz[:, None, 1] < fp[None, :, 3])
            ok &= ~inside.any(1)
        return ok

    def camera_c2w(self, x: float, z: float, yaw_deg: float = 0.0, height: float | None = None) -> Tensor:
        """Upright panoramic camera at ground point (x, z), ``height`` above the ground: [4, 4] float64."""
        h = self.camera_height if height is None else height
        return make_pose(rotation_yaw(yaw_deg), torch.tensor([x, -h, z], dtype=torch.float64))

    def fingerprint(self) -> str:
        """SHA-256 of the mesh arrays (identical for identical scenes)."""
        digest = hashlib.sha256()
        for a in (self.vertices, self.faces, self.colors, self.sky, self.boxes):
            digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()

    def render(self, c2w: Tensor, height: int, backend: str = "auto", *, device=None,
               chunk: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render ground-truth panoramas with ``scaffold.render.render_mesh_equirect``.

        c2w: Tensor  # [F, 4, 4] (or [4, 4]) camera-to-world in this scene's world frame
        backend: "auto" | "cpu" | "cuda" (the rasteriser); device: where the mesh goes
            (None -> CUDA when available and backend is not "cpu", else CPU).
        returns (rgb [F, H, 2H, 3] float32 in [0, 1], distance [F, H, 2H] float32 (metres
        along each ray), sky [F, H, 2H] bool), as numpy on the CPU. Pixels no triangle
        covers (none in a closed scene, up to rasterisation cracks) have rgb 0, distance
        inf, sky False.
        """
        from matrix_world.scaffold.render import render_mesh_equirect

        c2w = torch.as_tensor(c2w, dtype=torch.float64)
        if c2w.dim() == 2:
            c2w = c2w[None]
        if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4):
            raise InputError(f"c2w must be [F, 4, 4] or [4, 4], got {tuple(c2w.shape)}")
        if device is None:
            device = "cuda" if backend != "cpu" and torch.cuda.is_available() else "cpu"
        verts = torch.from_numpy(self.vertices).to(device)
        faces = torch.from_numpy(self.faces).to(device)
        attrs = torch.from_numpy(np.concatenate([self.colors, self.sky[:, None].astype(np.float32)], 1)).to(device)
        c2w = c2w.to(device)
        rgbs, dists, skies = [], [], []
        for start in range(0, len(c2w), chunk):
            out, dist, covered = render_mesh_equirect(verts, faces, attrs, c2w[start : start + chunk], height, backend=backend)
            out, dist, covered = out.cpu(), dist.cpu(), covered.cpu()
            rgbs.append(torch.where(covered[..., None], out[..., :3], 0.0).clamp(0, 1).numpy())
            dists.append(torch.where(covered, dist, torch.inf).numpy())
            skies.append((covered & (out[..., 3] > 0.5)).numpy())
        return (np.concatenate(rgbs).astype(np.float32), np.concatenate(dists).astype(np.float32),
                np.concatenate(skies))

    @property
    def num_triangles(self) -> int:
        return len(self.faces)


# --------------------------------------------------------------------------- building blocks


def _light(style: SceneStyle) -> np.ndarray:
    if style.indoor:
        v = np.array([0.25, -1.0, 0.35])
    else:
        e = math.radians(style.sun_elevation)
        v = np.array([math.cos(e) * 0.6, -math.sin(e), math.cos(e) * 0.8])
    return v / np.linalg.norm(v)


def _paint(b: mg.MeshBuilder, part: mg.Part, base, light, seed: int, noise: float = 0.12, freq: float = 0.8, ambient: float = 0.55):
    b.add(part, mg.shade(part, mg.noisy(part, base, noise, freq, seed), light, ambient))


def _jitter(rng: np.random.Generator, colour, amount: float = 0.08) -> np.ndarray:
    return np.clip(np.asarray(colour) * (1.0 + rng.uniform(-amount, amount, 3)), 0, 1)


def _add_box(b, rng, light, bmin, bmax, colour, seed, cell=None, pattern=None):
    """Box with per-side flat-cell grids; ``pattern(side, cells, base) -> [V, 3]`` colours cells."""
    for side, part in mg.box_sides(bmin, bmax, cell):
        base = np.broadcast_to(np.asarray(colour, dtype=np.float64), part.vertices.shape)
        if pattern is not None:
            base = pattern(side, part, base)
        _paint(b, part, base, light, seed, noise=0.06)


def _object(b: mg.MeshBuilder, kind: str, x: float, z: float, rng: np.random.Generator, style: SceneStyle, light, seed: int) -> SceneObject:
    """Add one outdoor object centred at ground point (x, z); returns its bounding box."""
    parts_before = len(b.vertices)
    if kind == "building":
        w, d, h = rng.uniform(6, 14), rng.uniform(6, 14), rng.uniform(8, 30)
        colour = _jitter(rng, [(0.70, 0.66, 0.60), (0.55, 0.55, 0.58), (0.75, 0.60, 0.50), (0.62, 0.68, 0.72)][rng.integers(4)])
        glass = np.array([0.15, 0.22, 0.32])

        def windows(side, part, base):
            if side in ("ymin", "ymax"):
                return base
            i, j = part.cells[:, 0], part.cells[:, 1]
            lit = mg.hash_unit(i, j, seed=seed) > 0.8
            is_window = (i % 2 == 1) & (j % 2 == 1)
            out = base.copy()
            out[is_window] = glass
            out[is_window & lit] = (0.85, 0.80, 0.55)
            return out

        _add_box(b, rng, light, (x - w / 2, -h, z - d / 2), (x + w / 2, 0.0, z + d / 2), colour, seed, cell=1.5, pattern=windows)
    elif kind == "house":
        w, d, h = rng.uniform(5, 8), rng.uniform(5, 8), rng.uniform(3, 5)
        colour = _jitter(rng, [(0.90, 0.85, 0.70), (0.80, 0.55, 0.45), (0.70, 0.75, 0.80)][rng.integers(3)])

        def door_windows(side, part, base):
            if side in ("ymin", "ymax"):
                return base
            i, j = part.cells[:, 0], part.cells[:, 1]
            out = base.copy()
            out[(j == 1) & (i % 3 == 1)] = (0.20, 0.25, 0.35)
            return out

        _add_box(b, rng, light, (x - w / 2, -h, z - d / 2), (x + w / 2, 0.0, z + d / 2), colour, seed, cell=1.0, pattern=door_windows)
        roof = mg.cone(x, z, 0.5 * math.hypot(w, d) * 1.05, -h, -h - rng.uniform(2, 3.5), segments=4)
        roof.vertices[:4] = np.array([[x - w / 2 - .3, -h, z - d / 2 - .3], [x + w / 2 + .3, -h, z - d / 2 - .3],
                                      [x + w / 2 + .3, -h, z + d / 2 + .3], [x - w / 2 - .3, -h, z + d / 2 + .3]])
        roof.vertices[5] = (x, -h, z)
        _paint(b, roof, _jitter(rng, (0.55, 0.22, 0.15)), light, seed + 1)
    elif kind in ("tree", "pine", "palm", "cactus"):
        trunk_h = {"tree": rng.uniform(1.8, 2.8), "pine": rng.uniform(1.0, 2.0), "palm": rng.uniform(4, 6), "cactus": rng.uniform(1.5, 3.0)}[kind]
        trunk_r = {"tree": 0.22, "pine": 0.18, "palm": 0.15, "cactus": 0.3}[kind] * rng.uniform(0.8, 1.3)
        trunk_colour = (0.30, 0.55, 0.25) if kind == "cactus" else (0.38, 0.26, 0.16)
        _paint(b, mg.cylinder(x, z, trunk_r, 0.0, -trunk_h, 8), _jitter(rng, trunk_colour), light, seed)
        leaf = np.asarray(style.ground_a) * 0.5 + np.array([0.08, 0.22, 0.06])
        if style.name == "snow":
            leaf = np.array([0.20, 0.32, 0.25])
        if kind == "pine":
            r, h = rng.uniform(1.3, 2.2), rng.uniform(4, 7)
            _paint(b, mg.cone(x, z, r, -trunk_h, -trunk_h - h * 0.65, 10), _jitter(rng, leaf), light, seed + 1)
            _paint(b, mg.cone(x, z, r * 0.7, -trunk_h - h * 0.4, -trunk_h - h, 10), _jitter(rng, leaf), light, seed + 2)
        elif kind == "tree":
            r = rng.uniform(1.4, 2.4)
            crown = mg.blob((x, -trunk_h - r * 0.8, z), (r, r * 0.85, r), 1, 0.25, seed)
            _paint(b, crown, _jitter(rng, leaf * 1.1), light, seed + 1, noise=0.25, freq=1.5)
        elif kind == "palm":
            crown = mg.cone(x, z, rng.uniform(1.8, 2.6), -trunk_h + 0.3, -trunk_h - 0.6, 9)
            _paint(b, crown, _jitter(rng, (0.25, 0.55, 0.20)), light, seed + 1)
        else:  # cactus arms
            for side in (-1, 1):
                if rng.random() < 0.7:
                    ax = x + side * trunk_r * 2.2
                    _paint(b, mg.cylinder(ax, z, trunk_r * 0.6, -trunk_h * 0.45, -trunk_h * 0.85, 6), trunk_colour, light, seed)
    elif kind == "rock":
        r = rng.uniform(0.5, 2.0)
        rock = mg.blob((x, -r * 0.35, z), (r, r * 0.7, r * rng.uniform(0.7, 1.3)), 1, 0.3, seed)
        rock_colour = (0.72, 0.50, 0.36) if style.name == "desert" else (0.48, 0.47, 0.45)
        _paint(b, rock, _jitter(rng, rock_colour), light, seed, noise=0.3, freq=1.2)
    elif kind in ("wall", "fence", "crate"):
        along_x = rng.random() < 0.5
        if kind == "crate":
            length, thick, h = 6.0, 2.4, 2.6
            colour = _jitter(rng, [(0.70, 0.20, 0.15), (0.15, 0.35, 0.60), (0.20, 0.50, 0.30), (0.80, 0.60, 0.15)][rng.integers(4)])
        elif kind == "wall":
            length, thick, h = rng.uniform(4, 10), 0.35, rng.uniform(1.5, 3.0)
            colour = _jitter(rng, (0.65, 0.45, 0.35))
        else:
            length, thick, h = rng.uniform(4, 10), 0.12, 1.1
            colour = _jitter(rng, (0.60, 0.48, 0.32))
        hx, hz = (length / 2, thick / 2) if along_x else (thick / 2, length / 2)
        if kind == "fence":
            n_posts = max(2, int(length / 2) + 1)
            for t in np.linspace(-1, 1, n_posts):
                px, pz = (x + t * hx, z) if along_x else (x, z + t * hz)
                _add_box(b, rng, light, (px - .06, -h, pz - .06), (px + .06, 0, pz + .06), colour, seed)
            for rail_y in (-0.45, -0.9):
                _add_box(b, rng, light, (x - hx, rail_y - .05, z - hz), (x + hx, rail_y + .05, z + hz), colour, seed)
        else:
            def bricks(side, part, base):
                i, j = part.cells[:, 0], part.cells[:, 1]
                return base * (0.85 + 0.3 * mg.hash_unit(i, j, seed=seed))[:, None]

            _add_box(b, rng, light, (x - hx, -h, z - hz), (x + hx, 0.0, z + hz), colour, seed, cell=0.5, pattern=bricks)
    else:
        raise InputError(f"unknown object kind {kind!r}")
    v = np.concatenate(b.vertices[parts_before:])
    return SceneObject(kind, v.min(0), v.max(0))


def _place(rng, centre_ok, region, footprint_r: float, placed: list, gap: float, attempts: int = 60):
    """Rejection-sample a ground point in ``region`` whose disc of ``footprint_r`` stays clear."""
    for _ in range(attempts):
        x, z = region(rng)
        if not centre_ok(x, z):
            continue
        if all(math.hypot(x - px, z - pz) > footprint_r + pr + gap for px, pz, pr in placed):
            return x, z
    return None


_RADIUS = {"building": 10.0, "house": 6.0, "tree": 2.5, "pine": 2.3, "palm": 2.7, "cactus": 1.0, "rock": 2.0,
           "wall": 5.5, "fence": 5.5, "crate": 3.5}


def _outdoor(style: SceneStyle, seed: int) -> Scene:
    rng = np.random.default_rng(seed)
    light = _light(style)
    b = mg.MeshBuilder()
    # sky dome: vertical gradient + sun glow + clouds
    dome = mg.sky_dome(SKY_RADIUS)
    elev = np.clip(-dome.vertices[:, 1] / SKY_RADIUS, 0, 1)
    t = np.sqrt(elev)[:, None]
    sky = (1 - t) * np.asarray(style.sky_horizon) + t * np.asarray(style.sky_zenith)
    glow = np.clip(dome.vertices / SKY_RADIUS @ light, 0, 1) ** 8  # light points towards the sun
    sky = sky + glow[:, None] * 0.35
    cloud = np.clip(mg.fbm(dome.vertices / SKY_RADIUS * [1, 3, 1], 3.0, seed + 7, octaves=4) * 2.5 + style.clouds * 2 - 1.0, 0, 1)
    sky = sky * (1 - cloud[:, None] * 0.8) + cloud[:, None] * 0.8 * 0.97
    b.add(dome, sky, sky=True)
    # ground: two-colour noise (or paving slabs), optional sea beyond a shoreline
    ground = mg.ground_disk(SKY_RADIUS)
    mix = mg.fbm(ground.vertices, 0.15, seed + 11, octaves=4) * 1.4 + 0.5
    colour = np.asarray(style.ground_a) * (1 - mix[:, None]) + np.asarray(style.ground_b) * mix[:, None]
    grain = mg.hash_unit(np.round(ground.vertices[:, 0] * 100), np.round(ground.vertices[:, 2] * 100), seed=seed + 17)
    colour = colour * (1 + 0.18 * mg.fbm(ground.vertices, 1.0, seed + 12) + 0.12 * (grain - 0.5))[:, None]
    if style.ground_pattern == "paving":
        ix, iz = np.floor(ground.vertices[:, 0] / 2.0), np.floor(ground.vertices[:, 2] / 2.0)
        colour = colour * (0.92 + 0.16 * mg.hash_unit(ix, iz, seed=seed))[:, None]
    if style.water is not None:
        shore = OUTDOOR_HALF_SIZE + 6.0 + 4.0 * mg.fbm(ground.vertices * [1, 0, 0], 0.05, seed + 13)
        wet = ground.vertices[:, 2] > shore
        colour[wet] = np.asarray(style.water) * (1 + 0.15 * mg.fbm(ground.vertices[wet], 0.8, seed + 14))[:, None]
    b.add(ground, np.clip(colour, 0, 1) * (0.55 + 0.45 * max(0.0, -light[1])))
    # distant skyline ring
    if style.skyline is not None:
        ang = np.arange(256) / 256.0
        heights = style.skyline_height * (0.35 + mg.value_noise(np.stack([np.cos(2 * np.pi * ang), np.sin(2 * np.pi * ang), 0 * ang], 1) * 4, 1.0, seed + 15))
        ring = mg.skyline_ring(SKY_RADIUS * 0.8, heights)
        _paint(b, ring, style.skyline, light, seed + 16, noise=0.15, freq=0.05)
    # objects: obstacles in the walkable square, more around it
    placed: list[tuple[float, float, float]] = []
    objects = []
    half = OUTDOOR_HALF_SIZE
    for count, region, inner in ((style.inner_count, lambda r: r.uniform(-half, half, 2), True),
                                 (style.outer_count, lambda r: _annulus(r, half + 4, 55.0), False)):
        mix = style.inner_mix if inner and style.inner_mix is not None else style.mix
        kinds, weights = zip(*mix)
        p = np.asarray(weights) / np.sum(weights)
        for _ in range(count):
            kind = str(rng.choice(kinds, p=p))
            if inner and kind in ("building", "house"):
                kind = "wall"
            dry = half + 2.0 if style.water is not None else math.inf  # nothing stands in the sea
            clear = 4.0 + _RADIUS[kind]  # keep the start point (origin) free
            spot = _place(rng, lambda x, z, clear=clear, dry=dry: math.hypot(x, z) > clear and z < dry, region,
                          _RADIUS[kind], placed, gap=1.5 if inner else 0.5)
            if spot is None:
                continue
            obj = _object(b, kind, spot[0], spot[1], rng, style, light, int(rng.integers(2**31)))
            placed.append((spot[0], spot[1], _RADIUS[kind]))
            objects.append(obj)
    v, f, c, s = b.build()
    return Scene(v, f, c, s, objects, (-half, -half, half, half), style.name, seed, False, 1.6, 18.0, style)


def _annulus(rng, r0: float, r1: float) -> tuple[float, float]:
    r = math.sqrt(rng.uniform(r0 * r0, r1 * r1))
    a = rng.uniform(0, 2 * math.pi)
    return r * math.sin(a), r * math.cos(a)


def _furniture(b, kind: str, x0: float, z0: float, w: float, d: float, rng, light, seed: int) -> SceneObject:
    """Furniture as boxes in the footprint [x0, x0+w] x [z0, z0+d]; returns its bounding box."""
    parts_before = len(b.vertices)
    wood = _jitter(rng, [(0.50, 0.34, 0.20), (0.65, 0.50, 0.32), (0.30, 0.22, 0.15)][rng.integers(3)])
    fabric = _jitter(rng, [(0.25, 0.35, 0.55), (0.55, 0.25, 0.25), (0.35, 0.45, 0.30), (0.60, 0.58, 0.55)][rng.integers(4)])
    x1, z1 = x0 + w, z0 + d
    if kind in ("table", "desk"):
        h = 0.75
        _add_box(b, rng, light, (x0, -h, z0), (x1, -h + 0.05, z1), wood, seed)
        for lx, lz in ((x0, z0), (x1 - .06, z0), (x0, z1 - .06), (x1 - .06, z1 - .06)):
            _add_box(b, rng, light, (lx, -h + 0.05, lz), (lx + .06, 0, lz + .06), wood * 0.8, seed)
        if kind == "desk":
            cx, cz = (x0 + x1) / 2, (z0 + z1) / 2
            _add_box(b, rng, light, (cx - .3, -h - .4, cz - .05), (cx + .3, -h - .05, cz + .05), (0.1, 0.1, 0.12), seed)
    elif kind in ("cabinet", "shelf"):
        h = rng.uniform(0.9, 2.2)

        def shelves(side, part, base):
            j = part.cells[:, 1]
            return base * np.where(j % 2 == 0, 0.75, 1.05)[:, None] if kind == "shelf" else base

        _add_box(b, rng, light, (x0, -h, z0), (x1, 0, z1), wood, seed, cell=0.35, pattern=shelves)
    elif kind == "sofa":
        _add_box(b, rng, light, (x0, -0.45, z0), (x1, 0, z1), fabric, seed)
        _add_box(b, rng, light, (x0, -0.9, z0), (x1, -0.45, z0 + 0.25), fabric * 0.9, seed)
    elif kind == "bed":
        _add_box(b, rng, light, (x0, -0.5, z0), (x1, 0, z1), (0.92, 0.92, 0.95), seed)
        _add_box(b, rng, light, (x0, -1.0, z0), (x1, 0, z0 + 0.1), wood, seed)
        _add_box(b, rng, light, (x0 + .05, -0.56, z0 + d * 0.45), (x1 - .05, -0.5, z1), fabric, seed)
    elif kind == "plinth":
        h = rng.uniform(0.8, 1.3)
        _add_box(b, rng, light, (x0, -h, z0), (x1, 0, z1), (0.92, 0.92, 0.92), seed)
        part = mg.blob(((x0 + x1) / 2, -h - 0.35, (z0 + z1) / 2), (0.3, 0.35, 0.3), 1, 0.35, seed)
        _paint(b, part, fabric, light, seed, noise=0.3, freq=3.0)
    else:
        raise InputError(f"unknown furniture kind {kind!r}")
    v = np.concatenate(b.vertices[parts_before:])
    return SceneObject(kind, v.min(0), v.max(0))


_FURNITURE_SIZE = {"table": (1.2, 0.8), "desk": (1.4, 0.7), "cabinet": (1.0, 0.5), "shelf": (1.6, 0.4),
                   "sofa": (2.0, 0.9), "bed": (1.6, 2.1), "plinth": (0.6, 0.6)}


def _indoor(style: SceneStyle, seed: int, furniture: int | None = None) -> Scene:
    rng = np.random.default_rng(seed)
    light = _light(style)
    b = mg.MeshBuilder()
    w, d = rng.uniform(*style.room_size, 2)
    hc = rng.uniform(*style.room_height)
    x0, x1, z0, z1 = -w / 2, w / 2, -d / 2, d / 2
    windows_side = ("xmin", "xmax", "zmin", "zmax")[rng.integers(4)]
    for side, part in mg.box_sides((x0, -hc, z0), (x1, 0.0, z1), cell=0.25, inward=True):
        assert part.cells is not None  # quad_grid records its cells
        i, j = part.cells[:, 0], part.cells[:, 1]
        if side == "ymax":  # floor
            if style.floor == "planks":
                plank = (i + (j // 4) * 7) // 4  # planks 1 m long, staggered
                base = np.where((mg.hash_unit(plank, j, seed=seed) > 0.5)[:, None], style.floor_a, style.floor_b)
                base = base * (0.9 + 0.2 * mg.hash_unit(plank, j, seed=seed + 1))[:, None]
            elif style.floor == "tiles":
                base = np.where((((i // 2) + (j // 2)) % 2 == 0)[:, None], style.floor_a, style.floor_b)
            else:
                base = np.broadcast_to(style.floor_a, part.vertices.shape)
            rx, rz = rng.uniform(-w / 4, w / 4), rng.uniform(-d / 4, d / 4)
            rug = (np.abs(part.vertices[:, 0] - rx) < 1.0) & (np.abs(part.vertices[:, 2] - rz) < 0.7)
            base = np.where(rug[:, None], _jitter(rng, (0.60, 0.20, 0.18)), base)
            _paint(b, part, base, light, seed, noise=0.08, freq=2.0, ambient=0.7)
        elif side == "ymin":  # ceiling with light panels
            panel = (i % 8 >= 3) & (i % 8 <= 4) & (j % 8 >= 3) & (j % 8 <= 4)
            base = np.where(panel[:, None], (1.0, 1.0, 0.95), style.ceiling)
            b.add(part, np.clip(base, 0, 1))
        else:
            base = np.broadcast_to(np.asarray(style.wall, dtype=np.float64), part.vertices.shape).copy()
            n_i, n_j = i.max() + 1, j.max() + 1
            base[j >= n_j - 2] *= 0.6  # skirting board near the floor (v runs downwards)
            if side == windows_side:
                win = (j >= n_j * 0.25) & (j < n_j * 0.6) & ((i % 10) >= 3) & ((i % 10) <= 7)
                base[win] = (0.65, 0.80, 0.95)
            else:
                k = int(rng.integers(2, max(3, n_i - 8)))
                art = (i >= k) & (i < k + 5) & (j >= n_j * 0.3) & (j < n_j * 0.5)
                base[art] = _jitter(rng, (0.75, 0.45, 0.20), 0.4)
            _paint(b, part, base, light, seed, noise=0.05, freq=1.0, ambient=0.7)
    objects: list[SceneObject] = []
    kinds, weights = zip(*style.mix)
    p = np.asarray(weights) / np.sum(weights)
    count = style.inner_count if furniture is None else furniture
    footprints: list[tuple[float, float, float, float]] = []
    for _ in range(count):
        kind = str(rng.choice(kinds, p=p))
        fw, fd = _FURNITURE_SIZE[kind]
        if rng.random() < 0.5:
            fw, fd = fd, fw
        for _attempt in range(40):
            if rng.random() < 0.6:  # against a wall
                wall = rng.integers(4)
                fx = rng.uniform(x0 + 0.05, x1 - fw - 0.05) if wall < 2 else (x0 + 0.05 if wall == 2 else x1 - fw - 0.05)
                fz = (z0 + 0.05 if wall == 0 else z1 - fd - 0.05) if wall < 2 else rng.uniform(z0 + 0.05, z1 - fd - 0.05)
            else:
                fx, fz = rng.uniform(x0 + 1.0, x1 - fw - 1.0), rng.uniform(z0 + 1.0, z1 - fd - 1.0)
            centre_clear = math.hypot(fx + fw / 2, fz + fd / 2) > 1.5 + 0.5 * math.hypot(fw, fd)
            free = all(fx > a1 + 0.8 or fx + fw < a0 - 0.8 or fz > c1 + 0.8 or fz + fd < c0 - 0.8 for a0, c0, a1, c1 in footprints)
            if centre_clear and free:
                footprints.append((fx, fz, fx + fw, fz + fd))
                objects.append(_furniture(b, kind, fx, fz, fw, fd, rng, light, int(rng.integers(2**31))))
                break
    v, f, c, s = b.build()
    diag = math.hypot(w, d)
    return Scene(v, f, c, s, objects, (float(x0), float(z0), float(x1), float(z1)), style.name, seed, True, 1.5, round(min(18.0, 0.5 * diag), 2),
                 style, room=tuple(float(a) for a in (x0, -hc, z0, x1, 0.0, z1)))


# --------------------------------------------------------------------------- entry point


def make_scene(kind: str | SceneStyle, seed: int = 0, *, objects: int | None = None) -> Scene:
    """Build a deterministic scene.

    kind: a scene kind (``KINDS``: forest, park, city, town, beach, desert, snow, harbour,
        ruins, room, office, bedroom, kitchen, hall), a :class:`SceneStyle`, or a prompt of
        several words (mapped by keywords through ``styles.style_for_prompt``, with a
        seeded fallback for words it does not know). A single unknown word raises InputError.
    seed: any int; the same (kind, seed) always gives the same scene.
    objects: override the number of obstacles (inside the walkable area / furniture pieces);
        0 gives an empty layout (an empty closed room for indoor kinds).
    """
    if isinstance(kind, SceneStyle):
        style = kind
    elif not isinstance(kind, str) or not kind.strip():
        raise InputError(f"scene kind must be a non-empty string, got {kind!r}; expected one of {', '.join(KINDS)}")
    elif kind.strip().lower() in STYLES:
        style = STYLES[kind.strip().lower()]
    elif len(kind.split()) >= 2:
        style = style_for_prompt(kind, seed)
    else:
        raise InputError(f"unknown scene type {kind!r}; expected one of {', '.join(KINDS)} "
                         "(or a prompt of several words, mapped by keywords)")
    seed = int(seed)
    if style.indoor:
        return _indoor(style, seed, objects)
    if objects is not None:
        style = dataclasses.replace(style, inner_count=int(objects))
    return _outdoor(style, seed)
