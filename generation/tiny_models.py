"""Tiny randomly initialised instances of the real model classes, for CPU tests and ``--tiny`` runs.

The same classes as the full-size checkpoints, only with tiny widths (FACTS §B), so code that
runs on them runs the real loading, LoRA and training code paths. Nothing here is downloaded:
tokenizers are built in memory. Library code (scripts' ``--tiny`` options) and tests share
this ONE copy (``tests/tiny_wan.py`` imports from here).
"""

from __future__ import annotations

import torch

TINY_INNER_DIM = 24  # 2 heads x 12
TINY_TEXT_DIM = 32
TINY_IMAGE_DIM = 8
TINY_IMAGE_SIZE = 32  # CLIP input size of the tiny image encoder (17 tokens: 16 patches + class)


def tiny_wan_components(seed: int = 0) -> dict:
    """Fresh tiny Wan2.1 image-to-video components (eval mode) for ``PanoVideoPipeline(**components)``.

    Same classes as ``Wan-AI/Wan2.1-I2V-14B-*-Diffusers`` (WanTransformer3DModel with 36 input
    channels and the image cross-attention branch, AutoencoderKLWan with 16 latent channels,
    UMT5 text encoder, CLIP vision encoder). Text length stays 512: with ``added_kv_proj_dim``
    (Wan2.1's image cross-attention) the attention processor splits the context into
    ``len - 512`` image tokens and 512 text tokens. Weights depend only on ``seed``.
    """
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        T5Tokenizer,
        UMT5Config,
        UMT5EncoderModel,
    )

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        out_channels=16,
        text_dim=TINY_TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        image_dim=TINY_IMAGE_DIM,
        added_kv_proj_dim=TINY_INNER_DIM,
        rope_max_seq_len=64,
    )
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=64, d_model=TINY_TEXT_DIM, d_kv=8, d_ff=32, num_layers=2, num_heads=2, relative_attention_num_buckets=8)
    )
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(hidden_size=TINY_IMAGE_DIM, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                         image_size=TINY_IMAGE_SIZE, patch_size=8)
    )
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(chr(ord("a") + i), -float(i + 1)) for i in range(26)]
    pieces += [("\u2581" + chr(ord("a") + i), -float(i + 1)) for i in range(26)]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    image_processor = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE},
                                         crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    for module in (transformer, vae, text_encoder, image_encoder):
        module.eval()
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": scheduler,
        "image_processor": image_processor,
        "image_encoder": image_encoder,
        "transformer": transformer,
    }
