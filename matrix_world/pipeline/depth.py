"""Stage 2, the distance: ``panorama.png`` -> ``depth.npz`` (distance [H, W] float32, sky, valid).

:func:`choose` is the one ``auto`` rule of this stage; :func:`depth_stage` runs the
backend (:mod:`matrix_world.generation.depth`: ``moge``, ``prior``, ``file``; ``procedural``
from :mod:`matrix_world.datasets.synthetic_backends`). :func:`make_depth_fn` gives the
reconstruction the distances of its keyframes with the same backend (:class:`KeyframeDepth`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from matrix_world.generation.depth import (DepthConfig, estimate_depth, fill_invalid, fill_unknown, panorama_depth_from_model,
                                           panorama_depths_from_model, prior_distance, views_touching)
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


LOWVRAM_DEPTH_BATCH = {"batch_size": 4, "keyframe_batch_size": 16}
"""MoGe views per forward under ``--memory lowvram``: a third of the default batches (12 / 48), whose
activations set the depth stage's peak (13.2 GB with MoGe-2 ViT-L on an H200, the whole lowvram run's
highest); the views are independent, so only the peak and the time change."""


def configure(config: WorldConfig, backend: str) -> DepthConfig:
    """The backend's configuration for this run."""
    return DepthConfig(backend=backend, path=config.distance, prompt=config.prompt, seed=config.seed,
                       **({"model": config.moge_model} if config.moge_model else {}),
                       **(LOWVRAM_DEPTH_BATCH if config.memory == "lowvram" else {}))


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


@dataclass
class KeyframeDepth:
    """The reconstruction's depth function (a ``DepthFn``): the distances of the keyframes, all in one call.

    Where the scaffold knows a frame (mask), its rendered distance is exact geometry; the rest
    comes from the depth backend (the procedural scene's truth, the ``prior`` heuristic or MoGe
    on the generated frames), scaled per frame to agree with the known part (median ratio).
    MoGe runs on views matched to the frames (:meth:`DepthConfig.keyframe_views`), all keyframes'
    views in batches of ``keyframe_batch_size``, their merges solved together; a keyframe whose
    known fraction is >= ``keyframe_known_fraction`` skips MoGe: its few unknown pixels are
    filled from the known distance (:func:`fill_unknown`), and of the other keyframes MoGe sees only the
    views that hold unknown pixels (``keyframe_skip_known_views``; the estimate is scaled to the known
    pixels those views cover).
    scaffold: a :class:`~matrix_world.scaffold.build.Scaffold`. ctx: the run's context, whose MoGe
    (the depth stage's, or injected) is used, loaded there if the depth stage was reused; a parked
    (CPU) MoGe goes back to ``device`` first. ``info`` says what the last call did.
    """

    config: DepthConfig
    device: torch.device
    scaffold: Any
    traj: Any  # Trajectory: c2w [F, 4, 4]
    ctx: StageContext
    info: dict = field(default_factory=dict)
    _scene: Any = None

    def __call__(self, indices: list[int], frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """indices: K frame indices; frames: [K, H, 2H, 3] float32 in [0, 1] (their rgb)
        returns (distance [K, H, 2H] float32, sky [K, H, 2H] bool) on the frames' device."""
        config, height = self.config, int(frames.shape[1])
        known_distance = self.scaffold.distance[indices].astype(np.float32)  # these keyframes only
        mask = self.scaffold.mask[indices]
        known = mask & np.isfinite(known_distance)  # [K, H, 2H]
        fraction = mask.reshape(len(indices), -1).mean(axis=1)
        threshold = config.keyframe_known_fraction
        skip = (np.zeros(len(indices), bool) if config.backend != "moge" or threshold is None
                else (fraction >= threshold) & known.reshape(len(indices), -1).any(axis=1))
        if config.backend == "moge" and config.keyframe_skip_known_views:
            skip |= known.reshape(len(indices), -1).all(axis=1)  # nothing unknown: no view to run
        run = [i for i in range(len(indices)) if not skip[i]]
        out = np.empty_like(known_distance)
        sky = np.zeros(known.shape, bool)
        moge = None
        if config.backend == "moge" and run:  # one MoGe for the depth stage and all keyframes
            moge = self.ctx.model("depth", lambda: load_depth_model(config, self.device))
            moge.model.to(self.device)  # back from the CPU where it waited during the video stage (no-op otherwise)
        if config.backend == "procedural" and self._scene is None:  # build the synthetic scene once
            from matrix_world.datasets.procedural import scene_from_prompt

            self._scene = scene_from_prompt(config.prompt or "", config.seed)
        views: dict[str, int] = {}  # views MoGe ran / skipped (keyframe_skip_known_views)
        if run:
            need = covered = None
            if config.backend == "moge" and config.keyframe_skip_known_views:  # MoGe only on views with unknown pixels
                need, covered = views_touching(~known[run], config)  # footprints depend on the FOV only
                views = {"views_run": int(need.sum()), "views_skipped": int((~need).sum())}
            estimate, est_sky = estimate_frame_distances(config, self.device, self.traj.c2w[[indices[i] for i in run]],
                                                         frames[run], height, moge, scene=self._scene, need=need)
            for j, i in enumerate(run):
                sky[i] = est_sky[j] & ~known[i]  # where the scaffold knows a distance there is geometry
                use = known[i] & ~est_sky[j]  # known pixels the estimate has a distance for ...
                if covered is not None:
                    use &= covered[j]  # ... inside the views that ran
                out[i] = estimate[j]
                if use.any():
                    ratio = np.median(known_distance[i][use] / np.maximum(estimate[j][use], 1e-6))
                    out[i] = estimate[j] * float(ratio)
                out[i][known[i]] = known_distance[i][known[i]]
        for i in np.flatnonzero(skip):
            sky[i] = mask[i] & ~np.isfinite(known_distance[i])  # the scaffold's own sky (nothing hit)
            out[i] = fill_invalid(fill_unknown(known_distance[i], known[i]), ~sky[i], config.sky_factor)
        size, tokens = config.keyframe_views(height)
        self.info = {"backend": config.backend, "keyframes": len(indices), "estimated": len(run),
                     "filled_from_scaffold": int(skip.sum()),
                     **views,
                     **({"view_size": size, "num_tokens": tokens, "batch_size": config.keyframe_batch_size}
                        if config.backend == "moge" else {})}
        return torch.from_numpy(out).to(frames.device), torch.from_numpy(sky).to(frames.device)


def make_depth_fn(config: DepthConfig, device: torch.device, scaffold, traj, ctx: StageContext) -> KeyframeDepth:
    """The distances of a clip's keyframes for the reconstruction (see :class:`KeyframeDepth`)."""
    return KeyframeDepth(config, device, scaffold, traj, ctx)


def estimate_frame_distances(config: DepthConfig, device: torch.device, c2w: torch.Tensor, frames, height: int,
                             moge=None, scene=None, need=None) -> tuple[np.ndarray, np.ndarray]:
    """The depth backend's (distance [K, height, 2*height] float32, sky [K, height, 2*height] bool) for
    K frames at poses ``c2w`` [K, 4, 4] (their rgb: ``frames`` [K, height, 2*height, 3] float in [0, 1]):
    the procedural scene's truth, MoGe on the frames (``moge``: a LoadedMoGe, on views matched to
    the frames: :meth:`DepthConfig.keyframe_views`; ``need`` [K, 12] bool: only these views, see
    :func:`~matrix_world.generation.depth.views_touching`), or the ``prior`` heuristic (no sky)."""
    k = len(c2w)
    if config.backend == "procedural":
        from matrix_world.datasets.procedural import scene_from_prompt

        scene = scene if scene is not None else scene_from_prompt(config.prompt or "", config.seed)
        # the run's world frame is the procedural panorama's camera, at scene.camera_c2w(0, 0)
        c2w_scene = scene.camera_c2w(0.0, 0.0) @ torch.as_tensor(c2w).to(torch.float64)
        _, distance, sky = scene.render(c2w_scene, height)
        distance, sky = np.asarray(distance, dtype=np.float32), np.asarray(sky, dtype=bool)
        out = np.empty_like(distance)
        for i in range(k):
            surface = np.isfinite(distance[i]) & ~sky[i]
            far = float(distance[i][surface].max()) if surface.any() else 100.0
            out[i] = np.where(surface, distance[i], 2.0 * far)
        return out, ~(np.isfinite(distance) & ~sky)
    if config.backend == "moge":
        size, tokens = config.keyframe_views(height)
        views = replace(config, view_size=size, num_tokens=tokens, batch_size=config.keyframe_batch_size)
        results = panorama_depths_from_model(frames, moge, views, device=device, need=need)
        return np.stack([r.distance for r in results]), np.stack([r.sky for r in results])
    prior = prior_distance(height, camera_height=config.camera_height, dome_radius=config.dome_radius)
    return np.repeat(prior[None], k, axis=0), np.zeros((k, height, 2 * height), bool)
