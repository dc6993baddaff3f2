"""Stage 1, the panorama: text or an image -> ``panorama.png`` (2:1 RGB).

:func:`choose` is the one ``auto`` rule of this stage; :func:`configure` makes the
backend's configuration from the run's options; :func:`panorama_stage` runs it.
Backends: :mod:`matrix_world.generation.panorama` (``flux``, ``flux-fill``, ``file``,
``photo``; ``procedural`` from :mod:`matrix_world.datasets.synthetic_backends`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from matrix_world.generation.panorama import DEFAULT_FLUX, DEFAULT_FLUX_FILL, PanoramaConfig, generate_panorama
from matrix_world.io import read_image, write_image
from matrix_world.pipeline.config import WorldConfig
from matrix_world.pipeline.context import StageContext, log_stage
from matrix_world.rundir import small_info

MATRIX3D_LORA = ("Skywork/Matrix-3D", "checkpoints/text2panoimage_lora.safetensors")


def lora_of(config: WorldConfig) -> str | None:
    """The panorama LoRA: Matrix-3D's for text unless another one or "none" is given; none for photos
    unless one is given."""
    given = config.flux_lora
    if given is not None and given.lower() == "none":
        return None
    if config.image:
        return given
    return "matrix3d" if given is None else given


def choose(config: WorldConfig, device: torch.device) -> tuple[str, str]:
    """(backend, reason) of the panorama stage."""
    from matrix_world.generation.weights import weights_available

    if config.panorama_backend != "auto":
        return config.panorama_backend, "requested"
    preview = config.preset == "preview"
    if config.image and config.panorama:
        return "file", "the input is a panorama"
    if config.image:
        if not preview and device.type == "cuda" and weights_available(config.flux_model or DEFAULT_FLUX_FILL):
            return "flux-fill", "FLUX.1-Fill weights and a GPU found"
        return "photo", "no FLUX.1-Fill weights/GPU (or preview): photo placed on the sphere, the rest filled classically"
    lora = lora_of(config)
    lora_ok = lora != "matrix3d" or weights_available(*MATRIX3D_LORA)
    if not preview and device.type == "cuda" and lora_ok and weights_available(config.flux_model or DEFAULT_FLUX):
        return "flux", "FLUX.1-dev + panorama LoRA and a GPU found"
    return "procedural", "no FLUX.1-dev + panorama LoRA / GPU (or preview): a procedural synthetic scene from the prompt"


def configure(config: WorldConfig, backend: str) -> PanoramaConfig:
    """The backend's configuration for this run (the preset sets steps and height)."""
    from matrix_world.generation.flux_lora import TURBO_GUIDANCE, TURBO_STEPS

    quality = config.preset == "quality"
    turbo = turbo_lora_of(config) if backend == "flux" else None
    return PanoramaConfig(backend=backend, model=config.flux_model, lora=lora_of(config), turbo_lora=turbo,
                          height=config.panorama_height or (1024 if quality else 512),
                          steps=TURBO_STEPS if turbo else 50 if quality else 28, guidance=TURBO_GUIDANCE if turbo else None,
                          seed=config.seed, path=config.image, memory=config.memory)


def turbo_lora_of(config: WorldConfig) -> str | None:
    """The few-step panorama LoRA: FLUX.1-Turbo-Alpha under --preset turbo unless another one or "none" is given."""
    if config.preset != "turbo" or (config.flux_turbo_lora or "").lower() == "none":
        return None
    return config.flux_turbo_lora or "turbo-alpha"


def panorama_stage(ctx: StageContext, config: PanoramaConfig, *, prompt: str, image: str | None) -> np.ndarray:
    """Text or image -> ``panorama.png``; returns rgb [H, 2H, 3] float32."""
    t0 = time.perf_counter()
    files = {"image": image} if image else {}
    with ctx.run.stage("panorama", {"prompt": prompt, **config.to_dict(), "generator_seed": ctx.seed}, files=files,
                       outputs=["panorama.png"], backend=config.backend) as st:
        if not st.done:
            if "panorama" in ctx.models and config.backend == "flux":
                from matrix_world.generation.flux_pano import place_flux_pipeline
                from matrix_world.generation.panorama import generate_with_pipeline

                placed = place_flux_pipeline(ctx.models["panorama"], config, ctx.device)  # --memory, on its first use
                rgb, info = generate_with_pipeline(ctx.models["panorama"], config, prompt=prompt, device=ctx.device,
                                                   generator=ctx.generator(1))
                info = {"backend": "flux", "model": "injected", **placed, **info}
            else:
                result = generate_panorama(config, prompt=prompt, image=image, device=ctx.device,
                                           generator=ctx.generator(1))
                rgb, info = result.rgb, result.info
            write_image(st.path("panorama.png"), rgb)
            st.backend = info.get("backend", config.backend)
            st.info.update(small_info(info))
    log_stage(ctx, st, "panorama", t0)
    return read_image(ctx.run.path / "panorama.png")
