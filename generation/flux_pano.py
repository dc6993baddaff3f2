"""The FLUX panorama pipeline: seam-aware text/photo -> 2:1 panorama with diffusers' FLUX.

Used by the ``flux`` backend (``panorama.py``) and the ``flux-fill`` one (``image2pano.py``).
:func:`make_panorama_pipeline_class` subclasses a diffusers FLUX pipeline with a
``panorama`` method: the last ``roll_fraction`` of the denoising steps see the latent rolled
circularly (``seamless.late_step_rolls`` on the transformer, which works on the packed
[B, h/2 * w/2, 64] tokens by unpacking them to a [B, 64, h/2, w/2] grid), and the VAE decodes
with wrapped latent columns (``seamless.wrap_decode``) or Argus-style
(``seamless.blended_decode``). :func:`load_flux_pipeline` loads FLUX.1-dev / FLUX.1-Fill-dev
(+ LoRA, memory mode); :func:`generate_with_pipeline` runs a loaded one.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from matrix_world.errors import InputError, require
from matrix_world.generation.flux_lora import fuse_lora_for_offload, load_lora
from matrix_world.generation.memory import MEMORY_MODES, apply_memory_mode, choose_memory_mode, estimate_flux_memory_gb, free_gpu_gb
from matrix_world.generation.pano_config import (
    DECODE_METHODS,
    DEFAULT_FLUX,
    DEFAULT_FLUX_FILL,
    WORLDGEN_TEMPLATE,
    PanoramaConfig,
    check_height,
    format_prompt,
)
from matrix_world.generation.seamless import blended_decode, late_step_rolls, seam_score, wrap_decode
from matrix_world.generation.weights import resolve_pretrained


def resolve_dtype(name: str, device) -> torch.dtype:
    """``PanoramaConfig.dtype`` -> a torch dtype; ``auto`` is bfloat16 on CUDA, float32 elsewhere."""
    device = torch.device(device)
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "float32": torch.float32, "fp32": torch.float32}
    if name not in table:
        raise InputError(f"dtype must be auto, bfloat16, float16 or float32, got {name!r}")
    return table[name]


# --------------------------------------------------------------------------- packed latents


def packed_grid_fns(batch: int, latent_h: int, latent_w: int) -> tuple[Callable, Callable]:
    """FLUX tokens [B, (h/2)(w/2), C] <-> a width-last grid [B, C, h/2, w/2] (C = 4 x latent channels).

    Token order is row-major over the (h/2, w/2) grid of 2x2 latent patches
    (``FluxPipeline._pack_latents``), so rolling the grid by k columns rolls the latent by 2k.
    """
    gh, gw = latent_h // 2, latent_w // 2

    def to_grid(tokens: Tensor) -> Tensor:
        return tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[-1]).permute(0, 3, 1, 2)

    def from_grid(grid: Tensor) -> Tensor:
        return grid.permute(0, 2, 3, 1).reshape(grid.shape[0], gh * gw, grid.shape[1])

    return to_grid, from_grid


def decode_packed_latents(pipe, latents: Tensor, height: int, width: int, method: str = "wrap", pad_cols: int = 2) -> Tensor:
    """Packed FLUX latents [B, L, C] -> images [B, 3, H, W] float32 in [0, 1], seam-aware."""
    if method not in DECODE_METHODS:
        raise InputError(f"decode must be one of {DECODE_METHODS}, got {method!r}")
    vae = pipe.vae
    z = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)  # [B, c, h, w]
    z = z / vae.config.scaling_factor + vae.config.shift_factor
    z = z.to(device=pipe._execution_device, dtype=vae.dtype)

    def decode(x: Tensor) -> Tensor:
        return vae.decode(x, return_dict=False)[0]

    with torch.no_grad():
        if method == "wrap":
            image = wrap_decode(decode, z, pad_cols)
        elif method == "blended":
            image = blended_decode(decode, z)
        else:
            image = decode(z)
    return (image.float() / 2 + 0.5).clamp(0, 1)


def dtype_kwarg(dtype: torch.dtype) -> dict:
    """``from_pretrained``'s dtype keyword: ``dtype`` in new diffusers, ``torch_dtype`` in older ones."""
    try:
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _diffusers():
    return require("diffusers", "pip install diffusers")


def make_panorama_pipeline_class(base: Any) -> Any:
    """A subclass of a diffusers FLUX pipeline whose ``panorama`` method adds rolls + seam-aware decoding."""

    class _Panorama(base):
        @torch.no_grad()
        def panorama(
            self,
            *,
            height: int,
            num_inference_steps: int,
            roll_fraction: float = 0.4,
            roll_generator: torch.Generator | None = None,
            decode: str = "wrap",
            wrap_pad_cols: int = 4,
            **kwargs,
        ) -> tuple[Tensor, list[int]]:
            """Generate 2:1 panoramas -> (images [B, 3, H, 2H] float32 in [0, 1], roll shift per step).

            kwargs go to the base pipeline's ``__call__`` (prompt, guidance_scale, generator, image, ...).
            """
            width = 2 * height
            # 1. token grid of this size (the transformer sees [B, h/2 * w/2, C] packed tokens)
            latent_h = 2 * (height // (self.vae_scale_factor * 2))
            latent_w = 2 * (width // (self.vae_scale_factor * 2))
            batch = kwargs.get("num_images_per_prompt", 1) or 1
            to_grid, from_grid = packed_grid_fns(batch, latent_h, latent_w)
            # 2. denoise; the late steps see a circularly rolled latent
            with late_step_rolls(self.transformer, num_steps=num_inference_steps, late_fraction=roll_fraction,
                                 width=latent_w // 2, generator=roll_generator, to_grid=to_grid,
                                 from_grid=from_grid) as shifts:
                latents = base.__call__(self, height=height, width=width, num_inference_steps=num_inference_steps,
                                        output_type="latent", return_dict=False, **kwargs)[0]
            # 3. seam-aware VAE decode
            images = decode_packed_latents(self, latents, height, width, decode, wrap_pad_cols)
            self.maybe_free_model_hooks()
            return images, list(shifts)

    _Panorama.__name__ = _Panorama.__qualname__ = f"{base.__name__}Panorama"
    return _Panorama


def flux_panorama_pipeline_class():
    """``FluxPipeline`` subclass with a ``panorama`` method (built lazily: diffusers is optional)."""
    return make_panorama_pipeline_class(_diffusers().FluxPipeline)


def load_flux_pipeline(config: PanoramaConfig, device, *, fill: bool | None = None):
    """Load FLUX.1-dev (or FLUX.1-Fill-dev) from a hub id or folder, add the LoRA, place it for the memory mode.

    fill: load FluxFillPipeline (default: when ``config.backend == 'flux-fill'``).

    Returns (pipe, info). Missing weights raise WeightsNotFoundError with the download command.
    """
    diffusers = _diffusers()
    fill = config.backend == "flux-fill" if fill is None else fill
    model = config.model or (DEFAULT_FLUX_FILL if fill else DEFAULT_FLUX)
    what = "FLUX.1-Fill-dev (image -> panorama)" if fill else "FLUX.1-dev (text -> panorama)"
    if config.memory not in ("auto", *MEMORY_MODES):
        raise InputError(f"memory mode must be auto or one of {', '.join(MEMORY_MODES)}, got {config.memory!r}")
    if torch.device(device).type != "cuda" and config.memory not in ("auto", "full"):
        raise InputError(f"memory mode {config.memory!r} needs a CUDA device; use memory='full' (or auto) on {device}")
    folder = resolve_pretrained(model, what=what, allow_download=config.allow_download)
    dtype = resolve_dtype(config.dtype, device)
    cls = make_panorama_pipeline_class(diffusers.FluxFillPipeline if fill else diffusers.FluxPipeline)
    try:
        pipe = cls.from_pretrained(folder, **dtype_kwarg(dtype))
    except (OSError, ValueError) as exc:
        raise InputError(f"{what}: cannot load a diffusers pipeline from {folder} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    pipe.set_progress_bar_config(disable=True)
    info: dict[str, Any] = {"model": model, "model_folder": folder, "dtype": str(dtype).replace("torch.", ""), "lora": None}
    if config.lora:
        info["lora"] = load_lora(pipe, config.lora, weight_name=config.lora_weight_name, scale=config.lora_scale,
                                 allow_download=config.allow_download)
        info["lora_scale"] = float(config.lora_scale)
    if config.turbo_lora:
        from matrix_world.generation.flux_lora import TURBO_ADAPTER

        info["turbo_lora"] = load_lora(pipe, config.turbo_lora, adapter_name=TURBO_ADAPTER, allow_download=config.allow_download)
    info.update(place_flux_pipeline(pipe, config, device))
    return pipe, info


def place_flux_pipeline(pipe, config: PanoramaConfig, device) -> dict:
    """Place a FLUX pipeline for ``config.memory`` on ``device`` (``auto``: by the memory estimate), once:
    a loaded one here, an injected one (already built, StageContext.models) on its first use -> info."""
    if getattr(pipe, "_matrix_world_placed", None) is not None:
        return pipe._matrix_world_placed
    info: dict[str, Any] = {}
    estimate = estimate_flux_memory_gb(pipe, height=config.height)
    mode, reason = choose_memory_mode(config.memory, estimate_gb=estimate, free_gb=free_gpu_gb(device))
    if (config.lora or config.turbo_lora) and mode == "lowvram":  # group offloading keeps its own weight copies: fuse first
        fuse_lora_for_offload(pipe)
        info["lora_fused"] = True
    passes = int(config.steps) * (2 if config.negative_prompt is not None or config.true_cfg_scale != 1.0 else 1)  # true CFG: two
    info.update(apply_memory_mode(pipe, mode, device, vae_tiling=False, passes=passes))
    info.update(memory_reason=reason, memory_estimate_gb={k: round(v, 1) for k, v in estimate.items()})
    pipe._matrix_world_placed = info
    return info


def _generator(config: PanoramaConfig, generator: torch.Generator | None) -> tuple[torch.Generator, torch.Generator]:
    """(latent generator, roll generator). The rolls get their own CPU stream, derived from the seed."""
    gen = generator if generator is not None else torch.Generator("cpu").manual_seed(int(config.seed))
    roll = torch.Generator("cpu").manual_seed(int(config.seed) * 7919 + 1)
    return gen, roll


def _oom_message(config: PanoramaConfig) -> str:
    nxt = {"auto": "lowvram", "full": "offload", "offload": "lowvram"}.get(config.memory)
    hint = f"retry with memory='{nxt}'" if nxt else "use a smaller height"
    return f"CUDA ran out of memory generating a {2 * config.height}x{config.height} panorama in memory mode '{config.memory}'; {hint}"


def generate_with_pipeline(pipe, config: PanoramaConfig, *, prompt: str | None, device,
                           generator: torch.Generator | None = None, extra: dict | None = None,
                           allow_empty_prompt: bool = False) -> tuple[np.ndarray, dict]:
    """Run a loaded FLUX panorama pipeline -> (rgb [H, 2H, 3] float32, info)."""
    fill = extra is not None and "image" in extra
    height = check_height(config.height, multiple=2 * pipe.vae_scale_factor)
    text = format_prompt(prompt, config.prompt_template if config.prompt_template is not None
                         else (WORLDGEN_TEMPLATE if fill else "{prompt}"), allow_empty=allow_empty_prompt)
    if config.decode not in DECODE_METHODS:
        raise InputError(f"decode must be one of {DECODE_METHODS}, got {config.decode!r}")
    if config.steps < 1:
        raise InputError(f"steps must be >= 1, got {config.steps}")
    guidance = config.guidance if config.guidance is not None else (30.0 if fill else 7.0)
    gen, roll_gen = _generator(config, generator)
    kwargs = dict(prompt=text, height=height, num_inference_steps=int(config.steps), generator=gen,
                  guidance_scale=float(guidance), max_sequence_length=int(config.max_sequence_length))
    if config.negative_prompt is not None or config.true_cfg_scale != 1.0:
        if fill:
            raise InputError("negative prompts are not supported by FluxFillPipeline; leave negative_prompt unset")
        kwargs["negative_prompt"] = config.negative_prompt or ""
        kwargs["true_cfg_scale"] = float(config.true_cfg_scale)
    kwargs.update(extra or {})
    start = time.perf_counter()
    try:
        images, shifts = pipe.panorama(roll_fraction=config.roll_fraction, roll_generator=roll_gen,
                                       decode=config.decode, wrap_pad_cols=config.wrap_pad_cols, **kwargs)
    except torch.OutOfMemoryError:
        raise InputError(_oom_message(config)) from None
    rgb = images[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    info = {"prompt": text, "height": height, "width": 2 * height, "steps": int(config.steps), "guidance": float(guidance),
            "seed": int(config.seed), "roll_fraction": config.roll_fraction, "roll_shifts": shifts,
            "decode": config.decode, "seconds": round(time.perf_counter() - start, 3),
            "seam_score": round(seam_score(rgb, width_dim=-2), 4)}
    return rgb, info
