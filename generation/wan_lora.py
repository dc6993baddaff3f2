"""Wan2.1 LoRA loading: our own (peft/diffusers layout) and Matrix-3D's official checkpoints.

Matrix-3D ships its Wan2.1-I2V-14B LoRAs (``pano_video_gen_480p.ckpt``,
``pano_video_gen_720p.bin`` in the hub repo ``Skywork/Matrix-3D``, folder ``checkpoints/``)
as plain torch dicts in the ORIGINAL Wan module layout, e.g.
``blocks.0.self_attn.q.lora_A.weight`` (optionally prefixed ``diffusion_model.``, optionally
with a peft adapter segment ``lora_A.default.weight``). DiffSynth merges them as
``W += alpha * B @ A`` with alpha = 1, i.e. a LoRA scale of 1 whatever the rank; diffusers'
peft loader without alphas also uses scale 1 (lora_alpha = r), so the tensors are carried
over unchanged and only the names are converted.

The conversion is an explicit table (:data:`BLOCK_MODULES`, :data:`GLOBAL_MODULES`) and is
strict: every key must map, unmapped keys raise an InputError that lists them (a silently
ignored key would be a silently different model). Converted keys are in the layout
``load_lora_weights`` reads: ``transformer.blocks.0.attn1.to_q.lora_A.weight``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from matrix_world.errors import InputError

# Original Wan module (inside ``blocks.N.``) -> diffusers WanTransformer3DModel module.
BLOCK_MODULES: dict[str, str] = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
# Original Wan module outside the blocks -> diffusers module.
GLOBAL_MODULES: dict[str, str] = {
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
}
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<adapter>[A-Za-z0-9_]+))?\.weight$")
_AB = {"lora_A": "lora_A", "lora_down": "lora_A", "lora_B": "lora_B", "lora_up": "lora_B"}
OFFICIAL_FILES = {"480p": "checkpoints/pano_video_gen_480p.ckpt", "720p": "checkpoints/pano_video_gen_720p.bin"}
OFFICIAL_REPO = "Skywork/Matrix-3D"
# lightx2v's step- and CFG-distilled LoRA of Wan2.1-I2V-14B-480P (4 steps, guidance 1; rank 64, original Wan
# key layout with lora_down/lora_up, .alpha, .diff_b and zero norm .diff keys).
DISTILL_REPO = "lightx2v/Wan2.1-I2V-14B-480P-StepDistill-CfgDistill-Lightx2v"
DISTILL_FILE = "loras/Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors"


# --------------------------------------------------------------------------- reading


def read_lora_file(path: str | Path) -> dict[str, Tensor]:
    """Read a LoRA state dict: .safetensors, or a torch pickle loaded with weights_only=True."""
    from matrix_world.checkpoints import load_weights

    path = Path(path)
    if not path.is_file():
        raise InputError(f"LoRA file {path} does not exist")
    obj = load_weights(path, what="LoRA file")
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))  # {'state_dict': {...}} / {'module': {...}}
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(f"LoRA file {path} does not hold a flat dict of tensors")
    return dict(obj)


def detect_layout(state_dict: dict[str, Tensor]) -> str:
    """'diffusers' (transformer.* / attn1 names) or 'original' (Wan's self_attn / cross_attn names)."""
    keys = [k.removeprefix("diffusion_model.") for k in state_dict]
    if keys and all(k.startswith("transformer.") for k in keys):
        return "diffusers"
    if any(re.match(r"blocks\.\d+\.(self_attn|cross_attn|ffn\.\d)\.", k) for k in keys) or any(
        k.split(".lora")[0] in GLOBAL_MODULES for k in keys
    ):
        return "original"
    if any(re.match(r"blocks\.\d+\.(attn1|attn2|ffn\.net)\.", k) for k in keys):
        return "diffusers"
    raise InputError(f"unrecognised Wan LoRA key layout (first keys: {sorted(state_dict)[:3]})")


# --------------------------------------------------------------------------- conversion


def original_to_diffusers_module(module: str) -> str | None:
    """Map an original Wan module name (``blocks.3.self_attn.q``) to diffusers' (``blocks.3.attn1.to_q``)."""
    if module in GLOBAL_MODULES:
        return GLOBAL_MODULES[module]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    if m and m.group(2) in BLOCK_MODULES:
        return f"blocks.{m.group(1)}.{BLOCK_MODULES[m.group(2)]}"
    return None


def convert_original_wan_lora(state_dict: dict[str, Tensor], *, alphas: bool = False) -> dict[str, Tensor]:
    """Official Matrix-3D / original-Wan LoRA keys -> ``transformer.<diffusers module>.lora_{A,B}.weight``.

    Strict: raises InputError listing every key that does not map and every module missing its
    A or B half. Tensors are passed through unchanged, except:

    * ``alphas`` (the kohya / ComfyUI / lightx2v convention): ``<module>.alpha`` scalars scale
      that module by alpha / rank, folded into lora_B. Without it alpha keys are refused, because
      DiffSynth (which Matrix-3D's LoRAs are made for) ignores them and merges with scale 1.
    * ``<module>.diff_b`` (lightx2v's bias deltas) -> ``lora_B.bias`` (peft's lora_bias: the bias
      delta is added with the LoRA), for a module that also has its lora pair;
    * ``<module>.diff`` / ``.diff_b`` of norm layers (``norm*``, ``img_emb.proj.0/4``), which
      lightx2v ships as zeros: dropped when all zero, refused otherwise (they are not applied).
    """
    converted: dict[str, Tensor] = {}
    unmapped: list[str] = []
    alpha_of: dict[str, float] = {}
    bias_of: dict[str, Tensor] = {}
    nonzero_norm: list[str] = []
    for key, value in state_dict.items():
        name = key.removeprefix("diffusion_model.")
        if name.endswith((".diff", ".diff_b")):
            module = name.rsplit(".", 1)[0]
            if re.search(r"(^|\.)norm\w*$", module) or module in ("img_emb.proj.0", "img_emb.proj.4"):
                if bool(torch.any(value != 0)):
                    nonzero_norm.append(key)
                continue
            target = original_to_diffusers_module(module) if name.endswith(".diff_b") else None
            if target is None:
                unmapped.append(key)
            else:
                bias_of[target] = value
            continue
        if alphas and name.endswith(".alpha"):
            target = original_to_diffusers_module(name.removesuffix(".alpha"))
            if target is None or value.numel() != 1:
                unmapped.append(key)
            else:
                alpha_of[target] = float(value.float().reshape(()))
            continue
        m = _LORA_KEY.match(name)
        target = original_to_diffusers_module(m.group("module")) if m else None
        if target is None:
            unmapped.append(key)
            continue
        assert m is not None  # target is only set for a match
        new_key = f"transformer.{target}.{_AB[m.group('kind')]}.weight"
        if new_key in converted:
            raise InputError(f"LoRA key {key} maps to {new_key}, which another key already produced")
        converted[new_key] = value
    if nonzero_norm:
        raise InputError(f"{len(nonzero_norm)} non-zero norm-layer delta(s) (e.g. {', '.join(sorted(nonzero_norm)[:4])}) "
                         "cannot be applied as a LoRA; expected them all zero, as lightx2v ships them")
    for target, alpha in alpha_of.items():
        a, b = converted.get(f"transformer.{target}.lora_A.weight"), f"transformer.{target}.lora_B.weight"
        if a is None or b not in converted:
            unmapped.append(f"{target}.alpha (no lora pair)")
            continue
        converted[b] = converted[b] * (alpha / a.shape[0])
    for target, bias in bias_of.items():
        if f"transformer.{target}.lora_B.weight" not in converted:
            unmapped.append(f"{target}.diff_b (a bias delta without a lora pair)")
            continue
        converted[f"transformer.{target}.lora_B.bias"] = bias
    if unmapped:
        shown = ", ".join(sorted(unmapped)[:8])
        raise InputError(
            f"{len(unmapped)} LoRA key(s) have no mapping to diffusers' Wan transformer (e.g. {shown}); "
            "expected original Wan names like blocks.N.self_attn.q.lora_A.weight"
        )
    modules = {k.rsplit(".lora_", 1)[0] for k in converted}
    half = sorted(m for m in modules if f"{m}.lora_A.weight" not in converted or f"{m}.lora_B.weight" not in converted)
    if half:
        raise InputError(f"LoRA modules with only one of lora_A / lora_B: {', '.join(half[:8])}")
    return converted


def check_lora_tensors(state_dict: dict[str, Tensor], *, uniform_rank: bool = True) -> int:
    """Shape checks of a LoRA state dict (either layout) -> its rank; InputError listing the bad tensors.

    Every ``lora_A`` must be a finite float 2-D [rank, in] matrix and every ``lora_B`` [out, rank]
    with the same rank >= 1 as its module's ``lora_A``; with ``uniform_rank`` all modules share one
    rank (Matrix-3D's official LoRAs do); the same module of different blocks
    (``blocks.N.self_attn.q``) has the same in/out sizes. Keys that are not LoRA matrices are
    left to the name checks (:func:`convert_original_wan_lora`).
    """
    bad: list[str] = []
    halves: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        m = _LORA_KEY.match(key.removeprefix("diffusion_model.").removeprefix("transformer."))
        if m is None:
            continue
        half = _AB[m.group("kind")]
        want = "[rank, in]" if half == "lora_A" else "[out, rank]"
        if not isinstance(value, Tensor) or value.dim() != 2 or not value.dtype.is_floating_point or 0 in value.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            bad.append(f"{key} {shape} {getattr(value, 'dtype', '')} (expected a 2-D float {half} {want})".replace("torch.", ""))
        elif not bool(torch.isfinite(value).all()):
            bad.append(f"{key} (NaN/Inf values)")
        else:
            halves.setdefault(m.group("module"), {})[half] = value
    ranks: dict[int, list[str]] = {}
    sizes: dict[str, dict[tuple[int, int], str]] = {}
    for module, pair in sorted(halves.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            continue  # a missing half: reported by the name checks, or its other half is already listed
        a, b = pair["lora_A"], pair["lora_B"]
        if a.shape[0] != b.shape[1]:
            bad.append(f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} have ranks {a.shape[0]} and {b.shape[1]}")
            continue
        ranks.setdefault(int(a.shape[0]), []).append(module)
        sizes.setdefault(re.sub(r"^blocks\.\d+\.", "blocks.N.", module), {}).setdefault(
            (int(a.shape[1]), int(b.shape[0])), module)
    for kind, seen in sizes.items():
        if len(seen) > 1:
            bad.append(f"{kind}: in/out sizes differ between blocks ("
                       + ", ".join(f"{m} {i}->{o}" for (i, o), m in sorted(seen.items())[:3]) + ")")
    if uniform_rank and len(ranks) > 1:
        bad.append("ranks differ between modules (" + ", ".join(f"rank {r}: {len(m)} e.g. {m[0]}"
                                                               for r, m in sorted(ranks.items())) + ")")
    if bad:
        raise InputError(f"{len(bad)} bad LoRA tensor(s): {'; '.join(bad[:6])}" + (f"; and {len(bad) - 6} more" if len(bad) > 6 else "")
                         + "; expected 2-D lora_A [rank, in] and lora_B [out, rank] with one rank")
    if not ranks:
        raise InputError("the state dict holds no complete lora_A / lora_B pair")
    return max(ranks)


def to_diffusers_lora(state_dict: dict[str, Tensor], *, alphas: bool = False) -> dict[str, Tensor]:
    """Either layout -> diffusers/peft keys prefixed ``transformer.`` (strict for the original layout)."""
    if detect_layout(state_dict) == "original":
        return convert_original_wan_lora(state_dict, alphas=alphas)
    return {k if k.startswith("transformer.") else f"transformer.{k}": v for k, v in state_dict.items()}


def check_against_transformer(lora: dict[str, Tensor], transformer) -> None:
    """Every LoRA module must exist in ``transformer`` as a Linear with matching in/out sizes."""
    modules = dict(transformer.named_modules())
    problems = []
    for key, value in lora.items():
        name, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        module = modules.get(name)
        module = getattr(module, "base_layer", module)  # already wrapped by peft
        if not isinstance(module, torch.nn.Linear):
            problems.append(f"{name} (not a Linear in this transformer)")
        elif kind.startswith("A") and value.shape[1] != module.in_features:
            problems.append(f"{key} in={value.shape[1]} vs {module.in_features}")
        elif kind.startswith("B") and value.shape[0] != module.out_features:
            problems.append(f"{key} out={value.shape[0]} vs {module.out_features}")
    if problems:
        raise InputError(f"LoRA does not fit this transformer ({len(problems)} problems, e.g. {'; '.join(problems[:4])})")


# --------------------------------------------------------------------------- pipeline helpers


OFFICIAL_ALIASES = ("matrix3d", "matrix3d-480p", "matrix3d-720p", "lightx2v")  # "matrix3d": the one for the video resolution


def validate_lora_spec(source: str, *, filename: str | None = None, what: str = "Wan LoRA") -> str:
    """Check a video LoRA spec without the hub or a download -> its kind ('none', 'alias', 'file',
    'folder', 'hub'); InputError (one line) when :func:`resolve_lora` could never resolve it: an
    unknown word, a path that does not exist, a folder without ``filename``."""
    from matrix_world.generation.weights import check_weights_spec

    kind = check_weights_spec(source, what=what, aliases=OFFICIAL_ALIASES)
    if kind == "folder" and filename is None:
        raise InputError(f"{what} {source} is a folder; expected a LoRA file (.safetensors/.ckpt/.bin), "
                         "or name the file inside it")
    return kind


def resolve_lora(source: str, *, filename: str | None = None, allow_download: bool = False) -> str:
    """A LoRA file from a path, a folder + filename, an official alias ('matrix3d-480p'/'matrix3d-720p')
    or a hub id + filename. Missing weights raise WeightsNotFoundError with the download command."""
    from matrix_world.generation.weights import resolve_file

    validate_lora_spec(source, filename=filename)
    alias = {"matrix3d-480p": "480p", "matrix3d-720p": "720p"}.get(source)
    if alias is not None:
        source, filename = OFFICIAL_REPO, OFFICIAL_FILES[alias]
    elif source == "lightx2v":
        source, filename = DISTILL_REPO, DISTILL_FILE
    return resolve_file(source, what="Wan LoRA", filename=filename, allow_download=allow_download)


def load_lora(
    pipe,
    source: str | dict[str, Tensor],
    *,
    filename: str | None = None,
    adapter_name: str = "pano",
    strength: float = 1.0,
    fuse: bool = True,
    alphas: bool = False,
    allow_download: bool = False,
) -> dict:
    """Load a Wan LoRA (either layout) into ``pipe.transformer`` through diffusers' loader.

    strength: LoRA scale (1.0 = Matrix-3D's merge). fuse: merge into the weights (no runtime
    cost; undo with :func:`unload_lora`). alphas: honour ``.alpha`` keys (scale alpha / rank, the
    kohya / lightx2v convention; see :func:`convert_original_wan_lora`). Several LoRAs stack:
    load each under its own ``adapter_name``. Returns an info dict for the manifest.
    """
    path = None
    if isinstance(source, dict):
        raw = source
    else:
        path = resolve_lora(source, filename=filename, allow_download=allow_download)
        raw = read_lora_file(path)
    layout = detect_layout(raw)
    lora = to_diffusers_lora(raw, alphas=alphas)
    check_lora_tensors(raw, uniform_rank=False)
    check_against_transformer(lora, pipe.transformer)
    pipe.load_lora_weights(lora, adapter_name=adapter_name)  # (peft unmerges fused adapters first)
    strengths = {**getattr(pipe, "_lora_strengths", {}), adapter_name: float(strength)}  # every loaded LoRA, stacked
    pipe._lora_strengths = strengths
    pipe.set_adapters(list(strengths), adapter_weights=list(strengths.values()))
    if fuse:
        pipe.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=list(strengths))
    rank = max(v.shape[0] for k, v in lora.items() if k.endswith("lora_A.weight"))
    return {"lora": path or "<state dict>", "layout": layout, "modules": sum(k.endswith("lora_A.weight") for k in lora), "bias_deltas": sum(k.endswith("lora_B.bias") for k in lora), "rank": int(rank),
            "strength": float(strength), "fused": bool(fuse), "adapter": adapter_name}


def unload_lora(pipe) -> None:
    """Undo :func:`load_lora`: unfuse if fused, then remove the LoRA layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) and m.merged for m in pipe.transformer.modules()):
        pipe.unfuse_lora(components=["transformer"])
    pipe.unload_lora_weights()
    pipe._lora_strengths = {}
