"""The options of the Wan I2V panoramic LoRA training (:func:`~matrix_world.generation.train_video_lora.train_video_lora`):
one dataclass with a docstring per field (``scripts/train_video_lora.py --help`` shows them) and
every check of their values, made before anything is read or written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from matrix_world.errors import InputError
from matrix_world.generation.wan_lora_training import LOSS_WEIGHTING, MATRIX3D_LORA_TARGETS, TIMESTEP_SAMPLING

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISION = ("auto", "no", "bf16")
# Options a resumed run must share with the run it continues (others, e.g. --steps, may change).
RESUME_KEYS = ("model", "tiny", "height", "frames", "rank", "lora_alpha", "lora_targets", "learning_rate", "lr_scheduler",
               "lr_warmup_steps", "weight_decay", "batch_size", "gradient_accumulation", "shift", "timestep_sampling",
               "loss_weighting", "mixed_precision", "prompt_suffix", "seed", "representation")


@dataclass
class VideoLoraTrainConfig:
    """Options of :func:`train_video_lora`; scripts/train_video_lora.py adds the data options to
    these, and its ``--help`` shows these docstrings."""

    out: str
    """Output folder (new or empty; with --resume the run to continue)."""
    steps: int
    """Optimizer steps in total (a resumed run continues up to this)."""
    model: str | None = None
    """Hub id or folder of a diffusers Wan2.1-I2V-14B model; None = Wan-AI/Wan2.1-I2V-14B-{480P,720P}-Diffusers."""
    tiny: bool = False
    """Train the tiny random-weight Wan (generation.tiny_models: CPU tests and smoke runs) instead of --model."""
    height: int = 480
    """Frame height in pixels: 480 (the 480P model) or 720 (720P), any multiple of 16; width = 2 x height; clips of other sizes are resized."""
    frames: int = 81
    """Frames per training window (4k+1)."""
    rank: int = 16
    """LoRA rank."""
    lora_alpha: float | None = None
    """LoRA alpha (scale = alpha / rank, folded into the saved file); None = the rank."""
    lora_targets: tuple[str, ...] = MATRIX3D_LORA_TARGETS
    """Linear layers to adapt (names or dotted suffixes, space- or comma-separated); default: the official Matrix-3D LoRA's."""
    learning_rate: float = 1e-4
    """AdamW learning rate."""
    lr_scheduler: str = "constant"
    """Learning-rate schedule (diffusers' get_scheduler): constant, constant_with_warmup, linear, cosine."""
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
    timestep_sampling: str = "uniform"
    """How sigmas are drawn over the shifted grid (finetrainers' schemes): uniform, logit_normal, mode."""
    logit_mean: float = 0.0
    """Mean of the logit-normal timestep sampling."""
    logit_std: float = 1.0
    """Standard deviation of the logit-normal timestep sampling."""
    mode_scale: float = 1.29
    """Scale of the mode timestep sampling."""
    loss_weighting: str = "none"
    """Per-sample loss weight: none, diffsynth (Matrix-3D's trainer), sigma_sqrt, cosmap."""
    gradient_checkpointing: bool = True
    """Recompute the transformer blocks in the backward pass (needed for the 14B at 81 frames)."""
    mixed_precision: str = "auto"
    """auto = bf16 on a GPU (float32 for --tiny), no (float32) on the CPU; or no, bf16."""
    prompt_suffix: str | None = None
    """Text appended to every caption; None = the video stage's PROMPT_SUFFIX."""
    cache: bool = False
    """Cache the VAE latents and text/image embeddings of each window (a folder keyed by content hash)."""
    cache_dir: str | None = None
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
    seed: int = 0
    """Seed of the LoRA init, the data order, the noise and the sigmas."""
    num_workers: int = 0
    """DataLoader worker processes that read clips and render scaffolds (0 = the main process)."""
    cpu: bool = False
    """Train on the CPU even where a GPU is present."""
    allow_download: bool = False
    """Let the hub download missing model weights."""
    representation: str = "erp"
    """The layout the model is trained on: erp, or viewpoint (the ViewPoint map of the video stage's --representation)."""

    def targets(self) -> tuple[str, ...]:
        """``lora_targets`` with comma-separated items split."""
        return tuple(t.strip() for item in self.lora_targets for t in item.split(",") if t.strip())

    def check(self) -> None:
        """InputError (one line) for values no run can use; nothing is read or written."""
        from matrix_world.generation.wan_pipeline import check_frames_and_size

        for name in ("steps", "height", "frames", "rank", "batch_size", "gradient_accumulation", "checkpoint_every",
                     "checkpoints_keep", "validation_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"--{_flag(name)}: expected a positive integer, got {getattr(self, name)}")
        for name in ("lr_warmup_steps", "validation_every", "num_workers"):
            if getattr(self, name) < 0:
                raise InputError(f"--{_flag(name)}: expected an integer >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "shift", "logit_std", "mode_scale", "validation_guidance"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise InputError(f"--{_flag(name)}: expected a number > 0, got {value}")
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise InputError(f"--{_flag(name)}: expected a number >= 0, got {value}")
        if not np.isfinite(self.logit_mean):
            raise InputError(f"--logit-mean: expected a finite number, got {self.logit_mean}")
        if self.lora_alpha is not None and not (np.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise InputError(f"--lora-alpha: expected a number > 0, got {self.lora_alpha}")
        for name, allowed in (("lr_scheduler", LR_SCHEDULERS), ("mixed_precision", MIXED_PRECISION),
                              ("timestep_sampling", TIMESTEP_SAMPLING), ("loss_weighting", LOSS_WEIGHTING)):
            if getattr(self, name) not in allowed:
                raise InputError(f"--{_flag(name)}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.representation not in ("erp", "viewpoint"):
            raise InputError(f"--representation: expected erp or viewpoint, got {self.representation!r}")
        if not self.targets():
            raise InputError("--lora-targets: expected layer names (space- or comma-separated), got none")
        check_frames_and_size(self.frames, self.height, 2 * self.height)
        self.video_config().check_long_video()

    def video_config(self):
        """The video stage's configuration the LoRA is validated with (and trained for)."""
        from matrix_world.generation.video import VideoConfig

        return VideoConfig(backend="wan", height=self.height, lora=None, num_inference_steps=self.validation_steps,
                           guidance_scale=self.validation_guidance, shift=self.shift, prompt_suffix=self.prompt_suffix,
                           memory="full", seed=self.seed, representation=self.representation)

    def to_dict(self) -> dict:
        """The options as saved in train_config.json (only this class's fields, targets split)."""
        names = [f.name for f in dataclasses.fields(VideoLoraTrainConfig)]
        values = {name: getattr(self, name) for name in names} | {"lora_targets": list(self.targets())}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _flag(name: str) -> str:
    return name.replace("_", "-")
