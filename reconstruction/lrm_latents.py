"""The panoramic LRM's latent front end: panoramic video -> the latents ``PanoLRM`` reads.

Two encoders, picked by :func:`make_latent_encoder` from a spec string:

* ``"wan:<folder or hub id>"`` -- :class:`WanLatentEncoder`, the Wan2.1 VAE (diffusers
  ``AutoencoderKLWan``), exactly as Matrix-3D feeds its LRM: the video in [-1, 1], the
  posterior mean mu (no sampling), normalised as ``(mu - latents_mean) / latents_std`` with the
  VAE config's 16 channel statistics. That is DiffSynth's ``WanVideoVAE.encode`` (used by
  Matrix-3D's ``pano_infer.py``: ``mu = (mu - mean) * (1 / std)``) and diffusers'
  ``WanImageToVideoPipeline.prepare_latents`` (``retrieve_latents(..., "argmax")``, then
  ``(latents - latents_mean) * (1 / latents_std)``).
* ``"space_to_depth_stand_in"`` -- :class:`SpaceToDepthLatents`, a FIXED, parameter-free
  STAND-IN for the VAE so that small configs train without VAE weights. It is not the Wan
  latent space: a network trained on it must be retrained for Wan latents. Definition:

  1. the video in [-1, 1]; frames grouped as the Wan VAE groups them (frame 0 alone, then
     frames 1-4, 5-8, ...: T = (F - 1) / 4 + 1 latent frames) and averaged within a group;
  2. each 8 x 8 pixel block becomes 16 channels: 0-2 the block's mean R, G, B; 3-15 the 13
     lowest-frequency orthonormal 2-D DCT-II coefficients of the block's luma
     (Y = 0.299 R + 0.587 G + 0.114 B) in zig-zag order without the DC term, divided by 4
     (a full-contrast edge across a block gives about +-1.8, a flat block 0).

Both give ``[T, 16, H/8, W/8]`` float32 for a video of F = 4(T-1)+1 frames of H x W (multiples
of 8; the LRM itself needs multiples of 16).

Latent caching (:func:`cache_latents`): one ``.safetensors`` file per (video content, encoder
spec) in a cache folder, named by the SHA-256 of the frames' bytes and of the spec.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from matrix_world.errors import InputError, MissingDependencyError, one_line

LATENT_CHANNELS = 16
SPATIAL_FACTOR = 8
TEMPORAL_FACTOR = 4
STAND_IN_SPEC = "space_to_depth_stand_in"
WAN_PREFIX = "wan:"
WAN_VAE_HUB_ID = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
CACHE_FORMAT = "matrix_world.lrm_latents/1"
_DCT_AC = 13  # luma DCT coefficients after the 3 colour means
_DCT_SCALE = 0.25
_LUMA = (0.299, 0.587, 0.114)


class LatentEncoder(Protocol):
    """What the training code needs of an encoder: its spec and ``encode``."""

    spec: str

    def encode(self, video) -> Tensor:  # [F, H, W, 3] in [0, 1] -> [T, 16, H/8, W/8] float32
        ...


def latent_frames(frames: int) -> int:
    """T latent frames of a video of F = 4(T-1)+1 frames (InputError for other F)."""
    if frames < 1 or (frames - 1) % TEMPORAL_FACTOR:
        raise InputError(f"the latent encoders take 4k+1 frames (1, 5, 9, ..., 81: Wan2.1's grouping), got {frames}")
    return (frames - 1) // TEMPORAL_FACTOR + 1


def as_video(video) -> Tensor:
    """A video as float32 [F, 3, H, W] in [0, 1]: from [F, H, W, 3] (numpy or torch, float in
    [0, 1] or uint8) or torch [F, 3, H, W]; checks 4k+1 frames and sizes that are multiples of 8."""
    x = torch.as_tensor(np.asarray(video)) if not isinstance(video, Tensor) else video
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    if x.dim() != 4 or not x.is_floating_point() or 3 not in (x.shape[1], x.shape[-1]):
        raise InputError(f"a video must be [F, H, W, 3] (or [F, 3, H, W]) float in [0, 1] or uint8, got "
                         f"{tuple(x.shape)} {x.dtype}")
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    x = x.float().contiguous()
    f, _, h, w = x.shape
    latent_frames(f)
    if h % SPATIAL_FACTOR or w % SPATIAL_FACTOR or h < SPATIAL_FACTOR:
        raise InputError(f"video frames of {h} x {w} pixels: both sizes must be positive multiples of {SPATIAL_FACTOR}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("the video holds NaN/Inf values")
    return x


def group_frames(x: Tensor) -> Tensor:
    """The Wan VAE's temporal grouping, averaged: [F, C, H, W] -> [T, C, H, W] (frame 0 alone,
    then the mean of frames 4t-3 .. 4t for t >= 1)."""
    t = latent_frames(x.shape[0])
    if t == 1:
        return x[:1]
    rest = x[1:].reshape(t - 1, TEMPORAL_FACTOR, *x.shape[1:]).mean(dim=1)
    return torch.cat((x[:1], rest), dim=0)


# --------------------------------------------------------------------------- the stand-in


def _zigzag(n: int) -> list[tuple[int, int]]:
    """(row, column) frequency pairs of an n x n block in JPEG zig-zag order."""
    order = sorted(((u, v) for u in range(n) for v in range(n)),
                   key=lambda p: (p[0] + p[1], p[0] if (p[0] + p[1]) % 2 else -p[0]))
    return order


def dct_basis(size: int = SPATIAL_FACTOR, count: int = _DCT_AC) -> Tensor:
    """The ``count`` lowest-frequency orthonormal 2-D DCT-II basis blocks after DC: [count, size, size] float64."""
    k = torch.arange(size, dtype=torch.float64)
    scale = torch.full((size,), math.sqrt(2.0 / size), dtype=torch.float64)
    scale[0] = math.sqrt(1.0 / size)
    cos = scale[:, None] * torch.cos(math.pi * (2 * k[None] + 1) * k[:, None] / (2 * size))  # [freq, pixel]
    pairs = _zigzag(size)[1 : count + 1]
    return torch.stack([cos[u][:, None] * cos[v][None, :] for u, v in pairs])


class SpaceToDepthLatents:
    """The fixed space-to-depth STAND-IN for the Wan VAE (spec ``"space_to_depth_stand_in"``;
    definition in the module docstring). Deterministic and parameter-free."""

    spec = STAND_IN_SPEC

    def __init__(self, *, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self._basis = (dct_basis() * _DCT_SCALE).to(torch.float32).to(self.device)  # [13, 8, 8]
        self._luma = torch.tensor(_LUMA, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def encode(self, video) -> Tensor:
        """video: [F, H, W, 3] in [0, 1] (or [F, 3, H, W]) -> latents [T, 16, H/8, W/8] float32 on ``device``."""
        x = as_video(video).to(self.device) * 2.0 - 1.0  # [F, 3, H, W] in [-1, 1]
        g = group_frames(x)  # [T, 3, H, W]
        t, _, h, w = g.shape
        s = SPATIAL_FACTOR
        blocks = g.reshape(t, 3, h // s, s, w // s, s)  # [T, 3, h, 8, w, 8]
        colour = blocks.mean(dim=(3, 5))  # [T, 3, h, w]
        luma = torch.einsum("c,tcyixj->tyixj", self._luma, blocks)  # [T, h, 8, w, 8]
        ac = torch.einsum("kij,tyixj->tkyx", self._basis, luma)  # [T, 13, h, w]
        return torch.cat((colour, ac), dim=1).contiguous()


# --------------------------------------------------------------------------- Wan2.1 VAE


class WanLatentEncoder:
    """Wan2.1-VAE latents as Matrix-3D's LRM reads them (see the module docstring).

    vae: a diffusers ``AutoencoderKLWan``; its config's ``latents_mean`` / ``latents_std``
    normalise the posterior mean.
    """

    def __init__(self, vae, *, spec: str = "wan:", device: str | torch.device | None = None):
        self.vae = vae.eval().requires_grad_(False)
        self.spec = spec
        self.device = torch.device(device) if device is not None else next(vae.parameters()).device
        self.vae.to(self.device)
        cfg = vae.config
        if int(cfg.z_dim) != LATENT_CHANNELS or len(cfg.latents_mean) != LATENT_CHANNELS or len(cfg.latents_std) != LATENT_CHANNELS:
            raise InputError(f"{spec}: the VAE has {cfg.z_dim} latent channels and {len(cfg.latents_mean)} channel "
                             f"statistics; the LRM takes Wan2.1's {LATENT_CHANNELS}")
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, LATENT_CHANNELS, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, LATENT_CHANNELS, 1, 1, 1)

    @classmethod
    def from_pretrained(cls, source: str, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> WanLatentEncoder:
        """Load ``AutoencoderKLWan`` from a diffusers Wan folder (its ``vae/``), a VAE folder, or a
        hub id in the local cache (``subfolder="vae"``; never downloaded here)."""
        try:
            from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
        except ImportError as exc:
            raise MissingDependencyError(f"the Wan latent encoder needs the Python package 'diffusers' ({one_line(exc)}); "
                                         "install it with: pip install diffusers==0.42.1") from exc
        path = Path(source).expanduser()
        if (path / "vae" / "config.json").is_file():
            where, kwargs = str(path), {"subfolder": "vae"}
        elif (path / "config.json").is_file():
            where, kwargs = str(path), {}
        else:
            where, kwargs = source, {"subfolder": "vae"}
        try:
            vae = AutoencoderKLWan.from_pretrained(where, torch_dtype=dtype, local_files_only=True, **kwargs)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load the Wan2.1 VAE from {source!r} ({one_line(exc)[:200]}); expected a diffusers Wan "
                             f"folder with vae/, a VAE folder, or a cached hub id; download with: huggingface-cli download "
                             f"{WAN_VAE_HUB_ID} --include 'vae/*'") from None
        return cls(vae, spec=WAN_PREFIX + source, device=device)

    @torch.no_grad()
    def encode(self, video) -> Tensor:
        """video: [F, H, W, 3] in [0, 1] (or [F, 3, H, W]) -> normalised latents [T, 16, H/8, W/8] float32."""
        x = as_video(video)  # [F, 3, H, W]
        x = (x * 2.0 - 1.0).permute(1, 0, 2, 3)[None]  # [1, 3, F, H, W] in [-1, 1]
        dtype = next(self.vae.parameters()).dtype
        mu = self.vae.encode(x.to(self.device, dtype)).latent_dist.mode().float()  # [1, 16, T, h, w]
        latents = (mu - self.mean.to(mu.device)) / self.std.to(mu.device)
        return latents[0].permute(1, 0, 2, 3).contiguous()  # [T, 16, h, w]


def make_latent_encoder(spec: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``"space_to_depth_stand_in"`` -> :class:`SpaceToDepthLatents`; ``"wan:<folder or hub id>"`` ->
    :class:`WanLatentEncoder` (``dtype`` is the VAE's)."""
    check_encoder_spec(spec)
    if spec == STAND_IN_SPEC:
        return SpaceToDepthLatents(device=device)
    return WanLatentEncoder.from_pretrained(spec[len(WAN_PREFIX):], device=device, dtype=dtype)


def check_encoder_spec(spec: str) -> str:
    """The spec itself, or an InputError saying which specs exist."""
    if spec == STAND_IN_SPEC or (isinstance(spec, str) and spec.startswith(WAN_PREFIX) and len(spec) > len(WAN_PREFIX)):
        return spec
    raise InputError(f"latent encoder {spec!r} is not known: expected {STAND_IN_SPEC!r} or 'wan:<diffusers Wan folder, "
                     f"VAE folder or hub id>' (e.g. 'wan:{WAN_VAE_HUB_ID}')")


# --------------------------------------------------------------------------- caching


def content_hash(video) -> str:
    """SHA-256 of a video's float32 [F, 3, H, W] values and shape (what the encoders read)."""
    x = as_video(video).cpu().numpy()
    digest = hashlib.sha256(json.dumps(list(x.shape)).encode())
    digest.update(np.ascontiguousarray(x).tobytes())
    return digest.hexdigest()


def latents_cache_path(cache_dir: str | Path, video_hash: str, spec: str) -> Path:
    """Where :func:`cache_latents` keeps the latents of (video, encoder spec)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", spec.split("/")[-1])[:24].strip("_")
    key = hashlib.sha256(f"{CACHE_FORMAT}\n{spec}".encode()).hexdigest()[:12]
    return Path(cache_dir) / f"latents-{video_hash[:24]}-{slug}-{key}.safetensors"


def cache_latents(encoder: LatentEncoder, video, cache_dir: str | Path, *, video_hash: str | None = None) -> Path:
    """Encode ``video`` [F, H, W, 3] once per (content, encoder spec); returns the cache file.

    An existing file is reused when its metadata names the same spec and content. The file is
    written atomically (a killed run leaves no half file); read it with :func:`load_latents`.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from matrix_world.io import atomic_write

    video_hash = video_hash or content_hash(video)
    path = latents_cache_path(cache_dir, video_hash, encoder.spec)
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("spec") == encoder.spec and meta.get("content_sha256") == video_hash:
            return path
    latents = encoder.encode(video).detach().to("cpu", torch.float32).contiguous()  # [T, 16, h, w]
    meta = {"format": CACHE_FORMAT, "spec": encoder.spec, "content_sha256": video_hash, "shape": json.dumps(list(latents.shape))}
    with atomic_write(path) as tmp:
        save_file({"latents": latents}, str(tmp), metadata=meta)
    return path


def load_latents(path: str | Path) -> Tensor:
    """The latents [T, 16, h, w] float32 of a :func:`cache_latents` file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))["latents"]
    except (SafetensorError, OSError, KeyError) as exc:
        raise InputError(f"cannot read cached latents {path} ({one_line(exc)}); delete the file to re-encode") from None
