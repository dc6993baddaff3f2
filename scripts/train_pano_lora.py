#!/usr/bin/env python
"""Train the FLUX.1-dev panorama LoRA on 2:1 panoramas (text -> 360° panorama, as Matrix-3D's).

    python scripts/train_pano_lora.py --data DIR --out DIR --steps N [--heights 512] [--rank 16]
    accelerate launch --num_processes 4 scripts/train_pano_lora.py --data DIR --out DIR --steps N   # or torchrun
    python scripts/train_pano_lora.py --data DIR --out DIR --steps 4 --tiny      # CPU, tiny random FLUX

DIR is a folder of 2:1 panoramas with .txt captions (or a synthetic dataset from
scripts/build_synthetic_dataset.py: frame 0 of each clip and its prompt.txt). The objective is
FLUX's flow matching as diffusers' FLUX LoRA training has it; the LoRA goes to
OUT/pytorch_lora_weights.safetensors (diffusers' FLUX LoRA format), which the panorama stage
loads with --flux-lora OUT. Rerun the same command to resume from the newest checkpoint.
Details: matrix_world/generation/train_pano_lora.py. Bad input prints `error: ...` and exits
with code 2.
"""

import sys

from matrix_world.app.cli import parse_options, run_main
from matrix_world.generation.train_pano_lora import PanoLoraTrainConfig, train


def main(argv=None) -> int:
    config = parse_options(PanoLoraTrainConfig, argv, prog="train_pano_lora.py", doc=__doc__)
    train(config)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
