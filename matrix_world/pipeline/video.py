"""Stage 5, the panoramic video: the scaffold video + mask -> ``video.npz`` (+ ``video.mp4``).

:func:`choose` is the one ``auto`` rule of this stage; :func:`video_stage` runs the backend
(:mod:`matrix_world.generation.video`: ``wan``, ``fill``; ``oracle`` from
:mod:`matrix_world.datasets.synthetic_backends`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from matrix_world.generation.video import VideoConfig, generate_video
from matrix_world.io import in_background, load_npz, save_npz, to_uint8, write_video
from matrix_world.pipeline.config import WorldConfig
from matrix_world.pipeline.context import StageContext, log_stage
from matrix_world.rundir import small_info
from matrix_world.scaffold.build import Scaffold, resize_rgb
from matrix_world.trajectory import Trajectory

PREVIEW_HEIGHT = 256  # frame height of the no-weight video backends unless --resolution says otherwise
LATENTS = "video_latents.npz"  # latents [T, 16, h, w] float32 of the Wan model's video (normalised Wan-VAE space)


def choose(config: WorldConfig, device: torch.device) -> tuple[str, str]:
    """(backend, reason) of the video stage: ``wan`` on a GPU with the Wan weights (and the LoRA)
    on this machine, else ``fill``."""
    from matrix_world.generation.wan_lora import DISTILL_FILE, DISTILL_REPO, OFFICIAL_FILES, OFFICIAL_REPO
    from matrix_world.generation.wan_pipeline import HUB_IDS
    from matrix_world.generation.weights import weights_available

    if config.video_backend != "auto":
        return config.video_backend, "requested"
    if config.preset == "preview":
        return "fill", "preview preset: classical hole filling"
    if device.type != "cuda":
        return "fill", "auto: no CUDA device for the Wan model"
    res = "720p" if config.resolution == 720 else "480p"
    model = config.wan_model or HUB_IDS[res]
    if not weights_available(model):
        return "fill", f"auto: Wan weights '{model}' not found locally"
    if lora_of(config) == "matrix3d" and not weights_available(OFFICIAL_REPO, OFFICIAL_FILES[res]):
        return "fill", f"auto: Matrix-3D LoRA {OFFICIAL_REPO}/{OFFICIAL_FILES[res]} not found locally"
    if distill_of(config) == "lightx2v" and not weights_available(DISTILL_REPO, DISTILL_FILE):
        return "fill", f"auto: the turbo preset's distillation LoRA {DISTILL_REPO}/{DISTILL_FILE} not found locally"
    return "wan", "auto: CUDA and weights present"


def distill_of(config: WorldConfig) -> str | None:
    """The few-step video LoRA: lightx2v's under --preset turbo unless another one or "none" is given."""
    if config.preset != "turbo" or (config.distill_lora or "").lower() == "none":
        return None
    return config.distill_lora or "lightx2v"


def lora_of(config: WorldConfig) -> str | None:
    """The video LoRA: Matrix-3D's official one unless another one or "none" is given."""
    if config.wan_lora is None:
        return "matrix3d"
    return None if config.wan_lora.lower() == "none" else config.wan_lora


def frame_height(config: WorldConfig, backend: str) -> int:
    """Video frame height: --resolution, else 480 for the Wan model and 256 for the no-weight backends."""
    if config.resolution is not None:
        return config.resolution
    return 480 if backend == "wan" else PREVIEW_HEIGHT


def configure(config: WorldConfig, backend: str) -> VideoConfig:
    """The backend's configuration for this run: the preset sets the sampler (quality: 50 steps; fast: 30;
    turbo: the distillation's 4 steps without CFG) and whether ``auto`` speed options may approximate."""
    distill = distill_of(config)
    steps = 4 if distill else 50 if config.preset == "quality" else 30
    video = VideoConfig(backend=backend, height=config.resolution or 480, model=config.wan_model, lora=lora_of(config),
                        num_inference_steps=steps, guidance_scale=1.0 if distill else 5.0,
                        sigma_schedule="lightx2v" if distill else "matrix3d", distill_lora=distill,
                        memory=config.memory, seed=config.seed, attention=config.video_attention,
                        compile=config.video_compile, fp8=config.video_fp8, cache=config.video_cache,
                        cache_threshold=config.video_cache_threshold, cache_interval=config.video_cache_interval,
                        cfg_stop=config.video_cfg_stop,
                        approximate=config.preset in ("fast", "turbo"))
    return dataclasses.replace(video, height=frame_height(config, backend))


def video_stage(ctx: StageContext, config: VideoConfig, scaffold: Scaffold, traj: Trajectory, prompt: str, *,
                anchors: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Scaffold video + mask -> ``video.npz`` (frames [F, H, 2H, 3] uint8) and ``video.mp4``.

    anchors: {frame: rgb [h, 2h, 3] float32} input panoramas at those frames' poses (a path
    through sparse views): the video's frame there is the panorama, whatever the model made.
    """
    t0 = time.perf_counter()
    outputs = ["video.npz", "video.mp4"] + ([LATENTS] if config.backend == "wan" else [])
    hashed = {"prompt": prompt, **config.to_dict(), "generator_seed": ctx.seed,
              **({"anchors": sorted(anchors)} if anchors else {})}
    with ctx.run.stage("video", hashed,
                       inputs=["scaffold.npz", "trajectory.json"], outputs=outputs, backend=config.backend) as st:
        if not st.done:
            generate = generate_video if ctx.distributed is None else ctx.distributed.generate_video  # several GPUs
            result = generate(config, scaffold_rgb=scaffold.rgb.astype(np.float32) / 255.0,
                              scaffold_mask=scaffold.mask, prompt=prompt, c2w=traj.c2w,
                              device=ctx.device, generator=ctx.generator(5), pipeline=ctx.models.get("video"))
            frames = to_uint8(result.frames)
            for index, rgb in (anchors or {}).items():  # the input panoramas, exactly
                frames[index] = to_uint8(resize_rgb(np.asarray(rgb, np.float32), frames.shape[1]))
            mp4 = st.path("video.mp4")
            with in_background(lambda: write_video(mp4, frames, fps=traj.fps)):  # encoded while the npz is written
                save_npz(st.path("video.npz"), frames=frames)
                if LATENTS in outputs:  # the lrm reconstruction reads them: no second VAE encode
                    if result.latents is None:
                        raise RuntimeError("the wan video backend returned no latents")
                    save_npz(st.path(LATENTS), latents=result.latents.numpy().astype(np.float32))
            st.backend = result.info.get("backend", config.backend)
            st.info.update(small_info(result.info))
    log_stage(ctx, st, "video", t0)
    line = None if st.done else options_line(st.info)
    if line:
        ctx.log(line)
    return load_npz(ctx.run.path / "video.npz", keys=("frames",))["frames"]


def options_line(info: dict) -> str | None:
    """The video model's memory placement and speed options, each with why (what ``auto`` chose and its
    reason), as one log line from the stage info; None where the backend placed no model (fill, oracle)."""
    speed = info.get("speed")
    if not isinstance(speed, dict) or "memory_mode" not in info:
        return None
    reasons = speed.get("reasons") or {}
    parts = [f"memory {info['memory_mode']} ({info.get('memory_reason', '')})"]
    if info.get("pinning"):
        parts.append(str(info["pinning"]))
    parts += [f"{key} {speed.get(key)} ({reasons.get(key, '')})" for key in ("attention", "compile", "fp8", "cache")]
    return "  video options: " + "; ".join(parts)
