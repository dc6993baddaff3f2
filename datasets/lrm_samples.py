"""Clips -> training samples of the panoramic LRM (``reconstruction.lrm_objectives.LRMSample``).

The dataset-facing glue of ``reconstruction/lrm_train.py`` (which reads only the sample
protocol): windows of F = 4k+1 frames of clips in any layout ``clips.ClipDataset`` reads, their
latents (``lrm_latents.cache_latents``), and ground-truth panoramas at novel poses:

* clips of a synthetic scene (``meta.json`` with ``scene_kind``, ``scene_seed`` and
  ``world_from_clip``: ``datasets/build.py`` and the benchmark split) render any pose: poses
  between two context frames (interpolated position and rotation, pushed sideways by up to
  ``offset_m``, raised or lowered by up to ``height_jitter_m``, turned by up to
  ``yaw_jitter_deg``) and ``extrapolate_m`` beyond the last / before the first frame along the
  motion. The offsets stay well inside the 0.6 m clearance the synthetic paths keep from every
  object, so no target camera sits inside geometry.
* clips without a scene use held-out frames of the clip as targets: the frames between the
  window's frames (``frame_stride`` >= 2) and the frames just after / before the window.
* ``targets="heldout"`` (evaluation): a benchmark clip's ``heldout/`` views (poses in the clip
  frame, ``datasets/benchmark.py``); other clips fall back to novel poses of another seed.

Everything a sample needs is computed once by :meth:`LRMClipSamples.prepare` into a cache
folder (latents as ``.safetensors``, the rest as ``sample-<key>.npz``, both keyed by the
window's content hash and the settings), so training reads one small file per sample.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from matrix_world.cameras import invert_pose, make_pose, rotation_yaw
from matrix_world.datasets.clips import ClipDataset, find_sequences, is_complete_clip, read_clip, sequence_length
from matrix_world.datasets.scenes import Scene, make_scene
from matrix_world.equirect import resize_equirect
from matrix_world.errors import InputError
from matrix_world.gaussians import quat_to_rotmat, rotmat_to_quat
from matrix_world.io import load_npz, save_npz
from matrix_world.reconstruction.lrm_latents import (
    cache_latents,
    check_encoder_spec,
    content_hash,
    latents_cache_path,
    load_latents,
    make_latent_encoder,
)
from matrix_world.reconstruction.lrm_objectives import LRMSample

SAMPLE_FORMAT = "matrix_world.lrm_sample/1"
TARGET_MODES = ("none", "novel", "heldout")


@dataclass(frozen=True)
class SampleConfig:
    """How clips become samples (every field is part of the cache key)."""

    clip_length: int = 17  # frames per window, 4k+1
    frame_stride: int = 1
    height: int | None = None  # panorama height (width 2x); None keeps the clips'
    window_stride: int | None = None  # frames between window starts (None: non-overlapping)
    targets: str = "novel"  # "none" | "novel" | "heldout"
    novel_views: int = 8  # target poses per window (a quarter of them extrapolated)
    offset_m: float = 0.25
    height_jitter_m: float = 0.1
    yaw_jitter_deg: float = 20.0
    extrapolate_m: float = 0.5
    first_window_only: bool = False  # one window per clip (evaluation)
    seed: int = 0


def split_sequences(root: str | Path, eval_clips: int) -> tuple[list[Path], list[Path]]:
    """The sequences under ``root`` (sorted) -> (training, the last ``eval_clips`` held out)."""
    seqs = [p for p, _layout in find_sequences(root)]
    if eval_clips < 0 or (eval_clips and eval_clips >= len(seqs)):
        raise InputError(f"--eval-clips {eval_clips}: {root} holds {len(seqs)} clip(s); at least one must stay for training")
    return (seqs[:-eval_clips], seqs[-eval_clips:]) if eval_clips else (seqs, [])


# --------------------------------------------------------------------------- novel poses


def _nlerp(r0: Tensor, r1: Tensor, a: float) -> Tensor:
    """Rotation between r0 and r1 [3, 3] at fraction a (normalised quaternion interpolation)."""
    q0, q1 = rotmat_to_quat(r0), rotmat_to_quat(r1)
    if float((q0 * q1).sum()) < 0:
        q1 = -q1
    return quat_to_rotmat((1 - a) * q0 + a * q1)


def novel_poses(c2w: Tensor, count: int, rng: np.random.Generator, config: SampleConfig) -> tuple[Tensor, list[str]]:
    """Target poses near a window's poses c2w [F, 4, 4] (float64, same world): [K, 4, 4] and their kinds.

    A quarter of them (at least one) are extrapolated, alternately beyond the last and before
    the first frame; the others are interpolated between two random consecutive frames.
    """
    c2w = c2w.to(torch.float64)
    f = len(c2w)
    n_ext = count if f < 2 else (max(1, count // 4) if count else 0)
    poses, kinds = [], []

    def jittered(rot: Tensor, pos: Tensor, sideways: bool) -> Tensor:
        rot = rot @ rotation_yaw(float(rng.uniform(-config.yaw_jitter_deg, config.yaw_jitter_deg)))
        if sideways:
            side = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * config.offset_m)
            pos = pos + side * rot[:, 0] + float(rng.uniform(-config.height_jitter_m, config.height_jitter_m)) * rot[:, 1]
        return make_pose(rot, pos)

    for _ in range(count - n_ext):
        i, a = int(rng.integers(f - 1)), float(rng.uniform(0.25, 0.75))
        rot = _nlerp(c2w[i, :3, :3], c2w[i + 1, :3, :3], a)
        pos = (1 - a) * c2w[i, :3, 3] + a * c2w[i + 1, :3, 3]
        poses.append(jittered(rot, pos, True))
        kinds.append("interpolated")
    for k in range(n_ext):
        end = k % 2 == 0
        a, b = (f - 1, f - 2) if end else (0, 1)
        motion = c2w[a, :3, 3] - c2w[b, :3, 3] if f > 1 else torch.zeros(3, dtype=torch.float64)
        direction = motion / motion.norm() if float(motion.norm()) > 1e-6 else c2w[a, :3, 2] * (1.0 if end else -1.0)
        poses.append(jittered(c2w[a, :3, :3], c2w[a, :3, 3] + config.extrapolate_m * direction, False))
        kinds.append("extrapolated")
    return (torch.stack(poses) if poses else torch.zeros(0, 4, 4, dtype=torch.float64)), kinds


# --------------------------------------------------------------------------- the dataset


class LRMClipSamples(torch.utils.data.Dataset):
    """Windows of clips as :class:`LRMSample` (call :meth:`prepare` once before indexing).

    sequences: clip folders/files, or folders of them (``clips.find_sequences``).
    encoder_spec: the latent encoder (``lrm_latents.make_latent_encoder``).
    cache_dir: where latents and samples are kept (shared by runs with the same settings).
    render_backend: the synthetic scenes' rasteriser for the targets (auto | cpu | cuda).
    workers: processes that render the targets in :meth:`prepare` (CPU rendering: one thread each).
    """

    def __init__(self, sequences, *, encoder_spec: str, cache_dir: str | Path, config: SampleConfig = SampleConfig(),
                 render_backend: str = "auto", workers: int = 1):
        if config.targets not in TARGET_MODES:
            raise InputError(f"targets must be one of {TARGET_MODES}, got {config.targets!r}")
        self.encoder_spec = check_encoder_spec(encoder_spec)
        self.cache_dir, self.config, self.render_backend = Path(cache_dir), config, render_backend
        self.workers = max(1, int(workers))
        sequences = [sequences] if isinstance(sequences, (str, Path)) else list(sequences)
        self.windows = ClipDataset(sequences, config.clip_length, config.frame_stride, config.window_stride,
                                   height=config.height, relative_poses=True, require=("c2w",))
        if config.first_window_only:
            firsts: dict[Path, tuple] = {}
            for item in self.windows.items:
                firsts.setdefault(item[0], item)
            self.windows.items = list(firsts.values())
        self._files: list[tuple[Path, Path]] | None = None
        self._scenes: dict[Path, Scene | None] = {}

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def skipped(self) -> list[str]:
        """Sequences shorter than one window."""
        return self.windows.skipped

    def prepare(self, device: torch.device | str = "cpu", log=print) -> None:
        """Fill the cache for every window (latents on ``device`` in this process; targets and
        sample files in ``workers`` processes when > 1); idempotent."""
        files, pending, encoder = [], [], None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for i in range(len(self.windows)):
            rgb = self.windows[i]["rgb"]  # [F, 3, H, W]
            video_hash = content_hash(rgb)
            latents = latents_cache_path(self.cache_dir, video_hash, self.encoder_spec)
            if not latents.is_file():
                encoder = encoder or make_latent_encoder(self.encoder_spec, device=device)
                latents = cache_latents(encoder, rgb, self.cache_dir, video_hash=video_hash)
            sample = self._sample_path(video_hash)
            if not sample.is_file():
                pending.append((i, video_hash))
            files.append((sample, latents))
        del encoder
        if self.workers > 1 and len(pending) > 1:
            import multiprocessing

            self._scenes = {}
            with multiprocessing.get_context("spawn").Pool(min(self.workers, len(pending)), initializer=_one_thread) as pool:
                list(pool.imap_unordered(self._write_window, pending))
        else:
            for job in pending:
                self._write_window(job)
        self._files = files
        log(f"[lrm-samples] {len(files)} window(s) of {self.config.clip_length} frames ready in {self.cache_dir} "
            f"({len(pending)} new; targets: {self.config.targets})")

    def _sample_path(self, video_hash: str) -> Path:
        """The sample file of a window: keyed by its content and every sample setting."""
        settings = json.dumps({**asdict(self.config), "format": SAMPLE_FORMAT, "video": video_hash}, sort_keys=True)
        return self.cache_dir / f"sample-{hashlib.sha256(settings.encode()).hexdigest()[:32]}.npz"

    def __getitem__(self, index: int) -> LRMSample:
        if self._files is None:
            raise RuntimeError("LRMClipSamples.prepare() must run before the samples are read")
        sample_path, latents_path = self._files[index]
        data = load_npz(sample_path, keys=("rgb", "c2w", "target_c2w", "target_rgb", "target_kind"))
        as_float = lambda a: torch.from_numpy(a).float() / 255.0  # noqa: E731  (uint8 -> [0, 1])
        return LRMSample(
            latents=load_latents(latents_path), c2w=torch.from_numpy(data["c2w"]).float(), rgb=as_float(data["rgb"]),
            distance=torch.from_numpy(data["distance"]).float() if "distance" in data else None,
            sky=torch.from_numpy(data["sky"]) if "sky" in data else None,
            target_c2w=torch.from_numpy(data["target_c2w"]).float(), target_rgb=as_float(data["target_rgb"]),
            target_kind=tuple(str(k) for k in data["target_kind"]), name=str(data["name"]) if "name" in data else "")

    # ------------------------------------------------------------------ building one sample

    def _write_window(self, job: tuple[int, str]) -> None:
        """Targets and the sample file of window ``job = (index, content hash)``."""
        index, video_hash = job
        path, layout, start = self.windows.items[index]
        item = self.windows[index]
        rgb = item["rgb"]  # [F, 3, H, W] float32
        height = rgb.shape[-2]
        rng = np.random.default_rng([self.config.seed, int(video_hash[:12], 16)])
        t_c2w, t_rgb, kinds = self._targets(path, layout, start, item["c2w"], height, rng)
        arrays = {"rgb": _to_uint8(rgb), "c2w": item["c2w"].numpy(), "target_c2w": t_c2w.numpy(), "target_rgb": _to_uint8(t_rgb),
                  "target_kind": np.array(kinds, dtype="<U12"), "name": np.array(f"{path.name}@{start}")}
        if "distance" in item:
            arrays["distance"] = item["distance"].numpy().astype(np.float32)
        if "sky" in item:
            arrays["sky"] = item["sky"].numpy()
        save_npz(self._sample_path(video_hash), compressed=False, **arrays)

    def _targets(self, clip: Path, layout: str, start: int, c2w: Tensor, height: int,
                 rng: np.random.Generator) -> tuple[Tensor, Tensor, list[str]]:
        """(target_c2w [K, 4, 4] in the window frame, target_rgb [K, 3, H, 2H], kinds)."""
        empty: tuple[Tensor, Tensor, list[str]] = (torch.zeros(0, 4, 4, dtype=torch.float64),
                                                   torch.zeros(0, 3, height, 2 * height), [])
        mode, count = self.config.targets, self.config.novel_views
        if mode == "none" or count == 0:
            return empty
        start_c2w = torch.from_numpy(np.asarray(read_clip(clip, [start]).c2w, dtype=np.float64)[0])  # clip frame
        if mode == "heldout" and is_complete_clip(clip / "heldout"):
            held = read_clip(clip / "heldout")
            poses = invert_pose(start_c2w) @ torch.from_numpy(np.asarray(held.c2w, dtype=np.float64))
            return poses, _resized(held.rgb, height), ["heldout"] * len(poses)
        scene = self._scene(clip, layout)
        if scene is not None:
            if mode == "heldout":
                rng = np.random.default_rng([self.config.seed + 1_000_003, int(rng.integers(2**31))])
            poses, kinds = novel_poses(c2w.to(torch.float64), count, rng, self.config)
            rgb = self.render_window_poses(clip, start_c2w, poses, height)
            return poses, rgb, ["heldout" if mode == "heldout" else k for k in kinds]
        return self._heldout_frames(clip, layout, start, start_c2w, height, count)

    def render_window_poses(self, clip: Path, start_c2w: Tensor, poses: Tensor, height: int) -> Tensor:
        """Ground-truth panoramas [K, 3, height, 2 height] of a synthetic clip's scene at poses [K, 4, 4]
        of a window whose first frame has the clip-frame pose ``start_c2w`` [4, 4]."""
        scene = self._scene(clip, "matrix_world")
        if scene is None:
            raise InputError(f"{clip} has no synthetic scene (meta.json needs scene_kind, scene_seed and world_from_clip)")
        meta = json.loads((clip / "meta.json").read_text())
        world = torch.tensor(meta["world_from_clip"], dtype=torch.float64).reshape(4, 4) @ start_c2w.to(torch.float64)
        rgb, _, _ = scene.render(world @ poses.to(torch.float64), height, backend=self.render_backend)
        return torch.from_numpy(rgb).permute(0, 3, 1, 2).float()

    def _heldout_frames(self, clip: Path, layout: str, start: int, start_c2w: Tensor, height: int,
                        count: int) -> tuple[Tensor, Tensor, list[str]]:
        """Frames of the clip outside the window: between its frames, then just after / before it."""
        stride, f = self.config.frame_stride, self.config.clip_length
        n, last = sequence_length(clip, layout), start + (f - 1) * stride
        between = [start + k * stride + stride // 2 for k in range(f - 1)] if stride >= 2 else []
        outside = [i for i in dict.fromkeys((last + max(1, stride // 2), start - max(1, stride // 2), last + stride))
                   if 0 <= i < n]
        n_ext = min(len(outside), max(1, count // 4))
        n_int = min(len(between), count - n_ext)
        picks = [between[int(j)] for j in np.linspace(0, len(between) - 1, n_int).round()] if n_int else []
        kinds = ["interpolated"] * len(picks) + ["extrapolated"] * n_ext
        picks += outside[:n_ext]
        if not picks:
            return torch.zeros(0, 4, 4, dtype=torch.float64), torch.zeros(0, 3, height, 2 * height), []
        held = read_clip(clip, picks)
        poses = invert_pose(start_c2w) @ torch.from_numpy(np.asarray(held.c2w, dtype=np.float64))
        return poses, _resized(held.rgb, height), kinds

    def _scene(self, clip: Path, layout: str) -> Scene | None:
        """The clip's synthetic scene (rebuilt from meta.json), or None when it has none."""
        if clip in self._scenes:
            return self._scenes[clip]
        scene = None
        meta_path = clip / "meta.json"
        meta = json.loads(meta_path.read_text()) if layout == "matrix_world" and meta_path.is_file() else {}
        if {"scene_kind", "scene_seed", "world_from_clip"} <= set(meta):
            scene = make_scene(meta["scene_kind"], int(meta["scene_seed"]))
            if meta.get("triangles") is not None and scene.num_triangles != meta["triangles"]:
                warnings.warn(f"{clip}: the scene generator changed since the clip was built ({scene.num_triangles} "
                              f"triangles, the clip says {meta['triangles']}); using held-out frames as targets", stacklevel=2)
                scene = None
        self._scenes = {clip: scene}  # windows of one clip are consecutive: keep one scene
        return scene


def _one_thread() -> None:
    torch.set_num_threads(1)


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


def _resized(rgb: np.ndarray, height: int) -> Tensor:
    """[K, H0, W0, 3] float frames -> [K, 3, height, 2 height] (area, as ClipDataset resizes)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()
    return resize_equirect(x, height, mode="area").contiguous()
