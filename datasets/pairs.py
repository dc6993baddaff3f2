"""Training pairs for the scaffold-conditioned video model (Matrix-3D's training condition).

For a clip (frames + distances + poses), the condition is the scaffold of frame 0's
panorama and distance (sky from the clip's sky mask) along the clip's poses expressed
relative to frame 0, made by the one scaffold builder the pipeline uses,
:func:`matrix_world.scaffold.build.build_scaffold` (uint8 colours as the video stage reads
them from ``scaffold.npz``, unknown pixels = 0, a known-pixel mask, frame 0 = the panorama
with a full mask). The target is the clip's ground-truth frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from matrix_world.cameras import invert_pose
from matrix_world.errors import InputError
from matrix_world.scaffold.build import Scaffold, build_scaffold, load_scaffold, save_scaffold
from matrix_world.scaffold.render import rasteriser_for


@dataclass
class TrainingPair:
    """One training example.

    video: np.ndarray  # [F, H, W, 3] float32 ground-truth frames (the target)
    scaffold: np.ndarray  # [F, H, W, 3] float32 scaffold renders, 0 where unknown (the condition)
    mask: np.ndarray  # [F, H, W] bool, True where the scaffold is known
    c2w: np.ndarray  # [F, 4, 4] float64 poses relative to frame 0
    distance: np.ndarray  # [F, H, W] float16 scaffold distance, inf where nothing was hit
    """

    video: np.ndarray
    scaffold: np.ndarray
    mask: np.ndarray
    c2w: np.ndarray
    prompt: str = ""
    distance: np.ndarray | None = None


def make_training_pair(rgb, distance0, c2w, *, sky0=None, prompt: str = "", height: int | None = None,
                       config=None, backend: str = "auto", device=None) -> TrainingPair:
    """Scaffold video + mask of a clip, next to its ground-truth frames.

    rgb: [F, H, W, 3] float in [0, 1]; distance0: [H, W] frame 0's distance; c2w: [F, 4, 4]
    (any world frame; re-expressed relative to frame 0); sky0: [H, W] bool sky of frame 0.
    height: output size (None = the clip's); config: ``ScaffoldConfig``.
    """
    from matrix_world.equirect import resize_equirect

    rgb = np.asarray(rgb, dtype=np.float32)
    c2w = torch.as_tensor(np.asarray(c2w), dtype=torch.float64)
    if rgb.ndim != 4 or c2w.shape != (len(rgb), 4, 4):
        raise InputError(f"expected rgb [F, H, W, 3] and c2w [F, 4, 4] of the same F, got {rgb.shape} and {tuple(c2w.shape)}")
    height = height or rgb.shape[1]
    if device is None:
        device = "cuda" if backend != "cpu" and torch.cuda.is_available() else "cpu"
    rasteriser, _ = rasteriser_for(backend, torch.device(device))
    rel = invert_pose(c2w[0]) @ c2w
    rel[0] = torch.eye(4, dtype=torch.float64)  # exact identity: frame 0 is the panorama itself
    scaffold, _ = build_scaffold(rgb[0], np.asarray(distance0, dtype=np.float32), rel, height,
                                 sky=None if sky0 is None else np.asarray(sky0, bool), config=config,
                                 backend=rasteriser, device=device)
    video = resize_equirect(torch.from_numpy(rgb).permute(0, 3, 1, 2), height, mode="area").permute(0, 2, 3, 1).numpy()
    return TrainingPair(video.astype(np.float32), scaffold.rgb.astype(np.float32) / 255.0, scaffold.mask, rel.numpy(),
                        prompt, scaffold.distance)


def pair_from_clip(clip, **kwargs) -> TrainingPair:
    """``make_training_pair`` for a :class:`clips.Clip` (needs distance and poses)."""
    if clip.distance is None or clip.c2w is None:
        raise InputError(f"a training pair needs distance and poses; this {clip.layout} clip lacks "
                         f"{'distance' if clip.distance is None else 'poses'}")
    sky0 = None if clip.sky is None else clip.sky[0]
    return make_training_pair(clip.rgb, clip.distance[0], clip.c2w, sky0=sky0, prompt=clip.prompt, **kwargs)


def write_pair(folder: str | Path, pair: TrainingPair) -> Path:
    """Save the condition as ``folder/scaffold.npz`` in the scaffold layout (:func:`save_scaffold`)."""
    if pair.distance is None:
        raise InputError("this training pair has no scaffold distance; make it with make_training_pair")
    path = Path(folder) / "scaffold.npz"
    rgb = np.round(np.clip(pair.scaffold, 0.0, 1.0) * 255.0).astype(np.uint8)  # exact: the colours came from uint8
    save_scaffold(path, Scaffold(rgb, pair.mask.astype(bool), pair.distance))
    return path


def read_scaffold(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """-> (scaffold rgb [F, H, W, 3] float32, mask [F, H, W] bool) from ``folder/scaffold.npz``."""
    scaffold = load_scaffold(Path(folder) / "scaffold.npz")
    return scaffold.rgb.astype(np.float32) / 255.0, scaffold.mask


class PairDataset(torch.utils.data.Dataset):
    """Training pairs over a :class:`clips.ClipDataset` (rendered on the fly).

    Item: ``video`` [F, 3, H, W] float32 (target), ``scaffold`` [F, 3, H, W] float32
    (condition, 0 where unknown), ``mask`` [F, H, W] bool, ``c2w`` [F, 4, 4], ``prompt``.
    """

    def __init__(self, clips, *, config=None, backend: str = "cpu"):
        self.clips, self.config, self.backend = clips, config, backend

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        item = self.clips[i]
        for key in ("distance", "c2w"):
            if key not in item:
                raise InputError(f"{item['source']} has no {key}; training pairs need distance and poses")
        rgb = item["rgb"].permute(0, 2, 3, 1).numpy()
        sky0 = item["sky"][0].numpy() if "sky" in item else None
        pair = make_training_pair(rgb, item["distance"][0].numpy(), item["c2w"].numpy(), sky0=sky0,
                                  prompt=item["prompt"], config=self.config, backend=self.backend, device="cpu")
        to_chw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()
        return {"video": to_chw(pair.video), "scaffold": to_chw(pair.scaffold), "mask": torch.from_numpy(pair.mask),
                "c2w": torch.from_numpy(pair.c2w), "prompt": pair.prompt}


def masked_agreement(pair: TrainingPair) -> Tensor:
    """Per-frame PSNR (dB) of the scaffold against the ground truth on known pixels: [F] (nan if none)."""
    from matrix_world.metrics import psnr

    out = []
    for f in range(len(pair.video)):
        m = torch.from_numpy(pair.mask[f])
        out.append(float(psnr(torch.from_numpy(pair.scaffold[f]), torch.from_numpy(pair.video[f]), m[..., None]))
                   if bool(m.any()) else float("nan"))
    return torch.tensor(out)
