"""Video stage: scaffold video + masks + trajectory -> panoramic video (DESIGN §1).

Backends, chosen by name from :data:`VIDEO_BACKENDS` (``auto`` is resolved by the pipeline's
:func:`matrix_world.pipeline.video.choose`, the one rule):

* ``wan``    Wan2.1-I2V-14B + Matrix-3D LoRA conditioned on the scaffold (generation.wan_pipeline)
* ``fill``   no model: known scaffold pixels, last known colours along the trajectory, OpenCV
             inpainting wrapped in longitude (generation.video_fill)
* ``oracle`` ground-truth renders of a synthetic scene along the trajectory (benchmarks only);
             registered by :mod:`matrix_world.datasets.synthetic_backends`

Every backend returns frames at the working resolution ``height x 2*height`` (480p: 480 x 960,
720p: 720 x 1440); a scaffold of another size is resized first (colours premultiplied by the
mask, a pixel stays known only if all its source pixels are). Inputs follow DESIGN §3:
``scaffold_rgb [F, H, W, 3]`` float32 [0, 1] (0 where unknown; uint8 is divided by 255), ``scaffold_mask [F, H, W]``
bool (True = known), ``c2w [F, 4, 4]`` OpenCV camera-to-world, world = frame-0 camera.
Nothing is written to disk here; the run directory writes the result atomically.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from matrix_world.errors import InputError

RESOLUTIONS = {"480p": 480, "720p": 720}


@dataclass
class VideoConfig:
    backend: str = "auto"  # wan | fill | oracle (auto: resolved by the pipeline before the stage runs)
    resolution: str = "480p"  # 480p (480 x 960) | 720p (720 x 1440)
    height: int | None = None  # overrides resolution; width = 2 * height
    # wan
    model: str | None = None  # hub id or folder; None -> Wan-AI/Wan2.1-I2V-14B-{480P,720P}-Diffusers
    lora: str | None = "matrix3d"  # "matrix3d" = official LoRA for the resolution; a path/hub id; None = none
    lora_filename: str | None = None  # file inside a folder / hub repo given as ``lora``
    lora_strength: float = 1.0
    fuse_lora: bool = True
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    shift: float = 5.0
    prompt_suffix: str | None = None  # None -> Matrix-3D's quality suffix
    negative_prompt: str | None = None  # None -> Matrix-3D's negative prompt
    memory: str = "auto"  # auto | full | offload | lowvram
    vae_tiling: bool | None = None  # None: off in full memory, on in offload and lowvram (memory.VAE_TILE_PX)
    dtype: str = "bfloat16"
    cfg_batch: bool = False
    seam: str = "wrap"  # wrap | blend | none
    seam_pad_cols: int = 2
    late_roll_fraction: float = 0.0
    widen_input: int = 0  # extra zero-initialised input channels (training experiments)
    allow_download: bool = False
    # speed (generation.wan_speed: plan_speed is the auto rule; cfg_stop in PanoVideoPipeline)
    attention: str = "auto"  # auto | native | cudnn | flash | flash3 | sage
    compile: str = "auto"  # auto | off | blocks
    fp8: str = "auto"  # auto | off | rowwise
    cache: str = "off"  # off | fbc | taylorseer
    cache_threshold: float | None = None
    cache_interval: int | None = None  # taylorseer: full computations every this many steps (None: 2)
    cfg_stop: float = 1.0  # guidance in the first cfg_stop fraction of the steps only
    approximate: bool = False  # auto may pick an approximate attention kernel (Sage): the fast / turbo presets
    # few-step distillation (the turbo preset): a distilled LoRA stacked on ``lora``, its sampler
    distill_lora: str | None = None  # "lightx2v" (4 steps, guidance 1) or a file; None = none
    distill_strength: float = 1.0
    sigma_schedule: str = "matrix3d"  # matrix3d | lightx2v (4 steps) | scheduler
    # fill
    fill_method: str = "telea"  # telea | ns
    fill_radius: float = 3.0
    fill_max_age: int | None = None
    # randomness (used when no generator is passed) and the oracle's scene
    seed: int = 0
    # long videos (Argus' context-aware iterative sampling, generation.video_windows): None = one call
    # for all frames; else windows of this many frames, the first ``context_frames`` of each window
    # (at least) fully known from the previous window's output
    window: int | None = None
    context_frames: int = 5
    # what the model sees: "erp" (the equirect) or "viewpoint" (ViewPoint maps, matrix_world.viewpoint;
    # the scaffold is converted, the model's frames converted back); viewpoint_size: the map's side
    # (None: sqrt(2) x height rounded to 16, about the equirect's pixel count)
    representation: str = "erp"
    viewpoint_size: int | None = None

    def working_height(self) -> int:
        if self.height is not None:
            return int(self.height)
        if self.resolution not in RESOLUTIONS:
            raise InputError(f"resolution must be one of {sorted(RESOLUTIONS)} (or set height), got {self.resolution!r}")
        return RESOLUTIONS[self.resolution]

    def map_size(self) -> int:
        """Side of the ViewPoint map the model sees (representation "viewpoint")."""
        if self.viewpoint_size is not None:
            return int(self.viewpoint_size)
        return max(16, int(round(math.sqrt(2.0) * self.working_height() / 16.0)) * 16)

    def check_long_video(self) -> None:
        """One-line InputErrors for the window, context and representation options."""
        if self.representation not in REPRESENTATIONS:
            raise InputError(f"representation must be one of {', '.join(REPRESENTATIONS)}, got {self.representation!r}")
        if self.representation == "viewpoint" and self.map_size() % 16:
            raise InputError(f"the ViewPoint map size must be a multiple of 16, got {self.map_size()}")
        if self.window is not None:
            if self.window < 2:
                raise InputError(f"a generation window needs at least 2 frames, got {self.window}")
            if not 1 <= self.context_frames < self.window:
                raise InputError(f"context frames must be in [1, window - 1] = [1, {self.window - 1}], got {self.context_frames}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


REPRESENTATIONS = ("erp", "viewpoint")


@dataclass
class VideoResult:
    frames: np.ndarray  # [F, H, W, 3] float32 in [0, 1]
    info: dict = field(default_factory=dict)
    latents: torch.Tensor | None = None  # [T, 16, h, w] float32 normalised Wan-VAE latents (wan only)


# --------------------------------------------------------------------------- validation and resizing


def validate_inputs(scaffold_rgb, scaffold_mask, c2w, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes and return (rgb float32, mask bool, c2w float64) as numpy arrays."""
    rgb = np.asarray(scaffold_rgb.cpu() if isinstance(scaffold_rgb, torch.Tensor) else scaffold_rgb)
    rgb = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32, copy=False)
    mask = np.asarray(scaffold_mask.cpu() if isinstance(scaffold_mask, torch.Tensor) else scaffold_mask).astype(bool)
    poses = np.asarray(c2w.cpu() if isinstance(c2w, torch.Tensor) else c2w, dtype=np.float64)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise InputError(f"scaffold_rgb must be [F, H, W, 3], got shape {rgb.shape}")
    if mask.shape != rgb.shape[:3]:
        raise InputError(f"scaffold_mask must be [F, H, W] = {rgb.shape[:3]}, got {mask.shape}")
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise InputError(f"c2w must be [F, 4, 4], got shape {poses.shape}")
    if poses.shape[0] != rgb.shape[0]:
        raise InputError(
            f"the scaffold has {rgb.shape[0]} frames but the trajectory has {poses.shape[0]} poses; they must match "
            "(render the scaffold along the same trajectory)"
        )
    if rgb.shape[2] != 2 * rgb.shape[1]:
        raise InputError(f"scaffold frames must be equirectangular (W = 2H), got {rgb.shape[1]}x{rgb.shape[2]}")
    if height % 16:
        raise InputError(f"video height must be divisible by 16 (width = 2 x height), got {height}")
    if not np.isfinite(rgb).all() or not np.isfinite(poses).all():
        raise InputError("scaffold_rgb and c2w must be finite (found NaN or Inf)")
    if rgb.size and (rgb.min() < -1e-3 or rgb.max() > 1.0 + 1e-3):
        raise InputError(f"scaffold_rgb must be float in [0, 1] (or uint8), got values in [{rgb.min():.3g}, {rgb.max():.3g}]")
    return rgb, mask, poses


def resize_scaffold(rgb: np.ndarray, mask: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a scaffold video to ``height x 2*height`` without bleeding unknown pixels.

    rgb: [F, H, W, 3] float32, mask: [F, H, W] bool -> same at the new size.
    Colours are premultiplied by the mask and divided back; a resized pixel is known only if
    (almost) all of what it covers was known (area weight >= 0.999, as Matrix-3D's alpha test).
    """
    from matrix_world.equirect import resize_equirect

    if rgb.shape[1] == height:
        return rgb, mask
    m = torch.from_numpy(mask).float()[:, None]  # [F, 1, H, W]
    premul = torch.from_numpy(rgb).permute(0, 3, 1, 2) * m
    rgb_r = resize_equirect(premul, height, mode="area")
    m_r = resize_equirect(m, height, mode="area")
    known = m_r >= 0.999
    colour = torch.where(known, rgb_r / m_r.clamp_min(1e-6), torch.zeros_like(rgb_r)).clamp(0.0, 1.0)
    return colour.permute(0, 2, 3, 1).numpy().astype(np.float32), known[:, 0].numpy()


# --------------------------------------------------------------------------- backends


def _run_fill(config: VideoConfig, rgb, mask, c2w, *, layout: str = "erp", **_) -> VideoResult:
    from matrix_world.generation.video_fill import fill_video

    if layout == "viewpoint":  # no longitude to wrap and no rotation to follow on a ViewPoint map
        frames, info = fill_video(rgb, mask, None, radius=config.fill_radius, method=config.fill_method,
                                  max_age=config.fill_max_age, pad_cols=0)
        return VideoResult(frames, {"fill": info})
    frames, info = fill_video(rgb, mask, c2w, radius=config.fill_radius, method=config.fill_method, max_age=config.fill_max_age)
    return VideoResult(frames, {"fill": info})


def load_video_pipeline(config: VideoConfig, device, *, num_frames: int = 81, parallelize=None) -> tuple[Any, dict]:
    """Load the Wan pipeline (+ LoRA), place it for the memory mode, apply the speed options; returns (pipe, info).

    parallelize: context parallelism, applied between the attention backend and the other speed
    options (generation.wan_speed.apply_speed; generation.video_parallel builds it)."""
    from matrix_world.generation.wan_lora import load_lora
    from matrix_world.generation.wan_pipeline import (
        HUB_IDS,
        PanoVideoPipeline,
        widen_patch_embedding,
    )
    from matrix_world.generation.weights import resolve_pretrained

    height = config.working_height()
    res_name = {480: "480p", 720: "720p"}.get(height, config.resolution)
    model = config.model or HUB_IDS.get(res_name, HUB_IDS["480p"])
    folder = resolve_pretrained(model, what="Wan2.1 I2V video model", allow_download=config.allow_download)
    dtype = getattr(torch, config.dtype)
    pipe = PanoVideoPipeline.from_pretrained(
        folder, dtype={"default": dtype, "vae": torch.float32, "image_encoder": torch.float32}
    )
    pipe.use_flow_matching(config.shift)
    pipe.set_progress_bar_config(disable=True)
    widen_patch_embedding(pipe.transformer, config.widen_input)
    info: dict = {"model": model}
    if config.lora:
        source = f"matrix3d-{res_name}" if config.lora == "matrix3d" else config.lora
        info["lora"] = load_lora(
            pipe, source, filename=config.lora_filename, strength=config.lora_strength, fuse=config.fuse_lora,
            allow_download=config.allow_download,
        )
    if config.distill_lora:  # stacked: its own adapter, fused after the first
        info["distill_lora"] = load_lora(
            pipe, config.distill_lora, adapter_name="distill", strength=config.distill_strength, fuse=config.fuse_lora,
            alphas=True, allow_download=config.allow_download,
        )
    info.update(place_video_pipeline(pipe, config, device, num_frames=num_frames, parallelize=parallelize))
    return pipe, info


def place_video_pipeline(pipe, config: VideoConfig, device, *, num_frames: int, parallelize=None) -> dict:
    """Place a Wan pipeline for ``config.memory`` on ``device`` and apply the speed options, once: a
    loaded one (after its LoRAs) here, an injected one (StageContext.models) on its first use -> info."""
    from matrix_world.generation.memory import (
        apply_memory_mode,
        choose_memory_mode,
        estimate_memory_gb,
        free_gpu_gb,
    )

    if getattr(pipe, "_matrix_world_placed", None) is not None:
        return pipe._matrix_world_placed
    height = config.working_height()
    estimate = estimate_memory_gb(pipe, height=height, width=2 * height, num_frames=num_frames, cfg_batch=config.cfg_batch)
    free = free_gpu_gb(device)
    mode, reason = choose_memory_mode(config.memory, estimate_gb=estimate, free_gb=free)
    info = apply_memory_mode(pipe, mode, device, vae_tiling=config.vae_tiling, passes=transformer_passes(config))
    info.update({"memory_reason": reason, "memory_estimate_gb": {k: round(v, 1) for k, v in estimate.items()},
                 "free_gpu_gb": None if free is None else round(free, 1)})
    info["speed"] = apply_video_speed(pipe, config, device, memory_mode=info.get("memory_mode", mode), parallelize=parallelize)
    pipe._matrix_world_placed = info
    return info


def transformer_passes(config: VideoConfig) -> int:
    """Transformer passes of one video: the steps, twice in the guided ones (CFG)."""
    import math

    guided = math.ceil(config.cfg_stop * config.num_inference_steps) if config.guidance_scale > 1.0 else 0
    return config.num_inference_steps + guided


def apply_video_speed(pipe, config: VideoConfig, device, *, memory_mode: str, parallelize=None) -> dict:
    """The speed options of ``config`` (generation.wan_speed) planned for this device and applied -> info."""
    from matrix_world.generation.wan_speed import apply_speed, plan_speed

    plan = plan_speed(attention=config.attention, compile=config.compile, fp8=config.fp8, cache=config.cache,
                      cache_threshold=config.cache_threshold, cache_interval=config.cache_interval, device=torch.device(device),
                      passes=transformer_passes(config), memory_mode=memory_mode, approximate=config.approximate,
                      dtype=pipe.transformer.dtype)
    return apply_speed(pipe, plan, parallelize)


def _run_wan(config: VideoConfig, rgb, mask, c2w, *, prompt: str, device, generator, pipeline=None, layout: str = "erp",
             **_) -> VideoResult:
    from matrix_world.generation.memory import oom_guard, peak_memory_gb
    from matrix_world.generation.wan_pipeline import NEGATIVE_PROMPT, PROMPT_SUFFIX

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    info: dict = {}
    mode = config.memory if config.memory != "auto" else "full"
    with oom_guard(mode, what="loading the video model"):
        if pipeline is None:
            pipeline, info = load_video_pipeline(config, device, num_frames=rgb.shape[0])
        else:  # injected (or loaded for an earlier window / segment): placed and sped up on its first use
            info = dict(place_video_pipeline(pipeline, config, device, num_frames=rgb.shape[0]))
        mode = info.get("memory_mode", mode)
    scaffold = torch.from_numpy(rgb).permute(3, 0, 1, 2)[None]  # [1, 3, F, H, W]
    masks = torch.from_numpy(mask)[None]  # [1, F, H, W]
    suffix = PROMPT_SUFFIX if config.prompt_suffix is None else config.prompt_suffix
    negative = NEGATIVE_PROMPT if config.negative_prompt is None else config.negative_prompt
    if layout == "viewpoint":  # a ViewPoint map does not wrap: no seam handling, no rolls
        config = dataclasses.replace(config, seam="none", late_roll_fraction=0.0)
    with oom_guard(mode):
        out = pipeline(
            prompt + suffix, scaffold=scaffold, mask=masks, negative_prompt=negative,
            num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale, generator=generator,
            cfg_batch=config.cfg_batch, seam=config.seam, seam_pad_cols=config.seam_pad_cols,
            late_roll_fraction=config.late_roll_fraction, sigma_schedule=config.sigma_schedule, cfg_stop=config.cfg_stop,
            output_type="latent",
        )
        latents = out.frames  # [1, 16, T, h, w] normalised Wan-VAE latents (what the lrm backend reads)
        video = pipeline.decode_latents(latents, seam=config.seam, seam_pad_cols=config.seam_pad_cols)
    frames = video[0].permute(1, 2, 3, 0).float().cpu().numpy()  # [F, H, W, 3]
    info.update({"steps": config.num_inference_steps, "guidance_scale": config.guidance_scale, "shift": config.shift,
                 "sigma_schedule": config.sigma_schedule, "cfg_stop": config.cfg_stop, "seam": config.seam,
                 "peak_gpu_gb": peak_memory_gb(device)})
    return VideoResult(frames, info, latents=latents[0].transpose(0, 1).float().cpu())  # latents [T, 16, h, w]


VideoBackend = Callable[..., VideoResult]
VIDEO_BACKENDS: dict[str, VideoBackend] = {"wan": _run_wan, "fill": _run_fill}


def register_video_backend(name: str):
    """Add a backend ``fn(config, rgb, mask, c2w, *, prompt, device, generator, pipeline, scene, yaw)
    -> VideoResult`` (frames [F, H, W, 3] float32, its own info, latents where it has them) under ``name``."""
    def deco(fn: VideoBackend) -> VideoBackend:
        VIDEO_BACKENDS[name] = fn
        return fn

    return deco


def generate_video(
    config: VideoConfig,
    *,
    scaffold_rgb,  # [F, H, W, 3] float32 in [0, 1]
    scaffold_mask,  # [F, H, W] bool
    prompt: str,
    c2w,  # [F, 4, 4] camera-to-world, or a matrix_world.trajectory.Trajectory (its yaw is used by oracle)
    device="cpu",
    generator: torch.Generator | None = None,
    pipeline=None,
    scene=None,
) -> VideoResult:
    """Run the video stage. Returns frames [F, height, 2*height, 3] float32 and an info dict
    (backend and why, resolution, timings, memory mode and peak memory for wan, ...).

    pipeline: an already loaded PanoVideoPipeline to reuse (wan); scene: the synthetic scene
    for ``oracle`` (default: the procedural scene of the prompt and ``config.seed``).
    """
    height = config.working_height()
    yaw = float(getattr(c2w, "yaw", 0.0))
    c2w = getattr(c2w, "c2w", c2w)
    rgb, mask, poses = validate_inputs(scaffold_rgb, scaffold_mask, c2w, height)
    backend = config.backend
    if backend not in VIDEO_BACKENDS:
        raise InputError(f"video backend must be one of {', '.join(VIDEO_BACKENDS)}, got {backend!r} "
                         "(auto is resolved by matrix_world.pipeline.video.choose)")
    config.check_long_video()
    windowed = config.window is not None and rgb.shape[0] > config.window
    if config.representation == "viewpoint" and backend == "oracle":
        raise InputError("the oracle backend renders equirect ground truth; use representation 'erp' with it")
    if backend == "wan":
        from matrix_world.generation.wan_pipeline import check_frames_and_size

        side = config.map_size() if config.representation == "viewpoint" else None
        # 4k+1 frames per call: said, never rounded
        check_frames_and_size(config.window if windowed else rgb.shape[0], side or height, side or 2 * height)
    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    rgb, mask = resize_scaffold(rgb, mask, height)
    load_info: dict = {}
    if windowed and backend == "wan" and pipeline is None:  # load once for all windows
        pipeline, load_info = load_video_pipeline(config, device, num_frames=int(config.window or 0))

    def one_call(r: np.ndarray, m: np.ndarray, p: np.ndarray) -> VideoResult:
        return _generate_call(config, r, m, p, prompt=prompt, device=device, generator=generator, pipeline=pipeline,
                              scene=scene, yaw=yaw)

    if windowed:
        from matrix_world.generation.video_windows import generate_in_windows

        joined, joined_info = generate_in_windows(one_call, rgb, mask, poses, window=int(config.window or 0),
                                                  context=config.context_frames)
        out = VideoResult(joined, joined_info)
    else:
        out = one_call(rgb, mask, poses)
    info = {"backend": backend, "height": height, "width": 2 * height, "representation": config.representation,
            "frames": int(out.frames.shape[0]), "seconds": round(time.perf_counter() - start, 3), **load_info, **out.info}
    return VideoResult(frames=np.ascontiguousarray(out.frames, dtype=np.float32), info=info, latents=out.latents)


def _generate_call(config: VideoConfig, rgb: np.ndarray, mask: np.ndarray, poses: np.ndarray, **kwargs) -> VideoResult:
    """One backend call on equirect frames [F, H, 2H, 3] + mask [F, H, 2H], in the configured representation:
    for "viewpoint" the scaffold is converted to ViewPoint maps, the backend fills the maps, and its
    frames are converted back to the equirect (overlaps fused). Latents stay in the model's layout."""
    backend = VIDEO_BACKENDS[config.backend]
    if config.representation == "erp":
        return backend(config, rgb, mask, poses, **kwargs)
    from matrix_world.viewpoint import scaffold_to_viewpoint, viewpoint_to_erp

    size, height = config.map_size(), rgb.shape[1]
    erp = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2)  # [F, 3, H, 2H]
    vp_rgb, vp_mask = scaffold_to_viewpoint(erp, torch.from_numpy(mask), size)
    out = backend(config, vp_rgb.permute(0, 2, 3, 1).numpy(), vp_mask.numpy(), poses, layout="viewpoint", **kwargs)
    frames = viewpoint_to_erp(torch.from_numpy(np.ascontiguousarray(out.frames)).permute(0, 3, 1, 2), height)
    info = {**out.info, "viewpoint_size": size}
    return VideoResult(frames.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy(), info, latents=out.latents)
