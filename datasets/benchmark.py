"""The fixed synthetic benchmark split: 8 outdoor + 4 indoor clips with held-out novel views.

Layout under the split folder (default ``benchmarks/data/synthetic_v1``, git-ignored):

    split.json                 scenes, sizes, build time
    <name>/                    a clip in our layout (rgb/, distance.npz, poses.json, ...)
    <name>/heldout/            the held-out views, same layout; their poses.json is expressed
                               in the SAME frame as the clip (the clip's frame-0 camera), so
                               ``c2w`` and ``heldout_c2w`` can be used together directly

Held-out views (``trajectories.heldout_poses``) sit between training frames, pushed
sideways by up to 0.5 m, raised/lowered by up to 0.2 m and turned by up to 45 degrees.

``load_benchmark_split(root)`` returns one :class:`BenchmarkClip` per scene with frames,
distances, poses, held-out poses and renders, and a ``render(c2w)`` that renders any pose
of the clip frame from the exact scene (the scene is rebuilt from its kind and seed).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matrix_world.datasets.build import GENERATOR_VERSION, make_clip_scene_and_path
from matrix_world.datasets.clips import is_complete_clip, read_clip, write_clip_atomic
from matrix_world.datasets.procedural import describe
from matrix_world.datasets.scenes import Scene, make_scene
from matrix_world.datasets.trajectories import heldout_poses

from matrix_world.errors import InputError

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "synthetic_v1"

# (name, kind, scene seed, trajectory seed): fixed forever; change SPLIT_VERSION if edited
BENCHMARK_SCENES = (
    ("forest", "forest", 1001, 1), ("city", "city", 1002, 2), ("beach", "beach", 1003, 3),
    ("desert", "desert", 1004, 4), ("snow", "snow", 1005, 5), ("town", "town", 1006, 6),
    ("harbour", "harbour", 1007, 7), ("park", "park", 1008, 8),
    ("room", "room", 2001, 11), ("office", "office", 2002, 12), ("bedroom", "bedroom", 2003, 13),
    ("hall", "hall", 2004, 14),
)
SPLIT_VERSION = 1


@dataclass
class BenchmarkClip:
    """One benchmark scene. Poses are c2w [*, 4, 4] float64 in the clip frame (frame 0 = I).

    frames [F, H, W, 3] float32, distances [F, H, W] float32, sky [F, H, W] bool,
    heldout_rgb [K, H, W, 3], heldout_distance [K, H, W], heldout_c2w [K, 4, 4].
    world_from_clip [4, 4]: the scene-world pose of the clip frame.
    """

    name: str
    kind: str
    scene_seed: int
    prompt: str
    frames: np.ndarray
    distances: np.ndarray
    sky: np.ndarray | None
    c2w: np.ndarray
    heldout_rgb: np.ndarray
    heldout_distance: np.ndarray
    heldout_c2w: np.ndarray
    world_from_clip: np.ndarray
    meta: dict = field(default_factory=dict)
    _scene: Scene | None = field(default=None, repr=False)

    @property
    def scene(self) -> Scene:
        """The exact scene (rebuilt deterministically from kind and seed on first use)."""
        if self._scene is None:
            self._scene = make_scene(self.kind, self.scene_seed)
            tris = self.meta.get("triangles")
            if tris is not None and self._scene.num_triangles != tris:
                raise InputError(f"benchmark clip {self.name}: the scene generator changed since the split was built "
                                 f"({self._scene.num_triangles} triangles, the split has {tris}); rebuild the split")
            expected = self.meta.get("scene_fingerprint")
            if expected and self._scene.fingerprint() != expected:  # last-bit float differences across machines?
                warnings.warn(f"benchmark clip {self.name}: the rebuilt scene is not bit-identical to the one the "
                              "split was rendered from (another CPU/BLAS, or a generator change)", stacklevel=2)
        return self._scene

    def render(self, c2w, height: int | None = None, backend: str = "auto"):
        """Ground-truth renders at poses c2w [N, 4, 4] of the CLIP frame -> (rgb, distance, sky)."""
        c2w = torch.as_tensor(np.asarray(c2w), dtype=torch.float64)
        world = torch.as_tensor(self.world_from_clip, dtype=torch.float64) @ (c2w if c2w.dim() == 3 else c2w[None])
        return self.scene.render(world, height or self.frames.shape[1], backend=backend)


def build_benchmark_clip(root: str | Path, entry: tuple, *, frames: int = 81, height: int = 256, heldout: int = 16,
                         backend: str = "auto") -> dict:
    """Build one benchmark scene ``entry`` = (name, kind, scene seed, trajectory seed) into ``root/name``."""
    name, kind, scene_seed, traj_seed = entry
    root = Path(root)
    folder = root / name
    if is_complete_clip(folder) and is_complete_clip(folder / "heldout"):
        return {"name": name, "skipped": True}
    t0 = time.perf_counter()
    scene, path = make_clip_scene_and_path(kind, scene_seed, traj_seed, frames)
    held = heldout_poses(scene, path, seed=traj_seed, count=heldout)
    rgb, dist, sky = scene.render(torch.cat([path.c2w, held]), height, backend=backend)
    meta = {"benchmark": name, "split_version": SPLIT_VERSION, "scene_kind": kind, "scene_seed": scene.seed,
            "trajectory_seed": traj_seed, "path_length_m": round(path.length, 4), "triangles": scene.num_triangles,
            "scene_fingerprint": scene.fingerprint(), "generator_version": GENERATOR_VERSION}
    ref = path.c2w[0].numpy()
    prompt = describe(scene)
    # held-out views go to a sibling folder first, then the clip, then they move into it: a
    # clip folder counts as done only once heldout/ is inside it
    tmp_held = root / f".held-{name}"
    write_clip_atomic(tmp_held, rgb[frames:], dist[frames:], held.numpy(), prompt, {**meta, "heldout": True},
                      sky=sky[frames:], distance_dtype="float32", reference_c2w=ref)
    write_clip_atomic(folder, rgb[:frames], dist[:frames], path.c2w.numpy(), prompt, meta, sky=sky[:frames],
                      distance_dtype="float32")
    tmp_held.rename(folder / "heldout")
    return {"name": name, "kind": kind, "seconds": round(time.perf_counter() - t0, 2), "frames": frames + heldout,
            "path_length_m": round(path.length, 2), "triangles": scene.num_triangles}


def _build_one(args):
    torch.set_num_threads(1)  # one thread per worker process
    root, entry, kw = args
    return build_benchmark_clip(root, entry, **kw)


def build_benchmark_split(root: str | Path = DEFAULT_ROOT, *, frames: int = 81, height: int = 256, heldout: int = 16,
                          backend: str = "auto", scenes=BENCHMARK_SCENES, workers: int = 1, log=print) -> dict:
    """Build (or resume) the split; returns the split.json content (with build timings).

    workers > 1 builds scenes in parallel processes (CPU rendering); with CUDA use 1.
    """
    import multiprocessing

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    kw = {"frames": frames, "height": height, "heldout": heldout, "backend": backend}

    def report(row):
        if row.get("skipped"):
            log(f"{row['name']:8s} already complete")
        else:
            log(f"{row['name']:8s} {row['kind']:8s} {frames}+{heldout} frames  path {row['path_length_m']:5.1f} m  "
                f"{row['triangles']:6d} tris  {row['seconds']:6.1f} s")

    rows = []
    if workers <= 1:
        for entry in scenes:
            rows.append(build_benchmark_clip(root, entry, **kw))
            report(rows[-1])
    else:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(scenes))) as pool:
            for row in pool.imap(_build_one, [(root, e, kw) for e in scenes]):
                rows.append(row)
                report(row)
    split = {"split_version": SPLIT_VERSION, "frames": frames, "height": height, "heldout": heldout,
             "scenes": [s[0] for s in scenes], "backend": backend, "workers": workers,
             "build_seconds": round(time.perf_counter() - t_start, 2), "clips": rows}
    (root / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    return split


def load_benchmark_clip(folder: str | Path) -> BenchmarkClip:
    """Load one benchmark scene folder (clip + heldout/)."""
    folder = Path(folder)
    if not (is_complete_clip(folder) and is_complete_clip(folder / "heldout")):
        raise InputError(f"{folder} is not a complete benchmark clip (expected our clip layout with a heldout/ folder); "
                         "build it with benchmarks/build_benchmark_split.py")
    clip, held = read_clip(folder), read_clip(folder / "heldout")
    meta = clip.meta
    return BenchmarkClip(
        name=folder.name, kind=meta["scene_kind"], scene_seed=int(meta["scene_seed"]), prompt=clip.prompt,
        frames=clip.rgb, distances=clip.distance, sky=clip.sky, c2w=clip.c2w, heldout_rgb=held.rgb,
        heldout_distance=held.distance, heldout_c2w=held.c2w,
        world_from_clip=np.asarray(meta["world_from_clip"], dtype=np.float64).reshape(4, 4), meta=meta)


def load_benchmark_split(root: str | Path = DEFAULT_ROOT, names: list[str] | None = None) -> list[BenchmarkClip]:
    """All (or the named) benchmark clips of a split folder, in split order."""
    root = Path(root)
    index = root / "split.json"
    if not index.is_file():
        raise InputError(f"{root} holds no benchmark split (no split.json); build it with "
                         "python benchmarks/build_benchmark_split.py")
    order = json.loads(index.read_text())["scenes"]
    wanted = order if names is None else names
    unknown = [n for n in wanted if n not in order]
    if unknown:
        raise InputError(f"unknown benchmark clip(s) {unknown}; the split has {order}")
    return [load_benchmark_clip(root / n) for n in wanted]
