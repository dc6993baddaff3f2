"""Tiny randomly initialised FLUX / FLUX-Fill pipelines of the real classes, saved like a hub snapshot.

Used by the tests (``tests/tiny_flux.py`` re-exports it), by ``scripts/train_pano_lora.py
--tiny`` (LoRA training on a CPU without weights) and by the benchmarks' smoke runs. The
classes are the real diffusers/transformers ones (FluxTransformer2DModel, AutoencoderKL,
CLIPTextModel, T5EncoderModel, FlowMatchEulerDiscreteScheduler); only the sizes are tiny, so
a saved folder loads back with the same ``from_pretrained`` code users run on FLUX.1-dev.

Sizes: VAE with 3 blocks (8x down-scaling is replaced by 4x: ``vae_scale_factor = 4``),
4 latent channels (packed 2x2 -> 16 transformer channels), a 1 + 1 layer transformer
with 2 heads x 16 (RoPE axes 4 + 6 + 6 = 16), 1-layer CLIP and T5 encoders of width 32,
character-level tokenizers (ids < 200). Random weights: wiring, not quality.
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
