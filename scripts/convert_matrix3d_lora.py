"""Convert Matrix-3D's official Wan2.1 LoRA to the diffusers/peft layout, once.

    python scripts/convert_matrix3d_lora.py pano_video_gen_480p.ckpt pano_video_gen_480p.safetensors

IN is a plain torch dict in the original Wan key layout (``blocks.N.self_attn.q.lora_A.weight``,
optional ``diffusion_model.`` prefix), read with torch.load(weights_only=True). OUT is a
.safetensors file with keys ``transformer.blocks.N.attn1.to_q.lora_A.weight`` that diffusers'
``load_lora_weights`` (and our ``--wan-lora``) read directly. Strict: every key must map, every
``lora_A`` must be 2-D [rank, in] and every ``lora_B`` [out, rank] with one rank; a bad checkpoint
prints ``error: <the bad tensors>``, exits with code 2 and writes nothing.
"""

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import tyro

from matrix_world.app.cli import parse_options, run_main
from matrix_world.errors import InputError


@dataclass
class ConvertOptions:
    """Options of scripts/convert_matrix3d_lora.py."""

    input: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="IN")]
    """Official LoRA (.ckpt / .bin / .pt / .safetensors)."""
    output: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """Output .safetensors in the diffusers/peft layout."""


def convert(argv: Sequence[str] | None = None) -> int:
    options = parse_options(ConvertOptions, argv, prog="convert_matrix3d_lora.py", doc=__doc__)

    from matrix_world.generation.wan_lora import (
        check_lora_tensors,
        convert_original_wan_lora,
        detect_layout,
        read_lora_file,
    )

    from matrix_world.io import atomic_write

    if not options.output.endswith(".safetensors"):
        raise InputError(f"output must end with .safetensors, got {options.output}")
    # 1. read and check everything (names, then shapes) before anything is written
    state = read_lora_file(options.input)
    if detect_layout(state) != "original":
        raise InputError(f"{options.input} is already in the diffusers layout; nothing to convert")
    converted = {k: v.contiguous() for k, v in convert_original_wan_lora(state).items()}
    try:
        rank = check_lora_tensors(state, uniform_rank=True)
    except InputError as exc:
        raise InputError(f"{options.input}: {exc}; nothing written") from None
    # 2. write
    from safetensors.torch import save_file

    with atomic_write(options.output) as tmp:
        save_file(converted, str(tmp), metadata={"format": "pt", "converted_from": "original Wan LoRA layout"})
    print(f"wrote {options.output}: {len(converted) // 2} LoRA modules, rank {rank}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command: ``error: <one line>`` and exit code 2 on bad input, 0 when written."""
    return run_main(convert, argv)


if __name__ == "__main__":
    sys.exit(main())
