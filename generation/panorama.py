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

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from matrix_world.errors import InputError
from matrix_world.generation.flux_lora import (  # noqa: F401  (re-exported: the panorama stage's LoRA API)
    LORA_ADAPTER,
    fuse_lora_for_offload,
    load_lora,
    resolve_lora,
    unload_lora,
)
from matrix_world.generation.flux_pano import (  # noqa: F401  (re-exported: the FLUX panorama pipeline's API)
    decode_packed_latents,
    dtype_kwarg,
    flux_panorama_pipeline_class,
    generate_with_pipeline,
    load_flux_pipeline,
    make_panorama_pipeline_class,
    packed_grid_fns,
    resolve_dtype,
)
from matrix_world.generation.image2pano import image_to_panorama
from matrix_world.generation.pano_config import (  # noqa: F401  (re-exported: the stage's options and checks)
    DECODE_METHODS,
    DEFAULT_FLUX,
    DEFAULT_FLUX_FILL,
    MAX_HEIGHT,
    WORLDGEN_TEMPLATE,
    PanoramaConfig,
    PanoramaResult,
    check_height,
    format_prompt,
)
from matrix_world.generation.pano_image import as_rgb_image
from matrix_world.generation.photo_pano import photo_to_panorama
from matrix_world.generation.seamless import seam_score
from matrix_world.generation.weights import WeightsNotFoundError


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
