"""Panorama stage: text (or a photo) -> a 2:1 equirectangular RGB panorama.

Backends (``PanoramaConfig.backend``):

* ``flux``        text -> panorama with FLUX.1-dev (diffusers ``FluxPipeline``, hub id or local
                  folder) + an optional panorama LoRA (Matrix-3D's
                  ``text2panoimage_lora.safetensors`` by default when ``lora="matrix3d"``).
* ``flux-fill``   photo -> panorama with FLUX.1-Fill-dev (see :mod:`image2pano`).
* ``file``        a user panorama (2:1 image file or array), converted to float RGB.
* ``photo``       no model: the photo placed on the sphere, the rest filled classically.
* ``procedural``  a seeded synthetic scene, registered by :mod:`matrix_world.datasets.synthetic_backends`.

``auto`` is resolved by the pipeline (:func:`matrix_world.pipeline.panorama.choose`, the one rule).

Seams (DESIGN: longitude wraps): the last ``roll_fraction`` of the denoising steps see the
latent rolled circularly by a random number of columns (``seamless.late_step_rolls`` on the
FLUX transformer, which works on the packed [B, h/2 * w/2, 64] tokens by unpacking them to a
[B, 64, h/2, w/2] grid), and the VAE decodes with wrapped latent columns
(``seamless.wrap_decode``) or Argus-style (``seamless.blended_decode``). The poles are left
as the model produces them.

Sizes: height is a multiple of 16 (VAE 8x, 2x2 token packing), width = 2 * height, ``MAX_HEIGHT`` = 1024 (a 2048x1024 panorama, 8192 tokens). Larger requests are rejected:
FLUX is trained around 1 MP and memory grows quadratically with attention; upscale afterwards.

Prompts: ``prompt_template`` is a format string with ``{prompt}``. The default for ``flux`` is
``"{prompt}"`` (Matrix-3D passes the user prompt unchanged to its LoRA);
:data:`WORLDGEN_TEMPLATE` is the template Matrix-3D uses for image -> panorama.
A negative prompt needs ``true_cfg_scale > 1`` (FluxPipeline's true CFG, two passes per step).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from matrix_world.errors import InputError, require
from matrix_world.generation.seamless import blended_decode, late_step_rolls, seam_score, wrap_decode
from matrix_world.generation.flux_lora import (  # noqa: F401  (re-exported: the panorama stage's LoRA API)
    LORA_ADAPTER,
    fuse_lora_for_offload,
    load_lora,
    resolve_lora,
    unload_lora,
)
from matrix_world.generation.weights import WeightsNotFoundError, resolve_pretrained

DEFAULT_FLUX = "black-forest-labs/FLUX.1-dev"
DEFAULT_FLUX_FILL = "black-forest-labs/FLUX.1-Fill-dev"
WORLDGEN_TEMPLATE = "A high quality 360 panorama photo of {prompt}, HDR, RAW, 360 consistent, omnidirectional"
MAX_HEIGHT = 1024
DECODE_METHODS = ("wrap", "blended", "plain")


@dataclass
class PanoramaConfig:
    """Options of the panorama stage (one dataclass for all backends; unused fields are ignored)."""

    backend: str = "flux"  # flux | flux-fill | file | photo | procedural (auto: resolved by the pipeline)
    model: str | None = None  # hub id or folder; None -> FLUX.1-dev (flux) / FLUX.1-Fill-dev (flux-fill)
    lora: str | None = None  # LoRA .safetensors file, folder, hub id, or "matrix3d"
    lora_weight_name: str | None = None  # file inside a LoRA folder / hub repo
    lora_scale: float = 1.0  # adapter weight (strength)
    height: int = 512  # output is height x 2*height
    steps: int = 50
    guidance: float | None = None  # None -> 7.0 (flux, Matrix-3D) / 30.0 (flux-fill)
    true_cfg_scale: float = 1.0  # > 1 enables the negative prompt (two transformer passes per step)
    negative_prompt: str | None = None
    prompt_template: str | None = None  # None -> "{prompt}" (flux) / WORLDGEN_TEMPLATE (flux-fill)
    seed: int = 0
    roll_fraction: float = 0.4  # last 40% of the steps are rolled (Matrix-3D)
    decode: str = "wrap"  # wrap | blended | plain
    wrap_pad_cols: int = 4  # latent columns wrapped on each side (Matrix-3D: 2; 4 halved the border error on the tiny VAE)
    memory: str = "auto"  # auto | full | offload | lowvram (generation.memory; auto: the fastest that fits)
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bfloat16 | float16 | float32
    max_sequence_length: int = 512  # T5 tokens
    allow_download: bool = False  # let huggingface_hub download missing weights
    # image -> panorama (flux-fill)
    fov: float | None = None  # horizontal FOV of the photo in degrees; None -> MoGe estimate, else 60
    fov_model: str | None = "Ruicheng/moge-2-vitl-normal"  # MoGe used to estimate the FOV (None: never)
    mask_erode: int = 4  # pixels (at the output size) of the photo's border that are regenerated
    blend_width: int = 8  # pixels over which the kept photo fades into the generated surround
    # file backend
    path: str | None = None  # panorama file for backend "file" (or pass image=)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PanoramaResult:
    rgb: np.ndarray  # [H, 2H, 3] float32 in [0, 1]
    info: dict = field(default_factory=dict)  # backend, model, lora, seed, seam score, timings, ...
    mask: np.ndarray | None = None  # [H, 2H] bool: pixels copied from an input photo (flux-fill), else None


# --------------------------------------------------------------------------- input checks


def check_height(height: int, multiple: int = 16) -> int:
    """Validate a panorama height for the FLUX backends (width is 2 * height)."""
    if not isinstance(height, (int, np.integer)) or isinstance(height, bool):
        raise InputError(f"panorama height must be an integer, got {height!r}")
    if height > MAX_HEIGHT:
        raise InputError(
            f"panorama height {height} is above the limit of {MAX_HEIGHT} ({2 * MAX_HEIGHT}x{MAX_HEIGHT}); "
            "generate at <= 1024 and upscale the result"
        )
    if height <= 0 or height % multiple:
        lower = max(multiple, height // multiple * multiple)
        raise InputError(f"panorama height must be a positive multiple of {multiple}, got {height} (try {lower} or {lower + multiple})")
    return int(height)


def format_prompt(prompt: str | None, template: str | None, *, allow_empty: bool) -> str:
    """Apply a prompt template (a format string with ``{prompt}``); reject an empty prompt unless allowed."""
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"prompt must be text, got {type(prompt).__name__}")
    text = (prompt or "").strip()
    if not text and not allow_empty:
        raise InputError("the prompt is empty; text -> panorama needs a description (an empty prompt is allowed only with an input image)")
    template = template or "{prompt}"
    if "{prompt}" not in template:
        raise InputError(f"prompt template must contain '{{prompt}}', got {template!r}")
    if not text:
        return ""
    return template.replace("{prompt}", text)


def as_rgb_image(image, *, what: str = "image") -> np.ndarray:
    """A path, PIL image, numpy array (uint8 or float [0,1]) or tensor -> float32 [H, W, 3] in [0, 1]."""
    if isinstance(image, (str, Path)):
        from matrix_world.io import read_image

        return read_image(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, Tensor):
        image = image.detach().cpu().float().numpy()
        if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
            image = image.transpose(1, 2, 0)
    if not isinstance(image, np.ndarray):
        raise InputError(f"{what} must be an image file path, a PIL image or an array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{what} must be an RGB image [H, W, 3], got an array of shape {tuple(image.shape)}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype.kind != "f":
        raise InputError(f"{what} must be uint8 or float in [0, 1], got dtype {image.dtype}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all() or image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise InputError(f"{what} values must be finite and in [0, 1] (got min {image.min():.3g}, max {image.max():.3g})")
    return np.clip(image, 0.0, 1.0)


def resolve_dtype(name: str, device) -> torch.dtype:
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
    from matrix_world.generation.memory import MEMORY_MODES, apply_memory_mode, choose_memory_mode, estimate_flux_memory_gb, free_gpu_gb

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
    estimate = estimate_flux_memory_gb(pipe, height=config.height)
    mode, reason = choose_memory_mode(config.memory, estimate_gb=estimate, free_gb=free_gpu_gb(device))
    if config.lora and mode == "lowvram":  # group offloading keeps its own weight copies: fuse first
        fuse_lora_for_offload(pipe)
        info["lora_fused"] = True
    info.update(apply_memory_mode(pipe, mode, device, vae_tiling=False))
    info.update(memory_reason=reason, memory_estimate_gb={k: round(v, 1) for k, v in estimate.items()})
    return pipe, info


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


# --------------------------------------------------------------------------- backends

PanoramaBackend = Callable[..., PanoramaResult]
PANORAMA_BACKENDS: dict[str, PanoramaBackend] = {}


def register_panorama_backend(name: str):
    def deco(fn: PanoramaBackend) -> PanoramaBackend:
        PANORAMA_BACKENDS[name] = fn
        return fn

    return deco


@register_panorama_backend("flux")
def _flux_backend(config: PanoramaConfig, *, prompt, image, device, generator) -> PanoramaResult:
    if image is not None:
        raise InputError("backend 'flux' is text -> panorama; for a photo use backend 'flux-fill' (or 'file' for a panorama)")
    format_prompt(prompt, config.prompt_template, allow_empty=False)  # fail before loading 24 GB
    check_height(config.height)
    pipe, info = load_flux_pipeline(config, device)
    rgb, run = generate_with_pipeline(pipe, config, prompt=prompt, device=device, generator=generator)
    return PanoramaResult(rgb, {"backend": "flux", **info, **run})


@register_panorama_backend("flux-fill")
def _flux_fill_backend(config: PanoramaConfig, *, prompt, image, device, generator) -> PanoramaResult:
    from matrix_world.generation.image2pano import image_to_panorama

    return image_to_panorama(config, image=image, prompt=prompt, device=device, generator=generator)


@register_panorama_backend("file")
def _file_backend(config: PanoramaConfig, *, prompt, image, device, generator) -> PanoramaResult:
    source = image if image is not None else config.path
    if source is None:
        raise InputError("backend 'file' needs a panorama: pass image=<path or array> or set config.path")
    rgb = as_rgb_image(source, what="panorama")
    h, w = rgb.shape[:2]
    if w != 2 * h:
        raise InputError(f"a panorama must be 2:1 (width = 2 x height); got {w}x{h}")
    if h > 4096:
        raise InputError(f"panorama {w}x{h} is larger than the supported 8192x4096; downscale it")
    return PanoramaResult(np.ascontiguousarray(rgb, dtype=np.float32),
                          {"backend": "file", "source": str(source) if isinstance(source, (str, Path)) else "array",
                           "height": h, "width": w, "seam_score": round(seam_score(rgb, width_dim=-2), 4)})


@register_panorama_backend("photo")
def _photo_backend(config: PanoramaConfig, *, prompt, image, device, generator) -> PanoramaResult:
    """No-weight image->panorama preview: the photo placed on the sphere, the rest filled classically."""
    from matrix_world.generation.photo_pano import photo_to_panorama

    if image is None:
        raise InputError("backend 'photo' needs an input photo (image=...)")
    height = check_height(config.height)
    rgb, keep, fov = photo_to_panorama(as_rgb_image(image, what="input photo"), height, config.fov)
    return PanoramaResult(rgb, {"backend": "photo", "fov": fov, "fov_source": "given" if config.fov else "default",
                                "kept_fraction": round(float(keep.mean()), 5),
                                "note": "surround filled by classical inpainting (preview, no model)"}, mask=keep)


def generate_panorama(config: PanoramaConfig, *, prompt: str | None = None, image=None, device="cpu",
                      generator: torch.Generator | None = None) -> PanoramaResult:
    """Run the panorama stage -> PanoramaResult(rgb [H, 2H, 3] float32 in [0, 1], info).

    prompt: text (required for ``flux``; optional with an input photo for ``flux-fill``)
    image: a photo (``flux-fill``) or a panorama (``file``): path, PIL image or array
    generator: CPU generator for the initial noise (default: from ``config.seed``)
    """
    backend = config.backend
    if backend not in PANORAMA_BACKENDS:
        raise InputError(f"unknown panorama backend {backend!r}; expected one of {', '.join(PANORAMA_BACKENDS)} "
                         "(auto is resolved by matrix_world.pipeline.panorama.choose)")
    result = PANORAMA_BACKENDS[backend](replace(config, backend=backend), prompt=prompt, image=image,
                                        device=device, generator=generator)
    result.info.setdefault("backend", backend)
    h, w = result.rgb.shape[:2]
    if w != 2 * h or result.rgb.dtype != np.float32:
        raise RuntimeError(f"panorama backend {backend} returned {result.rgb.shape} {result.rgb.dtype}; expected [H, 2H, 3] float32")
    return result


__all__ = [
    "PanoramaConfig", "PanoramaResult", "generate_panorama", "PANORAMA_BACKENDS", "register_panorama_backend",
    "load_flux_pipeline", "generate_with_pipeline", "load_lora", "unload_lora", "resolve_lora",
    "decode_packed_latents", "packed_grid_fns", "format_prompt", "check_height", "as_rgb_image",
    "WORLDGEN_TEMPLATE", "MAX_HEIGHT", "WeightsNotFoundError",
]
