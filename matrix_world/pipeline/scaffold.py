"""Stage 4, the scaffold: panorama + distance (+ the world's 3D cache) -> ``scaffold.npz`` along the path.

:func:`choose` picks the rasteriser (the one ``auto`` rule); :func:`scaffold_stage` runs the
one scaffold builder, :func:`matrix_world.scaffold.build.build_scaffold`, which
``scripts/render_scaffold.py`` and the video model's training pairs call too, and writes
the one layout (:func:`~matrix_world.scaffold.build.save_scaffold`).
"""

from __future__ import annotations

import functools
import queue
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from matrix_world.io import in_background, write_video
from matrix_world.pipeline.context import StageContext, log_stage, progress_bar
from matrix_world.scaffold.build import Scaffold, build_scaffold, load_scaffold, save_scaffold
from matrix_world.scaffold.mesh import ScaffoldConfig, ScaffoldMesh
from matrix_world.scaffold.render import rasteriser_for
from matrix_world.trajectory import Trajectory

OCCLUSION_THRESHOLD = 0.05  # Matrix-3D's relative depth-jump threshold of the scaffold mesh
PREVIEW_PRESET = "ultrafast"  # x264 preset of the two previews: 81 frames of 480p in 0.7 s instead of 4.9 s (CPU)


def choose(config, device: torch.device) -> tuple[str, str]:
    """(rasteriser, reason) of the scaffold stage; ``config.scaffold_backend`` is auto | cpu | cuda."""
    return rasteriser_for(config.scaffold_backend, device)


def build_and_write(st, fps: float, build: Callable[..., tuple[Scaffold, ScaffoldMesh]]) \
        -> tuple[Scaffold, ScaffoldMesh, dict[str, float]]:
    """Run ``build(on_chunk=...)`` (a :func:`build_scaffold` call) and write the stage's files into ``st``:
    ``scaffold.npz`` and, to look at, ``scaffold_rgb.mp4`` and ``scaffold_mask.mp4``.

    The previews are encoded in two background threads (x264 ``ultrafast``) from each chunk of
    frames as soon as it is rendered, so they cost little beyond the render and the npz write;
    the call returns only when all three files are complete (the stage is never committed
    without them). Returns (scaffold, mesh, seconds {"mesh_and_render", "npz", "write"}), write:
    from the end of the render until all three files are complete.
    """
    rgb_path, mask_path = st.path("scaffold_rgb.mp4"), st.path("scaffold_mask.mp4")
    rgb_chunks: queue.SimpleQueue = queue.SimpleQueue()
    mask_chunks: queue.SimpleQueue = queue.SimpleQueue()

    def on_chunk(rgb: np.ndarray, mask: np.ndarray) -> None:
        rgb_chunks.put(rgb)
        mask_chunks.put(mask)

    t0 = time.perf_counter()
    with in_background(
        lambda: write_video(rgb_path, _drain(rgb_chunks), fps=fps, preset=PREVIEW_PRESET),
        lambda: write_video(mask_path, (np.multiply(m, 255, dtype=np.uint8) for m in _drain(mask_chunks)), fps=fps,
                            preset=PREVIEW_PRESET),
    ):
        try:
            scaffold, mesh = build(on_chunk=on_chunk)
        finally:  # the writers end with what they got (a failed build fails the stage anyway)
            rgb_chunks.put(None)
            mask_chunks.put(None)
        render = time.perf_counter() - t0
        save_scaffold(st.path("scaffold.npz"), scaffold)
        npz = time.perf_counter() - t0 - render
    seconds = {"mesh_and_render": render, "npz": npz, "write": time.perf_counter() - t0 - render}
    return scaffold, mesh, {k: round(v, 4) for k, v in seconds.items()}


def _drain(chunks: queue.SimpleQueue) -> Iterator[np.ndarray]:
    """The chunks put into ``chunks`` until None."""
    while (chunk := chunks.get()) is not None:
        yield chunk


def scaffold_stage(ctx: StageContext, backend: str, height: int, rgb: np.ndarray, depth: dict, traj: Trajectory, *,
                   cache_meshes: list | None = None, cache_files: dict | None = None,
                   anchors: dict | None = None, drop_sky: bool = False) -> Scaffold:
    """Panorama + distance (+ the world's cached meshes) -> ``scaffold.npz`` along the trajectory.

    backend: the rasteriser (``cpu`` | ``cuda``, from :func:`choose`). depth: {"distance",
    "sky", optional "known"} of the panorama (a chained segment's start view may have holes).
    cache_meshes: ScaffoldMesh objects already in the world frame (earlier segments), rendered
    together with this panorama's mesh (the "3D cache"). cache_files: {key: path} of the
    files the cache meshes were built from (their contents join the stage hash). anchors:
    {frame: (rgb, distance)} of the other input panoramas on the path (sparse views; their
    files are among ``cache_files``): those frames are the panoramas themselves, all known.
    drop_sky: the panorama's mesh without its sky triangles (a cache of several views).
    """
    t0 = time.perf_counter()
    mesh_config = {"occlusion_threshold": OCCLUSION_THRESHOLD}
    config = {"height": height, "mesh": mesh_config, "cache_meshes": len(cache_meshes or []),
              "rasteriser": backend}  # CPU and CUDA rasterisers agree only within tolerance
    if anchors or drop_sky:
        config.update(anchors=sorted(anchors or {}), drop_sky=drop_sky)
    outputs = ["scaffold.npz", "scaffold_rgb.mp4", "scaffold_mask.mp4"]
    with ctx.run.stage("scaffold", config, inputs=["panorama.png", "depth.npz", "trajectory.json"],
                       files=cache_files, outputs=outputs, backend=backend) as st:
        if not st.done:
            with progress_bar(len(traj), "scaffold", "frame") as bar:
                scaffold, mesh, seconds = build_and_write(st, traj.fps, functools.partial(
                    build_scaffold, rgb, depth["distance"], traj.c2w, height, sky=depth["sky"], known=depth.get("known"),
                    cache_meshes=cache_meshes or (), anchors=anchors, drop_sky=drop_sky,
                    config=ScaffoldConfig(occlusion_threshold=OCCLUSION_THRESHOLD),
                    backend=backend, device=ctx.device, on_frames=bar.update))
            faces = int(mesh.faces.shape[0]) + sum(int(m.faces.shape[0]) for m in (cache_meshes or []))
            st.info.update(frames=len(scaffold), known_fraction=round(float(scaffold.mask.mean()), 4), mesh_faces=faces,
                           seconds=seconds)
    log_stage(ctx, st, "scaffold", t0)
    # a reused stage reads its file; a fresh one returns what it wrote (the npz is lossless: the same arrays)
    return load_scaffold(ctx.run.path / "scaffold.npz") if st.done else scaffold
