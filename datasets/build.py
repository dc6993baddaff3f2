"""Build synthetic clip datasets: scene -> Matrix-Pano-style path -> ground-truth renders -> clip folder.

Used by ``scripts/build_synthetic_dataset.py`` and ``benchmarks/build_benchmark_split.py``.
Every clip is a pure function of (dataset seed, clip index, sizes): clip ``i`` draws its
scene kind and seeds from ``numpy.random.SeedSequence([seed, i])``, so clips can be built
in any order, in parallel, and resumed. A clip folder appears only when complete (written
to a temporary folder and renamed).

Documented fallback: when a scene admits no path of the minimum length
(:class:`TrajectoryError`), the next scene seed is tried, up to ``SCENE_RETRIES`` times;
then the error is raised.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matrix_world.datasets.clips import is_complete_clip, write_clip_atomic
from matrix_world.datasets.procedural import describe
from matrix_world.datasets.scenes import KINDS, make_scene
from matrix_world.datasets.trajectories import (
    PathConfig,
    TrajectoryError,
    sample_trajectory,
)

from matrix_world.errors import InputError

SCENE_RETRIES = 5
GENERATOR_VERSION = 1


@dataclass
class ClipSpec:
    """Everything that determines one clip."""

    index: int
    seed: int  # dataset seed
    frames: int = 81
    height: int = 256
    kinds: tuple[str, ...] = KINDS
    backend: str = "auto"
    distance_dtype: str = "float16"
    min_length: float | None = None
    look_around_deg: float = 0.0


def clip_seeds(seed: int, index: int) -> tuple[int, int, int]:
    """(kind draw, scene seed, trajectory seed) for clip ``index`` of a dataset."""
    a, b, c = np.random.SeedSequence([int(seed), int(index)]).generate_state(3)
    return int(a), int(b), int(c)


def make_clip_scene_and_path(kind: str, scene_seed: int, traj_seed: int, frames: int, min_length=None, look_around_deg=0.0):
    """Scene + camera path with the documented fallback over scene seeds."""
    last = None
    for attempt in range(SCENE_RETRIES):
        scene = make_scene(kind, scene_seed + attempt)
        try:
            path = sample_trajectory(scene, traj_seed, frames, PathConfig(min_length=min_length), look_around_deg=look_around_deg)
            return scene, path
        except TrajectoryError as exc:
            last = exc
    raise TrajectoryError(f"{SCENE_RETRIES} scenes of kind {kind!r} gave no valid path; last error: {last}")


def build_clip(out: Path, spec: ClipSpec) -> dict:
    """Render and write clip ``spec.index`` into ``out/<index:05d>`` (skipped when complete)."""
    folder = Path(out) / f"{spec.index:05d}"
    if is_complete_clip(folder):
        return {"index": spec.index, "skipped": True}
    t0 = time.perf_counter()
    kind_draw, scene_seed, traj_seed = clip_seeds(spec.seed, spec.index)
    kind = spec.kinds[kind_draw % len(spec.kinds)]
    scene, path = make_clip_scene_and_path(kind, scene_seed, traj_seed, spec.frames, spec.min_length, spec.look_around_deg)
    t1 = time.perf_counter()
    rgb, distance, sky = scene.render(path.c2w, spec.height, backend=spec.backend)
    t2 = time.perf_counter()
    meta = {"dataset_seed": spec.seed, "index": spec.index, "scene_kind": scene.kind, "scene_seed": scene.seed,
            "trajectory_seed": traj_seed, "path_length_m": round(path.length, 4), "camera_height_m": scene.camera_height,
            "min_length_m": scene.min_path_length if spec.min_length is None else spec.min_length,
            "look_around_deg": spec.look_around_deg, "triangles": scene.num_triangles,
            "scene_fingerprint": scene.fingerprint(), "generator_version": GENERATOR_VERSION,
            "sky": "sky pixels carry the distance to the sky dome and are flagged in distance.npz['sky']"}
    write_clip_atomic(folder, rgb, distance, path.c2w.numpy(), describe(scene), meta, sky=sky, distance_dtype=spec.distance_dtype)
    return {"index": spec.index, "skipped": False, "kind": scene.kind, "scene_s": t1 - t0, "render_s": t2 - t1,
            "write_s": time.perf_counter() - t2, "frames": spec.frames}


def _worker_init() -> None:
    torch.set_num_threads(1)  # one thread per worker: oversubscribed BLAS/OpenMP threads are far slower


def _run(args):
    out, spec = args
    return build_clip(out, spec)


def build_dataset(out: str | Path, clips: int, seed: int = 0, *, frames: int = 81, height: int = 256, workers: int = 1,
                  kinds: tuple[str, ...] = KINDS, backend: str = "auto", distance_dtype: str = "float16",
                  min_length: float | None = None, look_around_deg: float = 0.0, progress: bool = True) -> list[dict]:
    """Build (or resume) ``clips`` clips into ``out/00000``, ``out/00001``, ...

    Complete clips are skipped; leftover temporary folders of killed runs are removed.
    workers > 1 renders clips in parallel processes (CPU); with a CUDA backend use 1.
    Returns one summary dict per clip (timings, kind, or ``skipped``).
    """
    from tqdm import tqdm

    if clips < 0 or frames < 2 or height < 2 or workers < 1:
        raise InputError("clips must be >= 0, frames >= 2, height >= 2 and workers >= 1")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise InputError(f"unknown scene kind(s) {unknown}; expected some of {', '.join(KINDS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    specs = [ClipSpec(i, seed, frames, height, tuple(kinds), backend, distance_dtype, min_length, look_around_deg)
             for i in range(clips)]
    todo = [s for s in specs if not is_complete_clip(out / f"{s.index:05d}")]
    results = [{"index": s.index, "skipped": True} for s in specs if s not in todo]
    bar = tqdm(total=len(specs), initial=len(results), disable=not progress, unit="clip", desc="clips")
    if workers == 1 or len(todo) <= 1:
        for spec in todo:
            results.append(build_clip(out, spec))
            bar.update(1)
    else:
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe after torch started its threads
        with ctx.Pool(min(workers, len(todo)), initializer=_worker_init) as pool:
            for res in pool.imap_unordered(_run, [(out, s) for s in todo]):
                results.append(res)
                bar.update(1)
    bar.close()
    return sorted(results, key=lambda r: r["index"])
