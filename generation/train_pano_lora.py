"""Train a FLUX.1-dev panorama LoRA (Matrix-3D's text -> panorama LoRA) on 2:1 panoramas.

    python scripts/train_pano_lora.py --data DIR --out DIR --steps N        # 1 GPU (or CPU)
    accelerate launch --num_processes 4 scripts/train_pano_lora.py ...     # N GPUs, DDP on the LoRA

The objective is FLUX's rectified flow matching exactly as diffusers' FLUX LoRA training
(``examples/dreambooth/train_dreambooth_lora_flux.py``) does it:

1. latents: the VAE's posterior SAMPLE of the image in [-1, 1], ``(z - shift_factor) * scaling_factor``;
2. noise ``n ~ N(0, I)`` of the latent's shape;
3. timesteps: ``u = compute_density_for_timestep_sampling(weighting_scheme)`` (uniform for
   ``none``, the default; logit-normal / mode otherwise), index ``(u * 1000).long()`` into the
   training scheduler's 1000 timesteps and sigmas (FlowMatchEulerDiscreteScheduler of the
   model's config; FLUX.1-dev's ``use_dynamic_shifting`` leaves them unshifted: sigma = t / 1000);
4. ``x_t = (1 - sigma) * latents + sigma * noise``, packed into 2x2 tokens
   (``FluxPipeline._pack_latents``) with ``_prepare_latent_image_ids`` positions;
5. the transformer is called with ``timestep = t / 1000``, the guidance embedding
   ``guidance = --guidance`` (3.5, diffusers' default) for the guidance-distilled FLUX.1-dev,
   the CLIP pooled and T5 prompt embeddings of the caption (``encode_prompt``);
6. the prediction is unpacked and regressed on the velocity ``noise - latents``:
   ``loss = mean_b(mean((w(sigma) * (pred - target) ** 2)))`` with
   ``w = compute_loss_weighting_for_sd3`` (1 for ``none``), in float32.

Model: the base (transformer, VAE, CLIP, T5) is frozen; a peft LoRA (``LoraConfig(r, lora_alpha,
lora_dropout, init_lora_weights="gaussian", target_modules)``, the attention projections by
default) is added to the transformer with ``add_adapter``, its parameters kept in float32 (the
frozen base is bf16 on a GPU, float32 on a CPU and for the tiny model; accelerate's bf16
autocast on a GPU), trained with AdamW, clipped to ``max_grad_norm``; gradient checkpointing
by ``transformer.enable_gradient_checkpointing()``. Captions go through the panorama stage's
own ``format_prompt`` (``--prompt-template``), validation panoramas through its own
``generate_with_pipeline`` (rolls, seam-aware decode), so what is trained is what the stage
runs. Data, buckets and augmentation: :mod:`pano_lora_data`; the output folder, the LoRA
format and resume: :mod:`pano_lora_checkpoint`.

Determinism: one CPU ``torch.Generator`` per process (seeded from ``seed`` and the rank) draws
every random number of a step (longitude shifts, VAE sample, noise, timesteps), always in
the same order; the LoRA's initial values come from ``torch.manual_seed(seed)``. A resumed
run restores it (and torch's global RNG), so on a CPU it continues the same loss sequence
bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from matrix_world.errors import InputError
from matrix_world.generation import pano_lora_checkpoint as ckpt
from matrix_world.generation.pano_config import DEFAULT_FLUX, MAX_HEIGHT, PanoramaConfig, format_prompt
from matrix_world.generation.pano_lora_data import batch_at, captions, load_batch, scan_dataset

# diffusers' FLUX LoRA training targets these attention projections (plus the MLPs); the
# single-stream blocks have attn.to_q/k/v (their output is proj_out, shared with the MLP).
DEFAULT_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                   "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
# options that may change between a run and its resumption (the rest identify the training)
RESUMABLE = ("data", "out", "steps", "checkpoint_every", "keep_checkpoints", "validation_every", "validation_prompt",
             "validation_steps", "validation_guidance", "validation_seed", "device", "overwrite")


@dataclass
class PanoLoraTrainConfig:
    """Options of the panorama LoRA training (scripts/train_pano_lora.py)."""

    data: str
    """Folder of 2:1 panoramas with .txt captions of the same name, or a synthetic dataset folder (clips: rgb/00000.png + prompt.txt)."""
    out: str
    """Output folder: the LoRA (OUT/pytorch_lora_weights.safetensors, loads with --flux-lora OUT), checkpoints/, metrics.jsonl, validation/; rerun the same command to resume."""
    steps: int
    """Optimizer steps to train to (a resumed run continues up to this step)."""
    model: str | None = None
    """FLUX.1-dev as a hub id or a local diffusers folder; None = black-forest-labs/FLUX.1-dev (unused with --tiny)."""
    tiny: bool = False
    """Train a tiny random-weight FLUX of the real classes instead (built into OUT/tiny_flux): a CPU run without weights."""
    heights: tuple[int, ...] | None = None
    """Training sizes, as bucket heights (width = 2 x height): an image goes to the largest one <= its height, downscaled; None = 512 (32 with --tiny)."""
    batch_size: int = 1
    """Images per step and process (one bucket per batch)."""
    learning_rate: float = 1e-4
    """AdamW learning rate of the LoRA."""
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    """Learning-rate schedule (diffusers.optimization.get_scheduler)."""
    lr_warmup_steps: int = 0
    """Warm-up steps of the schedule."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_weight_decay: float = 1e-4
    """AdamW weight decay."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    rank: int = 16
    """LoRA rank."""
    lora_alpha: float = 16.0
    """LoRA alpha (the update is scaled by alpha / rank)."""
    lora_dropout: float = 0.0
    """Dropout inside the LoRA layers."""
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    """Transformer modules that get a LoRA (peft names: a module matches when its name ends with .TARGET; commas also separate)."""
    guidance: float = 3.5
    """Guidance-embedding value of FLUX.1-dev during training (diffusers' default)."""
    weighting_scheme: Literal["none", "sigma_sqrt", "logit_normal", "mode", "cosmap"] = "none"
    """Timestep density and loss weighting (diffusers' compute_density_for_timestep_sampling / compute_loss_weighting_for_sd3)."""
    logit_mean: float = 0.0
    """Mean of the logit_normal timestep density."""
    logit_std: float = 1.0
    """Std of the logit_normal timestep density."""
    mode_scale: float = 1.29
    """Scale of the mode timestep density."""
    gradient_checkpointing: bool = True
    """Recompute the transformer's activations in the backward pass (much less memory, ~30% slower)."""
    roll: bool = True
    """Augment with random circular longitude shifts (np.roll along the width) of each panorama."""
    prompt_template: str | None = None
    """Format string with {prompt} applied to each caption (the panorama stage's format_prompt); None = the caption as it is."""
    max_sequence_length: int | None = None
    """T5 tokens of a caption; None = 512 (128 with --tiny, whose tokenizer has one token per character)."""
    seed: int = 0
    """Seed of the LoRA init, the data order and every random draw."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = CUDA when present (under accelerate launch: each process's GPU), else the CPU."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Dtype of the frozen base on CUDA (auto = bfloat16, with accelerate's bf16 autocast); always float32 on a CPU and for --tiny. The LoRA is float32."""
    checkpoint_every: int = 250
    """Write a checkpoint (and the LoRA at OUT) every N steps, and at the end."""
    keep_checkpoints: int = 2
    """Checkpoints kept (the newest)."""
    validation_every: int = 250
    """Write a validation panorama every N steps and at the end; 0 = never."""
    validation_prompt: str | None = None
    """Prompt of the validation panoramas; None = the first non-empty caption."""
    validation_steps: int | None = None
    """Denoising steps of a validation panorama; None = 28 (2 with --tiny)."""
    validation_guidance: float | None = None
    """Guidance of the validation panoramas; None = the panorama stage's default (7.0)."""
    validation_seed: int = 0
    """Seed of the validation panoramas."""
    overwrite: bool = False
    """Delete what OUT holds and start again (without it, another training in OUT is refused and the same one resumes)."""

    def resolved(self) -> PanoLoraTrainConfig:
        """A copy with the None defaults filled in (they depend on --tiny) and the targets split at commas."""
        tiny = self.tiny
        targets = tuple(t.strip() for item in self.lora_targets for t in item.split(",") if t.strip())
        return dataclasses.replace(
            self, model=None if tiny else (self.model or DEFAULT_FLUX), heights=tuple(self.heights or ((32,) if tiny else (512,))),
            max_sequence_length=self.max_sequence_length or (128 if tiny else 512), lora_targets=targets,
            validation_steps=self.validation_steps or (2 if tiny else 28))

    def check(self) -> None:
        """Values out of range -> InputError naming the option (before anything is loaded or written)."""
        def fail(option: str, expected: str, value: Any) -> None:
            raise InputError(f"--{option.replace('_', '-')}: expected {expected}, got {value!r}")

        for name in ("steps", "batch_size", "rank", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                fail(name, "a positive integer", getattr(self, name))
        for name in ("lr_warmup_steps", "validation_every"):
            if getattr(self, name) < 0:
                fail(name, "an integer >= 0", getattr(self, name))
        for name in ("learning_rate", "lora_alpha", "adam_epsilon", "max_grad_norm", "logit_std"):
            if not getattr(self, name) > 0 or getattr(self, name) == float("inf"):
                fail(name, "a finite number > 0", getattr(self, name))
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail(name, "a number in [0, 1)", getattr(self, name))
        for name in ("adam_weight_decay", "guidance", "logit_mean", "mode_scale"):
            if getattr(self, name) != getattr(self, name) or abs(getattr(self, name)) == float("inf"):
                fail(name, "a finite number", getattr(self, name))
        if not 0.0 <= self.lora_dropout < 1.0:
            fail("lora_dropout", "a number in [0, 1)", self.lora_dropout)
        if self.validation_steps is not None and self.validation_steps < 1:
            fail("validation_steps", "a positive integer", self.validation_steps)
        if self.max_sequence_length is not None and not 1 <= self.max_sequence_length <= 512:
            fail("max_sequence_length", "an integer from 1 to 512", self.max_sequence_length)
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            fail("weighting_scheme", "one of " + ", ".join(WEIGHTING_SCHEMES), self.weighting_scheme)
        if self.lr_scheduler not in LR_SCHEDULERS:
            fail("lr_scheduler", "one of " + ", ".join(LR_SCHEDULERS), self.lr_scheduler)
        multiple = 8 if self.tiny else 16  # VAE 8x (tiny: 4x) and 2x2 token packing
        for h in self.heights or ():
            if h <= 0 or h % multiple or h > MAX_HEIGHT:
                fail("heights", f"heights that are multiples of {multiple} up to {MAX_HEIGHT}", h)
        if not self.resolved().lora_targets:
            fail("lora_targets", "at least one module name", self.lora_targets)
        format_prompt("x", self.prompt_template, allow_empty=True)  # a template without {prompt} is refused

    def identity(self) -> dict:
        """What a resumed run must share with the first: every option but :data:`RESUMABLE` (and
        ``steps`` when the LR schedule depends on the length)."""
        keep = dataclasses.asdict(self)
        free = RESUMABLE if self.lr_scheduler in ("constant", "constant_with_warmup") else tuple(k for k in RESUMABLE if k != "steps")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in keep.items() if k not in free}


@dataclass
class TrainResult:
    out: Path
    lora: Path  # OUT/pytorch_lora_weights.safetensors
    step: int  # the last trained step
    resumed_from: int  # 0 for a fresh run
    losses: list[float]  # of the steps this call trained
    validations: list[Path]


# --------------------------------------------------------------------------- the model parts


def linear_module_names(transformer) -> list[str]:
    """The Linear layers of a FLUX transformer by name, block indices folded (``transformer_blocks.N.attn.to_q`` -> ``attn.to_q``)."""
    names = set()
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear):
            parts = name.split(".")
            names.add(".".join(parts[2:]) if parts[0].endswith("transformer_blocks") else name)
    return sorted(names)


def check_lora_targets(transformer, targets: tuple[str, ...]) -> dict[str, int]:
    """How many Linear layers each target matches (peft's rule: the name equals it or ends with '.' + it);
    InputError naming the layer names when one matches nothing (a typo would otherwise train less)."""
    names = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    counts = {t: sum(n == t or n.endswith("." + t) for n in names) for t in targets}
    missing = [t for t, c in counts.items() if c == 0]
    if missing:
        raise InputError(f"--lora-targets {', '.join(missing)} match(es) no Linear layer of the FLUX transformer; its "
                         f"Linear layers are (per block): {', '.join(linear_module_names(transformer))}")
    return counts


def add_lora(transformer, config: PanoLoraTrainConfig) -> list[torch.nn.Parameter]:
    """Freeze the transformer, add the trainable peft LoRA (diffusers' LoraConfig), float32 -> its parameters."""
    from peft import LoraConfig

    check_lora_targets(transformer, config.lora_targets)
    transformer.requires_grad_(False)
    torch.manual_seed(config.seed)  # peft's gaussian init of lora_A draws from torch's global RNG
    transformer.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                       init_lora_weights="gaussian", target_modules=list(config.lora_targets)),
                            adapter_name=ckpt.ADAPTER)
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # diffusers.training_utils.cast_training_params
    return params


def encode_latents(vae, pixels: Tensor, generator: torch.Generator) -> Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> scaled latents [B, c, H/8, W/8] (a posterior sample, as diffusers)."""
    with torch.no_grad():
        z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample(generator=generator)
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def flow_matching_loss(transformer, latents: Tensor, *, prompt_embeds: Tensor, pooled_prompt_embeds: Tensor,
                       text_ids: Tensor, scheduler, guidance: float | None, generator: torch.Generator,
                       vae_scale_factor: int = 8, weighting_scheme: str = "none", logit_mean: float = 0.0,
                       logit_std: float = 1.0, mode_scale: float = 1.29) -> Tensor:
    """FLUX's flow-matching loss of one batch, as diffusers' FLUX LoRA training computes it (module doc, 2-6).

    latents: [B, c, h, w] scaled VAE latents (h, w even); prompt_embeds [B, L, D]; pooled [B, P];
    text_ids [L, 3]; scheduler: the training FlowMatchEulerDiscreteScheduler (never set_timesteps'd);
    vae_scale_factor: the VAE's (8 for FLUX; only used to unpack the prediction as diffusers does);
    guidance: the guidance-embedding value (None for a model without guidance embeds);
    generator: CPU generator of the noise and the timesteps. Returns a float32 scalar.
    """
    from diffusers import FluxPipeline
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    b, c, h, w = latents.shape
    device, dtype = latents.device, latents.dtype
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device, dtype)
    u = compute_density_for_timestep_sampling(weighting_scheme=weighting_scheme, batch_size=b, logit_mean=logit_mean,
                                              logit_std=logit_std, mode_scale=mode_scale, generator=generator)
    n = scheduler.config.num_train_timesteps
    indices = (u * n).long().clamp(0, n - 1)  # the clamp only catches u = 1 exactly (mode density at rand = 0)
    timesteps = scheduler.timesteps[indices].to(device)
    sigmas = scheduler.sigmas[indices].to(device, dtype).reshape(b, 1, 1, 1)  # diffusers' get_sigmas (same index)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    packed = FluxPipeline._pack_latents(noisy, batch_size=b, num_channels_latents=c, height=h, width=w)
    image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
    guidance_vec = None if guidance is None else torch.full((b,), float(guidance), device=device)
    pred = transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance_vec,
                       pooled_projections=pooled_prompt_embeds, encoder_hidden_states=prompt_embeds,
                       txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
    pred = FluxPipeline._unpack_latents(pred, height=h * vae_scale_factor, width=w * vae_scale_factor,
                                        vae_scale_factor=vae_scale_factor)
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=weighting_scheme, sigmas=sigmas)
    target = noise - latents
    loss = torch.mean((weighting.float() * (pred.float() - target.float()) ** 2).reshape(b, -1), 1)
    return loss.mean()


def oom_message(config: PanoLoraTrainConfig, *, height: int, processes: int, what: str) -> str:
    """One line: what ran out of memory and the next lever to pull (in the order that costs least)."""
    levers = []
    if not config.gradient_checkpointing:
        levers.append("turn gradient checkpointing on (drop --no-gradient-checkpointing)")
    if config.batch_size > 1:
        levers.append(f"a smaller --batch-size than {config.batch_size}")
    smaller = [h for h in (256, 384, 512, 768) if h < height]
    if smaller:
        levers.append(f"a smaller resolution bucket (--heights {smaller[-1]})")
    levers.append("more GPUs (accelerate launch --num_processes N keeps the global batch with a smaller per-GPU one)")
    return (f"CUDA ran out of memory {what} at {2 * height}x{height}, batch {config.batch_size}, gradient checkpointing "
            f"{'on' if config.gradient_checkpointing else 'off'}, {processes} process(es); next: {levers[0]}"
            + (f" (then: {'; '.join(levers[1:])})" if len(levers) > 1 else ""))


def _say(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(message, file=sys.stderr, flush=True)


def _resolve_device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available; use --device cpu (or auto)")
    return "cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name)


# --------------------------------------------------------------------------- training


def avoid_cudnn_attention_backward() -> None:
    """Training runs SDPA without its cuDNN kernel: on an H200 (torch 2.11, 2026-12-01) cuDNN's
    attention BACKWARD failed on FLUX.1-dev's shapes ("mha_graph.execute ... is_good()", an illegal
    memory access without CUDA_LAUNCH_BLOCKING); flash / memory-efficient attention take over."""
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


def train(config: PanoLoraTrainConfig, *, say: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) a panorama LoRA; see the module doc. Returns what was written.

    say: where notes and warnings go (default: stderr of the main process).
    """
    from accelerate import Accelerator
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from matrix_world.generation.flux_pano import load_flux_pipeline
    from matrix_world.generation.tiny_models import build_tiny_flux
    from matrix_world.rundir import jsonable, package_versions
    from matrix_world.runlock import run_lock

    # 1. options and data, checked before any model is loaded or anything is written
    config.check()
    config = config.resolved()
    data = scan_dataset(config.data, config.heights or ())
    device_type = _resolve_device(config.device)
    bf16 = device_type == "cuda" and not config.tiny and config.dtype != "float32"
    accelerator = Accelerator(cpu=device_type == "cpu", mixed_precision="bf16" if bf16 else "no")
    avoid_cudnn_attention_backward()
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    dtype = torch.bfloat16 if bf16 else torch.float32
    log = say or (lambda message: _say(accelerator, message))
    log(f"note: {data.summary()}")
    if data.missing_captions:
        log(f"warning: {data.missing_captions} of {len(data.samples)} panoramas have no caption (.txt / prompt.txt); "
            "they train with an empty prompt")
    out = Path(config.out).expanduser()
    record = {"format": ckpt.TRAINING_FORMAT,
              "identity": {**config.identity(), "dtype": str(dtype), "data_files": data.fingerprint()},
              "config": jsonable(dataclasses.asdict(config), strict=False), "dataset": data.summary(),
              "processes": world, "versions": package_versions()}

    with contextlib.ExitStack() as stack:
        # 2. the output folder (one writer): new, or the same training, resumed below
        if accelerator.is_main_process:
            stack.enter_context(run_lock(out))
            ckpt.prepare_out_dir(out, record, overwrite=config.overwrite)
        accelerator.wait_for_everyone()

        # 3. the model: FLUX.1-dev (or the tiny one, built once into OUT/tiny_flux), all frozen
        model = config.model
        if config.tiny:
            model = str(out / "tiny_flux")
            if accelerator.is_main_process and not (out / "tiny_flux" / "model_index.json").is_file():
                build_tiny_flux(out / "tiny_flux", seed=0)
            accelerator.wait_for_everyone()
        pano = PanoramaConfig(backend="flux", model=model, dtype=str(dtype).replace("torch.", ""), memory="full",
                              height=max(config.heights or ()), steps=config.validation_steps,
                              guidance=config.validation_guidance, seed=config.validation_seed,
                              prompt_template=config.prompt_template, max_sequence_length=config.max_sequence_length)
        pipe, _ = load_flux_pipeline(pano, device)
        for part in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            part.requires_grad_(False)
        transformer = pipe.transformer
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)  # diffusers' noise_scheduler_copy
        guidance = config.guidance if transformer.config.guidance_embeds else None

        # 4. the LoRA (targets checked, float32), gradient checkpointing, AdamW, LR schedule
        params = add_lora(transformer, config)
        if config.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                      weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
        lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.lr_warmup_steps,
                                     num_training_steps=config.steps)
        log(f"note: LoRA rank {config.rank}, alpha {config.lora_alpha:g} on {', '.join(config.lora_targets)}: "
            f"{sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters; base {pano.dtype} on {device} x {world}")

        # 5. resume: LoRA, optimizer, schedule, step and RNG from the newest checkpoint
        generator = torch.Generator("cpu").manual_seed(config.seed * 7919 + rank)
        start, latest = 0, ckpt.latest_checkpoint(out)
        if latest is not None:
            start = ckpt.load_checkpoint(accelerator, latest, transformer=transformer, optimizer=optimizer,
                                         lr_scheduler=lr_scheduler, generator=generator)
            log(f"note: resumed from {latest} (step {start})")
        if accelerator.is_main_process:
            ckpt.truncate_metrics(out, start)
        transformer, optimizer = accelerator.prepare(transformer, optimizer)
        prompt = config.validation_prompt or next((s.caption for s in data.samples if s.caption), "a 360 degree panorama")
        result = TrainResult(out, out / ckpt.LORA_FILE, start, start, [], [])
        if start >= config.steps:
            log(f"note: {out} is already trained to step {start} (--steps {config.steps}); nothing to do")
            return result

        # 6. the loop: batch -> latents -> flow-matching loss -> AdamW step; metrics, checkpoints, validation
        transformer.train()
        bar = tqdm(total=config.steps, initial=start, desc="pano LoRA", disable=not accelerator.is_local_main_process)
        for step in range(start + 1, config.steps + 1):
            t0 = time.perf_counter()
            indices = batch_at(data, (step - 1) * world + rank, config.batch_size, config.seed)
            height = data.samples[indices[0]].bucket
            lr = optimizer.param_groups[0]["lr"]
            try:
                # 6a. pixels (random circular longitude shifts); captions through the stage's prompt format
                pixels, _ = load_batch(data, indices, roll=config.roll, generator=generator)
                texts = [format_prompt(c, config.prompt_template, allow_empty=True) for c in captions(data, indices)]
                with torch.no_grad():
                    prompt_embeds, pooled, text_ids = pipe.encode_prompt(prompt=texts, prompt_2=None, device=device,
                                                                         max_sequence_length=config.max_sequence_length)
                # 6b. VAE latents -> loss -> backward -> clip -> step
                latents = encode_latents(pipe.vae, pixels, generator).to(dtype)
                loss = flow_matching_loss(transformer, latents, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled,
                                          text_ids=text_ids, scheduler=scheduler, guidance=guidance, generator=generator,
                                          vae_scale_factor=pipe.vae_scale_factor, weighting_scheme=config.weighting_scheme,
                                          logit_mean=config.logit_mean, logit_std=config.logit_std,
                                          mode_scale=config.mode_scale)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                value = float(accelerator.reduce(loss.detach(), reduction="mean"))
            except torch.OutOfMemoryError:
                raise InputError(oom_message(config, height=height, processes=world, what=f"in training step {step}")) from None
            # 6c. metrics, progress bar, checkpoint (+ the LoRA at OUT), validation panorama
            result.losses.append(value)
            result.step = step
            if accelerator.is_main_process:
                ckpt.append_metrics(out, {"step": step, "loss": value, "lr": lr,
                                          "seconds": round(time.perf_counter() - t0, 4), "height": height})
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
            last = step == config.steps
            if step % config.checkpoint_every == 0 or last:
                ckpt.save_checkpoint(accelerator, out, step, transformer=transformer, optimizer=optimizer,
                                     lr_scheduler=lr_scheduler, generator=generator, keep=config.keep_checkpoints,
                                     info={"loss": value})
            if config.validation_every and (step % config.validation_every == 0 or last):
                path = validate(pipe, accelerator, pano, prompt, out, step, config)
                if path is not None:
                    result.validations.append(path)
        bar.close()
    log(f"wrote {result.lora} (step {result.step}); the panorama stage loads it with --flux-lora {out}")
    return result


def validate(pipe, accelerator, pano: PanoramaConfig, prompt: str, out: Path, step: int,
             config: PanoLoraTrainConfig) -> Path | None:
    """A panorama of ``prompt`` with the LoRA being trained, through the panorama stage's own
    ``generate_with_pipeline`` -> OUT/validation/step_NNNNNN.png (main process; the others wait)."""
    from matrix_world.generation.flux_pano import generate_with_pipeline
    from matrix_world.io import write_image

    path = None
    if accelerator.is_main_process:
        transformer = pipe.transformer
        transformer.eval()
        try:
            rgb, _ = generate_with_pipeline(pipe, pano, prompt=prompt, device=accelerator.device)
        except InputError as exc:
            if "out of memory" not in str(exc):
                raise
            raise InputError(oom_message(config, height=pano.height, processes=accelerator.num_processes,
                                         what=f"in the validation panorama of step {step}")) from None
        finally:
            transformer.train()
        path = out / ckpt.VALIDATION / f"step_{step:06d}.png"
        path.parent.mkdir(exist_ok=True)
        write_image(path, rgb)
    accelerator.wait_for_everyone()
    return path
