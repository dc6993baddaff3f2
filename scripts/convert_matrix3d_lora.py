"""Convert Matrix-3D's official Wan2.1 LoRA to the diffusers/peft layout, once.

    python scripts/convert_matrix3d_lora.py pano_video_gen_480p.ckpt pano_video_gen_480p.safetensors

IN is a plain torch dict in the original Wan key layout (``blocks.N.self_attn.q.lora_A.weight``,
optional ``diffusion_model.`` prefix), read with torch.load(weights_only=True). OUT is a
.safetensors file with keys ``transformer.blocks.N.attn1.to_q.lora_A.weight`` that diffusers'
``load_lora_weights`` (and our ``--lora``) read directly. Every key must map (strict).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="official LoRA (.ckpt / .bin / .pt / .safetensors)")
    parser.add_argument("output", help="output .safetensors in the diffusers/peft layout")
    args = parser.parse_args(argv)

    from matrix_world.errors import InputError
    from matrix_world.io import atomic_write

    try:
        if not args.output.endswith(".safetensors"):
            raise InputError(f"output must end with .safetensors, got {args.output}")
        from matrix_world.generation.wan_lora import (
            convert_original_wan_lora,
            detect_layout,
            read_lora_file,
        )
        from safetensors.torch import save_file

        state = read_lora_file(args.input)
        if detect_layout(state) != "original":
            raise InputError(f"{args.input} is already in the diffusers layout; nothing to convert")
        converted = {k: v.contiguous() for k, v in convert_original_wan_lora(state).items()}
        with atomic_write(args.output) as tmp:
            save_file(converted, str(tmp), metadata={"format": "pt", "converted_from": "original Wan LoRA layout"})
    except (InputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rank = max(v.shape[0] for k, v in converted.items() if k.endswith("lora_A.weight"))
    print(f"wrote {args.output}: {len(converted) // 2} LoRA modules, rank {rank}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
