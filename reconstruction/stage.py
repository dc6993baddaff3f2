"""The reconstruction stage: panoramic frames + poses + distance -> 3D Gaussians.

One entry point, :func:`reconstruct`, with a backend chosen by name:

* ``lift``: one Gaussian per keyframe pixel, no training (:mod:`.lift`); CPU-fast, the
  offline default;
* ``optimize``: Matrix-3D's gsplat optimisation over 12 crops per keyframe (:mod:`.optimize`);
* ``lrm``: Matrix-3D's feed-forward panoramic LRM on the video's Wan-VAE latents
  (:mod:`.lrm_backend`; needs ``latents``, no keyframes, no depth_fn);

``auto`` is resolved by the pipeline (:func:`matrix_world.pipeline.reconstruction.choose`, the one rule).

Inputs follow DESIGN.md §3: equirect frames [F, H, 2H, 3] float32 in [0, 1], camera-to-world
poses [F, 4, 4] (OpenCV), frame 0's distance [H, W] along the rays. Other keyframes get
their distances from one call ``depth_fn(frame_indices, rgb [K, H, W, 3]) -> distance [K, H, W]``
(or ``(distance, sky)``), aligned to the previous keyframe by a weighted least-squares
scale + shift (:mod:`.align`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from matrix_world.errors import InputError
from matrix_world.gaussians import Gaussians
from matrix_world.reconstruction.keyframes import DepthFn, KeyframeConfig, prepare_keyframes
from matrix_world.reconstruction.lift import LiftConfig, lift_keyframes
from matrix_world.reconstruction.lrm_backend import LRMBackendConfig, reconstruct_lrm
from matrix_world.reconstruction.optimize import OptimizeConfig, optimize_keyframes

RECON_BACKENDS = ("lift", "optimize", "lrm")


@dataclass
class ReconConfig:
    """backend: "lift", "optimize" or "lrm"; the rest configures each step."""

    backend: str = "lift"
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    lift: LiftConfig = field(default_factory=LiftConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    lrm: LRMBackendConfig = field(default_factory=LRMBackendConfig)

    def __post_init__(self):
        if self.backend not in RECON_BACKENDS:
            raise InputError(f"reconstruction backend must be one of {', '.join(RECON_BACKENDS)}, got {self.backend!r} "
                             "(auto is resolved by matrix_world.pipeline.reconstruction.choose)")


def reconstruct(
    config: ReconConfig,
    *,
    frames,  # [F, H, W, 3] float32 in [0, 1] or uint8 (numpy or torch); only keyframes are converted
    distance0,  # [H, W] distance of frame 0
    c2w,  # [F, 4, 4] camera-to-world
    masks=None,  # [F, H, W] bool, True = pixel known; None: all known
    sky0=None,  # [H, W] bool sky mask of frame 0; None: non-finite distances only
    depth_fn: DepthFn | None = None,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    latents=None,  # [T, 16, h, w] Wan-VAE latents of the frames (the lrm backend)
    lrm_model=None,  # an already loaded PanoLRM (lrm)
) -> tuple[Gaussians, dict]:
    """Reconstruct 3D Gaussians from a panoramic clip (see the module docstring).

    generator: a CPU ``torch.Generator`` (seeded by the caller) for the ``optimize``
        backend; required there.
    returns (Gaussians on ``device``, info: backend, keyframe indices, alignment
        (scale, shift) per keyframe, backend details, seconds per step)
    """
    device = torch.device(device)
    backend = config.backend
    if backend == "lrm":
        if latents is None:
            raise InputError("the lrm backend needs the video's Wan-VAE latents (latents=...)")
        return reconstruct_lrm(config.lrm, latents=latents, c2w=torch.as_tensor(c2w), device=device, model=lrm_model)
    t0 = time.perf_counter()
    keyframes = prepare_keyframes(frames, c2w, distance0, masks=masks, sky0=sky0, depth_fn=depth_fn,
                                  config=config.keyframes, device=device)
    t1 = time.perf_counter()
    if backend == "lift":
        gaussians, details = lift_keyframes(keyframes, config.lift)
    else:
        if generator is None:
            raise InputError("the optimize backend needs a seeded torch.Generator (generator=...)")
        gaussians, details = optimize_keyframes(keyframes, config.optimize, generator=generator)
    t2 = time.perf_counter()
    info = {
        "backend": backend,
        "keyframes": keyframes.indices,
        "alignment": keyframes.alignment,
        "num_gaussians": len(gaussians),
        "details": details,
        "seconds": {"keyframes": t1 - t0, backend: t2 - t1, "total": t2 - t0},
    }
    return gaussians, info
