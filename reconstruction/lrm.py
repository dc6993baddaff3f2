"""Matrix-3D's panoramic LRM: Wan-VAE latents + spherical Plücker rays -> per-pixel Gaussians.

Our implementation of the network of Matrix-3D's ``code/Pano_LRM`` (``GS_decoder`` in
``sgm/gsrenderer/gs_decoder.py``, MIT), with the official submodule names so that the
published ``checkpoints/pano_lrm_480p.pt`` (hub repo ``Skywork/Matrix-3D``) loads strictly.

Network (``LRMConfig.official()``; D = 1024)::

    latents  [B, T, 16, h, w]  -- video_conv: Conv2d 16 -> D, k = s = 2, per latent frame
                               -- video_layer_norm                          -> [B, T*gh*gw, D]
    plucker  [B, F, H, W, 6]   -- camera_conv: Conv3d 6 -> D, k = s = (4, 16, 16), pad (2, 0, 0)
                                  (NO LayerNorm: the official camera_layer_norm is never called)
    concat [B, N, 2D] -- linear_proj: Linear 2D -> D -- transformer_input_layernorm (no bias)
    transformer:    4 post-norm encoder layers (4 heads, FFN 2048, GELU, dropout 0.1) -> hooks a
    transformer_gs: 4 more layers continuing from the first stack's output          -> hooks b
    dpt_head(a) / dpt_head_gs(b): DPT (:mod:`.lrm_dpt`) -> [B*T, 256, 8 gh, 8 gw]
    deconv3d_dpt: ConvTranspose3d 256 -> 3,  k (5, 1, 1), s (4, 1, 1), pad (2, 0, 0), no bias
    deconv3d_sh:  ConvTranspose3d 256 -> 14, same                       -> [B, F, 8 gh, 8 gw, C]

Frame and size arithmetic (gh = h / 2, gw = w / 2 the token grid):

* the camera convolution maps F frames to floor((F + 2*2 - 4) / 4) + 1 = floor(F / 4) + 1
  token frames; the output deconvolution maps T back to (T - 1)*4 - 2*2 + 5 = 4T - 3 frames.
  So F = 4(T - 1) + 1 (the Wan VAE's frame count: 81 for T = 21) is the one input whose
  frames are the output's; any T >= 1 works.
* the camera patch is 8 x the latent patch, so H = 8h, W = 8w (the video size);
* outputs are at 8 x the token grid = (4h, 4w) = (H/2, W/2): 240 x 480 at 480p
  (h, w = 60, 120), 360 x 720 at 720p (h, w = 90, 180). Any even h, w >= 2 works (the DPT crops
  its coarsest level to odd grids, as the official code does).

Inputs as the official pipeline makes them: ``latents`` are normalised Wan2.1-VAE latents,
(mu - mean) / std (DiffSynth / diffusers), of the panoramic video in [-1, 1] at H x W;
``plucker`` are spherical Plücker rays (moment o x d, direction d) in the official ray frame,
poses relative to the first frame: :func:`lrm_plucker` makes them from OUR c2w poses.

Raw outputs (``LRMOutput``, per pixel of the (H/2, W/2) grid of every frame):
``depth_raw`` [..., 3] (distance = 30 * sigmoid(mean over the 3)), ``gaussians_raw`` [..., 14]
(:mod:`matrix_world.reconstruction.lrm_gaussians` reads them into our Gaussians).

What we generalise (identical numbers at 480p): the official forward hard-codes 21 latent
frames, a 30 x 60 token grid and a batch of one. Attention is ``F.scaled_dot_product_attention``
in our encoder layer (:mod:`.lrm_transformer`), which keeps ``nn.TransformerEncoderLayer``'s
parameter names.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from matrix_world.cameras import invert_pose
from matrix_world.equirect import spherical_plucker
from matrix_world.errors import InputError, one_line
from matrix_world.reconstruction.lrm_dpt import DPTHead
from matrix_world.reconstruction.lrm_transformer import EncoderStack

FORMAT = "matrix_world.pano_lrm/1"
OFFICIAL_REPO = "Skywork/Matrix-3D"
OFFICIAL_FILE = "checkpoints/pano_lrm_480p.pt"
OFFICIAL_PREFIX = "gs_decoder1."  # the network's attribute in the official SATVideoDiffusionEngine
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class LRMLoadNote(UserWarning):
    """What a checkpoint held besides the network (one line; not an error)."""


@dataclass(frozen=True)
class LRMConfig:
    """Every size of the panoramic LRM. ``LRMConfig.official()`` is Matrix-3D's network.

    latent_channels: Wan-VAE latent channels (16).
    plucker_channels: Plücker ray channels (6).
    dim, heads, ffn_dim: transformer width, attention heads, feed-forward width.
    layers_per_stack: encoder layers of ``transformer`` and of ``transformer_gs`` (4 each);
        the DPT heads hook all layers of their stack, so this must be 4.
    dropout: dropout of the encoder layers in training (attention weights, residuals, FFN).
    layer_norm_eps: epsilon of every LayerNorm.
    latent_patch: ``video_conv`` kernel = stride over the latent grid.
    camera_patch: ``camera_conv`` spatial kernel = stride over the video (latent_patch x the
        VAE's spatial factor 8).
    temporal_kernel, temporal_stride, temporal_padding: ``camera_conv`` over the frames.
    out_temporal_kernel, out_temporal_stride, out_temporal_padding: the output
        ConvTranspose3d over the token frames.
    dpt_layer_dims: channels of the 4 DPT reassembly levels (CroCo's default).
    dpt_feature_dim, dpt_last_dim: DPT fusion width and its head's last width (the head gives
        ``dpt_last_dim // 2`` channels).
    depth_channels, gaussian_channels: channels of ``depth_raw`` and ``gaussians_raw``.
    distance_scale: distance = distance_scale * sigmoid(mean(depth_raw)).
    """

    latent_channels: int = 16
    plucker_channels: int = 6
    dim: int = 1024
    heads: int = 4
    ffn_dim: int = 2048
    layers_per_stack: int = 4
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    latent_patch: int = 2
    camera_patch: int = 16
    temporal_kernel: int = 4
    temporal_stride: int = 4
    temporal_padding: int = 2
    out_temporal_kernel: int = 5
    out_temporal_stride: int = 4
    out_temporal_padding: int = 2
    dpt_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    dpt_feature_dim: int = 1024
    dpt_last_dim: int = 512
    depth_channels: int = 3
    gaussian_channels: int = 14
    distance_scale: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dpt_layer_dims", tuple(int(d) for d in self.dpt_layer_dims))
        ints = [f.name for f in fields(self) if f.type == "int"]
        bad = [f"{n}={getattr(self, n)}" for n in ints if getattr(self, n) < (0 if "padding" in n else 1)]
        bad += [f"dpt_layer_dims={self.dpt_layer_dims}"] if len(self.dpt_layer_dims) != 4 or min(self.dpt_layer_dims) < 1 else []
        if bad:
            raise InputError(f"LRMConfig sizes must be >= 1 (paddings >= 0): {', '.join(bad)}")
        if self.dim % self.heads or self.camera_patch % self.latent_patch or self.layers_per_stack != 4:
            raise InputError(f"LRMConfig: dim {self.dim} must divide by heads {self.heads}, camera_patch "
                             f"{self.camera_patch} by latent_patch {self.latent_patch}, and the DPT hooks need "
                             f"layers_per_stack = 4 (got {self.layers_per_stack})")
        if self.dpt_feature_dim % 2 or self.dpt_last_dim % 2 or not 0.0 <= self.dropout < 1.0 or self.distance_scale <= 0:
            raise InputError("LRMConfig: dpt_feature_dim and dpt_last_dim must be even, dropout in [0, 1), "
                             "distance_scale > 0")
        broken = [t for t in (1, 2, 3, 21) if self.latent_frames_for(self.frames_for(t)) != t]
        if broken:
            raise InputError(f"LRMConfig: the camera convolution does not map the output's {self.frames_for(broken[0])} "
                             f"frames back to T = {broken[0]} latent frames; check the temporal kernels/strides/paddings")

    # ------------------------------------------------------------------ presets

    @classmethod
    def official(cls) -> LRMConfig:
        """Matrix-3D's ``GS_decoder(gs_dim=14)`` (the 480p checkpoint; the 720p grid works too)."""
        return cls()

    @classmethod
    def tiny(cls, **overrides: Any) -> LRMConfig:
        """A ~170k-parameter network with the official patches and frame arithmetic (tests)."""
        base: dict[str, Any] = dict(dim=16, heads=2, ffn_dim=24, dpt_layer_dims=(4, 6, 8, 10), dpt_feature_dim=12,
                                    dpt_last_dim=8)
        return cls(**{**base, **overrides})

    # ------------------------------------------------------------------ arithmetic

    def frames_for(self, latent_frames: int) -> int:
        """Frames F of the outputs (and of the Plücker input) for T latent frames: 4(T - 1) + 1."""
        return (latent_frames - 1) * self.out_temporal_stride - 2 * self.out_temporal_padding + self.out_temporal_kernel

    def latent_frames_for(self, frames: int) -> int:
        """Token frames the camera convolution makes of F Plücker frames."""
        return (frames + 2 * self.temporal_padding - self.temporal_kernel) // self.temporal_stride + 1

    @property
    def video_scale(self) -> int:
        """Video pixels per latent pixel (8: H = 8h)."""
        return self.camera_patch // self.latent_patch

    def output_size(self, latent_h: int, latent_w: int) -> tuple[int, int]:
        """(rows, columns) of the outputs: 8 x the token grid (H/2, W/2 with the official patches)."""
        return 8 * (latent_h // self.latent_patch), 8 * (latent_w // self.latent_patch)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dpt_layer_dims"] = list(self.dpt_layer_dims)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> LRMConfig:
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - names), sorted(names - set(data))
        if unknown or missing:
            raise InputError(f"{source}: LRM config has unknown fields {unknown} and lacks {missing}")
        return cls(**data)


@dataclass
class LRMOutput:
    """The official raw outputs, per pixel of the (H/2, W/2) grid of each of the F frames."""

    gaussians_raw: Tensor  # [B, F, H/2, W/2, 14]
    depth_raw: Tensor  # [B, F, H/2, W/2, 3]
    distance_scale: float = 30.0

    def distance(self) -> Tensor:
        """Distance along each pixel's ray, distance_scale * sigmoid(mean of depth_raw), in
        float32 whatever the outputs' dtype: [B, F, H/2, W/2]."""
        return self.distance_scale * torch.sigmoid(self.depth_raw.float().mean(dim=-1))


# --------------------------------------------------------------------------- the network


class PanoLRM(nn.Module):
    """Matrix-3D's panoramic LRM (see the module docstring for the layers and the arithmetic)."""

    load_note: str = ""  # what from_pretrained ignored in the checkpoint (one line)

    def __init__(self, config: LRMConfig | None = None):
        super().__init__()
        self.config = c = config or LRMConfig.official()
        d = c.dim
        self.video_conv = nn.Conv2d(c.latent_channels, d, kernel_size=c.latent_patch, stride=c.latent_patch)
        self.video_layer_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        kernel = (c.temporal_kernel, c.camera_patch, c.camera_patch)
        self.camera_conv = nn.Conv3d(c.plucker_channels, d, kernel_size=kernel, stride=(c.temporal_stride, c.camera_patch, c.camera_patch),
                                     padding=(c.temporal_padding, 0, 0))
        self.linear_proj = nn.Linear(2 * d, d)
        self.transformer_input_layernorm = nn.LayerNorm(d, eps=c.layer_norm_eps, bias=False)
        self.transformer = EncoderStack(c.layers_per_stack, d, c.heads, c.ffn_dim, c.dropout, c.layer_norm_eps)
        self.transformer_gs = EncoderStack(c.layers_per_stack, d, c.heads, c.ffn_dim, c.dropout, c.layer_norm_eps)
        self.dpt_head = DPTHead(d, c.dpt_layer_dims, c.dpt_feature_dim, c.dpt_last_dim)
        self.dpt_head_gs = DPTHead(d, c.dpt_layer_dims, c.dpt_feature_dim, c.dpt_last_dim)
        kt, st, pt = (c.out_temporal_kernel, 1, 1), (c.out_temporal_stride, 1, 1), (c.out_temporal_padding, 0, 0)
        self.deconv3d_dpt = nn.ConvTranspose3d(self.dpt_head.out_channels, c.depth_channels, kt, st, pt, bias=False)
        self.deconv3d_sh = nn.ConvTranspose3d(self.dpt_head_gs.out_channels, c.gaussian_channels, kt, st, pt, bias=False)

    def check_inputs(self, latents: Tensor, plucker: Tensor) -> tuple[int, int, int]:
        """InputError (one line, with the allowed values) unless the convolutions take the inputs.

        returns (T, gh, gw): latent frames and token grid
        """
        c = self.config
        if not isinstance(latents, Tensor) or latents.dim() != 5 or not latents.is_floating_point():
            got = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise InputError(f"latents must be a float tensor [B, T, {c.latent_channels}, h, w], got {got}")
        b, t, ch, h, w = latents.shape
        if ch != c.latent_channels:
            raise InputError(f"latents have {ch} channels; the LRM takes {c.latent_channels}-channel Wan-VAE latents "
                             f"[B, T, {c.latent_channels}, h, w] (got {tuple(latents.shape)})")
        p = c.latent_patch
        if b < 1 or t < 1 or h < p or w < p or h % p or w % p:
            raise InputError(f"latent grid T x h x w = {t} x {h} x {w} is not allowed: T >= 1 and h, w positive multiples "
                             f"of {p} (480p: 60 x 120, 720p: 90 x 180)")
        frames, size = c.frames_for(t), (h * c.video_scale, w * c.video_scale)
        want = (b, frames, *size, c.plucker_channels)
        if not isinstance(plucker, Tensor) or not plucker.is_floating_point() or tuple(plucker.shape) != want:
            got = tuple(plucker.shape) if isinstance(plucker, Tensor) else type(plucker).__name__
            raise InputError(f"plucker rays must be a float tensor {list(want)} for latents {tuple(latents.shape)} "
                             f"(F = {c.out_temporal_stride}(T-1)+1 = {frames} frames at {c.video_scale}x the latent grid), got {got}")
        for name, x in (("latents", latents), ("plucker rays", plucker)):
            if x.device.type == "meta":  # a shape-only dry run holds no values
                continue
            finite = torch.isfinite(x)
            if not bool(finite.all()):
                raise InputError(f"{name} hold {int((~finite).sum())} NaN/Inf values")
        return t, h // p, w // p

    def forward(self, latents: Tensor, plucker: Tensor, *, dpt_frames_per_chunk: int | None = None) -> LRMOutput:
        """Raw per-pixel outputs of the official network (differentiable).

        latents: Tensor  # [B, T, 16, h, w] normalised Wan-VAE latents
        plucker: Tensor  # [B, F, H, W, 6] from :func:`lrm_plucker`, F = 4(T-1)+1, H = 8h, W = 8w
        dpt_frames_per_chunk: run the DPT heads on this many latent frames at a time (None: as
            many as keep every map under 2^31 elements; fewer save memory; the values do not
            depend on it)
        returns: LRMOutput(gaussians_raw [B, F, H/2, W/2, 14], depth_raw [B, F, H/2, W/2, 3])
        """
        t, gh, gw = self.check_inputs(latents, plucker)
        b, dtype = latents.shape[0], self.video_conv.weight.dtype
        video = self.video_conv(latents.to(dtype).flatten(0, 1))  # [B*T, D, gh, gw]
        video = self.video_layer_norm(video.flatten(2).transpose(1, 2)).reshape(b, t * gh * gw, -1)  # [B, N, D]
        camera = self.camera_conv(plucker.to(dtype).permute(0, 4, 1, 2, 3))  # [B, D, T, gh, gw]
        camera = camera.flatten(2).transpose(1, 2)  # [B, N, D], token order (t, y, x) as the latents'
        tokens = self.transformer_input_layernorm(self.linear_proj(torch.cat((video, camera), dim=-1)))  # [B, N, D]
        hooks = self.transformer(tokens)  # 4 x [B, N, D]
        hooks_gs = self.transformer_gs(hooks[-1])  # 4 x [B, N, D]
        grid = (t, gh, gw)
        depth = self._to_frames(self.dpt_head(hooks, grid, dpt_frames_per_chunk), b, t, self.deconv3d_dpt)
        gaussians = self._to_frames(self.dpt_head_gs(hooks_gs, grid, dpt_frames_per_chunk), b, t, self.deconv3d_sh)
        return LRMOutput(gaussians_raw=gaussians, depth_raw=depth, distance_scale=self.config.distance_scale)

    @staticmethod
    def _to_frames(features: Tensor, b: int, t: int, deconv: nn.ConvTranspose3d) -> Tensor:
        """[B*T, C, h', w'] per latent frame -> [B, F, h', w', C_out] per video frame."""
        x = features.reshape(b, t, *features.shape[1:]).transpose(1, 2)  # [B, C, T, h', w']
        return deconv(x).permute(0, 2, 3, 4, 1)  # [B, F, h', w', C_out]

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, config: LRMConfig | None = None) -> PanoLRM:
        """Load the official ``pano_lrm_480p.pt`` or a folder written by :meth:`save_pretrained`.

        config: the network an official-layout file holds (default ``LRMConfig.official()``);
            a folder describes itself (a different ``config`` is refused).
        Strict: every tensor of the network must be in the checkpoint with its shape (an
        InputError lists the missing, misshaped and unexpected ones). Of an official file, keys
        outside ``gs_decoder1.`` and the official tensors the network never reads are listed
        in ONE :class:`LRMLoadNote` warning line (also kept as ``model.load_note``).
        """
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise InputError(f"dtype must be a floating torch dtype (float32, bfloat16, float16), got {dtype}")
        config, state, note = read_lrm_checkpoint(path, config=config)
        if note:
            warnings.warn(note, LRMLoadNote, stacklevel=2)
        with torch.device("meta"):
            model = cls(config)
        state = {k: v.to(device=device, dtype=dtype, copy=True) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.load_note = note
        return model.eval()

    def save_pretrained(self, folder: str | Path, *, source: str = "") -> None:
        """Write ``config.json`` and ``model.safetensors`` (our names, the current dtype) into ``folder``."""
        save_lrm_folder(folder, self.config, self.state_dict(), source=source)


# --------------------------------------------------------------------------- Plücker rays

# The official rays come from another spherical frame than the official point clouds (and ours):
# theta = lon, phi = -lat, d = (cos phi cos theta, cos phi sin theta, sin phi) = (d_z, d_x, d_y) of
# our direction d, i.e. the camera directions are permuted by this (proper) rotation.
_OURS_TO_LRM_RAYS = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def plucker_rays(c2w: Tensor, height: int, width: int) -> Tensor:
    """Spherical Plücker rays of our equirect convention, in the LRM's channel order.

    c2w: Tensor  # [B, F, 4, 4] camera-to-world (OpenCV, DESIGN.md §3)
    returns: Tensor  # [B, F, H, W, 6] channels (m, d): d the unit world direction of each pixel
        centre (:func:`matrix_world.equirect.equirect_directions` rotated by c2w), m = o x d
    """
    if c2w.dim() != 4 or tuple(c2w.shape[-2:]) != (4, 4):
        raise InputError(f"c2w must be [B, F, 4, 4], got {tuple(c2w.shape)}")
    b, f = c2w.shape[:2]
    rays = spherical_plucker(c2w.reshape(b * f, 4, 4), height, width)  # [B*F, H, W, 6] (d, m)
    return torch.cat((rays[..., 3:], rays[..., :3]), dim=-1).reshape(b, f, height, width, 6)


def c2w_ours_to_lrm(c2w: Tensor) -> Tensor:
    """Our camera-to-world poses -> the poses whose :func:`plucker_rays` are the LRM's input.

    The official pipeline (``spherical_ray_condition`` of ``pano_infer.py``) builds rays from
    poses relative to the first frame (``c2w_0^-1 c2w``) and from camera directions permuted
    by ``_OURS_TO_LRM_RAYS`` relative to our (and its own point clouds') equirect convention.
    The LRM's outputs still follow OUR convention: distances along our rays of each pixel.

    c2w: Tensor  # [B, F, 4, 4] (ours)
    returns: Tensor  # [B, F, 4, 4] = c2w_0^-1 @ c2w @ [[P, 0], [0, 1]]
    """
    if c2w.dim() != 4 or tuple(c2w.shape[-2:]) != (4, 4):
        raise InputError(f"c2w must be [B, F, 4, 4], got {tuple(c2w.shape)}")
    perm = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    perm[:3, :3] = torch.tensor(_OURS_TO_LRM_RAYS, dtype=c2w.dtype, device=c2w.device)
    return invert_pose(c2w[:, :1]) @ c2w @ perm


def lrm_plucker(c2w: Tensor, height: int, width: int) -> Tensor:
    """The LRM's Plücker input from our poses: ``plucker_rays(c2w_ours_to_lrm(c2w), H, W)``.

    c2w: Tensor  # [B, F, 4, 4] or [F, 4, 4] (ours)
    returns: Tensor  # [B, F, H, W, 6] (a batch of one for [F, 4, 4])
    """
    if c2w.dim() == 3:
        c2w = c2w[None]
    return plucker_rays(c2w_ours_to_lrm(c2w), height, width)


# --------------------------------------------------------------------------- checkpoint layout

_ALIAS = re.compile(r"^(dpt_head|dpt_head_gs)\.dpt\.scratch\.layer([1-4])_rn\.weight$")
_UNUSED = re.compile(r"^(encoder_layer\..+|camera_layer_norm\.(weight|bias)"
                     r"|(dpt_head|dpt_head_gs)\.dpt\.scratch\.refinenet4\.resConfUnit1\.conv[12]\.(weight|bias))$")


def network_shapes(config: LRMConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of ``PanoLRM(config)`` (built on the meta device, no memory)."""
    with torch.device("meta"):
        model = PanoLRM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def official_layout(config: LRMConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the official ``GS_decoder`` state dict holds (without the prefix).

    Ours, plus what the official forward never reads: ``encoder_layer.*`` (the template layer
    ``nn.TransformerEncoder`` copies), ``camera_layer_norm.*``, each DPT's
    ``scratch.refinenet4.resConfUnit1.*``; and the aliases ``scratch.layer{1..4}_rn.weight``.
    """
    shapes = network_shapes(config)
    out = dict(shapes)
    f = config.dpt_feature_dim
    for head in ("dpt_head", "dpt_head_gs"):
        for i in range(4):
            out[f"{head}.dpt.scratch.layer{i + 1}_rn.weight"] = shapes[f"{head}.dpt.scratch.layer_rn.{i}.weight"]
        for conv in ("conv1", "conv2"):
            out[f"{head}.dpt.scratch.refinenet4.resConfUnit1.{conv}.weight"] = (f, f, 3, 3)
            out[f"{head}.dpt.scratch.refinenet4.resConfUnit1.{conv}.bias"] = (f,)
    for name, shape in shapes.items():
        if name.startswith("transformer.layers.0."):
            out["encoder_layer." + name.removeprefix("transformer.layers.0.")] = shape
    out["camera_layer_norm.weight"] = out["camera_layer_norm.bias"] = (config.dim,)
    return out


def official_tensor_count(config: LRMConfig) -> int:
    """Numbers in the official state dict of ``config``'s network (aliases and unused tensors included)."""
    return sum(math.prod(s) for s in official_layout(config).values())


def _listed(items: list[str], limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_state_dict(state: dict[str, Any], config: LRMConfig, *, source: str, unexpected: list[str] | None = None) -> None:
    """InputError (one line) unless ``state`` holds exactly the network's tensors, finite, of their shapes."""
    expected = network_shapes(config)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(unexpected or []) | (set(state) - set(expected)))
    bad = []
    for name, value in state.items():
        if name not in expected:
            continue
        if not isinstance(value, Tensor) or not value.is_floating_point():
            bad.append(f"{name} is {getattr(value, 'dtype', type(value).__name__)} (expected floating)")
        elif tuple(value.shape) != expected[name]:
            bad.append(f"{name} {tuple(value.shape)} (expected {expected[name]})")
        elif not bool(torch.isfinite(value).all()):
            bad.append(f"{name} holds NaN/Inf")
    parts = [f"{len(missing)} missing ({_listed(missing)})"] if missing else []
    parts += [f"{len(bad)} misshaped or bad ({_listed(sorted(bad))})"] if bad else []
    parts += [f"{len(unexpected)} unexpected ({_listed(unexpected)})"] if unexpected else []
    if parts:
        raise InputError(f"{source} does not hold the PanoLRM network (dim {config.dim}, {config.heads} heads): "
                         + "; ".join(parts) + f"; expected Matrix-3D's {OFFICIAL_FILE} or a folder of save_pretrained")


def _unwrap(obj: Any, source: str) -> tuple[dict[str, Any], str]:
    """The official file's dict -> (its state dict, the network's key prefix)."""
    if isinstance(obj, dict) and isinstance(obj.get("module"), dict):
        obj = obj["module"]  # DeepSpeed / SAT: {'module': state_dict, ...}
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{source} holds {type(obj).__name__}, not a state dict ({{'module': {{...}}}} as Matrix-3D's)")
    keys = [str(k) for k in obj]
    if any(k.startswith(OFFICIAL_PREFIX) for k in keys):
        return obj, OFFICIAL_PREFIX
    if "video_conv.weight" in obj:
        return obj, ""
    raise InputError(f"{source} holds no PanoLRM network: no key {OFFICIAL_PREFIX}video_conv.weight "
                     f"(first keys: {_listed(sorted(keys), 4)})")


def official_to_network(obj: Any, config: LRMConfig, *, source: str) -> tuple[dict[str, Tensor], str]:
    """An official checkpoint's content -> (our state dict, checked strictly; the one-line note)."""
    state, prefix = _unwrap(obj, source)
    inner = {str(k)[len(prefix):]: v for k, v in state.items() if str(k).startswith(prefix)}
    outside = [str(k) for k in state if not str(k).startswith(prefix)]
    expected = network_shapes(config)
    placed: dict[str, Any] = {}
    aliases: dict[str, tuple[str, Any]] = {}
    unused, unexpected = [], []
    for name, value in inner.items():
        alias = _ALIAS.match(name)
        if name in expected:
            placed[name] = value
        elif alias:
            aliases[f"{alias.group(1)}.dpt.scratch.layer_rn.{int(alias.group(2)) - 1}.weight"] = (name, value)
        elif _UNUSED.match(name):
            unused.append(name)
        else:
            unexpected.append(prefix + name)
    differ = []
    for canonical, (name, value) in aliases.items():
        if canonical not in placed:
            placed[canonical] = value
        elif not (isinstance(value, Tensor) and isinstance(placed[canonical], Tensor)
                  and value.shape == placed[canonical].shape and torch.equal(value, placed[canonical])):
            differ.append(f"{prefix}{name} differs from its alias {prefix}{canonical}")
    if differ:
        raise InputError(f"{source}: {_listed(differ)} (the official file holds the same tensor under both names)")
    check_state_dict(placed, config, source=source, unexpected=unexpected)
    groups: dict[str, int] = {}
    for k in outside:
        groups[k.split(".")[0]] = groups.get(k.split(".")[0], 0) + 1
    note = (f"{source}: loaded {len(placed)} network tensors from {prefix or 'the top level'}"
            + (f"; ignored {len(outside)} keys outside the network ("
               + ", ".join(f"{g}.*: {n}" for g, n in sorted(groups.items())) + ")" if outside else "")
            + (f"; ignored {len(unused)} official tensors the official forward never reads (encoder_layer.*, "
               "camera_layer_norm.*, refinenet4.resConfUnit1.*)" if unused else "")
            + (f"; folded {len(aliases)} duplicates scratch.layerN_rn = scratch.layer_rn.N-1" if aliases else ""))
    return {k: v for k, v in placed.items()}, one_line(note) if (outside or unused or aliases) else ""


def read_lrm_checkpoint(path: str | Path, *, config: LRMConfig | None = None) -> tuple[LRMConfig, dict[str, Tensor], str]:
    """Read an official ``.pt`` or our folder -> (config, our state dict (checked), one-line note or '').

    config: the network of an official-layout file (default: the official one); for a folder,
        None or the folder's own config.
    """

    path = Path(path).expanduser()
    if path.is_dir():
        found, state = _read_folder(path)
        if config is not None and config != found:
            raise InputError(f"LRM folder {path} holds another network than the config asked for "
                             f"(dim {found.dim} vs {config.dim}, heads {found.heads} vs {config.heads})")
        return found, state, ""
    if not path.is_file():
        raise InputError(f"LRM checkpoint {path} does not exist (expected {OFFICIAL_FILE} or a save_pretrained folder)")
    from matrix_world.checkpoints import load_weights

    obj = load_weights(path, what="LRM checkpoint", mmap=True)
    config = config or LRMConfig.official()
    state, note = official_to_network(obj, config, source=str(path))
    return config, state, note


def _read_folder(folder: Path) -> tuple[LRMConfig, dict[str, Tensor]]:
    from matrix_world.checkpoints import load_weights

    cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights.is_file():
        raise InputError(f"LRM folder {folder} must hold {CONFIG_FILE} and {WEIGHTS_FILE} (written by save_pretrained)")
    try:
        meta = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {cfg_path}: {one_line(exc)}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        raise InputError(f"{cfg_path} is not a PanoLRM config (expected format {FORMAT!r} and a 'config' object)")
    config = LRMConfig.from_dict(meta["config"], source=str(cfg_path))
    state = load_weights(weights, what="LRM weights")
    check_state_dict(state, config, source=str(weights))
    return config, state


def save_lrm_folder(folder: str | Path, config: LRMConfig, state: dict[str, Tensor], *, source: str = "") -> None:
    """Write our self-describing checkpoint: ``config.json`` + ``model.safetensors`` (checked first)."""
    from safetensors.torch import save_file

    from matrix_world.io import atomic_write, write_text

    check_state_dict(state, config, source="the state dict to save")
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in tensors.values()})
    with atomic_write(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "config": config.to_dict(), "dtype": dtypes, "source": source,
            "parameters": sum(v.numel() for v in tensors.values())}
    write_text(folder / CONFIG_FILE, json.dumps(meta, indent=1) + "\n")
