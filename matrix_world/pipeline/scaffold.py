"""Stage 4, the scaffold: panorama + distance (+ the world's 3D cache) -> ``scaffold.npz`` along the path.

:func:`choose` picks the rasteriser (the one ``auto`` rule); :func:`scaffold_stage` runs the
one scaffold builder, :func:`matrix_world.scaffold.build.build_scaffold`, which
``scripts/render_scaffold.py`` and the video model's training pairs call too, and writes
the one layout (:func:`~matrix_world.scaffold.build.save_scaffold`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from matrix_world.io import in_background, write_video
from matrix_world.pipeline.context import StageContext, log_stage, progress_bar
from matrix_world.scaffold.build import Scaffold, build_scaffold, load_scaffold, save_scaffold
from matrix_world.scaffold.mesh import ScaffoldConfig
from matrix_world.scaffold.render import rasteriser_for
from matrix_world.trajectory import Trajectory

OCCLUSION_THRESHOLD = 0.05  # Matrix-3D's relative depth-jump threshold of the scaffold mesh
PREVIEW_PRESET = "ultrafast"  # x264 preset of the two previews: 81 frames of 480p in 0.7 s instead of 4.9 s (CPU)


def choose(config, device: torch.device) -> tuple[str, str]:
    """(rasteriser, reason) of the scaffold stage; ``config.scaffold_backend`` is auto | cpu | cuda."""
    return rasteriser_for(config.scaffold_backend, device)


def write_scaffold_outputs(st, scaffold: Scaffold, fps: float) -> dict[str, float]:
    """``scaffold.npz`` and, to look at, ``scaffold_rgb.mp4`` and ``scaffold_mask.mp4`` into the stage ``st``.

    The two previews are encoded in background threads (x264 ``ultrafast``) while the npz is
    written; the call returns only when all three files are complete, so the stage is never
    committed without them. Returns the seconds spent {"npz": ..., "write": ...} (write: all
    three, previews included).
    """
    t0 = time.perf_counter()
    rgb_path, mask_path = st.path("scaffold_rgb.mp4"), st.path("scaffold_mask.mp4")
    with in_background(lambda: write_video(rgb_path, scaffold.rgb, fps=fps, preset=PREVIEW_PRESET),
                       lambda: write_video(mask_path, np.multiply(scaffold.mask, 255, dtype=np.uint8), fps=fps,
                                           preset=PREVIEW_PRESET)):
        save_scaffold(st.path("scaffold.npz"), scaffold)
        npz = time.perf_counter() - t0
    return {"npz": round(npz, 4), "write": round(time.perf_counter() - t0, 4)}


def scaffold_stage(ctx: StageContext, backend: str, height: int, rgb: np.ndarray, depth: dict, traj: Trajectory, *,
                   cache_meshes: list | None = None, cache_files: dict | None = None) -> Scaffold:
    """Panorama + distance (+ the world's cached meshes) -> ``scaffold.npz`` along the trajectory.

    backend: the rasteriser (``cpu`` | ``cuda``, from :func:`choose`). depth: {"distance",
    "sky", optional "known"} of the panorama (a chained segment's start view may have holes).
    cache_meshes: ScaffoldMesh objects already in the world frame (earlier segments), rendered
    together with this panorama's mesh (the "3D cache"). cache_files: {key: path} of the
    files the cache meshes were built from (their contents join the stage hash).
    """
    t0 = time.perf_counter()
    mesh_config = {"occlusion_threshold": OCCLUSION_THRESHOLD}
    config = {"height": height, "mesh": mesh_config, "cache_meshes": len(cache_meshes or []),
              "rasteriser": backend}  # CPU and CUDA rasterisers agree only within tolerance
    outputs = ["scaffold.npz", "scaffold_rgb.mp4", "scaffold_mask.mp4"]
    with ctx.run.stage("scaffold", config, inputs=["panorama.png", "depth.npz", "trajectory.json"],
                       files=cache_files, outputs=outputs, backend=backend) as st:
        if not st.done:
            with progress_bar(len(traj), "scaffold", "frame") as bar:
                scaffold, mesh = build_scaffold(rgb, depth["distance"], traj.c2w, height, sky=depth["sky"],
                                                known=depth.get("known"), cache_meshes=cache_meshes or (),
                                                config=ScaffoldConfig(occlusion_threshold=OCCLUSION_THRESHOLD),
                                                backend=backend, device=ctx.device, on_frames=bar.update)
            render = time.perf_counter() - t0
            written = write_scaffold_outputs(st, scaffold, traj.fps)
            faces = int(mesh.faces.shape[0]) + sum(int(m.faces.shape[0]) for m in (cache_meshes or []))
            st.info.update(frames=len(scaffold), known_fraction=round(float(scaffold.mask.mean()), 4), mesh_faces=faces,
                           seconds={"mesh_and_render": round(render, 4), **written})
    log_stage(ctx, st, "scaffold", t0)
    # a reused stage reads its file; a fresh one returns what it wrote (the npz is lossless: the same arrays)
    return load_scaffold(ctx.run.path / "scaffold.npz") if st.done else scaffold
