"""MoGe (monocular geometry) through the ``moge`` package: loading, batched per-view inference, FOV.

Install: ``pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3`` (its declared dependencies
would replace torch and add torchvision/gradio; FACTS §B).

Checkpoints are self-describing ``{'model_config', 'model'}`` files (``model.pt``). The version
is read from the config: MoGe-2 configs describe the encoder as a dict, MoGe-1 as a backbone
name. Both load through ``moge.model.v1/v2.MoGeModel.from_pretrained`` (what MoGe's own
users run); afterwards the checkpoint's keys are compared with the model's so that a partial
or mismatched checkpoint fails loudly (MoGe-2's loader itself uses ``strict=False``).

Outputs (camera frame: OpenCV x right, y down, z forward): ``points`` [B, h, w, 3], ``mask``
[B, h, w] (False for sky and undefined geometry); MoGe-2 checkpoints with a scale head give
points in metres, MoGe-1 and scale-less ones an arbitrary scale per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matrix_world.errors import InputError, require
from matrix_world.generation.weights import WeightsNotFoundError, resolve_file

MOGE_INSTALL = "pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3"
MOGE1_DEFAULT = "Ruicheng/moge-vitl"
MOGE2_DEFAULT = "Ruicheng/moge-2-vitl-normal"


@dataclass
class LoadedMoGe:
    model: Any  # moge.model.v1/v2.MoGeModel (moge is untyped): .infer(), .device; eval mode, on its device
    version: int  # 1 or 2
    metric: bool  # True when the model predicts metric scale (MoGe-2 scale head)
    checkpoint: str  # local file it came from


def resolve_checkpoint(name_or_path: str, *, allow_download: bool = False) -> str:
    """A MoGe checkpoint: a ``model.pt`` file, a folder holding one, or a hub id -> local file."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return resolve_file(str(path), what="MoGe checkpoint", filename="model.pt")
    return resolve_file(name_or_path, what="MoGe checkpoint", filename=None if path.exists() else "model.pt",
                        allow_download=allow_download)


def moge_available(name_or_path: str) -> bool:
    """True when the MoGe checkpoint is on this machine (no download)."""
    try:
        resolve_checkpoint(name_or_path)
    except InputError:
        return False
    return True


def checkpoint_version(config: dict) -> int:
    """1 or 2, from a checkpoint's ``model_config``."""
    return 2 if isinstance(config.get("encoder"), dict) else 1


def load_moge(name_or_path: str, *, device="cpu", allow_download: bool = False) -> LoadedMoGe:
    """Load MoGe-1 or MoGe-2 (auto-detected) from a hub id, folder or file, with a strict key check."""
    require("moge", MOGE_INSTALL)
    path = resolve_checkpoint(name_or_path, allow_download=allow_download)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, ValueError, EOFError) as exc:
        raise InputError(f"MoGe checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(f"{path} is not a MoGe checkpoint: expected a dict with 'model_config' and 'model', got {keys}")
    version = checkpoint_version(ckpt["model_config"])
    module = require(f"moge.model.v{version}", MOGE_INSTALL)
    try:
        model = module.MoGeModel.from_pretrained(path)
    except (RuntimeError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(f"MoGe-{version} checkpoint {path} does not build/load ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    expected = set(model.state_dict().keys())
    found = set(ckpt["model"].keys())
    if expected != found:
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        raise InputError(f"MoGe-{version} checkpoint {path} does not match its config: missing {missing[:3]} "
                         f"({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})")
    del ckpt
    model = model.to(device).eval()
    return LoadedMoGe(model, version, version == 2 and hasattr(model, "scale_head"), path)


def infer_views(
    moge: LoadedMoGe,
    images: Tensor,
    *,
    fov: float | None,
    num_tokens: int | None = None,
    batch_size: int = 12,
    use_fp16: bool = True,
) -> tuple[Tensor, Tensor]:
    """Run MoGe on a batch of perspective images.

    images: Tensor  # [B, 3, h, w] float in [0, 1]
    fov: horizontal FOV in degrees when known (the icosahedron crops: exactly 100), else None
    returns (points [B, h, w, 3] float32 camera frame, mask [B, h, w] bool); invalid points are inf
    """
    model = moge.model
    use_fp16 = use_fp16 and torch.device(model.device).type == "cuda"
    points, masks = [], []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size].to(model.device, torch.float32)
        out = model.infer(chunk, fov_x=fov, num_tokens=num_tokens, use_fp16=use_fp16)
        points.append(out["points"].float())
        masks.append(out["mask"].bool())
    return torch.cat(points), torch.cat(masks)


def estimate_fov(photo: np.ndarray, model: str | LoadedMoGe, *, device="cpu", num_tokens: int | None = None) -> float:
    """Horizontal FOV (degrees) of a photo [h, w, 3] float in [0, 1], from MoGe's recovered intrinsics."""
    moge = model if isinstance(model, LoadedMoGe) else load_moge(model, device=device)
    image = torch.from_numpy(np.ascontiguousarray(photo, dtype=np.float32)).permute(2, 0, 1)[None]
    out = moge.model.infer(image.to(moge.model.device), num_tokens=num_tokens,
                           use_fp16=torch.device(moge.model.device).type == "cuda")
    fx = float(out["intrinsics"][0, 0, 0])  # normalised by the image width
    if not math.isfinite(fx) or fx <= 0:
        raise InputError("MoGe could not recover the photo's focal length; pass the FOV explicitly")
    return math.degrees(2.0 * math.atan(0.5 / fx))


__all__ = ["LoadedMoGe", "load_moge", "moge_available", "infer_views", "estimate_fov", "resolve_checkpoint", "MOGE1_DEFAULT",
           "MOGE2_DEFAULT", "WeightsNotFoundError"]
