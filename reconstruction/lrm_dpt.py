"""The DPT head of the panoramic LRM (``PanoLRM.dpt_head`` and ``PanoLRM.dpt_head_gs``).

Matrix-3D's Pano-LRM uses the CroCo/DUSt3R ``DPTOutputAdapter`` (regression head) in the form
DUSt3R fixed (``DPTOutputAdapter_fix``: the duplicated ``act_{1..4}_postprocess`` attributes
removed, the coarsest path cropped to the next level's size) inside ``PixelwiseTaskWithDPT``.
This is our implementation of that head with the same submodule names, so the official
state dict loads unchanged below ``dpt_head.`` / ``dpt_head_gs.``:

    dpt.act_postprocess.{0..3}.*            1x1 conv to layer_dims[i], then x4 / x2 / x1 / x0.5
    dpt.scratch.layer_rn.{0..3}.weight      3x3 conv layer_dims[i] -> feature_dim (no bias)
    dpt.scratch.refinenet{1..4}.*           fusion blocks (resConfUnit1 (not in 4), resConfUnit2, out_conv)
    dpt.head.{0,1,3}.*                      conv 3x3 (f -> f/2), conv 3x3 (f/2 -> last), ReLU, conv 1x1 (last -> last/2)

Official checkpoints also hold every ``scratch.layer_rn.{i}`` a second time as
``scratch.layer{i+1}_rn`` (CroCo registers the same convolutions under both names), and a
``scratch.refinenet4.resConfUnit1`` their forward never calls; the loader in
:mod:`matrix_world.reconstruction.lrm` folds the aliases into ``layer_rn`` and lists the
unused tensors.

Differences from the official code, none of which changes a number at 480p: the tokens are
reshaped from the actual grid and batch (the official forward hard-codes 21 frames, a 30 x 60
token grid and a batch of one); frames can be processed in chunks (the head is per frame).

Shapes: ``tokens`` are 4 tensors [B, T*gh*gw, D] (the outputs of the 4 hooked transformer
layers, token order (t, y, x)); the head returns [B*T, last_dim // 2, 8*gh, 8*gw].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_MAX_ELEMENTS = 2**31 - 1  # one interpolate call must stay below the int32 index limit


def upsample2x(x: Tensor) -> Tensor:
    """Bilinear x2 upsampling with align_corners=True, in channel chunks below 2^31 elements.

    x: Tensor  # [N, C, h, w]
    returns: Tensor  # [N, C, 2h, 2w] (every channel on its own, so chunking changes no value)
    """
    n, c, h, w = x.shape
    per_channel = n * 4 * h * w
    if per_channel * c <= _MAX_ELEMENTS:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    step = max(1, _MAX_ELEMENTS // per_channel)
    parts = [F.interpolate(p, scale_factor=2, mode="bilinear", align_corners=True) for p in x.split(step, dim=1)]
    return torch.cat(parts, dim=1)


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))) with 3x3 convolutions (DPT's ResidualConvUnit_custom, no BN)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, h, w] -> [N, C, h, w]
        out = self.conv1(F.relu(x))
        return self.conv2(F.relu(out)) + x


class FusionBlock(nn.Module):
    """DPT's FeatureFusionBlock_custom (width ratio 1): fuse a skip, refine, upsample x2, 1x1 conv.

    ``fuse=False`` is the coarsest block (``refinenet4``), which never gets a skip: the official
    module still owns a ``resConfUnit1`` there that its forward never calls; we do not build it
    (the loader lists those official tensors as unused).
    """

    def __init__(self, features: int, fuse: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, bias=True)
        if fuse:
            self.resConfUnit1 = ResidualConvUnit(features)  # official state-dict names (camelCase)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.fuse = fuse

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """x: [N, C, h, w], skip: [N, C, h, w] (only when ``fuse``) or None -> [N, C, 2h, 2w]."""
        if (skip is not None) != self.fuse:
            raise ValueError("a fusing block needs a skip input and the coarsest block takes none")
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        return self.out_conv(upsample2x(x))


class _Scratch(nn.Module):
    """Container of DPT's ``scratch`` names: the 4 projections and the 4 fusion blocks."""

    def __init__(self, layer_dims: Sequence[int], features: int):
        super().__init__()
        self.layer_rn = nn.ModuleList(nn.Conv2d(d, features, kernel_size=3, padding=1, bias=False) for d in layer_dims)
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features, fuse=False)


def _postprocess(dim: int, layer_dim: int, level: int) -> nn.Sequential:
    """Reassemble one hooked layer: 1x1 conv dim -> layer_dim, then resample to 4x, 2x, 1x or 1/2 x."""
    project = nn.Conv2d(dim, layer_dim, kernel_size=1)
    if level == 0:
        return nn.Sequential(project, nn.ConvTranspose2d(layer_dim, layer_dim, kernel_size=4, stride=4))
    if level == 1:
        return nn.Sequential(project, nn.ConvTranspose2d(layer_dim, layer_dim, kernel_size=2, stride=2))
    if level == 2:
        return nn.Sequential(project)
    return nn.Sequential(project, nn.Conv2d(layer_dim, layer_dim, kernel_size=3, stride=2, padding=1))


class DPTAdapter(nn.Module):
    """The DPT regression head over 4 token maps (``DPTOutputAdapter_fix``)."""

    def __init__(self, dim: int, layer_dims: Sequence[int], feature_dim: int, last_dim: int):
        super().__init__()
        if len(layer_dims) != 4:
            raise ValueError(f"DPT needs 4 layer dims, got {list(layer_dims)}")
        self.act_postprocess = nn.ModuleList(_postprocess(dim, d, i) for i, d in enumerate(layer_dims))
        self.scratch = _Scratch(layer_dims, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, kernel_size=3, padding=1),
            nn.Conv2d(feature_dim // 2, last_dim, kernel_size=3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(last_dim, last_dim // 2, kernel_size=1),
        )
        self.out_channels = last_dim // 2

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        """maps: 4 x [N, D, gh, gw] -> [N, last_dim // 2, 8 gh, 8 gw]."""
        layers = [self.scratch.layer_rn[i](act(x)) for i, (act, x) in enumerate(zip(self.act_postprocess, maps))]
        # layers: [N, f, 4gh, 4gw], [N, f, 2gh, 2gw], [N, f, gh, gw], [N, f, ceil(gh/2), ceil(gw/2)]
        path = self.scratch.refinenet4(layers[3])[:, :, : layers[2].shape[2], : layers[2].shape[3]]
        path = self.scratch.refinenet3(path, layers[2])  # [N, f, 2gh, 2gw]
        path = self.scratch.refinenet2(path, layers[1])  # [N, f, 4gh, 4gw]
        path = self.scratch.refinenet1(path, layers[0])  # [N, f, 8gh, 8gw]
        return self.head(path)


class DPTHead(nn.Module):
    """``PixelwiseTaskWithDPT``: the adapter under the name ``dpt``, fed with token sequences."""

    def __init__(self, dim: int, layer_dims: Sequence[int], feature_dim: int, last_dim: int):
        super().__init__()
        self.dpt = DPTAdapter(dim, layer_dims, feature_dim, last_dim)

    @property
    def out_channels(self) -> int:
        return self.dpt.out_channels

    def forward(self, tokens: Sequence[Tensor], grid: tuple[int, int, int], frames_per_chunk: int | None = None) -> Tensor:
        """Per-frame dense features from the hooked layers' tokens.

        tokens: 4 x Tensor  # [B, T*gh*gw, D], token order (t, y, x)
        grid: (T, gh, gw)
        frames_per_chunk: run the head on this many of the B*T frames at a time (None: all);
            the head is per frame, so the result does not depend on it
        returns: Tensor  # [B*T, last_dim // 2, 8*gh, 8*gw]
        """
        t, gh, gw = grid
        b, n, d = tokens[0].shape
        if n != t * gh * gw:
            raise ValueError(f"DPT head got {n} tokens, expected T*gh*gw = {t}*{gh}*{gw}")
        maps = [x.reshape(b * t, gh, gw, d).permute(0, 3, 1, 2) for x in tokens]  # 4 x [B*T, D, gh, gw]
        step = b * t if frames_per_chunk is None else max(1, int(frames_per_chunk))
        if step >= b * t:
            return self.dpt(maps)
        return torch.cat([self.dpt([m[i : i + step] for m in maps]) for i in range(0, b * t, step)], dim=0)
