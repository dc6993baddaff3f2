"""Tiny randomly initialised instances of the real model classes, for CPU tests and ``--tiny`` runs.

The same classes as the full-size checkpoints, only with tiny widths (FACTS §B), so code that
runs on them runs the real loading, LoRA and training code paths. Nothing is downloaded:
tokenizers are built in memory. Random weights: wiring, not quality. Library code (the
scripts' ``--tiny`` options, the benchmarks' smoke runs) and tests share this ONE copy
(``tests/tiny_flux.py`` and ``tests/tiny_wan.py`` import from here).

FLUX / FLUX-Fill (FluxTransformer2DModel, AutoencoderKL, CLIPTextModel, T5EncoderModel): VAE
with 3 blocks (``vae_scale_factor = 4``), 4 latent channels (packed 2x2 -> 16 transformer
channels), a 1 + 1 layer transformer with 2 heads x 16 (RoPE axes 4 + 6 + 6 = 16), 1-layer
CLIP and T5 encoders of width 32, character-level tokenizers (ids < 200).

Wan2.1 I2V (WanTransformer3DModel with 36 input channels and the image cross-attention
branch, AutoencoderKLWan with 16 latent channels, UMT5, CLIP vision): 2 layers of 2 heads x 12.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

LATENT_CHANNELS = 4
VAE_SCALE = 4  # 2 ** (len(block_out_channels) - 1)


def tiny_tokenizers():
    """(CLIP tokenizer, T5 tokenizer) over lower-case letters, digits and ',.°', built in memory."""
    from transformers import CLIPTokenizer, T5Tokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ",.°":
        vocab[c + "</w>"] = len(vocab)
        vocab[c] = len(vocab)
    clip = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + c, -1.0) for c in string.ascii_lowercase + string.digits]
    pieces += [(c, -2.0) for c in string.ascii_lowercase + string.digits + ",.°"]
    t5 = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)
    return clip, t5


def tiny_text_encoders():
    """(CLIPTextModel, T5EncoderModel), one layer of width 32 each, in eval mode."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip = CLIPTextModel(
        CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                       vocab_size=200, projection_dim=32, max_position_embeddings=77, eos_token_id=1, bos_token_id=0)
    ).eval()
    t5 = T5EncoderModel(
        T5Config(d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=4, vocab_size=200,
                 relative_attention_num_buckets=8, dropout_rate=0.0)
    ).eval()
    return clip, t5


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
        latent_channels=LATENT_CHANNELS, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=0.5, shift_factor=0.1,
    ).eval()


def tiny_flux_transformer(in_channels: int = 4 * LATENT_CHANNELS):
    """A 1 + 1 block FluxTransformer2DModel with the guidance embedding of FLUX.1-dev."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=4 * LATENT_CHANNELS,
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    ).eval()


def build_tiny_flux(folder: str | Path, *, fill: bool = False, seed: int = 0) -> Path:
    """Build a tiny FluxPipeline (or FluxFillPipeline) from ``seed`` and save it to ``folder``; return the folder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxPipeline

    torch.manual_seed(seed)
    clip_tok, t5_tok = tiny_tokenizers()
    clip, t5 = tiny_text_encoders()
    vae = tiny_vae()
    packed = 4 * LATENT_CHANNELS
    # FLUX-Fill: noisy latents + masked-image latents + the mask packed at pixel level (s*s*4 channels)
    in_channels = packed * 2 + 4 * VAE_SCALE * VAE_SCALE if fill else packed
    transformer = tiny_flux_transformer(in_channels)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    cls = FluxFillPipeline if fill else FluxPipeline
    pipe = cls(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
               tokenizer_2=t5_tok, transformer=transformer)
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- Wan2.1 I2V

TINY_INNER_DIM = 24  # 2 heads x 12
TINY_TEXT_DIM = 32
TINY_IMAGE_DIM = 8
TINY_IMAGE_SIZE = 32  # CLIP input size of the tiny image encoder (17 tokens: 16 patches + class)


def tiny_wan_vae():
    """A tiny random ``AutoencoderKLWan`` with Wan2.1's 16 latent channels, its 8x spatial and 4x
    temporal compression and its config's (real) latents_mean / latents_std; built from the
    global torch seed."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def tiny_wan_components(seed: int = 0) -> dict:
    """Fresh tiny Wan2.1 image-to-video components (eval mode) for ``PanoVideoPipeline(**components)``.

    Same classes as ``Wan-AI/Wan2.1-I2V-14B-*-Diffusers`` (WanTransformer3DModel with 36 input
    channels and the image cross-attention branch, AutoencoderKLWan with 16 latent channels,
    UMT5 text encoder, CLIP vision encoder). Text length stays 512: with ``added_kv_proj_dim``
    (Wan2.1's image cross-attention) the attention processor splits the context into
    ``len - 512`` image tokens and 512 text tokens. Weights depend only on ``seed``.
    """
    from diffusers import (
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
    vae = tiny_wan_vae()
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
