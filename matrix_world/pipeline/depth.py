"""Stage 2, the distance: ``panorama.png`` -> ``depth.npz`` (distance [H, W] float32, sky, valid).

:func:`choose` is the one ``auto`` rule of this stage; :func:`depth_stage` runs the
backend (:mod:`matrix_world.generation.depth`: ``moge``, ``prior``, ``file``; ``procedural``
from :mod:`matrix_world.datasets.synthetic_backends`). :func:`make_depth_fn` gives the
reconstruction the distance of any later video frame with the same backend.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from matrix_world.generation.depth import DepthConfig, estimate_depth, panorama_depth_from_model, prior_distance
from matrix_world.io import load_npz, save_npz
from matrix_world.pipeline import panorama
from matrix_world.pipeline.config import WorldConfig
from matrix_world.pipeline.context import StageContext, log_stage
from matrix_world.rundir import small_info


def choose(config: WorldConfig, device: torch.device) -> tuple[str, str]:
    """(backend, reason) of the depth stage: MoGe only on a GPU with its weights on this machine."""
    from matrix_world.generation.moge_backend import moge_available

    if config.depth_backend != "auto":
        return config.depth_backend, "requested"
    if config.distance:
        return "file", "a distance map was given"
    if panorama.choose(config, device)[0] == "procedural":
        return "procedural", "the procedural scene's exact distance"
    if config.preset == "preview":
        return "prior", "preview preset: ground-plane + far-dome heuristic"
    model = config.moge_model or DepthConfig().model
    if device.type != "cuda":
        return "prior", "no CUDA GPU for MoGe: ground-plane + far-dome heuristic"
    if not moge_available(model):
        return "prior", f"MoGe weights {model} not on this machine: ground-plane + far-dome heuristic"
    return "moge", f"MoGe weights {model} and a GPU found"


def configure(config: WorldConfig, backend: str) -> DepthConfig:
    """The backend's configuration for this run."""
    return DepthConfig(backend=backend, path=config.distance, prompt=config.prompt, seed=config.seed,
                       **({"model": config.moge_model} if config.moge_model else {}))


def depth_stage(ctx: StageContext, config: DepthConfig, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """``panorama.png`` -> ``depth.npz`` (distance [H, W] float32, sky, valid)."""
    t0 = time.perf_counter()
    files = {"distance": config.path} if config.path else {}
    with ctx.run.stage("depth", config.to_dict(), inputs=["panorama.png"], files=files,
                       outputs=["depth.npz"], backend=config.backend) as st:
        if not st.done:
            if config.backend == "moge":  # loaded once per run: the reconstruction's keyframes reuse it
                moge = ctx.model("depth", lambda: load_depth_model(config, ctx.device))
                result = panorama_depth_from_model(rgb, moge, config, device=ctx.device)
            else:
                result = estimate_depth(rgb, config, device=ctx.device)
            save_npz(st.path("depth.npz"), distance=result.distance.astype(np.float32), sky=result.sky,
                     valid=result.valid)
            st.backend = result.info.get("backend", config.backend)
            st.info.update(small_info(result.info))
    log_stage(ctx, st, "depth", t0)
    return load_npz(ctx.run.path / "depth.npz", keys=("distance", "sky", "valid"))


def load_depth_model(config: DepthConfig, device: torch.device):
    """MoGe for the depth stage and the keyframes (a LoadedMoGe on ``device``)."""
    from matrix_world.generation import moge_backend

    return moge_backend.load_moge(config.model, device=device, allow_download=config.allow_download)


def make_depth_fn(config: DepthConfig, device: torch.device, scaffold, traj, ctx: StageContext):
    """Distance of a video frame for the reconstruction's keyframes.

    Where the scaffold knows the frame (mask), its rendered distance is exact geometry; the
    rest comes from the depth backend (the procedural scene's truth, the ``prior`` heuristic
    or MoGe on the generated frame), scaled to agree with the known part (median ratio).
    scaffold: a :class:`~matrix_world.scaffold.build.Scaffold`. ctx: the run's context, whose
    MoGe (the depth stage's, or injected) is used, loaded there if the depth stage was reused;
    a parked (CPU) MoGe goes back to ``device`` on the first keyframe.
    """
    cache: dict = {}

    def depth_fn(index: int, frame: torch.Tensor):
        known_distance = scaffold.distance[index].astype(np.float32)  # this keyframe only, not the whole clip
        k = scaffold.mask[index] & np.isfinite(known_distance)
        h = k.shape[0]
        moge = None
        if config.backend == "moge":  # one MoGe for the depth stage and all keyframes
            moge = ctx.model("depth", lambda: load_depth_model(config, device))
            moge.model.to(device)  # back from the CPU where it waited during the video stage (no-op otherwise)
        if config.backend == "procedural" and "scene" not in cache:  # build the synthetic scene once
            from matrix_world.datasets.procedural import scene_from_prompt

            cache["scene"] = scene_from_prompt(config.prompt or "", config.seed)
        estimate, sky = estimate_frame_distance(config, device, traj.c2w[index], frame, h, moge,
                                                scene=cache.get("scene"))
        out = estimate.copy()
        if k.any():
            ratio = np.median(known_distance[k] / np.maximum(estimate[k], 1e-6))
            out = estimate * float(ratio)
            out[k] = known_distance[k]
        return torch.from_numpy(out), torch.from_numpy(sky)  # the depth backend decides what is sky

    return depth_fn


def estimate_frame_distance(config: DepthConfig, device: torch.device, c2w: torch.Tensor, frame, height: int,
                            moge=None, scene=None) -> tuple[np.ndarray, np.ndarray]:
    """The depth backend's (distance [height, 2*height] float32, sky [height, 2*height] bool) for a
    frame at pose ``c2w`` [4, 4] (its rgb is ``frame``): the procedural scene's truth, MoGe on the
    frame (``moge``: a LoadedMoGe), or the ``prior`` heuristic (no sky)."""
    if config.backend == "procedural":
        from matrix_world.datasets.procedural import scene_from_prompt

        scene = scene if scene is not None else scene_from_prompt(config.prompt or "", config.seed)
        # the run's world frame is the procedural panorama's camera, at scene.camera_c2w(0, 0)
        c2w_scene = scene.camera_c2w(0.0, 0.0) @ c2w.to(torch.float64)
        _, distance, sky = scene.render(c2w_scene[None], height)
        distance, sky = np.asarray(distance[0], dtype=np.float32), np.asarray(sky[0], dtype=bool)
        surface = np.isfinite(distance) & ~sky
        far = float(distance[surface].max()) if surface.any() else 100.0
        return np.where(surface, distance, 2.0 * far).astype(np.float32), ~surface
    if config.backend == "moge":
        rgb = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
        result = panorama_depth_from_model(np.ascontiguousarray(rgb, dtype=np.float32), moge, config, device=device)
        return result.distance, result.sky
    return (prior_distance(height, camera_height=config.camera_height, dome_radius=config.dome_radius),
            np.zeros((height, 2 * height), bool))
