"""Tiny randomly initialised MoGe-1 / MoGe-2 checkpoints in the official ``{'model_config', 'model'}`` layout.

The models are the real ``moge.model.v1/v2.MoGeModel`` classes; the DINOv2 backbone is a
2-block, width-32 ``DinoVisionTransformer`` registered under the name ``dinov2_tiny14`` in
``moge.model.dinov2.hub.backbones`` (MoGe looks the backbone up by name there). Norms are
"none"/"layer_norm" (group norm needs >= 32 channels). The mask head's last bias is set high
so every pixel is valid (a random mask would make wiring tests flaky).
"""

from __future__ import annotations

from pathlib import Path

import torch

BACKBONE = "dinov2_tiny14"
TOKENS = (48, 96)


def register_tiny_backbone() -> None:
    from moge.model.dinov2.hub import backbones
    from moge.model.dinov2.models.vision_transformer import DinoVisionTransformer

    def dinov2_tiny14(*, pretrained: bool = False, **kwargs):
        return DinoVisionTransformer(img_size=112, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                                     block_chunks=0, init_values=1.0, num_register_tokens=0)

    backbones.dinov2_tiny14 = dinov2_tiny14


def tiny_config(version: int) -> dict:
    if version == 1:
        return dict(encoder=BACKBONE, intermediate_layers=2, dim_proj=32, dim_upsample=[32, 16, 16],
                    dim_times_res_block_hidden=1, num_res_blocks=1, res_block_norm="layer_norm",
                    remap_output="exp", num_tokens_range=list(TOKENS), last_conv_channels=8, last_conv_size=1)
    stack = dict(dim_res_blocks=[32, 16, 16, 8, 8], num_res_blocks=[0, 1, 1, 1, 0], res_block_in_norm="none",
                 res_block_hidden_norm="none", resamplers=["conv_transpose"] * 3 + ["bilinear"])
    return dict(
        encoder=dict(backbone=BACKBONE, intermediate_layers=[0, 1], dim_out=32),
        neck=dict(dim_in=[34, 2, 2, 2, 2], dim_out=None, **stack),
        points_head=dict(dim_in=[32, 16, 16, 8, 8], dim_out=[None, None, None, None, 3], **stack),
        mask_head=dict(dim_in=[32, 16, 16, 8, 8], dim_out=[None, None, None, None, 1], **stack),
        scale_head=dict(dims=[32, 32, 1]),
        remap_output="exp",
        num_tokens_range=list(TOKENS),
    )


def build_tiny_moge(path: str | Path, version: int = 2, seed: int = 0) -> Path:
    """Build a tiny MoGe-``version`` model and save it as ``path`` (a model.pt file); return the path."""
    register_tiny_backbone()
    from moge.model import v1, v2

    torch.manual_seed(seed)
    config = tiny_config(version)
    model = (v1 if version == 1 else v2).MoGeModel(**config)
    with torch.no_grad():
        if version == 1:
            model.head.output_block[1][-1].bias.fill_(6.0)  # mask logits: all valid
        else:
            model.mask_head.output_blocks[-1].bias.fill_(6.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_config": config, "model": model.state_dict()}, path)
    return path
