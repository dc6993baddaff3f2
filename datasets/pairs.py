"""Training pairs for the scaffold-conditioned video model (Matrix-3D's training condition).

For a clip (frames + distances + poses), the condition is the scaffold of frame 0's
panorama and distance (sky from the clip's sky mask) along the clip's poses expressed
relative to frame 0, made by the one scaffold builder the pipeline uses,
:func:`matrix_world.scaffold.build.build_scaffold` (uint8 colours as the video stage reads
them from ``scaffold.npz``, unknown pixels = 0, a known-pixel mask, frame 0 = the panorama
with a full mask). The target is the clip's ground-truth frames.
"""

from __future__ import annotations

import dataclasses
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
    (condition, 0 where unknown), ``mask`` [F, H, W] bool, ``c2w`` [F, 4, 4], ``prompt``,
    ``source``.

    depth: for clips without distance, a :class:`~matrix_world.generation.depth.DepthConfig`
    whose backend gives frame 0's distance (``prior``: the ground-plane + far-dome heuristic,
    offline; ``moge``: MoGe, loaded once); None refuses such clips. backend / device: the
    scaffold rasteriser (``cpu``, or ``cuda`` with a CUDA device, in the main process).
    """

    def __init__(self, clips, *, config=None, backend: str = "cpu", depth=None, device="cpu"):
        self.clips, self.config, self.backend, self.depth, self.device = clips, config, backend, depth, device
        self._moge = None

    def __len__(self) -> int:
        return len(self.clips)

    def _distance0(self, item: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """Frame 0's (distance [H, W] float32, sky [H, W] bool or None): the clip's, else the depth backend's."""
        if "distance" in item:
            return item["distance"][0].numpy(), (item["sky"][0].numpy() if "sky" in item else None)
        if self.depth is None:
            raise InputError(f"{item['source']} has no distance; training pairs need distance (or a depth backend)")
        from matrix_world.generation.depth import estimate_depth, panorama_depth_from_model

        rgb0 = np.ascontiguousarray(item["rgb"][0].permute(1, 2, 0).numpy())
        if self.depth.backend == "moge":
            if self._moge is None:
                from matrix_world.generation.moge_backend import load_moge

                self._moge = load_moge(self.depth.model, device=self.device)
            result = panorama_depth_from_model(rgb0, self._moge, self.depth, device=self.device)
        else:
            result = estimate_depth(rgb0, self.depth, device=self.device)
        return result.distance.astype(np.float32), result.sky

    def key(self, i: int) -> str:
        """sha256 of what item ``i`` is made from (frames, frame 0's distance or the depth backend that
        gives it, poses, prompt, scaffold options), without rendering it: a cache key."""
        import hashlib
        import json

        item = self.clips[i]
        h = hashlib.sha256()
        for key in ("rgb", "distance", "sky", "c2w"):
            if key in item:
                value = item[key][:1] if key in ("distance", "sky") else item[key]
                h.update(key.encode() + str(tuple(value.shape)).encode() + np.ascontiguousarray(value.numpy()).tobytes())
        options = {"prompt": item["prompt"], "backend": self.backend,
                   "scaffold": dataclasses.asdict(self.config) if self.config is not None else None,
                   "depth": None if "distance" in item or self.depth is None else self.depth.to_dict()}
        h.update(json.dumps(options, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def __getitem__(self, i: int) -> dict:
        item = self.clips[i]
        if "c2w" not in item:
            raise InputError(f"{item['source']} has no poses; training pairs need the camera poses of the clip")
        rgb = item["rgb"].permute(0, 2, 3, 1).numpy()
        distance0, sky0 = self._distance0(item)
        pair = make_training_pair(rgb, distance0, item["c2w"].numpy(), sky0=sky0, prompt=item["prompt"],
                                  config=self.config, backend=self.backend, device=self.device)
        to_chw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()
        return {"video": to_chw(pair.video), "scaffold": to_chw(pair.scaffold), "mask": torch.from_numpy(pair.mask),
                "c2w": torch.from_numpy(pair.c2w), "prompt": pair.prompt, "source": item["source"]}


DEPTH_FOR_CLIPS = ("auto", "prior", "moge", "none")


def depth_for_clips(backend: str = "auto", *, model: str | None = None, device="cpu"):
    """The depth backend for clips without distance -> (DepthConfig or None, reason).

    ``auto``: MoGe where its weights are on this machine and a CUDA device is used, else the
    ``prior`` heuristic (ground plane + far dome: offline, not a measurement); ``none`` refuses
    clips without distance.
    """
    from matrix_world.generation.depth import DepthConfig
    from matrix_world.generation.moge_backend import moge_available

    if backend not in DEPTH_FOR_CLIPS:
        raise InputError(f"depth backend for clips without distance must be one of {', '.join(DEPTH_FOR_CLIPS)}, got {backend!r}")
    if backend == "none":
        return None, "clips without distance are refused"
    config = DepthConfig(backend="prior", **({"model": model} if model else {}))
    if backend == "auto":
        if torch.device(device).type == "cuda" and moge_available(config.model):
            return dataclasses.replace(config, backend="moge"), f"MoGe weights {config.model} and a GPU found"
        return config, "prior heuristic (ground plane + far dome): no GPU or no MoGe weights on this machine"
    return dataclasses.replace(config, backend=backend), "requested"


def open_training_pairs(root, *, frames: int = 81, frame_stride: int = 1, height: int | None = None,
                        depth=None, config=None, backend: str = "cpu", device="cpu") -> PairDataset:
    """The training pairs of every clip under ``root`` with at least one ``frames``-frame window.

    Clips come from the dataset readers (:func:`clips.find_sequences`: our layout, Matrix-Pano-style
    folders, videos); every window of ``frames`` frames ``frame_stride`` apart, non-overlapping, is
    one item; frames of every size are resized to ``height`` x 2*``height`` (area average for
    colours, nearest for distance; a frame that is not 2:1 is stretched to 2:1). Sequences without
    camera poses (plain videos, frame folders) cannot make a scaffold and are skipped; clips without
    distance need ``depth`` (:func:`depth_for_clips`). One-line InputErrors: a missing or empty
    folder, or no clip long enough.
    """
    from pathlib import Path

    from matrix_world.datasets.clips import CAMERA_FILES, ClipDataset, find_sequences, sequence_length

    root = Path(root)
    if not root.exists():
        raise InputError(f"training data folder {root} does not exist")
    if root.is_dir() and not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise InputError(f"training data folder {root} is empty; expected clip folders (rgb/ + meta.json + poses.json, "
                         "e.g. from scripts/build_synthetic_dataset.py) or Matrix-Pano-style folders")
    sequences = find_sequences(root)
    if not sequences:
        raise InputError(f"{root} holds no clips; expected clip folders (rgb/ + meta.json + poses.json) or "
                         "Matrix-Pano-style folders (video + depth + camera JSON)")
    posed = [p for p, layout in sequences if layout == "matrix_world" and (p / "poses.json").is_file()
             or layout == "matrix_pano" and any((p / n).is_file() for n in CAMERA_FILES)]
    if not posed:
        raise InputError(f"none of the {len(sequences)} sequence(s) under {root} has camera poses; "
                         "training pairs need poses (poses.json or a camera JSON) to render the scaffold")
    span = (frames - 1) * frame_stride + 1
    longest = max(sequence_length(p, detect) for p, detect in sequences if p in posed)
    if longest < span:
        raise InputError(f"no clip under {root} is long enough: {frames} frames at stride {frame_stride} need {span}, "
                         f"the longest has {longest} (lower --frames or --frame-stride)")
    clips = ClipDataset(posed, clip_length=frames, frame_stride=frame_stride, height=height)
    return PairDataset(clips, config=config, backend=backend, depth=depth, device=device)


def masked_agreement(pair: TrainingPair) -> Tensor:
    """Per-frame PSNR (dB) of the scaffold against the ground truth on known pixels: [F] (nan if none)."""
    from matrix_world.metrics import psnr

    out = []
    for f in range(len(pair.video)):
        m = torch.from_numpy(pair.mask[f])
        out.append(float(psnr(torch.from_numpy(pair.scaffold[f]), torch.from_numpy(pair.video[f]), m[..., None]))
                   if bool(m.any()) else float("nan"))
    return torch.tensor(out)


# --------------------------------------------------------------------------- perspective-video pairs

PAIR_KINDS = ("scaffold", "perspective")


class PerspectivePairDataset(torch.utils.data.Dataset):
    """Perspective-video -> 360°-video training pairs (Argus' camera-motion simulation,
    :mod:`matrix_world.datasets.camera_motion`) over a :class:`clips.ClipDataset` of 360° clips.

    Item i: a hand-held-like path drawn with a generator seeded by ``seed`` and i (the same item
    every epoch and run), the perspective frames cut from the clip along it, ``video`` = the clip
    turned into frame 0's camera [F, 3, H, W] (the target), ``scaffold`` / ``mask`` = the canvas of
    the perspective frames (the condition, as ``scripts/video2pano.py`` builds it), ``c2w`` [F, 4, 4]
    = the 360° frames' poses (world-aligned: identity), ``prompt``, ``source``. Needs no distance and
    no poses: any 360° clip or video works.
    """

    def __init__(self, clips, *, width: int = 256, seed: int = 0, motion=None):
        self.clips, self.width, self.seed, self.motion = clips, int(width), int(seed), motion

    def __len__(self) -> int:
        return len(self.clips)

    def key(self, i: int) -> str:
        """sha256 of what item ``i`` is made from (the clip's frames, the seed, width and motion ranges)."""
        import hashlib
        import json

        item = self.clips[i]
        h = hashlib.sha256(np.ascontiguousarray(item["rgb"].numpy()).tobytes())
        motion = dataclasses.asdict(self.motion) if self.motion is not None else None
        h.update(json.dumps({"kind": "perspective", "seed": self.seed, "i": i, "width": self.width, "motion": motion,
                             "prompt": item["prompt"]}, sort_keys=True).encode())
        return h.hexdigest()

    def __getitem__(self, i: int) -> dict:
        from matrix_world.datasets.camera_motion import simulated_pair

        item = self.clips[i]
        video = item["rgb"]  # [F, 3, H, W]
        pair = simulated_pair(video, torch.Generator().manual_seed(self.seed * 1_000_003 + i), width=self.width,
                              config=self.motion)
        c2w = torch.eye(4, dtype=torch.float64).expand(len(video), 4, 4).clone()
        return {"video": pair["target"].contiguous(), "scaffold": pair["scaffold"].contiguous(), "mask": pair["mask"],
                "c2w": c2w, "prompt": item["prompt"], "source": item["source"], "fov": pair["fov"]}


def open_perspective_pairs(root, *, frames: int = 81, frame_stride: int = 1, height: int | None = None,
                           width: int = 256, seed: int = 0) -> PerspectivePairDataset:
    """:class:`PerspectivePairDataset` over every ``frames``-frame window of the 360° sequences under
    ``root`` (any layout the dataset readers know, posed or not). One-line InputErrors as
    :func:`open_training_pairs`."""
    from matrix_world.datasets.clips import ClipDataset, find_sequences

    root = Path(root)
    if not root.exists():
        raise InputError(f"training data folder {root} does not exist")
    sequences = find_sequences(root)
    if not sequences:
        raise InputError(f"{root} holds no 360° clips; expected clip folders, Matrix-Pano-style folders or videos")
    clips = ClipDataset([p for p, _ in sequences], clip_length=frames, frame_stride=frame_stride, height=height)
    if len(clips) == 0:
        raise InputError(f"no sequence under {root} has {frames} frames at stride {frame_stride} (lower --frames)")
    return PerspectivePairDataset(clips, width=width, seed=seed)
