"""Stabilise a shaky 360-degree video through a 3D cache of its keyframes (Pantheon360; ``scripts/stabilize360.py``).

``stabilize(StabilizeConfig(video="walk.mp4", out=DIR))`` runs, each step a resumable stage:

1. keyframes: every ``stride``-th frame (and the last) of the video, ``keyframe_NNNNN.png``;
2. their poses and distances: keyframe 0 is the world (view A: panorama + the depth backend,
   as image2world), the others are sparse views (:func:`~matrix_world.pipeline.views.views_stage`:
   registered against the keyframes just before them, distances in keyframe 0's units);
3. the smoothed path: one pose per video frame, Gaussian-weighted local fits of the keyframe
   poses (:func:`~matrix_world.trajectory.smooth_path`), frame 0 = keyframe 0;
4. the scaffold: the keyframes' meshes (the 3D cache) rendered along the smoothed path;
5. the video backend fills what the cache does not know -> ``video.mp4``, the stabilised video.

No reconstruction runs (``views2world.py`` makes a world from sparse views).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matrix_world.errors import InputError
from matrix_world.io import read_image, read_video, video_length, write_image
from matrix_world.rundir import RunDir
from matrix_world.runlock import run_lock
from matrix_world.trajectory import Trajectory, smooth_path


@dataclass
class StabilizeConfig:
    """Options of ``scripts/stabilize360.py``."""

    video: str = ""
    """A 360-degree equirectangular video (W = 2H)."""
    out: str | None = None
    """Run directory (default: outputs/<video name>-stabilized). Rerunning into it resumes."""
    stride: int = 8
    """Every stride-th frame is a keyframe of the 3D cache (and the last frame)."""
    sigma: float = 1.5
    """Smoothing width of the path, in keyframe intervals."""
    max_frames: int = 161
    """Stabilise at most this many frames from the start."""
    resolution: int | None = None
    """Output frame height (width = 2 x height); default: the video's height, at most 256 on the CPU backends."""
    video_backend: str = "fill"
    """What fills the parts the cache does not know: fill (no weights) | wan | auto."""
    depth_backend: str = "auto"
    """Distance of the keyframes: auto | moge | prior."""
    device: str = "auto"
    """auto (CUDA when present) | cpu | cuda | cuda:N"""
    seed: int = 0
    """Seed of the registration's sampling and of the video model."""
    threads: int | None = None
    """CPU threads for torch (default: usable cores minus the machine's load, at least 1)."""


def check_stabilize_inputs(config: StabilizeConfig) -> int:
    """The options and the video, checked before anything is written; returns the frame count used."""
    from matrix_world.pipeline.config import check_seed

    if not config.video or not Path(config.video).is_file():
        raise InputError(f"stabilize360 needs an existing 360-degree video, got {config.video!r}")
    if config.stride < 1 or config.max_frames < 2 or not (np.isfinite(config.sigma) and config.sigma > 0):
        raise InputError(f"--stride must be >= 1, --max-frames >= 2 and --sigma > 0; got {config.stride}, "
                         f"{config.max_frames}, {config.sigma}")
    if config.resolution is not None and not (32 <= config.resolution <= 2048 and config.resolution % 16 == 0):
        raise InputError(f"--resolution must be a multiple of 16 from 32 to 2048, got {config.resolution}")
    check_seed(config.seed)
    from matrix_world.runtime import check_device

    check_device(config.device)
    frames = min(video_length(config.video), config.max_frames)
    if frames < 2:
        raise InputError(f"{config.video} has {frames} frame(s); a video to stabilise needs at least 2")
    first = read_video(config.video, [0])[0]
    if first.shape[1] != 2 * first.shape[0]:
        raise InputError(f"{config.video} is {first.shape[1]}x{first.shape[0]}; expected a 360-degree "
                         "equirectangular video (W = 2H)")
    if (frames - 1) // config.stride < 1:
        raise InputError(f"--stride {config.stride} leaves one keyframe in {frames} frames; use a smaller stride")
    return frames


def keyframe_indices(frames: int, stride: int) -> list[int]:
    """0, stride, 2 stride, ... and the last frame (dropped when within stride / 2 of the one before)."""
    keys = list(range(0, frames, stride))
    if keys[-1] != frames - 1:
        if frames - 1 - keys[-1] < max(1, stride // 2) and len(keys) > 1:
            keys[-1] = frames - 1
        else:
            keys.append(frames - 1)
    return keys


def stabilize(config: StabilizeConfig, log=print) -> Path:
    """Stabilise ``config.video`` into ``<out>/video.mp4`` (module docstring); returns the run folder."""
    frames = check_stabilize_inputs(config)
    out = Path(config.out) if config.out else Path("outputs") / f"{Path(config.video).stem}-stabilized"
    with run_lock(out):
        return _stabilize(config, frames, out, log)


def _stabilize(config: StabilizeConfig, frames: int, out: Path, log) -> Path:
    from matrix_world.pipeline.config import WorldConfig
    from matrix_world.pipeline.context import StageContext, log_stage
    from matrix_world.pipeline.depth import depth_stage
    from matrix_world.pipeline.panorama import panorama_stage
    from matrix_world.pipeline.plan import make_plan
    from matrix_world.pipeline.scaffold import OCCLUSION_THRESHOLD, scaffold_stage
    from matrix_world.pipeline.video import video_stage
    from matrix_world.pipeline.views import view_cache, views_stage
    from matrix_world.runtime import apply_threads

    threads, why = apply_threads(config.threads)
    run = RunDir(out, seed=config.seed)
    run.set_inputs(video=config.video)
    keys = keyframe_indices(frames, config.stride)
    names = [f"keyframe_{k:05d}.png" for k in keys]
    t0 = time.perf_counter()
    log(f"stabilize360: {config.video}, {frames} frames, {len(keys)} keyframes (every {config.stride}) -> {out}")
    log(f"  threads: {threads} ({why})")
    # 1. keyframes
    with run.stage("keyframes", {"frames": frames, "keys": keys}, files={"video": config.video}, outputs=names,
                   backend="decode") as st:
        if not st.done:
            for name, image in zip(names, read_video(config.video, keys)):
                write_image(st.path(name), image.astype(np.float32) / 255.0)
    height = config.resolution or min(read_image(out / names[0]).shape[0], 256 if config.video_backend == "fill" else 480)
    world = WorldConfig(image=str(out / names[0]), panorama=True, views=tuple(str(out / n) for n in names[1:]),
                        trajectory="through", frames=frames, resolution=height, video_backend=config.video_backend,
                        depth_backend=config.depth_backend, recon_backend="lift", device=config.device, seed=config.seed,
                        preset="fast" if config.video_backend != "fill" else "preview")
    plan = make_plan(world)
    ctx = StageContext(run=run, device=plan.device, seed=config.seed, log=log)
    # 2. keyframe 0 as the world's panorama, the others as sparse views in its frame
    rgb = panorama_stage(ctx, plan.panorama, prompt="", image=world.image)
    depth = depth_stage(ctx, plan.depth, rgb)
    views = views_stage(ctx, world, plan.depth, rgb, depth, window=2)
    # 3. the smoothed path, one pose per frame
    started = time.perf_counter()
    with run.stage("trajectory", {"keys": keys, "sigma": config.sigma, "frames": frames}, inputs=["poses.json"],
                   outputs=["trajectory.json"], backend="smooth") as st:
        if not st.done:
            smooth_path(views.c2w, keys, frames, sigma=config.sigma).to_json(st.path("trajectory.json"))
    log_stage(ctx, st, "trajectory", started)
    traj = Trajectory.from_json(out / "trajectory.json")
    # 4. the keyframes' 3D cache along it, 5. filled by the video backend
    scaffold = scaffold_stage(ctx, plan.backends["scaffold"], plan.height, rgb, depth, traj,
                              **view_cache(views, traj, OCCLUSION_THRESHOLD))
    video_stage(ctx, dataclasses.replace(plan.video), scaffold, traj, "")
    run.manifest["stabilize"] = {"keyframes": keys, "sigma": config.sigma, "frames": frames,
                                 "shake": path_shake(views.c2w.numpy(), keys, traj.c2w.numpy())}
    run.write_manifest()
    log(f"stabilize360: done in {time.perf_counter() - t0:.1f} s -> {out / 'video.mp4'} "
        f"(keyframe path jitter {run.manifest['stabilize']['shake']['keyframes']:.4f}, "
        f"smoothed {run.manifest['stabilize']['shake']['smoothed']:.4f})")
    return out


def path_shake(key_c2w: np.ndarray, keys: list[int], c2w: np.ndarray) -> dict:
    """Jitter of a camera path: the mean norm of the second difference of the positions, per
    keyframe interval, for the keyframes' own poses and for the smoothed path at the keyframes."""
    def jitter(p: np.ndarray) -> float:
        return float(np.linalg.norm(np.diff(p, n=2, axis=0), axis=1).mean()) if len(p) > 2 else 0.0

    return {"keyframes": jitter(key_c2w[:, :3, 3]), "smoothed": jitter(c2w[keys, :3, 3])}
