"""Training of the scaffold-conditioned Wan2.1-I2V panoramic LoRA (Matrix-3D's video model).

:func:`train_video_lora` reads as numbered steps. What it trains is what the video stage runs:

* the condition is :meth:`PanoVideoPipeline.prepare_condition` (the ONE function inference
  calls too): the masked scaffold video VAE-encoded + the 4-channel mask latent (20 channels),
  CLIP tokens of frame 0 and the UMT5 embeddings of ``prompt + PROMPT_SUFFIX``;
* the target is the flow-matching velocity ``noise - latents`` on the normalised Wan-VAE
  latents of the ground-truth frames (:meth:`PanoVideoPipeline.encode_latents`, the posterior's
  mode, as the scaffold's), with sigma drawn as finetrainers does over the shifted grid of the
  video stage's scheduler (shift 5) (:mod:`matrix_world.generation.wan_lora_training`);
* the base (transformer, VAE, text and image encoders) is frozen; peft LoRA (float32) sits on the
  layers the official Matrix-3D LoRA covers; gradient checkpointing on; bf16 autocast on a GPU,
  float32 on the CPU and for ``tiny``;
* the checkpoint is a .safetensors the video stage loads with ``--wan-lora`` (and
  :func:`~matrix_world.generation.wan_lora.load_lora`), in diffusers' layout, scale folded in.

Runs under ``accelerate launch`` on 1 or N processes (DDP on the LoRA; FSDP2 with
``configs/accelerate_fsdp_wan14b.yaml`` for the 14B base, see docs/video_lora_training.md).
The data is any torch Dataset of training pairs (``video`` [F, 3, H, W], ``scaffold`` [F, 3, H, W]
in [0, 1], ``mask`` [F, H, W] bool, ``c2w`` [F, 4, 4], ``prompt``), optionally with ``key(i)`` (a
content hash of item i's inputs, for the cache); :func:`matrix_world.datasets.pairs.open_training_pairs`
makes one from clips. Randomness: the LoRA init from ``seed``; noise and sigmas from one CPU
``torch.Generator`` per process; the data order is a function of the step, so a resumed run
draws exactly what the uninterrupted one would have.

Output folder: ``train_config.json``, ``metrics.jsonl`` (one line per step: step, loss, lr,
seconds), ``lora.safetensors`` (latest), ``checkpoints/step-N/`` (``lora.safetensors``,
``adapter.safetensors``, ``optimizer.pt``, ``rng-rank{r}.pt``, ``meta.json``),
``validation/step-N.mp4`` (+ ``.png``: scaffold | generated | ground truth), ``tiny_base/`` for
``tiny``, ``cache/`` by default.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from matrix_world.errors import InputError
from matrix_world.generation.video_lora_config import RESUME_KEYS, VideoLoraTrainConfig
from matrix_world.generation.wan_lora_training import (
    EncodedCache,
    TrainingOutOfMemoryError,
    add_lora,
    content_hash,
    encoder_fingerprint,
    flow_matching_loss,
    inference_lora_state,
    load_lora_parameters,
    lora_parameters,
    loss_weights,
    oom_message,
    sample_sigmas,
    save_safetensors,
    training_sigmas,
)

@dataclass
class TrainResult:
    out: Path
    step: int
    lora: Path | None
    losses: list[float] = field(default_factory=list)  # of the steps run by this call
    info: dict = field(default_factory=dict)
    main_process: bool = True  # False on the other processes of a launch


# --------------------------------------------------------------------------- model


def build_training_pipeline(config: VideoLoraTrainConfig, device: torch.device, dtype: torch.dtype):
    """The video stage's pipeline with a frozen base, on ``device`` -> (pipe, source name).

    ``tiny``: the tiny random Wan of generation.tiny_models (weights from ``seed``); otherwise
    loaded as the video stage loads it (:func:`generation.video.load_video_pipeline`, no LoRA)."""
    from matrix_world.generation.video import VideoConfig, load_video_pipeline
    from matrix_world.generation.wan_pipeline import PanoVideoPipeline

    if config.tiny:
        from matrix_world.generation.tiny_models import tiny_wan_components

        pipe = PanoVideoPipeline(**tiny_wan_components(seed=config.seed))
        pipe.use_flow_matching(config.shift)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)  # float32 weights (bf16, if asked for, is autocast)
        source = f"tiny_wan_components(seed={config.seed})"
    else:
        video = VideoConfig(backend="wan", height=config.height, model=config.model, lora=None, shift=config.shift,
                            memory="full", dtype=str(dtype).removeprefix("torch."), allow_download=config.allow_download)
        pipe, _ = load_video_pipeline(video, device, num_frames=config.frames)
        source = str(config.model or "default")
    for name in ("vae", "text_encoder", "image_encoder", "transformer"):
        getattr(pipe, name).requires_grad_(False).eval()
    return pipe, source


def to_representation(item: dict, representation: str, size: int) -> dict:
    """A training pair in the layout the model sees: unchanged for "erp"; for "viewpoint" the frames,
    scaffold and mask converted to size x size ViewPoint maps by the one conversion the video stage uses
    (:func:`matrix_world.viewpoint.scaffold_to_viewpoint`)."""
    if representation == "erp":
        return item
    from matrix_world.viewpoint import erp_to_viewpoint, scaffold_to_viewpoint

    scaffold, mask = scaffold_to_viewpoint(item["scaffold"], item["mask"], size)
    return {**item, "video": erp_to_viewpoint(item["video"], size).clamp(0, 1).float(), "scaffold": scaffold.float(),
            "mask": mask}


def encode_training_item(pipe, item: dict, *, prompt_suffix: str, device, dtype, representation: str = "erp",
                         size: int = 0) -> dict[str, torch.Tensor]:
    """One training pair -> the encoded tensors (no batch axis): ``latents`` [16, T, h, w] float32 of the
    ground-truth frames, and through :meth:`prepare_condition` exactly what inference feeds the
    transformer: ``condition`` [20, T, h, w], ``image_embeds`` [N, D], ``prompt_embeds`` [512, D].
    representation / size: the layout (:func:`to_representation`)."""
    item = to_representation(item, representation, size)
    video = item["video"][None].permute(0, 2, 1, 3, 4).to(device)  # [1, 3, F, H, W] in [0, 1]
    scaffold = item["scaffold"][None].permute(0, 2, 1, 3, 4).to(device)
    mask = item["mask"][None].to(device)  # [1, F, H, W]
    cond = pipe.prepare_condition(item["prompt"] + prompt_suffix, scaffold=scaffold, mask=mask, negative_prompt=None,
                                  do_classifier_free_guidance=False, device=device, dtype=dtype)
    latents = pipe.encode_latents(video * 2.0 - 1.0)
    return {"latents": latents[0].float(), "condition": cond.condition[0], "image_embeds": cond.image_embeds[0],
            "prompt_embeds": cond.prompt_embeds[0]}


# --------------------------------------------------------------------------- data order and cache


def step_indices(n: int, *, seed: int, micro_steps: range, batch: int, rank: int, world: int) -> list[int]:
    """Dataset indices of this process for the given micro-steps: a fresh permutation per epoch
    (seeded by seed and epoch), consumed in order by (micro-step, process, batch row)."""
    perms: dict[int, list[int]] = {}
    out = []
    for k in micro_steps:
        for j in range(batch):
            epoch, pos = divmod((k * world + rank) * batch + j, n)
            if epoch not in perms:
                perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1_000_003 * (epoch + 1))).tolist()
            out.append(perms[epoch][pos])
    return out


class _CachedItems(torch.utils.data.Dataset):
    """Item i as {"key", "encoded"} when the cache holds it, else {"key", "item"} (runs in loader workers)."""

    def __init__(self, data, cache: EncodedCache | None):
        self.data, self.cache = data, cache

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        if self.cache is None:
            return {"key": None, "item": self.data[i]}
        key = self.data.key(i) if hasattr(self.data, "key") else None
        encoded = self.cache.load(key) if key is not None else None
        if encoded is not None:
            return {"key": key, "encoded": encoded}
        item = self.data[i]
        if key is None:  # no key without reading: the item's own content
            key = content_hash(item["video"], item["scaffold"], item["mask"], item["prompt"])
            encoded = self.cache.load(key)
            if encoded is not None:
                return {"key": key, "encoded": encoded}
        return {"key": key, "item": item}


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(out: Path) -> Path | None:
    folders = [p for p in (out / "checkpoints").glob("step-*") if (p / "meta.json").is_file()]
    return max(folders, key=lambda p: int(p.name.split("-")[1])) if folders else None


def _optimizer_state(model, optimizer, *, save: dict | None = None):
    """The full (unsharded) optimizer state keyed by parameter names; with ``save``, load it instead."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if save is None:  # FSDP: gathered onto the main process (cpu_offload), the others get {}
        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=distributed))
    # every process reads the full state from the file; FSDP re-shards it
    set_optimizer_state_dict(model, optimizer, optim_state_dict=save, options=StateDictOptions(full_state_dict=True))
    return None


def save_checkpoint(acc, *, transformer, model, optimizer, lr_scheduler, generator, step: int,
                    config: VideoLoraTrainConfig, out: Path, metadata: dict) -> Path:
    """Write ``checkpoints/step-N`` (every process takes part: FSDP gathers) and ``out/lora.safetensors``."""
    params = lora_parameters(transformer)
    optim = _optimizer_state(model, optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer)
    final, tmp = out / "checkpoints" / f"step-{step:08d}", out / "checkpoints" / f".tmp-step-{step:08d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    rng = {"generator": generator.get_state(), "torch": torch.get_rng_state(), "step": torch.tensor(step),
           **({"cuda": torch.cuda.get_rng_state(acc.device)} if acc.device.type == "cuda" else {})}
    torch.save(rng, tmp / f"rng-rank{acc.process_index}.pt")
    if acc.is_main_process:
        lora = inference_lora_state(params, rank=config.rank, alpha=config.lora_alpha)
        save_safetensors(tmp / "lora.safetensors", lora, metadata={**metadata, "step": step})
        save_safetensors(tmp / "adapter.safetensors", params)
        torch.save({"optimizer": optim, "lr_scheduler": lr_scheduler.state_dict(), "step": step}, tmp / "optimizer.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "processes": acc.num_processes, **metadata}, indent=1) + "\n")
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        shutil.copyfile(final / "lora.safetensors", out / ".lora.safetensors.tmp")
        os.replace(out / ".lora.safetensors.tmp", out / "lora.safetensors")
        kept = sorted((p for p in (out / "checkpoints").glob("step-*")), key=lambda p: int(p.name.split("-")[1]))
        for old in kept[: -config.checkpoints_keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def _check_out(out: Path, config: VideoLoraTrainConfig, processes: int) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); refuses a used folder without --resume, and a
    resume with other options, another process count or no step left."""
    saved = out / "train_config.json"
    if not config.resume:
        if out.exists() and any(out.iterdir()):
            what = "a training run" if saved.is_file() else "other files"
            raise InputError(f"--out {out} already holds {what}; pass --resume to continue it, or choose a new or empty folder")
        return None
    if not saved.is_file():
        raise InputError(f"--resume: {out} holds no training run (no train_config.json)")
    before = json.loads(saved.read_text())
    now = config.to_dict()
    changed = [k for k in RESUME_KEYS if before.get(k) != now.get(k)]
    if changed:
        raise InputError(f"--resume: {', '.join(changed)} differ from the run in {out} "
                         f"({', '.join(f'{k}={before.get(k)!r}' for k in changed[:3])}); resume with the same options")
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise InputError(f"--resume: {out} has no checkpoint yet (checkpoints/step-N); start a new run")
    meta = json.loads((ckpt / "meta.json").read_text())
    if meta["processes"] != processes:
        raise InputError(f"--resume: {ckpt} was written by {meta['processes']} process(es), this run has {processes}; "
                         "resume with the same number (the data order and the noise depend on it)")
    if meta["step"] >= config.steps:
        raise InputError(f"--resume: the run in {out} is at step {meta['step']} already; raise --steps above it to train further")
    return ckpt


# --------------------------------------------------------------------------- validation


def validation_video(pipe, item: dict, *, config: VideoLoraTrainConfig, device, path: Path, write: bool) -> dict:
    """Generate the validation item's video through the video stage's own function
    (:func:`generation.video.generate_video`, backend ``wan``, the training pipeline and its LoRA);
    write ``path`` (.mp4) and a .png of frames (rows first / middle / last: scaffold | generated |
    ground truth). Returns the stage's info."""
    from matrix_world.generation.video import generate_video
    from matrix_world.io import write_image, write_video

    cfg = config.video_config()
    scaffold = item["scaffold"].permute(0, 2, 3, 1).numpy()  # [F, H, W, 3]
    pipe.transformer.eval()
    try:
        result = generate_video(cfg, scaffold_rgb=scaffold, scaffold_mask=item["mask"].numpy(), prompt=item["prompt"],
                                c2w=item["c2w"].numpy(), device=device, generator=torch.Generator().manual_seed(config.seed),
                                pipeline=pipe)
    finally:
        pipe.transformer.train()
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, result.frames)
        truth = item["video"].permute(0, 2, 3, 1).numpy()
        shown = np.where(item["mask"].numpy()[..., None], scaffold, np.array([1.0, 0.0, 1.0], np.float32))  # unknown: magenta
        rows = [np.concatenate([shown[f], result.frames[f], truth[f]], axis=1) for f in sorted({0, len(scaffold) // 2, len(scaffold) - 1})]
        write_image(path.with_suffix(".png"), np.concatenate(rows, axis=0))
    return {k: v for k, v in result.info.items() if isinstance(v, (int, float, str))}


# --------------------------------------------------------------------------- training


def _oom(config, acc, what: str) -> TrainingOutOfMemoryError:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    fsdp = str(acc.distributed_type).endswith("FSDP")
    return TrainingOutOfMemoryError(oom_message(what=what, gradient_checkpointing=config.gradient_checkpointing,
                                                batch_size=config.batch_size, frames=config.frames, fsdp=fsdp,
                                                processes=acc.num_processes))


def train_video_lora(config: VideoLoraTrainConfig, data, *, validation_item: dict | None = None,
                     data_info: dict | None = None, progress: bool = True) -> TrainResult:
    """Train (or resume) the LoRA on ``data`` for ``config.steps`` optimizer steps in total.

    validation_item: a training pair for the validation videos (default: ``data[0]``).
    Every process of an ``accelerate launch`` calls this; files are written by the main process.
    """
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from matrix_world.generation.wan_pipeline import PROMPT_SUFFIX

    config.check()
    out = Path(config.out)

    # 1. Accelerator (1 or N processes: DDP, or FSDP from the launch config), precision, the output folder.
    cuda = torch.cuda.is_available() and not config.cpu
    mixed = config.mixed_precision if config.mixed_precision != "auto" else ("bf16" if cuda and not config.tiny else "no")
    acc = Accelerator(mixed_precision=mixed, gradient_accumulation_steps=config.gradient_accumulation, cpu=not cuda)
    device, main = acc.device, acc.is_main_process
    dtype = torch.bfloat16 if mixed == "bf16" else torch.float32
    resume_from = _check_out(out, config, acc.num_processes)
    acc.wait_for_everyone()
    suffix = PROMPT_SUFFIX if config.prompt_suffix is None else config.prompt_suffix
    if len(data) < 1:
        raise InputError("the training data holds no item")

    # 2. The pipeline with its frozen base (VAE, text and image encoders, transformer) on the device.
    try:
        pipe, source = build_training_pipeline(config, device, dtype)
    except torch.OutOfMemoryError:
        raise _oom(config, acc, "loading the base model") from None
    transformer = pipe.transformer

    # 3. LoRA (float32) on the target layers, gradient checkpointing; resumed LoRA weights before sharding;
    #    the run's config (written once the options are known to work).
    names = add_lora(transformer, rank=config.rank, alpha=config.lora_alpha, targets=config.targets(), seed=config.seed)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps({**config.to_dict(), "data": data_info or {}}, indent=1) + "\n")
        if config.tiny and not (out / "tiny_base").is_dir():  # what --wan-model loads to run the tiny LoRA
            from matrix_world.generation.tiny_models import tiny_wan_components
            from matrix_world.generation.wan_pipeline import PanoVideoPipeline

            PanoVideoPipeline(**tiny_wan_components(seed=config.seed)).save_pretrained(str(out / "tiny_base"))
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    if resume_from is not None:
        from safetensors.torch import load_file

        load_lora_parameters(transformer, load_file(str(resume_from / "adapter.safetensors")))
    trainable = [p for p in transformer.parameters() if p.requires_grad]

    # 4. Optimizer and learning-rate schedule; accelerate.prepare (DDP / FSDP on the LoRA).
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps,
                                 num_training_steps=config.steps)
    model, optimizer, lr_scheduler = acc.prepare(transformer, optimizer, lr_scheduler)
    fsdp = str(acc.distributed_type).endswith("FSDP")  # FSDP2 shards in place: pipe.transformer is the sharded model
    # (DDP: the pipeline keeps the module itself for validation; the wrapper is for training)
    trainable = [p for p in model.parameters() if p.requires_grad]  # FSDP2 replaced them by sharded DTensors

    # 5. Resume: optimizer, schedule, step, RNG (the LoRA was loaded in step 3).
    generator = torch.Generator().manual_seed(config.seed + 7919 * acc.process_index)  # noise and sigmas (CPU)
    start = 0
    if resume_from is not None:
        state = torch.load(resume_from / "optimizer.pt", map_location="cpu", weights_only=True)
        _optimizer_state(model, optimizer.optimizer, save=state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        rng = torch.load(resume_from / f"rng-rank{acc.process_index}.pt", map_location="cpu", weights_only=True)
        generator.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        start = int(rng["step"])

    # 6. Data for every remaining step (a function of the step: resumes draw the same), the cache.
    sigmas_grid = training_sigmas(config.shift)
    map_size = config.video_config().map_size()  # the ViewPoint map side (representation "viewpoint")
    cache = None
    if config.cache:
        fingerprint = encoder_fingerprint(pipe, source=source, dtype=dtype, prompt_suffix=suffix,
                                          representation=f"{config.representation}:{map_size}")
        cache = EncodedCache(Path(config.cache_dir) if config.cache_dir else out / "cache", fingerprint)
    micro = range(start * config.gradient_accumulation, config.steps * config.gradient_accumulation)
    indices = step_indices(len(data), seed=config.seed, micro_steps=micro, batch=config.batch_size,
                           rank=acc.process_index, world=acc.num_processes)
    loader = torch.utils.data.DataLoader(_CachedItems(data, cache), batch_size=config.batch_size, sampler=indices,
                                         num_workers=config.num_workers, collate_fn=list)
    if validation_item is None and config.validation_every:
        validation_item = data[0]
    metrics_path = out / "metrics.jsonl"
    if main:
        kept = [line for line in (metrics_path.read_text().splitlines() if metrics_path.is_file() else [])
                if line.strip() and json.loads(line)["step"] <= start]
        metrics_path.write_text("".join(line + "\n" for line in kept))
    metadata = {"format": "matrix_world.wan_lora", "layout": "diffusers", "rank": config.rank,
                "alpha": config.lora_alpha if config.lora_alpha is not None else config.rank, "scale_folded_into_lora_B": True,
                "targets": list(config.targets()), "base": source, "height": config.height, "frames": config.frames}

    # 7. Training loop: encode (or read the cache), flow-matching velocity loss, backward, optimizer step;
    #    metrics.jsonl, checkpoints, validation videos.
    bar = tqdm(total=config.steps, initial=start, desc="train", unit="step", disable=not (main and progress))
    losses: list[float] = []
    step, step_loss, t_step = start, 0.0, time.perf_counter()
    lora_file = out / "lora.safetensors"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i, batch in enumerate(loader):
        try:
            encoded = []
            for entry in batch:
                if "encoded" in entry:
                    enc = entry["encoded"]
                else:
                    enc = encode_training_item(pipe, entry["item"], prompt_suffix=suffix, device=device, dtype=dtype,
                                               representation=config.representation, size=map_size)
                    if cache is not None:
                        cache.save(entry["key"], enc)
                encoded.append(enc)
            stacked = {k: torch.stack([e[k] for e in encoded]).to(device) for k in encoded[0]}
            latents = stacked["latents"].float()
            sigmas = sample_sigmas(len(batch), sigmas=sigmas_grid, generator=generator, scheme=config.timestep_sampling,
                                   logit_mean=config.logit_mean, logit_std=config.logit_std, mode_scale=config.mode_scale)
            noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device)
            weights = loss_weights(sigmas, config.loss_weighting, grid=sigmas_grid)
            with acc.accumulate(model):
                with acc.autocast():
                    loss = flow_matching_loss(model, latents=latents, condition=stacked["condition"].to(dtype),
                                              prompt_embeds=stacked["prompt_embeds"].to(dtype),
                                              image_embeds=stacked["image_embeds"].to(dtype), sigmas=sigmas, noise=noise,
                                              weights=weights)
                acc.backward(loss)
                if acc.sync_gradients and config.max_grad_norm > 0:
                    acc.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError:
            raise _oom(config, acc, f"training step {step + 1} ({config.frames} frames at {config.height}p)") from None
        step_loss += float(acc.reduce(loss.detach(), reduction="mean")) / config.gradient_accumulation
        if (i + 1) % config.gradient_accumulation:
            continue
        # one optimizer step done
        step += 1
        seconds = time.perf_counter() - t_step
        losses.append(step_loss)
        lr = float(lr_scheduler.get_last_lr()[0])
        if main:
            with metrics_path.open("a") as f:
                f.write(json.dumps({"step": step, "loss": step_loss, "lr": lr, "seconds": round(seconds, 4),
                                    "sigma": float(sigmas.mean())}) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        step_loss = 0.0
        if step % config.checkpoint_every == 0 or step == config.steps:
            save_checkpoint(acc, transformer=transformer, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                            generator=generator, step=step, config=config, out=out, metadata=metadata)
        if config.validation_every and validation_item is not None and (step % config.validation_every == 0 or step == config.steps):
            if main or fsdp:  # FSDP: every process takes part in the sharded forward
                try:
                    validation_video(pipe, validation_item, config=config, device=device, write=main,
                                     path=out / "validation" / f"step-{step:08d}.mp4")
                except torch.OutOfMemoryError:
                    raise _oom(config, acc, f"the validation video at step {step} (lower --validation-steps, "
                                            "or --validation-every 0)") from None
            acc.wait_for_everyone()
        t_step = time.perf_counter()
    bar.close()

    # 8. The final LoRA file (written with the last checkpoint) and a summary.
    acc.wait_for_everyone()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    info = {"trainable_parameters": sum(p.numel() for p in trainable), "lora_layers": len(names),
            "processes": acc.num_processes, "mixed_precision": mixed, "device": str(device),
            "distributed": str(acc.distributed_type), "peak_gpu_gib": peak, "resumed_from": str(resume_from or "")}
    if main:
        (out / "summary.json").write_text(json.dumps({"step": step, "losses": losses, **info}, indent=1) + "\n")
    acc.end_training()
    return TrainResult(out=out, step=step, lora=lora_file if lora_file.is_file() else None, losses=losses, info=info,
                       main_process=main)
