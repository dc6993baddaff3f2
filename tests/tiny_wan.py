"""A tiny, randomly initialised Wan2.1 image-to-video pipeline for CPU tests (FACTS §B).

Same classes as ``Wan-AI/Wan2.1-I2V-14B-*-Diffusers`` (WanTransformer3DModel with 36 input
channels and the image cross-attention branch, AutoencoderKLWan with 16 latent channels,
UMT5 text encoder, CLIP vision encoder), only with tiny widths. Saved with
``save_pretrained`` and reloaded offline, so tests exercise the real loading code.

Text length stays 512: with ``added_kv_proj_dim`` (Wan2.1's image cross-attention) the
attention processor splits the context into ``len - 512`` image tokens and 512 text tokens.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

TINY_INNER_DIM = 24  # 2 heads x 12
TINY_TEXT_DIM = 32
TINY_IMAGE_DIM = 8


def tiny_wan_vae():
    """A tiny random ``AutoencoderKLWan`` with Wan2.1's 16 latent channels, its 8x spatial and 4x
    temporal compression and its config's (real) latents_mean / latents_std; built from the
    global torch seed."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def tiny_wan_components(seed: int = 0) -> dict:
    """Fresh tiny components (eval mode) for ``PanoVideoPipeline(**components)``."""
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
        CLIPVisionConfig(hidden_size=TINY_IMAGE_DIM, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    )
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(chr(ord("a") + i), -float(i + 1)) for i in range(26)]
    pieces += [("\u2581" + chr(ord("a") + i), -float(i + 1)) for i in range(26)]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
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


@functools.lru_cache(maxsize=1)
def tiny_wan_dir() -> str:
    """A folder holding a saved tiny pipeline in the diffusers layout (built once per process)."""
    from matrix_world.generation.wan_pipeline import PanoVideoPipeline

    folder = Path(tempfile.mkdtemp(prefix="tiny_wan_")) / "tiny-wan-i2v"
    PanoVideoPipeline(**tiny_wan_components()).save_pretrained(str(folder))
    return str(folder)


def load_tiny_pipeline():
    """Reload the saved tiny pipeline offline (fresh modules every call, float32, eval mode)."""
    from matrix_world.generation.wan_pipeline import PanoVideoPipeline

    pipe = PanoVideoPipeline.from_pretrained(tiny_wan_dir(), dtype=torch.float32, local_files_only=True)
    for name in ("transformer", "vae", "text_encoder", "image_encoder"):
        getattr(pipe, name).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
