"""FLUX LoRAs for the panorama stage: resolve, validate, load with diffusers' loader, unload, fuse.

A LoRA is given as a .safetensors file, a folder holding one (or a named file), a hub id +
file name, or the alias ``matrix3d`` (Matrix-3D's ``checkpoints/text2panoimage_lora.safetensors``
in ``Skywork/Matrix-3D``). Loading goes through ``pipe.load_lora_weights`` (diffusers converts
kohya / BFL / xlabs layouts), with the strength as the adapter weight; ``unload_lora`` restores
the base weights bit-exactly. Before loading, every LoRA matrix is checked against its layer:
diffusers' FLUX loader would otherwise widen a layer for a LoRA made for another model (its
Control-LoRA path) and cannot undo that for nested layers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from matrix_world.errors import InputError
from matrix_world.generation.weights import resolve_file

MATRIX3D_REPO = "Skywork/Matrix-3D"
MATRIX3D_PANO_LORA = "checkpoints/text2panoimage_lora.safetensors"
LORA_ADAPTER = "panorama"
# A public few-step LoRA of FLUX.1-dev (the turbo preset): alimama-creative's FLUX.1-Turbo-Alpha, 8 steps,
# guidance 3.5, diffusers layout; stacked on the panorama LoRA under its own adapter.
TURBO_REPO = "alimama-creative/FLUX.1-Turbo-Alpha"
TURBO_FILE = "diffusion_pytorch_model.safetensors"
TURBO_ADAPTER = "turbo"
TURBO_STEPS, TURBO_GUIDANCE = 8, 3.5


def validate_lora_spec(lora: str, weight_name: str | None = None, *, what: str = "panorama LoRA") -> str:
    """Check a panorama LoRA spec without the hub or a download -> its kind ('none', 'alias', 'file',
    'folder', 'hub'); InputError (one line) when :func:`resolve_lora` could never resolve it: an
    unknown word, a path that does not exist, a folder without exactly one .safetensors (and no
    ``weight_name``)."""
    from matrix_world.generation.weights import check_weights_spec

    kind = check_weights_spec(lora, what=what, aliases=("matrix3d", "turbo-alpha"))
    if kind == "folder" and weight_name is None:
        _only_safetensors(Path(lora).expanduser(), what)
    return kind


def _only_safetensors(folder: Path, what: str) -> Path:
    candidates = sorted(folder.glob("*.safetensors"))
    if len(candidates) != 1:
        raise InputError(f"{what}: the folder {folder} holds {len(candidates)} .safetensors files; "
                         "expected exactly one (or name one with lora_weight_name)")
    return candidates[0]


def resolve_lora(lora: str, weight_name: str | None = None, *, allow_download: bool = False) -> str:
    """A LoRA given as a file, a folder (+ weight name, or its only .safetensors), a hub id (+ weight
    name) or the alias ``matrix3d`` -> a local file path (WeightsNotFoundError if missing)."""
    what = "panorama LoRA"
    validate_lora_spec(lora, weight_name, what=what)
    if lora == "matrix3d":
        lora, weight_name = MATRIX3D_REPO, weight_name or MATRIX3D_PANO_LORA
    elif lora == "turbo-alpha":
        lora, weight_name = TURBO_REPO, TURBO_FILE
    path = Path(lora).expanduser()
    if path.is_dir() and weight_name is None:
        return str(_only_safetensors(path, what))
    if not path.exists() and weight_name is None and lora == MATRIX3D_REPO:
        weight_name = MATRIX3D_PANO_LORA
    if not path.exists() and weight_name is None and lora.count("/") == 1:
        weight_name = "pytorch_lora_weights.safetensors"
    return resolve_file(lora, what=what, filename=weight_name, allow_download=allow_download)


def read_lora_state_dict(path: str) -> dict[str, Tensor]:
    """Read a LoRA file (.safetensors, or a torch .bin/.pt/.ckpt) with a clear error when it is not one."""
    from matrix_world.checkpoints import load_weights

    state = load_weights(path, what="LoRA file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"LoRA file {path} does not hold a flat dict of tensors")
    return state


def load_lora(pipe, lora: str, *, weight_name: str | None = None, scale: float = 1.0,
              adapter_name: str = LORA_ADAPTER, allow_download: bool = False) -> str:
    """Load a LoRA into a FLUX pipeline with diffusers' loader and set its strength; return the file.

    Raises InputError when the file is unreadable, holds no LoRA for the FLUX transformer, or
    its shapes do not fit the model. ``unload_lora(pipe)`` restores the base weights exactly.
    """
    path = resolve_lora(lora, weight_name, allow_download=allow_download)
    state = read_lora_state_dict(path)
    shapes = _weight_shapes(pipe)
    _check_lora_fits(pipe, state, path)
    # A LoRA saved by diffusers' trainers (and scripts/train_pano_lora.py) carries its LoraConfig
    # (lora_alpha, rank pattern) in the safetensors header; diffusers reads it only from a file,
    # a dict would load with alpha = rank. Such files are loaded by path, others as the dict.
    source, where = (str(Path(path).parent), {"weight_name": Path(path).name}) if _has_adapter_metadata(path) else (state, {})
    try:
        pipe.load_lora_weights(source, adapter_name=adapter_name, **where)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        unload_lora(pipe)
        raise InputError(f"LoRA {path} does not fit the FLUX transformer ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    adapters = {name for names in pipe.get_list_adapters().values() for name in names}
    bad = _lora_shape_mismatches(pipe, adapter_name, shapes)
    if bad:
        unload_lora(pipe)
        raise InputError(f"LoRA {path} does not fit the FLUX transformer: {len(bad)} layer(s) with wrong shapes, e.g. {bad[0]}")
    if adapter_name not in adapters:
        raise InputError(f"LoRA {path} holds no LoRA weights for the FLUX transformer or text encoder "
                         f"(keys look like {list(state)[:2]}); expected a FLUX LoRA (diffusers/peft, kohya or BFL layout)")
    strengths = {**getattr(pipe, "_lora_strengths", {}), adapter_name: float(scale)}  # several LoRAs stack
    pipe._lora_strengths = strengths
    pipe.set_adapters(list(strengths), adapter_weights=list(strengths.values()))
    return path


def _has_adapter_metadata(path: str) -> bool:
    """The .safetensors header holds diffusers' ``lora_adapter_metadata`` (the LoraConfig of the LoRA)."""
    if Path(path).suffix.lower() != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return "lora_adapter_metadata" in (f.metadata() or {})


def unload_lora(pipe) -> None:
    """Remove every LoRA from the pipeline: the base weights come back bit-exactly."""
    pipe._lora_strengths = {}
    try:
        pipe.unload_lora_weights(reset_to_overwritten_params=True)  # also undoes FLUX's input expansion
    except TypeError:
        pipe.unload_lora_weights()


def _check_lora_fits(pipe, state: dict[str, Tensor], path: str) -> None:
    """Compare a LoRA's A/B shapes with the transformer's layers BEFORE loading it.

    Needed because diffusers' FLUX loader widens a base layer to fit a wider LoRA (for Control
    LoRAs) and cannot undo that for nested layers: a LoRA for another model must never load.
    """
    try:
        converted = pipe.lora_state_dict(dict(state))
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise InputError(f"LoRA {path} is not in a FLUX LoRA layout ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if isinstance(converted, tuple):
        converted = converted[0]
    for key, tensor in converted.items():
        if not key.startswith("transformer.") or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            continue
        module_name = key[len("transformer."):].rsplit(".lora_", 1)[0]
        try:
            layer = pipe.transformer.get_submodule(module_name)
        except AttributeError:
            raise InputError(f"LoRA {path} targets '{module_name}', which the FLUX transformer does not have; "
                             "is it a LoRA for another model?") from None
        weight = getattr(layer, "weight", None)
        if weight is None or weight.dim() != 2:
            continue
        out_f, in_f = weight.shape
        ok = tensor.shape[1] == in_f if key.endswith("lora_A.weight") else tensor.shape[0] == out_f
        if not ok:
            raise InputError(f"LoRA {path} does not fit the FLUX transformer: {key} has shape {tuple(tensor.shape)} "
                             f"but the layer is {out_f}x{in_f}; is it a LoRA for another model?")


def _weight_shapes(pipe) -> dict[str, tuple]:
    return {f"{c}.{n}": tuple(p.shape) for c in ("transformer", "text_encoder", "text_encoder_2")
            if getattr(pipe, c, None) is not None for n, p in getattr(pipe, c).named_parameters()}


def _lora_shape_mismatches(pipe, adapter_name: str, shapes: dict[str, tuple]) -> list[str]:
    """LoRA layers that do not fit their base layer.

    diffusers' FLUX loader silently widens a base layer when a LoRA's input is wider (meant for
    Control LoRAs that add input channels); a LoRA made for another model would then load
    "successfully". ``shapes`` are the weight shapes before loading.
    """
    bad = []
    for component in ("transformer", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for name, layer in module.named_modules():
            lora_a, lora_b = getattr(layer, "lora_A", None), getattr(layer, "lora_B", None)
            base = getattr(layer, "base_layer", None)
            if not isinstance(lora_a, torch.nn.ModuleDict) or adapter_name not in lora_a or base is None \
                    or not hasattr(base, "weight"):
                continue
            before = shapes.get(f"{component}.{name}.weight")
            if before is not None and tuple(base.weight.shape) != before:
                bad.append(f"{component}.{name}: would widen {before} to {tuple(base.weight.shape)}")
                continue
            out_f, in_f = base.weight.shape[:2]
            assert isinstance(lora_b, torch.nn.ModuleDict)  # peft adds lora_A and lora_B together
            a, b = lora_a[adapter_name].weight, lora_b[adapter_name].weight
            assert isinstance(a, Tensor) and isinstance(b, Tensor)  # peft's LoRA layers are nn.Linear
            if a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
                bad.append(f"{component}.{name}: base {tuple(base.weight.shape)}, A {tuple(a.shape)}, B {tuple(b.shape)}")
    return bad


def fuse_lora_for_offload(pipe) -> None:
    """Merge the loaded LoRAs (each at its set strength) into the base weights and drop the adapters.

    Group offloading keeps its own copies of the weights, so LoRAs are fused before it.
    """
    names = list(getattr(pipe, "_lora_strengths", {})) or [LORA_ADAPTER]
    pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()  # removes the LoRA layers; the fused weights stay
    pipe._lora_strengths = {}
