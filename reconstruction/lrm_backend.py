"""The ``lrm`` reconstruction backend: Wan-VAE latents of the panoramic video + poses -> 3D Gaussians.

One feed-forward pass of Matrix-3D's panoramic LRM (:class:`~matrix_world.reconstruction.lrm.PanoLRM`)
instead of an optimisation: the latents (the video stage's own when the Wan model made the
video, else the Wan VAE's encoding of the frames) and spherical Plücker rays of OUR poses go
in; per-pixel Gaussians of every ``frame_stride``-th frame come out in the world frame of the
poses (:func:`~matrix_world.reconstruction.lrm_gaussians.lrm_to_gaussians`), with a Gaussian
budget (opacity pruning, then the most important ``max_gaussians``). bf16 on a GPU, float32 on
the CPU; SDPA attention. The official [0, 1] opacity is turned into our logits on the way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from matrix_world.errors import InputError
from matrix_world.gaussians import Gaussians
from matrix_world.reconstruction.lrm import PanoLRM, lrm_plucker
from matrix_world.reconstruction.lrm_gaussians import lrm_to_gaussians


@dataclass
class LRMBackendConfig:
    """Options of the ``lrm`` backend (the checkpoint path is resolved by the pipeline)."""

    model: str | None = None  # a local official pano_lrm_480p.pt or a folder of ours (config.json + model.safetensors)
    frame_stride: int = 2  # keep the Gaussians of frames 0, k, 2k, ... (2: the official export)
    min_opacity: float = 0.005  # drop Gaussians below this opacity first
    max_gaussians: int | None = 3_000_000  # then keep the most important this many (None: all)
    dtype: str = "auto"  # auto (bfloat16 on CUDA, float32 elsewhere) | bfloat16 | float16 | float32
    vae: str | None = None  # a Wan model folder whose vae/ encodes a video the Wan model did not make

    def __post_init__(self):
        if self.frame_stride < 1 or not 0.0 <= self.min_opacity < 1.0 or (self.max_gaussians is not None
                                                                         and self.max_gaussians < 1):
            raise InputError(f"lrm: frame_stride must be >= 1, min_opacity in [0, 1) and max_gaussians >= 1 or None; "
                             f"got {self.frame_stride}, {self.min_opacity}, {self.max_gaussians}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise InputError(f"lrm: dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")


def lrm_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def load_lrm(config: LRMBackendConfig, device: torch.device) -> PanoLRM:
    """The LRM of ``config.model`` on ``device`` in the backend's dtype (strict loading)."""
    if not config.model:
        raise InputError("the lrm backend needs a checkpoint: --lrm-model (Matrix-3D's pano_lrm_480p.pt or a "
                         "folder written by scripts/convert_matrix3d_lrm.py)")
    return PanoLRM.from_pretrained(config.model, device=device, dtype=lrm_dtype(config.dtype, device))


def reconstruct_lrm(
    config: LRMBackendConfig,
    *,
    latents: Tensor,  # [T, 16, h, w] normalised Wan-VAE latents of the video (or [1, T, 16, h, w])
    c2w: Tensor,  # [F, 4, 4] our camera-to-world poses of the video's frames, F = 4T - 3
    device: torch.device,
    model: PanoLRM | None = None,
) -> tuple[Gaussians, dict]:
    """Latents + poses -> (Gaussians on ``device``, info: frames kept, counts, seconds)."""
    device = torch.device(device)
    latents = torch.as_tensor(latents)
    if latents.dim() == 4:
        latents = latents[None]
    c2w = torch.as_tensor(c2w)
    if latents.dim() != 5 or c2w.dim() != 3:
        raise InputError(f"lrm: expected latents [T, 16, h, w] and c2w [F, 4, 4], got {tuple(latents.shape)} "
                         f"and {tuple(c2w.shape)}")
    t, (h, w) = latents.shape[1], latents.shape[-2:]
    if len(c2w) != 4 * (t - 1) + 1:
        raise InputError(f"lrm: {t} latent frames decode to {4 * (t - 1) + 1} video frames, but the path has "
                         f"{len(c2w)} poses; expected 4T - 3 poses (e.g. 81 for 21 latent frames)")
    t0 = time.perf_counter()
    model = load_lrm(config, device) if model is None else model
    dtype = next(model.parameters()).dtype
    t1 = time.perf_counter()
    with torch.inference_mode():
        plucker = lrm_plucker(c2w.to(device=device, dtype=torch.float32)[None], 8 * h, 8 * w)  # [1, F, H, W, 6]
        output = model(latents.to(device=device, dtype=dtype), plucker.to(dtype))
        gaussians = lrm_to_gaussians(output, c2w.to(device=device, dtype=torch.float32),
                                     frame_stride=config.frame_stride, min_opacity=config.min_opacity)
    produced = len(gaussians)
    if config.max_gaussians is not None and len(gaussians) > config.max_gaussians:
        gaussians = gaussians.prune(config.max_gaussians)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t2 = time.perf_counter()
    info = {"backend": "lrm", "latent_frames": int(t), "frames_kept": len(range(0, len(c2w), config.frame_stride)),
            "gaussians_after_opacity": produced, "num_gaussians": len(gaussians), "dtype": str(dtype).replace("torch.", ""),
            "seconds": {"load": round(t1 - t0, 3), "lrm": round(t2 - t1, 3)}}
    return gaussians, info
