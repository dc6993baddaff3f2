"""Stage 3, the camera path: a preset or a JSON file -> ``trajectory.json`` (world-frame c2w)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from matrix_world.pipeline.context import StageContext, log_stage
from matrix_world.errors import InputError
from matrix_world.trajectory import PRESETS, THROUGH, Trajectory, load_trajectory, through_path


def trajectory_stage(ctx: StageContext, spec: str, frames: int, distance: np.ndarray, *,
                     start_c2w: torch.Tensor | None = None, fps: float = 16.0,
                     views_c2w: torch.Tensor | None = None, snap: int = 1) -> Trajectory:
    """Preset name or JSON -> ``trajectory.json`` (world-frame c2w, frame 0 = ``start_c2w`` or I).

    distance: [H, W] the panorama's distance (presets scale the path to the free space ahead).
    views_c2w: [N, 4, 4] the poses of sparse views (``poses.json``), for ``spec == "through"``:
    a smooth path through all of them (:func:`~matrix_world.trajectory.through_path`), each
    view's anchor frame a multiple of ``snap`` where possible.
    """
    t0 = time.perf_counter()
    if spec == THROUGH:
        if views_c2w is None:
            raise InputError("--trajectory through passes through sparse views' poses: use scripts/views2world.py")
        config = {"trajectory": spec, "frames": frames, "fps": fps, "snap": snap}
        with ctx.run.stage("trajectory", config, inputs=["poses.json"], outputs=["trajectory.json"],
                           backend="through") as st:
            if not st.done:
                traj = through_path(views_c2w, frames, snap=snap, fps=fps)
                traj.to_json(st.path("trajectory.json"))
                st.info.update(frames=len(traj), name=traj.name, anchors=traj.meta["anchors"])
        log_stage(ctx, st, "trajectory", t0)
        return Trajectory.from_json(ctx.run.path / "trajectory.json")
    is_file = spec not in PRESETS
    config = {"trajectory": "file" if is_file else spec, "frames": frames, "fps": fps,
              "start_c2w": None if start_c2w is None else start_c2w.reshape(-1).tolist()}
    with ctx.run.stage("trajectory", config, inputs=["depth.npz"], files={"trajectory": spec} if is_file else {},
                       outputs=["trajectory.json"], backend="file" if is_file else "preset") as st:
        if not st.done:
            traj = load_trajectory(spec, distance, None if is_file else frames, fps=None if is_file else fps)
            if start_c2w is not None:  # chained segment: poses continue from the world's pose
                traj = dataclasses.replace(traj, c2w=start_c2w.to(torch.float64) @ traj.c2w)
            traj.to_json(st.path("trajectory.json"))
            st.info.update(frames=len(traj), name=traj.name, source=Path(spec).name if is_file else spec)
    log_stage(ctx, st, "trajectory", t0)
    return Trajectory.from_json(ctx.run.path / "trajectory.json")
