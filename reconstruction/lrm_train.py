"""Training the panoramic LRM (Matrix-3D publishes none): :class:`TrainConfig` and :func:`train`.

One run trains one stage (the losses and what each stage trains:
:mod:`matrix_world.reconstruction.lrm_objectives`): stage 1 from scratch or from weights, stage
2 from a stage-1 run's ``model/``. Runs under ``accelerate`` (``Accelerator``): one process on a
CPU or a GPU, or ``accelerate launch`` over N GPUs (DDP; each rank draws its own samples).

Data is anything with ``__len__`` and ``__getitem__(i) -> LRMSample`` (optionally ``prepare(device,
log)``, called once on the main process first, e.g. to fill a latent cache); the training code
never reads clips itself. Which sample a rank reads at a step, the dropout noise and the random
crops are pure functions of (seed, step, rank), so a resumed run continues with exactly the losses
the uninterrupted run would have had.

Run folder (``TrainConfig.output``)::

    train_config.json                 the config of the latest start (+ accelerate's setup)
    metrics.jsonl                     one line per step: step, stage, loss, each loss term, lr,
                                      grad_norm, seconds (wall, summed over resumes), step_seconds;
                                      on evaluation steps also heldout_psnr, heldout_ssim, heldout_views
    checkpoints/step-0000100/model/   PanoLRM.save_pretrained (config.json + model.safetensors)
    checkpoints/step-0000100/training_state.pt   optimizer state, step, seconds, config
    checkpoints/latest                the newest checkpoint's folder name
    model/                            the newest weights: PanoLRM.from_pretrained(output / "model")
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from matrix_world.errors import InputError, one_line
from matrix_world.reconstruction.lrm import LRMConfig, PanoLRM
from matrix_world.reconstruction.lrm_latents import check_encoder_spec, latent_frames
from matrix_world.reconstruction.lrm_objectives import (
    LRMSample,
    collate,
    heldout_metrics,
    load_lpips,
    set_stage_modes,
    stage1_losses,
    stage2_losses,
    trained_in_stage,
)

STATE_FORMAT = "matrix_world.lrm_train/1"
PRECISIONS = ("no", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


class SampleSource(Protocol):
    """What :func:`train` reads: indexable samples (optionally with ``prepare(device=, log=)``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> LRMSample: ...


def model_preset(name: str) -> LRMConfig:
    """'tiny' (~170k parameters, tests), 'small' (~15M, the GPU benchmark), 'official' (Matrix-3D's 403M)
    or a JSON file of LRMConfig fields (missing fields take the official values)."""
    if name == "tiny":
        return LRMConfig.tiny()
    if name == "small":
        return LRMConfig(dim=384, heads=6, ffn_dim=1024, dpt_layer_dims=(48, 96, 192, 384), dpt_feature_dim=128, dpt_last_dim=64)
    if name == "official":
        return LRMConfig.official()
    path = Path(name).expanduser()
    if not path.is_file():
        raise InputError(f"--model {name!r}: expected tiny, small, official or a JSON file of LRMConfig fields")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the model config {path}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object of LRMConfig fields")
    return LRMConfig.from_dict({**LRMConfig.official().to_dict(), **data}, source=str(path))


@dataclass
class TrainConfig:
    """How to train the panoramic LRM, one stage per run (the fields are the options of scripts/train_lrm.py)."""

    output: Path = Path("outputs/lrm-train")
    """Run folder: metrics.jsonl, checkpoints/, model/ (the newest weights), train_config.json."""
    model: str = "tiny"
    """Network of a new run: tiny, small, official, or a JSON file of LRMConfig fields (ignored with --init)."""
    init: Path | None = None
    """Start from these weights: a save_pretrained folder (a stage-1 run's model/) or Matrix-3D's pano_lrm_480p.pt."""
    latent_encoder: str = "space_to_depth_stand_in"
    """Latent front end: space_to_depth_stand_in (fixed, no weights) or wan:<diffusers Wan folder or hub id>."""
    stage: int = 1
    """1: depth (smooth-L1 on inverse distance) + colour L1; 2: depth branch frozen, Gaussian branch trained by rendering."""
    steps: int = 1000
    """Optimiser steps in total (a resumed run continues up to this many)."""
    lr: float = 2e-4
    """Peak learning rate (AdamW; linear warm-up, then cosine decay to min_lr x lr at the last step)."""
    warmup_steps: int = 100
    """Steps of linear learning-rate warm-up."""
    min_lr: float = 0.1
    """Final learning rate as a fraction of lr."""
    weight_decay: float = 1e-4
    """AdamW weight decay (betas 0.9, 0.95 as Matrix-3D's SFT config)."""
    grad_clip: float = 1.0
    """Clip the gradients' global norm to this (0: no clipping)."""
    batch_size: int = 1
    """Clip windows per step and GPU."""
    clip_length: int = 17
    """Frames per window, 4k+1 (81 = Matrix-3D's clips: 21 latent frames)."""
    frame_stride: int = 1
    """Take every n-th frame of a clip (held-out frames in between become interpolation targets)."""
    height: int | None = None
    """Panorama height to train at (width 2x; a multiple of 16); None keeps the clips' size."""
    mixed_precision: str = "no"
    """Autocast of the network: no, bf16 or fp16 (CUDA); losses and rendering stay float32."""
    gradient_checkpointing: bool = False
    """Recompute the transformer layers and DPT heads in the backward pass (less memory, ~30% slower)."""
    depth_weight: float = 1.0
    """Stage 1: weight of the smooth-L1 inverse-distance loss."""
    colour_weight: float = 1.0
    """Stage 1: weight of the L1 colour loss at (H/2, W/2)."""
    depth_beta: float = 0.05
    """Stage 1: smooth-L1 beta in 1/m (quadratic below it)."""
    sky_weight: float = 1.0
    """Stage 1: weight of sky / no-return pixels, whose target is the far shell (0.95 x 30 m)."""
    mse_weight: float = 1.0
    """Stage 2: weight of the rendered crops' MSE."""
    ssim_weight: float = 0.2
    """Stage 2: weight of 1 - SSIM."""
    lpips_weight: float = 0.05
    """Stage 2: weight of LPIPS, used only when the lpips package and its weights are on this machine."""
    crops_per_step: int = 4
    """Stage 2: rendered perspective crops per window and step."""
    crop_size: int = 64
    """Stage 2: crop size in pixels (square, >= 11 for SSIM)."""
    fov_range: tuple[float, float] = (60.0, 120.0)
    """Stage 2: horizontal field of view of the crops, degrees (uniform)."""
    pitch_range: tuple[float, float] = (-45.0, 45.0)
    """Stage 2: pitch of the crops, degrees (uniform; yaw is uniform over 360)."""
    render_frame_stride: int = 2
    """Gaussians of every n-th frame are rendered (training and evaluation; 2 = the official export)."""
    eval_every: int = 100
    """Held-out evaluation (PSNR of the 12-crop set at held-out views of held-out clips) every n steps (0: never)."""
    eval_crop_size: int = 64
    """Held-out crop size in pixels."""
    eval_views: int = 4
    """At most this many held-out views per held-out clip."""
    checkpoint_every: int = 500
    """Save a checkpoint every n steps (and always at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in checkpoints/ (the newest ones)."""
    print_every: int = 10
    """Print a progress line every n steps (metrics.jsonl gets every step)."""
    seed: int = 0
    """Seed of the initial weights, the sample order, dropout and the random crops."""
    resume: bool = False
    """Continue the run in --output from its newest checkpoint (refused without this flag)."""
    max_minutes: float | None = None
    """Stop (and save) after this many minutes of training steps in this process (data preparation not counted); None: all steps."""
    device: str = "auto"
    """auto (accelerate's choice: the GPU when there is one), cpu or cuda."""
    num_workers: int = 0
    """DataLoader worker processes reading samples (0: in the training process)."""

    def check(self) -> None:
        """InputError (one line, naming the option) for values out of range."""
        def bad(option: str, expected: str) -> InputError:
            return InputError(f"--{option.replace('_', '-')}: expected {expected}, got {getattr(self, option)!r}")

        if self.stage not in (1, 2):
            raise bad("stage", "1 or 2")
        for name in ("steps", "batch_size", "clip_length", "frame_stride", "crops_per_step", "render_frame_stride",
                     "eval_crop_size", "eval_views", "checkpoint_every", "keep_checkpoints", "print_every"):
            if getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        for name in ("warmup_steps", "eval_every", "num_workers"):
            if getattr(self, name) < 0:
                raise bad(name, "an integer >= 0")
        for name in ("lr", "depth_beta"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "a number > 0")
        for name in ("weight_decay", "grad_clip", "depth_weight", "colour_weight", "sky_weight", "mse_weight", "ssim_weight",
                     "lpips_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "a finite number >= 0")
        if not 0 <= self.min_lr <= 1:
            raise bad("min_lr", "a fraction in [0, 1]")
        try:
            latent_frames(self.clip_length)
        except InputError:
            raise bad("clip_length", "4k+1 frames (5, 9, 17, 33, 81, ...)") from None
        if self.height is not None and (self.height < 16 or self.height % 16):
            raise bad("height", "a multiple of 16 (the LRM needs latent grids of even size) or None")
        if self.mixed_precision not in PRECISIONS:
            raise bad("mixed_precision", "one of " + ", ".join(PRECISIONS))
        if self.device not in DEVICES:
            raise bad("device", "one of " + ", ".join(DEVICES))
        if self.crop_size < 11 or self.eval_crop_size < 11:
            raise InputError(f"--crop-size and --eval-crop-size must be >= 11 pixels (SSIM's window), got {self.crop_size} "
                             f"and {self.eval_crop_size}")
        lo, hi = self.fov_range
        if not 0 < lo <= hi < 180:
            raise bad("fov_range", "two angles 0 < low <= high < 180 degrees")
        p0, p1 = self.pitch_range
        if not -90 <= p0 <= p1 <= 90:
            raise bad("pitch_range", "two angles -90 <= low <= high <= 90 degrees")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise bad("max_minutes", "a number > 0 or None")
        check_encoder_spec(self.latent_encoder)
        if self.init is None:
            model_preset(self.model)
        elif not Path(self.init).expanduser().exists():
            raise InputError(f"--init {self.init}: no such file or folder (a save_pretrained folder or pano_lrm_480p.pt)")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output"], out["init"] = str(self.output), None if self.init is None else str(self.init)
        out["fov_range"], out["pitch_range"] = list(self.fov_range), list(self.pitch_range)
        return out


# fields a resumed run may change; every other one must match the run's saved config
RESUMABLE_CHANGES = {"output", "steps", "resume", "max_minutes", "eval_every", "eval_crop_size", "eval_views",
                     "checkpoint_every", "keep_checkpoints", "print_every", "device", "num_workers", "gradient_checkpointing"}


@dataclass
class TrainResult:
    """What a run did: the last step, why it stopped ('steps' or 'time'), where things are."""

    step: int
    stopped: str
    output: Path
    model_dir: Path
    metrics: Path
    last_eval: dict | None


# --------------------------------------------------------------------------- pieces


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of step ``step`` (1-based): linear warm-up, then cosine to min_lr x lr."""
    if config.warmup_steps and step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (config.min_lr + (1 - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress)))


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of everything random in one step of one rank."""
    return (int(seed) * 1_000_003 + int(step) * 7_919 + int(rank) * 104_729) % (2**63 - 1)


@functools.lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, epoch, 99))).tolist())


def step_indices(n: int, batch: int, world: int, rank: int, seed: int, step: int) -> list[int]:
    """Sample indices of ``rank`` at ``step``: consecutive slots of seeded per-epoch permutations."""
    first = (step - 1) * batch * world + rank * batch
    return [_epoch_order(n, seed, g // n)[g % n] for g in range(first, first + batch)]


class StepBatches(torch.utils.data.Sampler):
    """Index batches of steps ``start + 1 .. steps`` for one rank (a DataLoader ``batch_sampler``)."""

    def __init__(self, n: int, batch: int, world: int, rank: int, seed: int, start: int, steps: int):
        self.args, self.start, self.steps = (n, batch, world, rank, seed), start, steps

    def __iter__(self):
        for step in range(self.start + 1, self.steps + 1):
            yield step_indices(*self.args, step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def _keep_list(items: list) -> list:
    return list(items)


def enable_gradient_checkpointing(model: PanoLRM) -> None:
    """Recompute each encoder layer and each DPT adapter in the backward pass (non-reentrant
    ``torch.utils.checkpoint``; the modules' names and weights are unchanged)."""
    from torch.utils.checkpoint import checkpoint

    def wrap(module: nn.Module) -> None:
        inner = module.forward

        def forward(*args):
            if module.training and torch.is_grad_enabled():
                return checkpoint(inner, *args, use_reentrant=False)
            return inner(*args)

        module.forward = forward

    for layer in [*model.transformer.layers, *model.transformer_gs.layers]:
        wrap(layer)
    wrap(model.dpt_head.dpt)
    wrap(model.dpt_head_gs.dpt)


def _branch_counts(model: PanoLRM, stage: int) -> tuple[int, int]:
    trained = sum(p.numel() for n, p in model.named_parameters() if trained_in_stage(n, stage))
    return trained, sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(output: Path) -> Path | None:
    """The newest checkpoint folder of a run, or None."""
    pointer = Path(output) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    if not (folder / "training_state.pt").is_file():
        raise InputError(f"{pointer} names {folder.name}, which holds no training_state.pt; remove {pointer} to start over")
    return folder


def save_checkpoint(output: Path, model: PanoLRM, optimizer, step: int, seconds: float, config: TrainConfig) -> Path:
    """checkpoints/step-N/{model/, training_state.pt} (written to a temporary folder, then renamed),
    the ``latest`` pointer, model/ (the newest weights); keeps ``keep_checkpoints`` folders."""
    from matrix_world.io import write_text

    root = Path(output) / "checkpoints"
    name = f"step-{step:07d}"
    tmp, final = root / f".tmp-{name}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    source = f"matrix_world lrm_train stage {config.stage} step {step}"
    model.save_pretrained(tmp / "model", source=source)
    torch.save({"format": STATE_FORMAT, "step": step, "seconds": seconds, "optimizer": optimizer.state_dict(),
                "config": config.to_dict()}, tmp / "training_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_text(root / "latest", name + "\n")
    model.save_pretrained(Path(output) / "model", source=source)
    for old in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))[:-config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _check_resumable(saved: dict, config: TrainConfig, folder: Path) -> None:
    now = config.to_dict()
    differ = [f"{k} ({saved.get(k)!r} -> {now[k]!r})" for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if differ:
        raise InputError(f"cannot resume {folder}: the run was started with other settings: {', '.join(differ[:6])}; "
                         "use the same options (or a new --output)")


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metrics lines of steps after ``step`` (written after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


# --------------------------------------------------------------------------- the loop


def _build_model(config: TrainConfig) -> PanoLRM:
    if config.init is not None:
        return PanoLRM.from_pretrained(Path(config.init).expanduser())
    torch.manual_seed(config.seed)
    return PanoLRM(model_preset(config.model))


def train(config: TrainConfig, train_data: SampleSource, eval_data: SampleSource | None = None, *,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train one stage (see the module docstring); returns where the weights and metrics are.

    train_data / eval_data: sequences of :class:`LRMSample` (eval_data: held-out clips with
    held-out views as targets; None or empty: no held-out evaluation).
    """
    from accelerate import Accelerator

    config.check()
    if config.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible here")
    if config.mixed_precision == "fp16" and (config.device == "cpu" or not torch.cuda.is_available()):
        raise InputError("--mixed-precision fp16 needs a CUDA device (use bf16 or no on a CPU)")
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.device == "cpu")
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    say = log if main else (lambda _message: None)
    output = Path(config.output)
    metrics_path = output / "metrics.jsonl"

    resume_from = latest_checkpoint(output)
    if resume_from is not None and not config.resume:
        raise InputError(f"{output} already holds a training run (newest checkpoint {resume_from.name}); pass --resume to "
                         "continue it or choose another --output")
    for source in (train_data, eval_data):
        prepare = getattr(source, "prepare", None)
        if callable(prepare):
            with accelerator.main_process_first():
                prepare(device=device, log=say)
    if len(train_data) == 0:
        raise InputError("no training samples")
    spec = getattr(train_data, "encoder_spec", config.latent_encoder)
    if spec != config.latent_encoder:
        raise InputError(f"the training samples' latents come from {spec!r}, the config says {config.latent_encoder!r}")

    start_step, seconds_before, opt_state = 0, 0.0, None
    if resume_from is not None:
        state = torch.load(resume_from / "training_state.pt", map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise InputError(f"{resume_from / 'training_state.pt'} is not a {STATE_FORMAT} training state")
        _check_resumable(state["config"], config, output)
        model = PanoLRM.from_pretrained(resume_from / "model")
        start_step, seconds_before, opt_state = int(state["step"]), float(state["seconds"]), state["optimizer"]
        say(f"[lrm-train] resuming {output} at step {start_step} ({resume_from.name})")
    else:
        model = _build_model(config)
        if config.stage == 2 and config.init is None:
            say("[lrm-train] note: stage 2 without --init: the frozen depth branch keeps its random initial weights")
    model = model.to(device=device, dtype=torch.float32)
    for name, p in model.named_parameters():
        p.requires_grad_(trained_in_stage(name, config.stage))
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay, eps=1e-8)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    net, optimizer = accelerator.prepare(model, optimizer)
    lpips_model = None
    if config.stage == 2 and config.lpips_weight > 0:
        lpips_model, note = load_lpips(device)
        if note:
            say(f"[lrm-train] {note}")
    trained, total = _branch_counts(model, config.stage)
    eval_samples = [eval_data[i] for i in range(len(eval_data))] if eval_data is not None and main else []

    if main:
        output.mkdir(parents=True, exist_ok=True)
        _trim_metrics(metrics_path, start_step)
        info = {"config": config.to_dict(), "network": model.config.to_dict(), "trained_parameters": trained,
                "parameters": total, "device": str(device), "processes": world, "samples": len(train_data),
                "eval_samples": len(eval_samples), "torch": torch.__version__}
        (output / "train_config.json").write_text(json.dumps(info, indent=1) + "\n")
    say(f"[lrm-train] stage {config.stage} on {device} x {world}: {trained:,} of {total:,} parameters trained, "
        f"{len(train_data)} training windows, {len(eval_samples)} held-out; steps {start_step + 1}..{config.steps}")
    say(f"[lrm-train] metrics -> {metrics_path}; checkpoints -> {output / 'checkpoints'}; weights -> {output / 'model'}")

    batches = StepBatches(len(train_data), config.batch_size, world, rank, config.seed, start_step, config.steps)
    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
        train_data, batch_sampler=batches, collate_fn=_keep_list,
        num_workers=config.num_workers, pin_memory=device.type == "cuda")
    t0 = time.perf_counter()
    deadline = None if config.max_minutes is None else t0 + 60.0 * config.max_minutes
    step, stopped, last_eval, evaluated = start_step, "steps", None, start_step
    metrics_file = metrics_path.open("a") if main else None

    def evaluate() -> dict | None:
        if not main or not eval_samples:
            return None
        set_stage_modes(model, config.stage, False)
        result = heldout_metrics(model, eval_samples, device, crop_size=config.eval_crop_size,
                                 frame_stride=config.render_frame_stride, max_views=config.eval_views)
        set_stage_modes(model, config.stage, True)
        return result

    try:
        set_stage_modes(model, config.stage, True)
        for items in loader:
            stop = deadline is not None and time.perf_counter() > deadline
            if world > 1:
                flag = torch.tensor([float(stop)], device=device)
                stop = bool(accelerator.reduce(flag, "sum").item() > 0)  # any rank out of time: all stop
            if stop:
                stopped = "time"
                break
            step += 1
            t_step = time.perf_counter()
            seed = step_seed(config.seed, step, rank)
            torch.manual_seed(seed)  # dropout (every device)
            generator = torch.Generator().manual_seed(seed + 1)  # crops and their poses
            batch = collate(items, device)
            if config.stage == 1 and batch.distance is None:
                raise InputError(f"stage 1 needs ground-truth distances; sample(s) {[s.name for s in items]} have none")
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with accelerator.autocast():
                output_raw = net(batch.latents, batch.plucker())
            if config.stage == 1:
                losses = stage1_losses(output_raw, batch, depth_weight=config.depth_weight, colour_weight=config.colour_weight,
                                       depth_beta=config.depth_beta, sky_weight=config.sky_weight)
            else:
                losses = stage2_losses(output_raw, batch, generator, crops=config.crops_per_step, crop_size=config.crop_size,
                                       fov_range=tuple(config.fov_range), pitch_range=tuple(config.pitch_range),
                                       frame_stride=config.render_frame_stride, mse_weight=config.mse_weight,
                                       ssim_weight=config.ssim_weight, lpips_weight=config.lpips_weight, lpips_model=lpips_model)
            if not bool(torch.isfinite(losses["loss"])):
                raise RuntimeError(f"step {step}: the loss is {float(losses['loss'])} ({ {k: float(v) for k, v in losses.items()} })")
            accelerator.backward(losses["loss"])
            grad_norm = accelerator.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            values = {k: float(accelerator.reduce(v.detach().float(), "mean")) for k, v in sorted(losses.items())}
            seconds = seconds_before + time.perf_counter() - t0
            line: dict[str, Any] = {"step": step, "stage": config.stage, **values, "lr": lr, "grad_norm": float(grad_norm),
                                    "seconds": round(seconds, 3), "step_seconds": round(time.perf_counter() - t_step, 4)}
            if config.eval_every and step % config.eval_every == 0:
                last_eval, evaluated = evaluate(), step
                line.update(last_eval or {})
            if metrics_file is not None:
                metrics_file.write(json.dumps(line) + "\n")
                metrics_file.flush()
            if step % config.print_every == 0 or step == config.steps or "heldout_psnr" in line:
                terms = ", ".join(f"{k[5:]} {v:.4f}" for k, v in values.items() if k != "loss")
                held = f"  held-out PSNR {line['heldout_psnr']:.2f} dB" if "heldout_psnr" in line else ""
                say(f"[lrm-train] step {step}/{config.steps} loss {values['loss']:.4f} ({terms}) lr {lr:.2e} "
                    f"{line['step_seconds']:.2f} s/step{held}")
            if step % config.checkpoint_every == 0 and main:
                save_checkpoint(output, accelerator.unwrap_model(net), optimizer, step, seconds, config)
            if step % config.checkpoint_every == 0:
                accelerator.wait_for_everyone()
        if step > evaluated and config.eval_every and eval_samples:
            last_eval = evaluate()
            if last_eval and metrics_file is not None:
                metrics_file.write(json.dumps({"step": step, "stage": config.stage, "final": True, **last_eval}) + "\n")
            if last_eval:
                say(f"[lrm-train] final held-out PSNR {last_eval['heldout_psnr']:.2f} dB over {last_eval['heldout_views']} views")
        if main and step > start_step and step % config.checkpoint_every:
            save_checkpoint(output, accelerator.unwrap_model(net), optimizer, step, seconds_before + time.perf_counter() - t0,
                            config)
        accelerator.wait_for_everyone()
    finally:
        if metrics_file is not None:
            metrics_file.close()
    say(f"[lrm-train] stopped at step {step} ({'time budget' if stopped == 'time' else 'all steps done'}); "
        f"weights in {output / 'model'}")
    return TrainResult(step, stopped, output, output / "model", metrics_path, last_eval)

