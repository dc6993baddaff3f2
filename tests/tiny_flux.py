"""Tiny randomly initialised FLUX / FLUX-Fill pipelines for the tests.

The builders live in the library (``matrix_world.generation.tiny_models``: the training
script's ``--tiny`` uses them too); this module re-exports them under the names the tests and
benchmarks/e2e.py use, and adds a random test LoRA.
"""

from __future__ import annotations

from pathlib import Path

import torch

from matrix_world.generation.tiny_models import (  # noqa: F401  (re-exported for the tests)
    LATENT_CHANNELS,
    VAE_SCALE,
    build_tiny_flux,
    tiny_flux_transformer as _transformer,
    tiny_text_encoders as _text_encoders,
    tiny_tokenizers as _tokenizers,
    tiny_vae as _vae,
)


def save_tiny_flux_lora(pipe, path: str | Path, *, rank: int = 4, seed: int = 1, scale: float = 0.5) -> Path:
    """Attach a random peft LoRA to ``pipe.transformer``, save it with diffusers' saver, remove it.

    Returns the .safetensors file. The LoRA B matrices are random (peft initialises them to 0,
    which would make the LoRA a no-op).
    """
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=True)
    pipe.transformer.add_adapter(config, adapter_name="tiny")
    for name, p in pipe.transformer.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=scale)
    layers = get_peft_model_state_dict(pipe.transformer, adapter_name="tiny")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(path.parent, transformer_lora_layers=layers, weight_name=path.name)
    pipe.transformer.delete_adapters("tiny")
    return path
