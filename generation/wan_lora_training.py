"""The pieces of the Wan LoRA training (generation.train_video_lora runs them in order).

* LoRA layers: :data:`MATRIX3D_LORA_TARGETS`, the layers the official Matrix-3D LoRA covers
  (its DiffSynth recipe ``lora_target_modules="q,k,v,o,ffn.0,ffn.2"``, which matches
  ``self_attn.{q,k,v,o}``, ``cross_attn.{q,k,v,o}`` and ``ffn.{0,2}`` of every block but not the
  image branch ``cross_attn.{k,v}_img``), in diffusers' names through the mapping of
  :mod:`matrix_world.generation.wan_lora`; :func:`add_lora` puts peft LoRA layers on them.
* The checkpoint the video stage loads (``--wan-lora``): :func:`inference_lora_state` gives the
  diffusers/peft layout ``transformer.blocks.N.attn1.to_q.lora_A.weight`` that
  :func:`matrix_world.generation.wan_lora.load_lora` reads, with the LoRA scale alpha / rank
  folded into ``lora_B`` (that loader, like diffusers' without alphas, merges at scale 1).
* The objective: flow matching on normalised Wan-VAE latents x0 with Gaussian noise n,
  ``x_t = (1 - sigma) x0 + sigma n``, the transformer predicts the velocity ``n - x0``
  (diffusers' / finetrainers' Wan training, DiffSynth's ``training_target``); sigma is drawn as
  finetrainers does: ``u`` from diffusers' ``compute_density_for_timestep_sampling`` (uniform by
  default), ``sigma = sigmas[int(u * 1000)]`` of a fresh ``FlowMatchEulerDiscreteScheduler`` with
  the video stage's shift (5: the grid DiffSynth trains Matrix-3D on), timestep = 1000 sigma.
* The cache of encoded items (VAE latents, the condition, text and image embeddings), a folder
  of .safetensors files named by a content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from matrix_world.errors import InputError
from matrix_world.generation.wan_lora import BLOCK_MODULES

# Matrix-3D's DiffSynth target names "q,k,v,o,ffn.0,ffn.2" matched inside each block (suffix match).
MATRIX3D_ORIGINAL_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                             "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
MATRIX3D_LORA_TARGETS = tuple(BLOCK_MODULES[m] for m in MATRIX3D_ORIGINAL_TARGETS)  # attn1.to_q, ..., ffn.net.2
TIMESTEP_SAMPLING = ("uniform", "logit_normal", "mode")
LOSS_WEIGHTING = ("none", "diffsynth", "sigma_sqrt", "cosmap")
ADAPTER = "default"
NUM_TRAIN_TIMESTEPS = 1000


# --------------------------------------------------------------------------- LoRA layers


def resolve_lora_targets(transformer, targets) -> list[str]:
    """Full names of the Linear layers matched by ``targets`` (a module name or a dotted suffix of one,
    e.g. ``attn1.to_q``). InputError if any target matches no Linear, naming the layers found."""
    linears = [name for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    found: list[str] = []
    unmatched = []
    for target in targets:
        hits = [n for n in linears if n == target or n.endswith("." + target)]
        if not hits:
            unmatched.append(target)
        found += [n for n in hits if n not in found]
    if unmatched or not found:
        kinds = sorted({n.split(".", 2)[2] if n.startswith("blocks.") else n for n in linears})
        raise InputError(f"LoRA target(s) {', '.join(unmatched) or '(none)'} match no Linear layer of the transformer; "
                         f"its Linear layers are (per block: blocks.N.*): {', '.join(kinds)}")
    return found


def add_lora(transformer, *, rank: int, alpha: float | None, targets, seed: int) -> list[str]:
    """Freeze ``transformer`` and add peft LoRA layers (float32, dropout 0) on ``targets``.

    lora_A is peft's Kaiming init drawn from a generator-free ``torch.manual_seed(seed)`` (the same on
    every process), lora_B is zero, so the model starts as the base. Returns the layer names.
    """
    from peft import LoraConfig

    if rank < 1:
        raise InputError(f"LoRA rank must be >= 1, got {rank}")
    names = resolve_lora_targets(transformer, targets)
    transformer.requires_grad_(False)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), lora_dropout=0.0,
                        init_lora_weights=True, target_modules=names)
    transformer.add_adapter(config, adapter_name=ADAPTER)
    for name, param in transformer.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
            param.data = param.data.float()
    return names


def lora_parameters(transformer) -> dict[str, Tensor]:
    """The trainable LoRA parameters by their full names (``...to_q.lora_A.default.weight``), gathered
    to full tensors where FSDP2 shards them (call on every process)."""
    out = {}
    for name, param in transformer.named_parameters():
        if "lora_" in name:
            full = param.full_tensor() if hasattr(param, "full_tensor") else param
            out[name] = full.detach().float().cpu().contiguous()
    return out


def load_lora_parameters(transformer, state: dict[str, Tensor]) -> None:
    """Copy :func:`lora_parameters` back into a (not yet sharded) LoRA transformer, strictly."""
    params = {n: p for n, p in transformer.named_parameters() if "lora_" in n}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise InputError(f"the checkpoint's LoRA does not match this model (missing {missing[:3]}, unexpected {extra[:3]}); "
                         "resume with the same --lora-rank / --lora-targets / model")
    with torch.no_grad():
        for name, param in params.items():
            if tuple(param.shape) != tuple(state[name].shape):
                raise InputError(f"checkpoint LoRA {name} has shape {tuple(state[name].shape)}, the model {tuple(param.shape)}")
            param.copy_(state[name].to(param.device, param.dtype))


def inference_lora_state(params: dict[str, Tensor], *, rank: int, alpha: float | None) -> dict[str, Tensor]:
    """:func:`lora_parameters` -> the file the video stage loads: ``transformer.<module>.lora_{A,B}.weight``
    with lora_B multiplied by alpha / rank (exact for alpha = rank)."""
    scale = float(alpha if alpha is not None else rank) / rank
    out = {}
    for name, value in params.items():
        module, kind = name.rsplit(".lora_", 1)  # kind: "A.default.weight"
        half = kind.split(".", 1)[0]
        tensor = value * scale if half == "B" and scale != 1.0 else value
        out[f"transformer.{module}.lora_{half}.weight"] = tensor.contiguous()
    return out


def save_safetensors(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict | None = None) -> None:
    """Write ``tensors`` (+ string metadata) atomically."""
    from safetensors.torch import save_file

    from matrix_world.io import atomic_write

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_write(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


# --------------------------------------------------------------------------- objective


def training_sigmas(shift: float) -> Tensor:
    """The 1000 training sigmas (1 -> 0.001, shifted) of a fresh FlowMatchEulerDiscreteScheduler."""
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift).sigmas.clone().float()


def sample_sigmas(batch: int, *, sigmas: Tensor, generator: torch.Generator, scheme: str = "uniform",
                  logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29) -> Tensor:
    """Noise levels [batch] drawn as finetrainers does for Wan: u ~ the scheme (CPU ``generator``),
    sigma = sigmas[int(u * len(sigmas))]."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    if scheme not in TIMESTEP_SAMPLING:
        raise InputError(f"timestep sampling must be one of {', '.join(TIMESTEP_SAMPLING)}, got {scheme!r}")
    u = compute_density_for_timestep_sampling(
        weighting_scheme="none" if scheme == "uniform" else scheme, batch_size=batch, logit_mean=logit_mean,
        logit_std=logit_std, mode_scale=mode_scale, device="cpu", generator=generator)
    index = (u * len(sigmas)).long().clamp(0, len(sigmas) - 1)
    return sigmas[index]


def loss_weights(sigmas: Tensor, scheme: str = "none", *, grid: Tensor | None = None) -> Tensor:
    """Per-sample loss weights [B]: 1 (``none``, finetrainers' default), DiffSynth's Gaussian bump over
    the timestep (``diffsynth``, Matrix-3D's trainer: w(t) = exp(-2 ((t - 500) / 1000)^2), shifted to 0
    at its minimum over the training ``grid`` of sigmas and scaled to mean 1 there), or diffusers'
    SD3 schemes (``sigma_sqrt``, ``cosmap``)."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    if scheme not in LOSS_WEIGHTING:
        raise InputError(f"loss weighting must be one of {', '.join(LOSS_WEIGHTING)}, got {scheme!r}")
    if scheme == "diffsynth":
        if grid is None:
            raise InputError("the diffsynth loss weighting needs the training grid of sigmas")
        bump = lambda s: torch.exp(-2.0 * ((s.double() * NUM_TRAIN_TIMESTEPS - NUM_TRAIN_TIMESTEPS / 2) / NUM_TRAIN_TIMESTEPS) ** 2)
        on_grid = bump(grid)
        low, total = on_grid.min(), (on_grid - on_grid.min()).sum()
        return ((bump(sigmas) - low) * len(grid) / total).float()
    return compute_loss_weighting_for_sd3(scheme, sigmas).float()


def flow_matching_loss(model, *, latents: Tensor, condition: Tensor, prompt_embeds: Tensor, image_embeds: Tensor,
                       sigmas: Tensor, noise: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted MSE between the transformer's velocity and ``noise - latents``.

    latents, noise: [B, 16, T, h, w] float32 (normalised Wan-VAE latents, N(0, 1) noise);
    condition: [B, 20, T, h, w] (:meth:`PanoVideoPipeline.prepare_condition`); sigmas: [B];
    the transformer input is ``[x_t 16 | condition 20]`` as at inference, timestep = 1000 sigma.
    Loss: mean over the elements of each sample, times its weight, mean over the batch.
    """
    s = sigmas.to(latents.device, torch.float32).view(-1, 1, 1, 1, 1)
    noisy = (1.0 - s) * latents + s * noise
    dtype = condition.dtype
    pred = model(hidden_states=torch.cat([noisy.to(dtype), condition], dim=1),
                 timestep=(sigmas * NUM_TRAIN_TIMESTEPS).to(latents.device, torch.float32),
                 encoder_hidden_states=prompt_embeds, encoder_hidden_states_image=image_embeds, return_dict=False)[0]
    target = noise - latents
    per_sample = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, target.ndim)))
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device)
    return per_sample.mean()


# --------------------------------------------------------------------------- cache of encoded items


ENCODED_KEYS = ("latents", "condition", "image_embeds", "prompt_embeds")


def content_hash(*parts) -> str:
    """sha256 of tensors (shape, dtype, bytes) and JSON-able values, in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def encoder_fingerprint(pipe, *, source: str, dtype: torch.dtype, prompt_suffix: str, representation: str = "erp") -> str:
    """What the encoded items depend on besides the item: the model's source and the configs of its
    VAE, text and image encoders, the dtype, the prompt suffix, the representation (layout and size).
    Weights replaced in place under the same source are not seen: clear the cache then."""
    configs = {}
    for name in ("vae", "text_encoder", "image_encoder"):
        config = getattr(getattr(pipe, name, None), "config", None)
        values = dict(config.to_dict()) if config is not None and hasattr(config, "to_dict") else dict(config or {})
        configs[name] = {k: str(v) for k, v in sorted(values.items()) if not k.startswith("_")}
    extra = {} if representation == "erp" else {"representation": representation}  # erp: the hash it always had
    return content_hash({"source": source, "dtype": str(dtype), "suffix": prompt_suffix, "configs": configs, **extra})


class EncodedCache:
    """Encoded items (:data:`ENCODED_KEYS`, each without its batch axis) in ``folder/<key[:2]>/<key>.safetensors``."""

    def __init__(self, folder: str | os.PathLike, fingerprint: str):
        self.folder, self.fingerprint = Path(folder), fingerprint

    def _path(self, key: str) -> Path:
        full = content_hash(self.fingerprint, key)
        return self.folder / full[:2] / f"{full}.safetensors"

    def load(self, key: str) -> dict[str, Tensor] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._path(key)
        if not path.is_file():
            return None
        try:
            data = load_file(str(path))
        except (SafetensorError, OSError):
            return None  # a damaged entry is recomputed
        return data if set(data) == set(ENCODED_KEYS) else None

    def save(self, key: str, encoded: dict[str, Tensor]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(path, {k: encoded[k].detach().cpu() for k in ENCODED_KEYS})


# --------------------------------------------------------------------------- out of memory


class TrainingOutOfMemoryError(InputError):
    """CUDA ran out of memory during training; the message names the next lever."""


def oom_message(*, what: str, gradient_checkpointing: bool, batch_size: int, frames: int, fsdp: bool,
                processes: int) -> str:
    """One line: what ran out of memory and the next lever to pull."""
    if not gradient_checkpointing:
        lever = "turn gradient checkpointing on (drop --no-gradient-checkpointing)"
    elif batch_size > 1:
        lever = f"lower --batch-size (now {batch_size}) and raise --gradient-accumulation instead"
    elif frames > 49:
        lever = f"train on fewer frames (--frames 49 or 33; now {frames}; 4k+1 frames)"
    elif not fsdp:
        lever = ("shard the frozen base over several GPUs with FSDP: accelerate launch --config_file "
                 "configs/accelerate_fsdp_wan14b.yaml scripts/train_video_lora.py ...")
    else:
        lever = f"use more GPUs for FSDP (now {processes}), fewer frames, or 480p"
    return f"CUDA out of memory during {what}; next lever: {lever}. Checkpoints written so far are kept."
