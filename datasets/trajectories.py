"""Camera paths through synthetic scenes, after Matrix-Pano (Matrix-3D paper §5, steps 2-3).

1. sample walkable ground points (inside the scene's walkable rectangle, outside every
   object's footprint grown by a clearance);
2. Delaunay-triangulate them (scipy) and keep the edges that do not cross a grown footprint;
3. Dijkstra shortest path between two random vertices (the target drawn among vertices
   far enough away); keep it only if it is at least ``min_length`` long;
4. Laplacian smoothing of the (densified) polyline, endpoints fixed; an iteration that
   would make the path touch a grown footprint is rejected, so the path stays collision-free;
5. resample to ``frames`` poses at constant speed, camera ``height`` above the ground,
   heading along the path (+ optional look-around yaw).

Collision checks are exact in 2D: every polyline SEGMENT is tested against every grown
footprint rectangle (slab test), not just the sampled points. Everything is bounded: at
most ``max_attempts`` Dijkstra queries over at most ``max_attempts // 5 + 1`` point sets;
if none gives a long enough path a :class:`TrajectoryError` says what was tried.

Frames (DESIGN.md §3): world = the scene's world (OpenCV, y down, ground y = 0). Poses are
``c2w`` [F, 4, 4] float64; heading yaw turns +z towards +x (``rotation_yaw``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from matrix_world.cameras import make_pose, rotation_yaw
from matrix_world.errors import InputError


class TrajectoryError(InputError):
    """No trajectory satisfies the constraints (too short, no free space, zero length)."""


@dataclass
class PathConfig:
    """Constraints and knobs of the path sampler (lengths in metres)."""

    min_length: float | None = None  # None -> scene.min_path_length (18 m outdoors, as in the paper)
    max_length: float | None = 30.0  # longer paths are cut to this length (None = keep whole)
    clearance: float = 0.6  # distance kept from every object's bounding box and the walkable border
    num_points: int = 300  # walkable samples triangulated per attempt
    smooth_iterations: int = 40
    smooth_weight: float = 0.5
    spacing: float = 0.5  # densify the Dijkstra path to this spacing before smoothing
    max_attempts: int = 30  # Dijkstra queries in total (bounded retries)


@dataclass
class CameraPath:
    """A sampled camera path.

    points: np.ndarray  # [N, 2] smoothed polyline on the ground (x, z)
    c2w: Tensor  # [F, 4, 4] float64 poses in the scene's world frame
    length: float  # polyline length in metres
    """

    points: np.ndarray
    c2w: Tensor
    length: float

    @property
    def positions(self) -> Tensor:
        return self.c2w[:, :3, 3]


# --------------------------------------------------------------------------- geometry helpers


def path_length(points: np.ndarray) -> float:
    """Length of a polyline [N, 2]."""
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum()) if len(points) > 1 else 0.0


def segments_hit_boxes(a: np.ndarray, b: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Which segments a->b [S, 2] touch any rectangle [K, 4] (x0, z0, x1, z1)? -> [S] bool (slab test)."""
    if len(boxes) == 0 or len(a) == 0:
        return np.zeros(len(a), dtype=bool)
    d = (b - a)[:, None, :]  # [S, 1, 2]
    lo = boxes[None, :, :2]
    hi = boxes[None, :, 2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t0 = (lo - a[:, None, :]) * inv
        t1 = (hi - a[:, None, :]) * inv
    tmin = np.minimum(t0, t1)
    tmax = np.maximum(t0, t1)
    # a zero direction component: inside the slab means "any t", outside means "never"
    par = d == 0
    inside = (a[:, None, :] >= lo) & (a[:, None, :] <= hi)
    tmin = np.where(par, np.where(inside, -np.inf, np.inf), tmin)
    tmax = np.where(par, np.where(inside, np.inf, -np.inf), tmax)
    enter = np.maximum(tmin.max(-1), 0.0)
    leave = np.minimum(tmax.min(-1), 1.0)
    return (enter <= leave).any(1)


def polyline_is_free(scene, points: np.ndarray, clearance: float) -> bool:
    """True when every vertex is walkable and no segment crosses a grown footprint."""
    if not scene.is_walkable(points, clearance).all():
        return False
    fp = scene.footprints(clearance)
    return not segments_hit_boxes(points[:-1], points[1:], fp).any()


def densify(points: np.ndarray, spacing: float) -> np.ndarray:
    """Insert points so that consecutive points are at most ``spacing`` apart (same polyline)."""
    out = [points[:1]]
    for p, q in itertools.pairwise(points):
        n = max(1, math.ceil(np.linalg.norm(q - p) / spacing))
        t = np.arange(1, n + 1)[:, None] / n
        out.append(p + t * (q - p))
    return np.concatenate(out)


def laplacian_smooth(points: np.ndarray, iterations: int, weight: float, is_free=None) -> np.ndarray:
    """Laplacian smoothing p_i += w (mean(p_{i-1}, p_{i+1}) - p_i), endpoints fixed.

    ``is_free(points) -> bool`` vetoes an iteration (the previous polyline is returned).
    """
    p = np.asarray(points, dtype=np.float64).copy()
    for _ in range(iterations):
        q = p.copy()
        q[1:-1] += weight * (0.5 * (p[:-2] + p[2:]) - p[1:-1])
        if is_free is not None and not is_free(q):
            break
        p = q
    return p


def truncate(points: np.ndarray, max_length: float) -> np.ndarray:
    """The first ``max_length`` metres of a polyline."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= max_length:
        return points
    k = int(np.searchsorted(cum, max_length))
    t = (max_length - cum[k - 1]) / max(seg[k - 1], 1e-12)
    return np.concatenate([points[:k], points[k - 1 : k] + t * (points[k : k + 1] - points[k - 1 : k])])


def resample(points: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Constant-speed samples of a polyline: (positions [F, 2], unit tangents [F, 2])."""
    if frames < 2:
        raise TrajectoryError(f"a trajectory needs at least 2 frames, got {frames}")
    points = np.asarray(points, dtype=np.float64)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1) if len(points) > 1 else np.zeros(0)
    total = float(seg.sum())
    if not total > 1e-9:
        raise TrajectoryError("zero-length path: all path points coincide; expected a path of positive length")
    keep = np.concatenate([[True], seg > 1e-12])
    points, seg = points[keep], seg[seg > 1e-12]
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.linspace(0.0, total, frames)
    k = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
    t = ((s - cum[k]) / seg[k])[:, None]
    pos = points[k] + t * (points[k + 1] - points[k])
    # tangent: central difference over +-0.5 m of arc length, robust at polyline corners
    ahead = np.interp(np.minimum(s + 0.5, total), cum, np.arange(len(cum)))
    behind = np.interp(np.maximum(s - 0.5, 0.0), cum, np.arange(len(cum)))

    def at(u):
        i = np.clip(np.floor(u).astype(int), 0, len(points) - 2)
        return points[i] + (u - i)[:, None] * (points[i + 1] - points[i])

    tan = at(ahead) - at(behind)
    tan /= np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-12)
    return pos, tan


def poses_along(positions: np.ndarray, tangents: np.ndarray, height: float, look_around_deg: float = 0.0,
                look_around_cycles: float = 1.0) -> Tensor:
    """Upright panoramic cameras at ground positions [F, 2], ``height`` above ground, facing
    along the tangents [F, 2] plus ``look_around_deg * sin(2 pi cycles f / (F - 1))``: [F, 4, 4]."""
    f = len(positions)
    yaw = np.degrees(np.unwrap(np.arctan2(tangents[:, 0], tangents[:, 1])))
    if look_around_deg:
        yaw = yaw + look_around_deg * np.sin(2 * math.pi * look_around_cycles * np.arange(f) / max(f - 1, 1))
    rot = torch.stack([rotation_yaw(float(a)) for a in yaw])
    trans = torch.from_numpy(np.stack([positions[:, 0], np.full(f, -float(height)), positions[:, 1]], 1))
    return make_pose(rot, trans)


# --------------------------------------------------------------------------- sampler


def sample_walkable_points(scene, n: int, rng: np.random.Generator, clearance: float) -> np.ndarray:
    """Up to ``n`` uniform walkable ground points [M, 2] (bounded rejection sampling)."""
    x0, z0, x1, z1 = scene.walkable
    if x1 - x0 <= 2 * clearance or z1 - z0 <= 2 * clearance:
        return np.zeros((0, 2))
    out = []
    for _ in range(20):
        cand = np.stack([rng.uniform(x0 + clearance, x1 - clearance, 4 * n), rng.uniform(z0 + clearance, z1 - clearance, 4 * n)], 1)
        out.append(cand[scene.is_walkable(cand, clearance)])
        if sum(len(o) for o in out) >= n:
            break
    return np.concatenate(out)[:n]


def walkable_graph(scene, points: np.ndarray, clearance: float):
    """Delaunay edges between walkable points that cross no grown footprint -> csr matrix [N, N]."""
    from scipy.sparse import coo_matrix
    from scipy.spatial import Delaunay

    tri = Delaunay(points)
    s = tri.simplices
    edges = np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    a, b = points[edges[:, 0]], points[edges[:, 1]]
    free = ~segments_hit_boxes(a, b, scene.footprints(clearance))
    edges = edges[free]
    w = np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1)
    n = len(points)
    return coo_matrix((np.concatenate([w, w]), (np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]]))), shape=(n, n)).tocsr()


def sample_path(scene, seed: int, config: PathConfig | None = None) -> np.ndarray:
    """A collision-free smoothed ground polyline [N, 2] at least ``min_length`` long.

    Raises TrajectoryError after ``config.max_attempts`` Dijkstra queries without success.
    """
    from scipy.sparse.csgraph import dijkstra

    cfg = config or PathConfig()
    min_len = scene.min_path_length if cfg.min_length is None else float(cfg.min_length)
    if not (min_len >= 0 and math.isfinite(min_len)):
        raise TrajectoryError(f"min_length must be a finite number >= 0, got {cfg.min_length}")
    if cfg.max_length is not None and cfg.max_length < min_len:
        raise TrajectoryError(f"max_length {cfg.max_length} m is below min_length {min_len} m")
    rng = np.random.default_rng(seed)
    free = lambda p: polyline_is_free(scene, p, cfg.clearance)
    best, attempts, point_sets = 0.0, 0, 0
    while attempts < cfg.max_attempts:
        points = sample_walkable_points(scene, cfg.num_points, rng, cfg.clearance)
        point_sets += 1
        if len(points) < 3:
            break
        graph = walkable_graph(scene, points, cfg.clearance)
        for _ in range(5):
            if attempts >= cfg.max_attempts:
                break
            attempts += 1
            src = int(rng.integers(len(points)))
            dist, pred = dijkstra(graph, indices=src, return_predecessors=True)
            # prefer targets comfortably beyond min_length (smoothing shortens the path a little)
            reachable = dist[np.isfinite(dist)]
            best = max(best, float(reachable.max()) if len(reachable) else 0.0)
            ok = np.isfinite(dist) & (dist >= min_len * 1.1)
            if not ok.any():
                ok = np.isfinite(dist) & (dist >= min_len)
            if not ok.any():
                continue
            dst = int(rng.choice(np.nonzero(ok)[0]))
            idx = [dst]
            while idx[-1] != src:
                idx.append(int(pred[idx[-1]]))
            path = densify(points[idx[::-1]], cfg.spacing)
            path = laplacian_smooth(path, cfg.smooth_iterations, cfg.smooth_weight, free)
            if cfg.max_length is not None:
                path = truncate(path, cfg.max_length)
            length = path_length(path)
            if length >= min_len and length > 1e-9 and free(path):
                return path
        if point_sets > cfg.max_attempts // 5 + 1:
            break
    raise TrajectoryError(
        f"no collision-free path of at least {min_len:g} m in scene {scene.kind!r} (seed {scene.seed}) after "
        f"{attempts} attempt(s); the longest reachable graph distance was {best:.1f} m. Lower min_length, "
        f"the clearance ({cfg.clearance} m) or use a larger scene")


def sample_trajectory(scene, seed: int, frames: int = 81, config: PathConfig | None = None, *,
                      height: float | None = None, look_around_deg: float = 0.0, look_around_cycles: float = 1.0) -> CameraPath:
    """Matrix-Pano-style camera path through ``scene``: ``frames`` poses at constant speed.

    height: camera height above the ground (None -> scene.camera_height).
    Returns a :class:`CameraPath` with c2w in the scene's world frame.
    """
    if frames < 2:
        raise TrajectoryError(f"a trajectory needs at least 2 frames, got {frames}")
    path = sample_path(scene, seed, config)
    pos, tan = resample(path, frames)
    h = scene.camera_height if height is None else float(height)
    if not h > 0:
        raise TrajectoryError(f"camera height must be > 0 m above the ground, got {h}")
    return CameraPath(path, poses_along(pos, tan, h, look_around_deg, look_around_cycles), path_length(path))


def heldout_poses(scene, path: CameraPath, seed: int, count: int = 16, offset: float = 0.5, height_jitter: float = 0.2,
                  yaw_jitter_deg: float = 45.0, clearance: float = 0.6) -> Tensor:
    """Novel-view poses near a training path: [count, 4, 4] in the scene's world frame.

    They sit halfway between training frames (evenly spread along the path), pushed
    sideways by ``offset`` metres (alternating left/right, halved until walkable and
    collision-free, down to 0), raised/lowered by up to ``height_jitter`` and turned by up
    to ``yaw_jitter_deg``: views the reconstruction never saw, close enough to be fair.
    """
    rng = np.random.default_rng(seed)
    pts = path.points
    s = (np.arange(count) + 0.5) / count
    pos, tan = resample(pts, 4 * count + 1)
    idx = np.clip(np.round(s * (len(pos) - 1)).astype(int), 0, len(pos) - 1)
    pos, tan = pos[idx], tan[idx]
    normal = np.stack([tan[:, 1], -tan[:, 0]], 1)
    out = []
    cam_h = float(-path.c2w[0, 1, 3])
    for k in range(count):
        side = 1.0 if k % 2 == 0 else -1.0
        q, o = pos[k], offset
        while o > 1e-3:
            cand = pos[k] + side * o * normal[k]
            if polyline_is_free(scene, np.stack([pos[k], cand]), clearance):
                q = cand
                break
            o *= 0.5
        yaw = math.degrees(math.atan2(tan[k, 0], tan[k, 1])) + rng.uniform(-yaw_jitter_deg, yaw_jitter_deg)
        h = cam_h + rng.uniform(-height_jitter, height_jitter)
        out.append(scene.camera_c2w(float(q[0]), float(q[1]), yaw, h))
    return torch.stack(out)
