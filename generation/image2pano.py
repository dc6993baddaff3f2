"""Photo -> panorama (backend ``flux-fill``): place the photo on the sphere, outpaint the rest.

Procedure (after Matrix-3D / WorldGen):

1. The photo is a pinhole view at yaw = pitch = 0 (the panorama's centre column looks where
   the photo looks) with horizontal FOV ``fov``: given by the user, else estimated by MoGe
   when its weights are on this machine (``config.fov_model``), else 60° (documented default).
   It is pasted into an empty H x 2H equirect (``cameras.paste_perspective``; the photo is
   first area-downscaled so it is not much sharper than its footprint).
2. The kept region is the photo's footprint eroded by ``mask_erode`` pixels (its border is
   regenerated so the outpainting can blend into it); the outpainting mask is its complement.
3. ``FluxFillPipeline`` (FLUX.1-Fill-dev, + optional LoRA) outpaints, with circular rolls in
   the late steps and wrap-aware decoding (as in :mod:`flux_pano`). The rolls are applied to
   what the transformer sees, never to the pipeline's latents, so nothing has to be undone:
   the photo stays at yaw 0.
4. Composite: kept pixels are copied from the placed photo bit-exactly; over ``blend_width``
   pixels outside the kept region the photo fades into the generated surround.

Steps 1, 2 and 4 (``place_photo``, ``keep_mask``, ``composite``) live in :mod:`pano_image`,
shared with the no-model ``photo`` backend (:mod:`photo_pano`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from matrix_world.errors import InputError
from matrix_world.generation.flux_pano import generate_with_pipeline, load_flux_pipeline
from matrix_world.generation.moge_backend import estimate_fov, moge_available
from matrix_world.generation.pano_config import (
    WORLDGEN_TEMPLATE,
    PanoramaConfig,
    PanoramaResult,
    check_height,
    format_prompt,
)
from matrix_world.generation.pano_image import (
    DEFAULT_FOV,
    FOV_RANGE,
    as_rgb_image,
    check_photo,
    composite,
    keep_mask,
    place_photo,
)
from matrix_world.generation.seamless import seam_score


def estimate_photo_fov(photo: np.ndarray, config: PanoramaConfig, device) -> tuple[float, str]:
    """(horizontal FOV in degrees, where it came from: 'given' | 'moge' | 'default')."""
    if config.fov is not None:
        fov = float(config.fov)
        if not FOV_RANGE[0] <= fov <= FOV_RANGE[1]:
            raise InputError(f"photo FOV must be in [{FOV_RANGE[0]:g}, {FOV_RANGE[1]:g}] degrees, got {fov:g}")
        return fov, "given"
    if config.fov_model and moge_available(config.fov_model):
        try:
            fov = estimate_fov(photo, config.fov_model, device=device)
        except InputError:  # MoGe could not recover a focal length: fall back to the default
            return DEFAULT_FOV, "default (MoGe estimate failed)"
        return float(np.clip(fov, *FOV_RANGE)), "moge"
    return DEFAULT_FOV, "default"


def prepare_fill_inputs(photo, config: PanoramaConfig, fov: float) -> dict:
    """Place the photo and build the masks -> dict(placed, coverage, keep, fill_mask)."""
    placed, coverage = place_photo(photo, fov, config.height)
    keep = keep_mask(coverage, int(config.mask_erode))
    if not keep.any():
        raise InputError(f"the photo covers no pixel of a {2 * config.height}x{config.height} panorama after eroding "
                         f"{config.mask_erode} px; use a larger height or smaller mask_erode")
    return {"placed": placed, "coverage": coverage, "keep": keep, "fill_mask": ~keep}


def outpaint(pipe, config: PanoramaConfig, inputs: dict, *, prompt: str | None, device, generator=None) -> tuple[np.ndarray, dict]:
    """Run a loaded FLUX-Fill panorama pipeline on prepared inputs -> (rgb [H, 2H, 3], info)."""
    image = torch.from_numpy(inputs["placed"]).permute(2, 0, 1)[None]  # [1, 3, H, W] in [0, 1]
    mask = torch.from_numpy(inputs["fill_mask"].astype(np.float32))[None, None]  # [1, 1, H, W], 1 = generate
    generated, info = generate_with_pipeline(pipe, config, prompt=prompt, device=device, generator=generator,
                                             extra={"image": image, "mask_image": mask}, allow_empty_prompt=True)
    rgb = composite(generated, inputs["placed"], inputs["keep"], inputs["coverage"], int(config.blend_width))
    info["seam_score"] = round(seam_score(rgb, width_dim=-2), 4)
    info["kept_fraction"] = round(float(inputs["keep"].mean()), 5)
    return rgb, info


def image_to_panorama(config: PanoramaConfig, *, image, prompt: str | None = None, device="cpu",
                      generator: torch.Generator | None = None, pipe=None) -> PanoramaResult:
    """Photo -> PanoramaResult(rgb [H, 2H, 3] float32 in [0, 1], info, mask = kept pixels [H, 2H] bool).

    image: path, PIL image or array [h, w, 3] (uint8 or float in [0, 1])
    prompt: optional (an empty prompt is allowed here)
    pipe: an already loaded FLUX-Fill panorama pipeline (else loaded from ``config.model``)
    """
    if image is None:
        raise InputError("backend 'flux-fill' needs an input photo (image=...)")
    photo = check_photo(as_rgb_image(image, what="input photo"))
    check_height(config.height)
    template = config.prompt_template if config.prompt_template is not None else WORLDGEN_TEMPLATE
    format_prompt(prompt, template, allow_empty=True)  # type/emptiness checks before loading the model
    fov, fov_source = estimate_photo_fov(photo, config, device)
    inputs = prepare_fill_inputs(photo, config, fov)
    info: dict = {}
    if pipe is None:
        pipe, info = load_flux_pipeline(config, device, fill=True)
    rgb, run = outpaint(pipe, replace(config, prompt_template=template), inputs, prompt=prompt, device=device, generator=generator)
    info = {"backend": "flux-fill", **info, **run, "fov": fov, "fov_source": fov_source,
            "mask_erode": int(config.mask_erode), "blend_width": int(config.blend_width)}
    return PanoramaResult(rgb, info, mask=inputs["keep"])
