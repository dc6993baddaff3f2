"""Stage 6, the 3D Gaussians: frames + poses + distances -> ``world.ply`` (+ ``world.spz`` / ``.splat``).

:func:`choose` is the one ``auto`` rule of this stage; :func:`reconstruction_stage` runs
:func:`matrix_world.reconstruction.stage.reconstruct` (``optimize``, ``lift``).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from matrix_world.pipeline.config import WorldConfig
from matrix_world.pipeline.context import StageContext, log_stage, progress_bar
from matrix_world.reconstruction.stage import ReconConfig, reconstruct
from matrix_world.scaffold.build import resize_nearest
from matrix_world.splat_io import load_splats, save_splats
from matrix_world.trajectory import Trajectory


def choose(config: WorldConfig, device: torch.device) -> tuple[str, str]:
    """(backend, reason) of the reconstruction stage: gsplat optimisation on a GPU where gsplat's
    kernels run, else one Gaussian per keyframe pixel."""
    from matrix_world.reconstruction.render import gsplat_problem

    if config.recon_backend != "auto":
        return config.recon_backend, "requested"
    if config.preset == "preview" or device.type != "cuda":
        return "lift", "preview preset or no GPU: one Gaussian per keyframe pixel (no training)"
    problem = gsplat_problem(device)
    if problem is not None:
        return "lift", f"gsplat cannot run on this GPU ({problem}): one Gaussian per keyframe pixel"
    return "optimize", "GPU present: gsplat optimisation"


def configure(config: WorldConfig, backend: str) -> ReconConfig:
    """The backend's configuration for this run (the preset sets the iterations)."""
    recon = ReconConfig(backend=backend)
    recon.lift.sky = "shell"  # a far shell of sky Gaussians: worlds look whole in any viewer
    # make_depth_fn already puts every keyframe's distance in the world's units (exact scaffold
    # geometry where known, the depth estimate scaled to agree elsewhere), so the keyframe-to-
    # keyframe scale + shift fit is not applied on top of it
    recon.keyframes.align_distances = False
    recon.optimize.iterations = 3000 if config.preset == "quality" else 1500
    return recon


def reconstruction_stage(ctx: StageContext, config: ReconConfig, frames: np.ndarray, depth: dict,
                         traj: Trajectory, depth_fn, *, exports: tuple[str, ...] = ("spz",),
                         depth_config: dict | None = None):
    """Frames [F, H, 2H, 3] uint8 + poses + distances -> ``world.ply`` (+ ``world.<ext>`` per export).

    depth_config: the configuration of the depth backend behind ``depth_fn`` (keyframe
    distances); it joins the stage hash with the seed, as both change the Gaussians.
    """
    from matrix_world.reconstruction.keyframes import select_keyframes

    t0 = time.perf_counter()
    outputs = ["world.ply"] + [f"world.{ext}" for ext in exports]
    hashed = {**_hashed_config(config), "seed": ctx.seed, "keyframe_depth": depth_config}
    with ctx.run.stage("reconstruction", hashed, inputs=["video.npz", "scaffold.npz", "depth.npz",
                       "trajectory.json"], outputs=outputs, backend=config.backend) as st:
        if not st.done:
            height = frames.shape[1]
            distance0 = resize_nearest(depth["distance"], height)
            sky0 = resize_nearest(depth["sky"].astype(np.float32), height) > 0.5
            count = len(select_keyframes(len(frames), config.keyframes.stride, config.keyframes.include_last)) - 1
            with progress_bar(count, "keyframe depth", "keyframe") as bar:
                def counted(index, frame):
                    out = depth_fn(index, frame)
                    bar.update(1)
                    return out

                gaussians, info = reconstruct(config, frames=frames.astype(np.float32) / 255.0, distance0=distance0,
                                              c2w=traj.c2w, masks=None, sky0=sky0, depth_fn=counted,
                                              device=ctx.device, generator=ctx.generator(6))
            gaussians = gaussians.to("cpu")
            for name in outputs:
                save_splats(st.path(name), gaussians)
            st.backend = info.get("backend", config.backend)
            st.info.update(num_gaussians=len(gaussians), keyframes=info.get("keyframes"),
                           seconds=info.get("seconds"))
    log_stage(ctx, st, "reconstruction", t0)
    return load_splats(ctx.run.path / "world.ply")


def _hashed_config(config: ReconConfig) -> dict:
    out = dataclasses.asdict(config)
    out.get("optimize", {}).pop("super_resolution", None)
    return out
