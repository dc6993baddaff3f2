#!/usr/bin/env python
"""Train the scaffold-conditioned Wan2.1-I2V panoramic LoRA (Matrix-3D's video model) on clips.

    python scripts/train_video_lora.py --data DIR --out RUN --steps N [--frames 81 --resolution 480p]
    accelerate launch --num_processes 4 scripts/train_video_lora.py --data DIR --out RUN --steps N
    accelerate launch --config_file configs/accelerate_fsdp_wan14b.yaml scripts/train_video_lora.py ...
    python scripts/train_video_lora.py --data DIR --out RUN --steps 20 --tiny --height 32 --frames 9

Each item is a window of --frames frames (--frame-stride apart) of a clip under --data (the dataset
readers: our clip layout from scripts/build_synthetic_dataset.py, Matrix-Pano-style folders), resized
to --resolution, with its scaffold and mask rendered from frame 0's panorama and distance along the
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

from matrix_world.app.cli import (
    choices_metavar,
    note,
    parse_options,
    require_finite,
    require_one_of,
    require_positive,
    run_main,
)
from matrix_world.errors import InputError
from matrix_world.generation.train_video_lora import LR_SCHEDULERS, MIXED_PRECISION
from matrix_world.generation.wan_lora_training import LOSS_WEIGHTING, MATRIX3D_LORA_TARGETS, TIMESTEP_SAMPLING

PAIR_KINDS = ("scaffold", "perspective")

RESOLUTIONS = {"480p": 480, "720p": 720}
DEPTH_BACKENDS = ("auto", "prior", "moge", "none")


@dataclass
class TrainOptions:
    """Options of scripts/train_video_lora.py."""

    data: Path
    """Folder of training clips (clip folders with rgb/, poses.json, distance.npz; or Matrix-Pano-style folders)."""
    out: Path
    """Output folder (new or empty; with --resume the run to continue)."""
    steps: int
    """Optimizer steps in total (a resumed run continues up to this)."""
    tiny: bool = False
    """Train the tiny random-weight Wan (CPU tests and smoke runs) instead of --model."""
    model: str | None = None
    """Hub id or folder of a diffusers Wan2.1-I2V-14B model; None = Wan-AI/Wan2.1-I2V-14B-{480P,720P}-Diffusers."""
    resolution: Annotated[str, choices_metavar(RESOLUTIONS)] = "480p"
    """Training resolution: 480p (480 x 960) or 720p (720 x 1440); clips of other sizes are resized."""
    height: int | None = None
    """Frame height in pixels (width = 2 x height; multiple of 16); overrides --resolution."""
    frames: int = 81
    """Frames per training window (4k+1)."""
    frame_stride: int = 1
    """Step between the frames of a window (1 = consecutive frames)."""
    lora_rank: int = 16
    """LoRA rank."""
    lora_alpha: float | None = None
    """LoRA alpha (scale = alpha / rank, folded into the saved file); None = the rank."""
    lora_targets: str = ",".join(MATRIX3D_LORA_TARGETS)
    """Comma-separated Linear layers (names or dotted suffixes); default: the official Matrix-3D LoRA's."""
    learning_rate: float = 1e-4
    """AdamW learning rate."""
    lr_scheduler: Annotated[str, choices_metavar(LR_SCHEDULERS)] = "constant"
    """Learning-rate schedule (diffusers' get_scheduler)."""
    lr_warmup_steps: int = 0
    """Warm-up steps of the schedule."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = off)."""
    batch_size: int = 1
    """Windows per process and micro-step."""
    gradient_accumulation: int = 1
    """Micro-steps per optimizer step."""
    shift: float = 5.0
    """Flow-matching shift of the sigma grid (the video stage's: 5)."""
    timestep_sampling: Annotated[str, choices_metavar(TIMESTEP_SAMPLING)] = "uniform"
    """How sigmas are drawn over the shifted grid (finetrainers' schemes)."""
    loss_weighting: Annotated[str, choices_metavar(LOSS_WEIGHTING)] = "none"
    """Per-sample loss weight: none, diffsynth (Matrix-3D's trainer), sigma_sqrt, cosmap."""
    gradient_checkpointing: bool = True
    """Recompute the transformer blocks in the backward pass (needed for the 14B at 81 frames)."""
    mixed_precision: Annotated[str, choices_metavar(MIXED_PRECISION)] = "auto"
    """auto = bf16 on a GPU (float32 for --tiny), no (float32) on the CPU."""
    cache: bool = False
    """Cache the VAE latents and text/image embeddings of each window (a folder keyed by content hash)."""
    cache_dir: Path | None = None
    """Cache folder (shareable between runs with the same model); None = OUT/cache."""
    checkpoint_every: int = 500
    """Write a checkpoint (and OUT/lora.safetensors) every this many steps, and at the end."""
    checkpoints_keep: int = 3
    """Keep the newest this many checkpoints."""
    resume: bool = False
    """Continue the run in --out from its latest checkpoint (LoRA, optimizer, step, RNG)."""
    validation_every: int = 250
    """Write a validation video every this many steps (and at the end); 0 = never."""
    validation_steps: int = 30
    """Denoising steps of the validation video."""
    validation_guidance: float = 5.0
    """Classifier-free guidance of the validation video."""
    validation_data: Path | None = None
    """Clips to take the validation window from (its first); None = the first training window."""
    depth_backend: Annotated[str, choices_metavar(DEPTH_BACKENDS)] = "auto"
    """Frame 0's distance for clips without distance: auto (MoGe with weights + GPU, else prior), prior, moge, none."""
    moge_model: str | None = None
    """MoGe hub id, folder or model.pt for --depth-backend moge/auto; None = MoGe-2 ViT-L."""
    seed: int = 0
    """Seed of the LoRA init, the data order, the noise and the sigmas."""
    num_workers: int = 0
    """DataLoader worker processes that read clips and render scaffolds (0 = the main process)."""
    threads: int | None = None
    """CPU threads for torch; None = the usable cores minus the machine's load."""
    cpu: bool = False
    """Train on the CPU even where a GPU is present."""
    allow_download: bool = False
    """Let the hub download missing model weights."""
    pairs: Annotated[str, choices_metavar(PAIR_KINDS)] = "scaffold"
    """Training pairs: scaffold (Matrix-3D: mesh scaffold of frame 0 along the clip's poses) or perspective (Argus' camera-motion simulation: a hand-held perspective video cut from the 360° clip, its canvas as the condition, the clip in frame 0's camera as the target; needs no poses or distance)."""
    perspective_width: int = 256
    """--pairs perspective: width of the simulated perspective frames (height from the drawn FOVs)."""
    representation: Annotated[str, choices_metavar(("erp", "viewpoint"))] = "erp"
    """Layout the model is trained on: erp (equirect) or viewpoint (ViewPoint maps; use the same --representation in the video stage)."""

    def check(self) -> None:
        require_one_of(self, "resolution", RESOLUTIONS)
        require_one_of(self, "pairs", PAIR_KINDS)
        require_one_of(self, "representation", ("erp", "viewpoint"))
        require_positive(self, "perspective_width")
        require_one_of(self, "depth_backend", DEPTH_BACKENDS)
        require_positive(self, "steps", "height", "frames", "frame_stride", "lora_rank", "lora_alpha", "learning_rate",
                         "batch_size", "gradient_accumulation", "shift", "checkpoint_every", "checkpoints_keep",
                         "validation_steps", "validation_guidance", "threads")
        require_finite(self, "weight_decay", "max_grad_norm")
        for name in ("lr_warmup_steps", "validation_every", "num_workers"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')}: expected an integer >= 0, got {getattr(self, name)}")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise InputError("--max-grad-norm and --weight-decay: expected numbers >= 0")
        require_one_of(self, "lr_scheduler", LR_SCHEDULERS)
        require_one_of(self, "mixed_precision", MIXED_PRECISION)
        require_one_of(self, "timestep_sampling", TIMESTEP_SAMPLING)
        require_one_of(self, "loss_weighting", LOSS_WEIGHTING)
        if not [t for t in self.lora_targets.split(",") if t.strip()]:
            raise InputError("--lora-targets: expected comma-separated layer names, got none")
        self.config().check()  # 4k+1 frames, height multiple of 16

    def config(self):
        from matrix_world.generation.train_video_lora import VideoLoraTrainConfig

        return VideoLoraTrainConfig(
            out=str(self.out), steps=self.steps, model=self.model, tiny=self.tiny,
            height=self.height or RESOLUTIONS[self.resolution], frames=self.frames, rank=self.lora_rank,
            alpha=self.lora_alpha, targets=tuple(t.strip() for t in self.lora_targets.split(",") if t.strip()),
            learning_rate=self.learning_rate, lr_scheduler=self.lr_scheduler, lr_warmup_steps=self.lr_warmup_steps,
            weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm, batch_size=self.batch_size,
            gradient_accumulation=self.gradient_accumulation, shift=self.shift, timestep_sampling=self.timestep_sampling,
            loss_weighting=self.loss_weighting, gradient_checkpointing=self.gradient_checkpointing,
            mixed_precision=self.mixed_precision, cache=self.cache,
            cache_dir=None if self.cache_dir is None else str(self.cache_dir), checkpoint_every=self.checkpoint_every,
            checkpoints_keep=self.checkpoints_keep, resume=self.resume, validation_every=self.validation_every,
            validation_steps=self.validation_steps, validation_guidance=self.validation_guidance, seed=self.seed,
            num_workers=self.num_workers, cpu=self.cpu, allow_download=self.allow_download,
            representation=self.representation)


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
    config = options.config()
    cuda = torch.cuda.is_available() and not options.cpu
    device = "cuda" if cuda else "cpu"
    depth, why = depth_for_clips(options.depth_backend, model=options.moge_model, device=device)
    raster = "cuda" if cuda and options.num_workers == 0 else "cpu"  # CUDA rasterising in the main process only
    open_pairs: Callable[[Path], PairDataset | PerspectivePairDataset]
    if options.pairs == "perspective":
        why = "not needed (perspective pairs)"
        open_pairs = lambda root: open_perspective_pairs(root, frames=config.frames, frame_stride=options.frame_stride,
                                                         height=config.height, width=options.perspective_width,
                                                         seed=options.seed)
    else:
        open_pairs = lambda root: open_training_pairs(root, frames=config.frames, frame_stride=options.frame_stride,
                                                      height=config.height, depth=depth, backend=raster, device=device)
    data = open_pairs(options.data)
    validation = open_pairs(options.validation_data)[0] if options.validation_data and config.validation_every else None
    skipped = data.clips.skipped
    main_process = os.environ.get("RANK", "0") == "0"
    if skipped and main_process:
        note(f"{len(skipped)} sequence(s) shorter than a window skipped, e.g. {skipped[0]}")
    if main_process:
        note(f"{len(data)} training window(s) of {config.frames} frames at {config.height}x{2 * config.height} from {options.data}; "
             f"clips without distance: {why}")
    info = {"root": str(options.data), "windows": len(data), "frame_stride": options.frame_stride,
            "depth_for_clips_without_distance": why, "scaffold_rasteriser": raster, "pairs": options.pairs,
            "representation": options.representation}
    result = train_video_lora(config, data, validation_item=validation, data_info=info)
    if result.lora is not None and result.main_process:
        use = f"--wan-model {options.out / 'tiny_base'} " if options.tiny else ""
        print(f"trained to step {result.step} -> {result.lora} (the video stage: {use}--wan-lora {result.lora})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
