#!/usr/bin/env python
"""Train the scaffold-conditioned Wan2.1-I2V panoramic LoRA (Matrix-3D's video model) on clips.

    python scripts/train_video_lora.py --data DIR --out RUN --steps N [--frames 81 --height 480]
    accelerate launch --num_processes 4 scripts/train_video_lora.py --data DIR --out RUN --steps N
    accelerate launch --config_file configs/accelerate_fsdp_wan14b.yaml scripts/train_video_lora.py ...
    python scripts/train_video_lora.py --data DIR --out RUN --steps 20 --tiny --height 32 --frames 9

Each item is a window of --frames frames (--frame-stride apart) of a clip under --data (the dataset
readers: our clip layout from scripts/build_synthetic_dataset.py, Matrix-Pano-style folders), resized
to --height, with its scaffold and mask rendered from frame 0's panorama and distance along the
clip's poses by the pipeline's scaffold builder. Clips without distance get frame 0's distance from
--depth-backend (auto: MoGe where its weights and a GPU are here, else the prior heuristic). The
condition is the video stage's own (PanoVideoPipeline.prepare_condition); the objective the
flow-matching velocity on the Wan-VAE latents of the ground truth; the frozen base carries peft
LoRA layers on the layers the official Matrix-3D LoRA covers. RUN/lora.safetensors is what the video
stage loads with --wan-lora (--tiny: with --wan-model RUN/tiny_base). Bad input prints `error: ...`
and exits with code 2; see docs/video_lora_training.md.
"""

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from matrix_world.app.cli import choices_metavar, note, parse_options, require_one_of, require_positive, run_main
from matrix_world.generation.video_lora_config import VideoLoraTrainConfig

PAIR_KINDS = ("scaffold", "perspective")
DEPTH_BACKENDS = ("auto", "prior", "moge", "none")


@dataclass(kw_only=True)
class TrainOptions(VideoLoraTrainConfig):
    """Options of scripts/train_video_lora.py: the trainer's (VideoLoraTrainConfig) and the data's."""

    data: Path
    """Folder of training clips (clip folders with rgb/, poses.json, distance.npz; or Matrix-Pano-style folders)."""
    frame_stride: int = 1
    """Step between the frames of a window (1 = consecutive frames)."""
    validation_data: Path | None = None
    """Clips to take the validation window from (its first); None = the first training window."""
    depth_backend: Annotated[str, choices_metavar(DEPTH_BACKENDS)] = "auto"
    """Frame 0's distance for clips without distance: auto (MoGe with weights + GPU, else prior), prior, moge, none."""
    moge_model: str | None = None
    """MoGe hub id, folder or model.pt for --depth-backend moge/auto; None = MoGe-2 ViT-L."""
    threads: int | None = None
    """CPU threads for torch; None = the usable cores minus the machine's load."""
    pairs: Annotated[str, choices_metavar(PAIR_KINDS)] = "scaffold"
    """Training pairs: scaffold (Matrix-3D: mesh scaffold of frame 0 along the clip's poses) or perspective (Argus' camera-motion simulation: a hand-held perspective video cut from the 360° clip, its canvas as the condition, the clip in frame 0's camera as the target; needs no poses or distance)."""
    perspective_width: int = 256
    """--pairs perspective: width of the simulated perspective frames (height from the drawn FOVs)."""

    def check(self) -> None:
        require_one_of(self, "depth_backend", DEPTH_BACKENDS)
        require_one_of(self, "pairs", PAIR_KINDS)
        require_positive(self, "frame_stride", "threads", "perspective_width")
        super().check()


def main(argv=None) -> int:
    options = parse_options(TrainOptions, argv, prog="train_video_lora.py", doc=__doc__)
    import torch

    from matrix_world.datasets.pairs import (
        PairDataset,
        PerspectivePairDataset,
        depth_for_clips,
        open_perspective_pairs,
        open_training_pairs,
    )
    from matrix_world.generation.train_video_lora import train_video_lora
    from matrix_world.runtime import apply_threads

    apply_threads(options.threads)
    cuda = torch.cuda.is_available() and not options.cpu
    device = "cuda" if cuda else "cpu"
    depth, why = depth_for_clips(options.depth_backend, model=options.moge_model, device=device)
    raster = "cuda" if cuda and options.num_workers == 0 else "cpu"  # CUDA rasterising in the main process only
    open_pairs: Callable[[Path], PairDataset | PerspectivePairDataset]
    if options.pairs == "perspective":
        why = "not needed (perspective pairs)"
        open_pairs = lambda root: open_perspective_pairs(root, frames=options.frames, frame_stride=options.frame_stride,
                                                         height=options.height, width=options.perspective_width,
                                                         seed=options.seed)
    else:
        open_pairs = lambda root: open_training_pairs(root, frames=options.frames, frame_stride=options.frame_stride,
                                                      height=options.height, depth=depth, backend=raster, device=device)
    data = open_pairs(options.data)
    validation = open_pairs(options.validation_data)[0] if options.validation_data and options.validation_every else None
    skipped = data.clips.skipped
    main_process = os.environ.get("RANK", "0") == "0"
    if skipped and main_process:
        note(f"{len(skipped)} sequence(s) shorter than a window skipped, e.g. {skipped[0]}")
    if main_process:
        note(f"{len(data)} training window(s) of {options.frames} frames at {options.height}x{2 * options.height} from {options.data}; "
             f"clips without distance: {why}")
    info = {"root": str(options.data), "windows": len(data), "frame_stride": options.frame_stride,
            "depth_for_clips_without_distance": why, "scaffold_rasteriser": raster, "pairs": options.pairs,
            "representation": options.representation}
    result = train_video_lora(options, data, validation_item=validation, data_info=info)
    if result.lora is not None and result.main_process:
        use = f"--wan-model {Path(options.out) / 'tiny_base'} " if options.tiny else ""
        print(f"trained to step {result.step} -> {result.lora} (the video stage: {use}--wan-lora {result.lora})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
