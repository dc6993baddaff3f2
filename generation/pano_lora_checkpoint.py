"""The output folder of a panorama LoRA training: the LoRA file, checkpoints, metrics, resume.

    OUT/pytorch_lora_weights.safetensors   the latest LoRA: diffusers' FLUX LoRA layout, written by
                                           ``FluxPipeline.save_lora_weights`` from peft's state dict
                                           (keys ``transformer.<module>.lora_A.weight`` / ``lora_B``,
                                           float32, the LoraConfig (rank, alpha, targets) in the
                                           header's ``lora_adapter_metadata``), exactly what
                                           diffusers' own FLUX LoRA training writes; the ONLY
                                           .safetensors at the top, so ``--flux-lora OUT`` (the
                                           panorama stage) loads it
    OUT/training_config.json               the options, what identifies the run, the data, versions
    OUT/metrics.jsonl                      one line per step: step, loss, lr, seconds, height
    OUT/validation/step_000250.png         a panorama of the validation prompt every K steps
    OUT/checkpoints/step_000250/           pytorch_lora_weights.safetensors (the same format:
                                           ``--flux-lora OUT/checkpoints/step_000250`` loads it),
                                           training_state.pt (optimizer, LR schedule, step),
                                           rng_rank<r>.pt (each process's generator and torch RNG
                                           states), state.json (written last)
    OUT/tiny_flux/                         with --tiny: the tiny random-weight model it trains

A checkpoint folder is written under a temporary name and renamed, so a folder named
``step_*`` with a ``state.json`` is complete; a killed run resumes from the newest one, and the
metrics of later steps are dropped (they are computed again, identically).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from matrix_world.errors import InputError
from matrix_world.io import write_text

LORA_FILE = "pytorch_lora_weights.safetensors"
CONFIG_FILE = "training_config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
VALIDATION = "validation"
TRAINING_FORMAT = "matrix_world.pano_lora_training/1"
ADAPTER = "default"  # the peft adapter name diffusers' training uses


# --------------------------------------------------------------------------- the folder and its identity


def prepare_out_dir(out: Path, record: dict, *, overwrite: bool) -> None:
    """Make ``out`` ready for this training: new, empty, or the same training (resumed).

    ``record['identity']`` must equal the one in an existing ``training_config.json``; another
    training or a folder of other files is refused unless ``overwrite`` (which deletes everything
    in ``out``, the lock file excepted).
    """
    entries = [p for p in out.iterdir() if p.name != ".lock"] if out.is_dir() else []
    if entries and overwrite:
        for p in entries:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        entries = []
    if entries:
        config_file = out / CONFIG_FILE
        if not config_file.is_file():
            raise InputError(f"--out {out} is not empty and holds no panorama LoRA training ({CONFIG_FILE}); "
                             "choose a new or empty folder, or pass --overwrite to delete its contents")
        try:
            previous = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{config_file} cannot be read ({type(exc).__name__}); pass --overwrite to start again") from None
        old, new = previous.get("identity", {}), record["identity"]
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            shown = ", ".join(f"{k} {_short(old.get(k))} -> {_short(new.get(k))}" for k in changed[:4])
            raise InputError(f"--out {out} holds a LoRA training with other options or data ({shown}); "
                             "rerun with the same ones to resume, pass --overwrite to start again, or use another --out")
    write_text(out / CONFIG_FILE, json.dumps(record, indent=1) + "\n")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder (``state.json`` present), or None."""
    folder = out / CHECKPOINTS
    done = [p for p in folder.glob("step_*") if (p / "state.json").is_file()] if folder.is_dir() else []
    return max(done, key=lambda p: int(p.name.split("_")[1])) if done else None


def truncate_metrics(out: Path, step: int) -> None:
    """Keep the metric lines of steps <= ``step`` (a resumed run writes the later ones again)."""
    path = out / METRICS_FILE
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(line + "\n" for line in kept))


def append_metrics(out: Path, row: dict) -> None:
    with open(out / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


# --------------------------------------------------------------------------- the LoRA file


def save_lora(transformer, folder: Path) -> Path:
    """Write the transformer's LoRA as diffusers' training does -> ``folder/pytorch_lora_weights.safetensors``."""
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
    metadata = transformer.peft_config[ADAPTER].to_dict()  # diffusers.training_utils._collate_lora_metadata
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=layers, weight_name=LORA_FILE,
                                   transformer_lora_adapter_metadata=metadata)
    return folder / LORA_FILE


def load_lora_into(transformer, file: Path) -> None:
    """Set the transformer's trained adapter from a LoRA file written by :func:`save_lora` (exact values)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = {k.removeprefix("transformer."): v for k, v in load_file(str(file)).items() if k.startswith("transformer.")}
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None)
    if not state or unexpected:
        raise InputError(f"checkpoint LoRA {file} does not fit this model's LoRA ({len(state)} tensors, unexpected "
                         f"{list(unexpected or [])[:2]}); pass --overwrite to start again")


def export_lora(source: Path, out: Path) -> None:
    """Atomically make ``source`` (a LoRA file) the one at ``out/pytorch_lora_weights.safetensors``.

    The temporary copy lives in a sub-folder: the top of ``out`` never holds two .safetensors.
    """
    tmp = out / ".tmp_lora"
    tmp.mkdir(exist_ok=True)
    shutil.copyfile(source, tmp / LORA_FILE)
    os.replace(tmp / LORA_FILE, out / LORA_FILE)
    tmp.rmdir()


# --------------------------------------------------------------------------- checkpoints


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(accelerator, out: Path, step: int, *, transformer, optimizer, lr_scheduler,
                    generator: torch.Generator, keep: int, info: dict) -> Path:
    """Every process calls this: rank r writes its RNG, the main process the rest, renamed when complete.

    Also makes the checkpoint's LoRA the one at the top of ``out`` and keeps the newest ``keep``.
    """
    root = out / CHECKPOINTS
    final, tmp = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(generator, accelerator.device), tmp / f"rng_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_lora(accelerator.unwrap_model(transformer), tmp)
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()},
                   tmp / "training_state.pt")
        write_text(tmp / "state.json", json.dumps({"step": step, "processes": accelerator.num_processes, **info}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        export_lora(final / LORA_FILE, out)
        done = sorted((p for p in root.glob("step_*") if (p / "state.json").is_file()), key=lambda p: int(p.name[5:]))
        for old in done[: max(len(done) - keep, 0)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: Path, *, transformer, optimizer, lr_scheduler, generator: torch.Generator) -> int:
    """Restore a checkpoint into the (not yet prepared) transformer, optimizer, schedule and RNG -> its step."""
    state = json.loads((folder / "state.json").read_text())
    if state["processes"] != accelerator.num_processes:
        raise InputError(f"checkpoint {folder} was written by {state['processes']} process(es) and this run has "
                         f"{accelerator.num_processes}; resume with the same number of processes (or --overwrite)")
    load_lora_into(transformer, folder / LORA_FILE)
    training = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(training["optimizer"])
    lr_scheduler.load_state_dict(training["lr_scheduler"])
    rng = torch.load(folder / f"rng_rank{accelerator.process_index}.pt", map_location="cpu", weights_only=True)
    set_rng_state(rng, generator, accelerator.device)
    return int(training["step"])
