"""Perspective video -> 360° video (Argus, ViewPoint) -> world: the video input adapter of the pipeline.

``scripts/video2pano.py`` runs :func:`video2pano`, ``scripts/video2world.py`` runs :func:`video2world`.
Steps (each a resumable stage of the run directory, DESIGN §1):

1. check the inputs (before anything is written): the video decodes and has >= 2 frames, --poses has
   one pose per frame, the options are in range;
2. ``trajectory.json``: the camera orientation of every frame relative to frame 0
   (:func:`matrix_world.orientation.estimate_orientations`, the FOV too when --fov is not given),
   or the --poses file; OpenCV c2w, world = frame 0's camera, rotation only unless the poses file
   has translations. ``meta`` holds the FOV and how it was found;
3. ``scaffold.npz`` (+ mp4s): the canvas, every frame pasted at its orientation
   (:func:`matrix_world.scaffold.canvas.paste_video`), in the scaffold layout;
4. ``video.npz`` / ``video.mp4``: the pipeline's video stage fills the canvas (``wan`` with the
   Matrix-3D LoRA conditioning, ``fill`` without weights), with Argus' blended decoding (seam
   ``blend``) and windows for long videos (``VideoConfig.window``). The 360° frames do not turn
   with the camera: their poses are [I | t] (t = 0 without translations);
5. ``views``: with --stabilize, ``stabilized.mp4`` (the input's FOV along a Gaussian-smoothed
   orientation path, the whole frame kept: what the camera did not see comes from the 360° video);
   with --look yaw,pitch, ``look.mp4`` (every frame turned by yaw right and pitch up from the
   camera's own direction).

:func:`video2world` continues with the pipeline's own stages: ``panorama.png`` = the first 360° frame,
the depth stage on it, the reconstruction stage on the 360° video along [I | t], preview and contact
sheet — the same functions :class:`~matrix_world.pipeline.world.WorldPipeline` runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matrix_world.errors import InputError
from matrix_world.pipeline.config import WorldConfig
from matrix_world.pipeline.context import StageContext, log_stage
from matrix_world.rundir import RunDir
from matrix_world.runlock import run_lock
from matrix_world.scaffold.build import Scaffold, load_scaffold
from matrix_world.trajectory import Trajectory

DEFAULT_PROMPT = "a 360-degree panoramic video"


@dataclass
class Video2PanoConfig:
    """Options of scripts/video2pano.py and scripts/video2world.py (their --help documents each)."""

    input: str
    out: str
    fov: float | None = None  # horizontal FOV of the input, degrees; None: estimated
    poses: str | None = None  # our trajectory JSON with one c2w per frame; None: estimated
    frames: int | None = None  # use the first N frames; None: all
    height: int | None = None  # 360° frame height; None: 480 for wan, 256 otherwise
    prompt: str = DEFAULT_PROMPT
    video_backend: str = "auto"
    representation: str = "erp"  # erp | viewpoint (what the video model sees)
    window: int | None = None  # frames per generation window; None: 81 for wan, all at once otherwise
    context_frames: int = 5
    stabilize: bool = False
    smooth: float = 4.0  # --stabilize: Gaussian sigma of the orientation path, frames
    look: str | None = None  # "yaw,pitch" degrees
    view_width: int | None = None  # width of the perspective renders; None: the input's (at most 960)
    preset: str = "fast"
    depth_backend: str = "auto"  # video2world
    recon_backend: str = "auto"  # video2world
    seed: int = 0
    device: str = "auto"
    memory: str = "auto"
    wan_model: str | None = None
    wan_lora: str | None = None
    steps: int | None = None  # denoising steps; None: the preset's
    force: bool = False  # rerun every stage

    def world_config(self) -> WorldConfig:
        """The world options the stage choosers read (the panorama is the video's: backend ``file``)."""
        return WorldConfig(prompt=self.prompt, preset=self.preset, panorama_backend="file", video_backend=self.video_backend,
                           depth_backend=self.depth_backend, recon_backend=self.recon_backend, resolution=self.height,
                           seed=self.seed, device=self.device, memory=self.memory, wan_model=self.wan_model,
                           wan_lora=self.wan_lora, out=self.out)


@dataclass
class VideoInput:
    """The checked input: frames [F, h, w, 3] uint8, fps, the poses file's trajectory (or None), look angles."""

    frames: np.ndarray
    fps: float
    poses: Trajectory | None
    look: tuple[float, float] | None
    orientation: Any = None  # matrix_world.orientation.Orientation, estimated before anything is written


# --------------------------------------------------------------------------- 1. inputs


def parse_look(spec: str | None) -> tuple[float, float] | None:
    """``"yaw,pitch"`` (degrees) -> (yaw, pitch); InputError otherwise."""
    if spec is None:
        return None
    parts = spec.split(",")
    try:
        yaw, pitch = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"--look {spec!r}: expected two numbers yaw,pitch in degrees, e.g. --look 180,0") from None
    if not (math.isfinite(yaw) and math.isfinite(pitch) and -90.0 <= pitch <= 90.0):
        raise InputError(f"--look {spec!r}: expected a finite yaw and a pitch in [-90, 90] degrees")
    return yaw, pitch


def check_video_input(config: Video2PanoConfig) -> VideoInput:
    """Everything that can be wrong with the input, found before anything is written."""
    from matrix_world.io import read_video, video_fps
    from matrix_world.trajectory import load_trajectory

    path = Path(config.input)
    if not path.is_file():
        raise InputError(f"video {path} does not exist")
    if config.fov is not None and not (math.isfinite(config.fov) and 1.0 <= config.fov <= 170.0):
        raise InputError(f"--fov {config.fov}: expected the horizontal field of view in degrees, in [1, 170]")
    if config.frames is not None and config.frames < 2:
        raise InputError(f"--frames {config.frames}: a 360° video needs at least 2 frames")
    if config.height is not None and not (64 <= config.height <= 2048 and config.height % 16 == 0):
        raise InputError(f"--height {config.height}: expected a multiple of 16 from 64 to 2048")
    if config.representation not in ("erp", "viewpoint"):
        raise InputError(f"--representation must be erp or viewpoint, got {config.representation!r}")
    if not (math.isfinite(config.smooth) and config.smooth >= 0):
        raise InputError(f"--smooth {config.smooth}: expected a number of frames >= 0")
    if config.steps is not None and config.steps < 1:
        raise InputError(f"--steps {config.steps}: expected a positive integer")
    if config.view_width is not None and not 16 <= config.view_width <= 4096:
        raise InputError(f"--view-width {config.view_width}: expected 16 to 4096 pixels")
    look = parse_look(config.look)
    frames = read_video(path) if config.frames is None else _read_first(path, config.frames)
    if len(frames) < 2:
        raise InputError(f"{path} has {len(frames)} frame; a 360° video needs a video of at least 2 frames "
                         "(for a single image use scripts/image2world.py)")
    poses = None
    if config.poses is not None:
        poses = load_trajectory(config.poses, rescale=False)
        if len(poses) != len(frames):
            raise InputError(f"--poses {config.poses} has {len(poses)} poses but the video has {len(frames)} frames"
                             f"{' (--frames)' if config.frames else ''}; expected one pose per frame")
    orientation = None
    if poses is None or config.fov is None:  # estimated here: a video it fails on is refused before the run exists
        from matrix_world.orientation import estimate_orientations

        orientation = estimate_orientations(frames, config.fov)
    return VideoInput(frames, video_fps(path) or 16.0, poses, look, orientation)


def _read_first(path: Path, count: int) -> np.ndarray:
    from matrix_world.io import read_video, video_length

    have = video_length(path)
    if have < count:
        raise InputError(f"--frames {count}: {path} has only {have} frames")
    return read_video(path, range(count))


# --------------------------------------------------------------------------- plan


def video_plan(config: Video2PanoConfig, device: torch.device, frames: int):
    """(VideoConfig, backend reason) of the video stage for this input: the stage's own ``choose`` and
    ``configure``, then Argus' blended decoding, the representation and the windows."""
    from matrix_world.pipeline import video

    world = config.world_config()
    backend, reason = video.choose(world, device)
    vconfig = video.configure(world, backend)
    window = config.window if config.window is not None else (81 if backend == "wan" and frames > 81 else None)
    vconfig = dataclasses.replace(vconfig, seam="blend", representation=config.representation, window=window,
                                  context_frames=config.context_frames,
                                  **({"num_inference_steps": config.steps} if config.steps else {}))
    vconfig.check_long_video()
    if backend == "wan" and (window is None or frames <= window) and (frames - 1) % 4:
        raise InputError(f"the Wan video model needs 4k+1 frames per call; the video has {frames}: pass --frames "
                         f"{4 * ((frames - 1) // 4) + 1}, or --window N (4k+1) for windows")
    if backend == "wan" and window is not None and (window - 1) % 4:
        raise InputError(f"--window {window}: the Wan video model needs 4k+1 frames per window (e.g. 81, 49, 17)")
    return vconfig, reason


# --------------------------------------------------------------------------- 2.-5. stages


def orientation_stage(ctx: StageContext, config: Video2PanoConfig, data: VideoInput) -> Trajectory:
    """-> ``trajectory.json``: the input camera's c2w per frame (world = frame 0's camera)."""
    from matrix_world.cameras import make_pose
    from matrix_world.orientation import estimate_orientations

    t0 = time.perf_counter()
    files = {"video": config.input, **({"poses": config.poses} if config.poses else {})}
    stage_config = {"fov": config.fov, "frames": len(data.frames), "poses": config.poses is not None}
    with ctx.run.stage("trajectory", stage_config, files=files, outputs=["trajectory.json"],
                       backend="file" if data.poses is not None else "features") as st:
        if not st.done:
            if data.poses is not None and config.fov is not None:
                meta: dict = {"fov_source": "--fov", "poses": "--poses"}
                c2w, fov = data.poses.c2w, float(config.fov)
            else:
                est = data.orientation if data.orientation is not None else estimate_orientations(data.frames, config.fov)
                fov = est.fov
                meta = {"fov_source": "estimated" if est.fov_estimated else "--fov", "estimate": est.info}
                if data.poses is not None:
                    c2w, meta["poses"] = data.poses.c2w, "--poses"
                else:
                    c2w = make_pose(est.rotations, torch.zeros(len(est.rotations), 3, dtype=torch.float64))
            meta.update(fov=fov, width=int(data.frames.shape[2]), height=int(data.frames.shape[1]),
                        translation="from --poses" if data.poses is not None else "not estimated (rotation only)")
            Trajectory(c2w, fps=data.fps, name=Path(config.input).name, meta=meta).to_json(st.path("trajectory.json"))
            st.info.update(frames=len(c2w), fov=round(fov, 3), fov_source=meta["fov_source"])
    log_stage(ctx, st, "trajectory", t0)
    return Trajectory.from_json(ctx.run.path / "trajectory.json")


def panorama_path(traj: Trajectory) -> Trajectory:
    """The 360° frames' poses: world-aligned (rotation I), at the camera positions of ``traj``."""
    c2w = traj.c2w.clone()
    c2w[:, :3, :3] = torch.eye(3, dtype=c2w.dtype)
    return dataclasses.replace(traj, c2w=c2w, name=f"{traj.name} (360° frames)")


def canvas_stage(ctx: StageContext, data: VideoInput, traj: Trajectory, height: int) -> Scaffold:
    """-> ``scaffold.npz`` (+ ``scaffold_rgb.mp4``, ``scaffold_mask.mp4``): the canvas of the input."""
    from matrix_world.pipeline.scaffold import build_and_write
    from matrix_world.scaffold.canvas import paste_video

    t0 = time.perf_counter()
    outputs = ["scaffold.npz", "scaffold_rgb.mp4", "scaffold_mask.mp4"]
    with ctx.run.stage("scaffold", {"height": height, "canvas": "paste_video"}, inputs=["trajectory.json"],
                       files={"video": ctx.run.manifest["inputs"]["video"]["path"]}, outputs=outputs, backend="canvas") as st:
        if not st.done:
            def build(on_chunk):  # the canvas in one chunk (the one writer of the scaffold files: build_and_write)
                pasted = paste_video(data.frames, traj.c2w[:, :3, :3], float(traj.meta["fov"]), height)
                on_chunk(pasted.rgb, pasted.mask)
                return pasted, None

            canvas, _, _ = build_and_write(st, traj.fps, build)
            st.info.update(frames=len(canvas), known_fraction=round(float(canvas.mask.mean()), 4))
    log_stage(ctx, st, "scaffold", t0)
    return load_scaffold(ctx.run.path / "scaffold.npz")


def render_views(video: np.ndarray, rotations: torch.Tensor, fov: float, width: int, height: int) -> np.ndarray:
    """Perspective frames [F, height, width, 3] uint8 cut from 360° frames [F, H, 2H, 3] uint8 along
    camera rotations [F, 3, 3] (world-aligned 360° frames)."""
    from matrix_world.cameras import crop_camera, intrinsics_from_fov
    from matrix_world.io import to_uint8

    K = intrinsics_from_fov(fov, width, height)
    out = np.empty((len(video), height, width, 3), np.uint8)
    for i, frame in enumerate(video):
        pano = torch.from_numpy(frame.astype(np.float32) / 255.0).permute(2, 0, 1)
        out[i] = to_uint8(crop_camera(pano, K, rotations[i], width, height).clamp(0, 1).permute(1, 2, 0).numpy())
    return out


def views_stage(ctx: StageContext, config: Video2PanoConfig, data: VideoInput, traj: Trajectory, video: np.ndarray) -> list[str]:
    """-> ``stabilized.mp4`` (--stabilize) and ``look.mp4`` (--look): perspective renders of the 360° video."""
    from matrix_world.cameras import rotation_from_yaw_pitch
    from matrix_world.io import write_video
    from matrix_world.orientation import smooth_rotations

    outputs = (["stabilized.mp4"] if config.stabilize else []) + (["look.mp4"] if data.look else [])
    if not outputs:
        return []
    t0 = time.perf_counter()
    h, w = data.frames.shape[1:3]
    width = config.view_width or min(w, 960)
    height = max(2, 2 * round(width * h / w / 2))
    rot = traj.c2w[:, :3, :3]
    with ctx.run.stage("views", {"stabilize": config.stabilize, "smooth": config.smooth, "look": data.look,
                                 "width": width}, inputs=["video.npz", "trajectory.json"], outputs=outputs,
                       backend="cpu") as st:
        if not st.done:
            fov = float(traj.meta["fov"])
            if config.stabilize:
                smooth = smooth_rotations(rot, config.smooth)
                write_video(st.path("stabilized.mp4"), render_views(video, smooth, fov, width, height), fps=traj.fps)
            if data.look:
                turned = rot @ rotation_from_yaw_pitch(*data.look)
                write_video(st.path("look.mp4"), render_views(video, turned, fov, width, height), fps=traj.fps)
            st.info.update(width=width, height=height)
    log_stage(ctx, st, "views", t0)
    return outputs


# --------------------------------------------------------------------------- the jobs


def video2pano(config: Video2PanoConfig, log=print, *, world: bool = False) -> RunDir:
    """Perspective video -> 360° video in ``config.out`` (the module docstring's steps 1-5); with
    ``world``, then depth, 3D Gaussians, preview and contact sheet (:func:`video2world`)."""
    from matrix_world.pipeline.plan import make_plan, resolve_device
    from matrix_world.runtime import apply_threads

    # 1. inputs and the plan (nothing is written before this passes)
    data = check_video_input(config)
    device = resolve_device(config.device)
    vconfig, reason = video_plan(config, device, len(data.frames))
    plan = make_plan(config.world_config()) if world else None
    apply_threads(None)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; expected a folder (created if missing)")
    with run_lock(out):
        run = RunDir(out, seed=config.seed, force=config.force)
        run.set_inputs(video=config.input, poses=config.poses)
        run.manifest["video2pano"] = dataclasses.asdict(config)
        ctx = StageContext(run=run, device=device, seed=config.seed, log=log)
        height = vconfig.working_height()
        log(f"video2pano: {len(data.frames)} frames {data.frames.shape[2]}x{data.frames.shape[1]} -> 360° video "
            f"{2 * height}x{height}, video backend {vconfig.backend} ({reason}), representation {vconfig.representation}")
        # 2. orientation of every frame (or the --poses file)
        traj = orientation_stage(ctx, config, data)
        log(f"  fov {traj.meta['fov']:.2f} deg ({traj.meta['fov_source']})")
        # 3. the canvas: every frame pasted at its orientation
        canvas = canvas_stage(ctx, data, traj, height)
        # 4. the 360° video: the video stage fills the canvas
        from matrix_world.pipeline.video import video_stage

        pano_traj = panorama_path(traj)
        frames = video_stage(ctx, vconfig, canvas, pano_traj, config.prompt)
        # 5. perspective renders of the result
        views_stage(ctx, config, data, traj, frames)
        if plan is not None:
            _world_stages(ctx, config, plan, canvas, pano_traj, frames)
        run.write_manifest()
    log(f"wrote {out}")
    return run


def video2world(config: Video2PanoConfig, log=print) -> RunDir:
    """Perspective video -> 360° video -> depth -> 3D Gaussians (``world.ply``) in ``config.out``."""
    return video2pano(config, log, world=True)


def _world_stages(ctx: StageContext, config: Video2PanoConfig, plan, canvas: Scaffold, pano_traj: Trajectory,
                  frames: np.ndarray) -> None:
    """The pipeline's own depth, reconstruction, preview and contact-sheet stages on the 360° video."""
    from matrix_world.io import read_image, write_image
    from matrix_world.pipeline.depth import depth_stage, make_depth_fn
    from matrix_world.pipeline.reconstruction import reconstruction_stage
    from matrix_world.pipeline.report import contact_sheet_stage, preview_stage

    # 6. the panorama of the world: the first 360° frame
    with ctx.run.stage("panorama", {"from": "video.npz frame 0"}, inputs=["video.npz"], outputs=["panorama.png"],
                       backend="video") as st:
        if not st.done:
            write_image(st.path("panorama.png"), frames[0])
    rgb = read_image(ctx.run.path / "panorama.png")
    # 7. its distance, then 8. the 3D Gaussians along the 360° frames' path
    depth = depth_stage(ctx, plan.depth, rgb)
    depth_fn = make_depth_fn(plan.depth, plan.device, canvas, pano_traj, ctx)
    gaussians = reconstruction_stage(ctx, plan.recon, frames, depth, pano_traj, depth_fn, depth_config=plan.depth.to_dict())
    # 9. what a person looks at
    preview_stage(ctx, gaussians, pano_traj, frames.shape[1])
    contact_sheet_stage(ctx, rgb, canvas, frames)
