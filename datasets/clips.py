"""Panoramic video clips on disk: our writer/reader, foreign layouts, fixed-length torch datasets.

Our layout (one folder per clip; issue 3):

    <clip>/rgb/00000.png, 00001.png, ...   equirect frames, 8-bit RGB, H x 2H
    <clip>/distance.npz                    key ``distance`` [F, H, W] float16 or float32 (metres
                                           along each ray); optional key ``sky`` [F, H, W] bool
    <clip>/poses.json                      our trajectory JSON (``opencv_c2w``), poses relative to
                                           frame 0 (c2w[0] = I), with fps
    <clip>/prompt.txt                      text description
    <clip>/meta.json                       seed, scene type, units, size, and ``world_from_clip``
                                           (the scene-world c2w of frame 0, to re-render the scene)

Other layouts the reader accepts (what we ASSUME, since no public spec was available here):

* Matrix-Pano style: a panoramic video ``*.mp4`` (``panorama.mp4``, ``video.mp4``, ``rgb.mp4``
  or the only ``.mp4``); depth as ``depth.npz``/``depth.npy`` ([F, H, W], npz key ``depth`` or
  ``distance``) or a ``depth/`` folder of per-frame ``.npy`` or 16-bit ``.png`` in millimetres,
  always read as distance along the ray; cameras as ``camera.json``/``cameras.json``/
  ``trajectory.json``/``poses.json``: a plain list of 4x4 OpenCV world-to-camera matrices
  (Matrix-3D's custom-trajectory format), or ``{"w2c": [...]}``/``{"c2w": [...]}``, or
  ``{"frames": [{"transform_matrix" | "c2w" | "w2c": 4x4}, ...]}`` (transform_matrix = c2w);
  optional ``prompt.txt``/``caption.txt``.
* Plain panoramic video: a video file, a folder of video files (one sequence each), or a
  folder of frame images; no poses, no distance.

A write is atomic per clip (``write_clip_atomic`` writes a temporary folder and renames it),
so a folder named like a clip is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from matrix_world.cameras import invert_pose
from matrix_world.errors import InputError
from matrix_world.io import check_distance, load_npz, read_image, read_video, save_npz, video_length, write_image, write_text

CLIP_FORMAT = "matrix_world.clip"
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAMERA_FILES = ("camera.json", "cameras.json", "trajectory.json", "poses.json")


@dataclass
class Clip:
    """One panoramic clip in memory.

    rgb: np.ndarray  # [F, H, W, 3] float32 in [0, 1]
    distance: np.ndarray | None  # [F, H, W] float32, metres along each ray
    sky: np.ndarray | None  # [F, H, W] bool
    c2w: np.ndarray | None  # [F, 4, 4] float64, OpenCV camera-to-world (frame 0 = identity in our layout)
    """

    rgb: np.ndarray
    distance: np.ndarray | None = None
    sky: np.ndarray | None = None
    c2w: np.ndarray | None = None
    prompt: str = ""
    meta: dict = field(default_factory=dict)
    fps: float = 16.0
    layout: str = "matrix_world"

    def __len__(self) -> int:
        return int(self.rgb.shape[0])


# --------------------------------------------------------------------------- writing


def _relative(c2w: np.ndarray, ref: np.ndarray) -> np.ndarray:
    c2w_t = torch.as_tensor(np.asarray(c2w, dtype=np.float64))
    return (invert_pose(torch.as_tensor(ref, dtype=torch.float64)) @ c2w_t).numpy()


def write_clip(folder: str | os.PathLike, rgb: np.ndarray, distance: np.ndarray | None, c2w: np.ndarray, prompt: str,
               meta: dict | None = None, *, fps: float = 16.0, sky: np.ndarray | None = None,
               distance_dtype: str = "float32", reference_c2w: np.ndarray | None = None) -> Path:
    """Write a clip in our layout into ``folder`` (created; existing files are replaced).

    rgb [F, H, W, 3] float [0, 1] or uint8; distance [F, H, W]; c2w [F, 4, 4] in any world
    frame: poses.json stores them relative to ``reference_c2w`` (default: frame 0, so
    c2w[0] = I) and meta.json keeps the reference as ``world_from_clip``; sky [F, H, W]
    bool (optional, stored in distance.npz).
    """
    from matrix_world.trajectory import Trajectory

    folder = Path(folder)
    rgb = np.asarray(rgb)
    c2w = np.asarray(c2w, dtype=np.float64)
    f = len(rgb)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise InputError(f"rgb has shape {rgb.shape}; expected [F, H, W, 3]")
    if c2w.shape != (f, 4, 4):
        raise InputError(f"c2w has shape {c2w.shape}; expected [{f}, 4, 4] (one pose per frame)")
    if distance is not None and np.shape(distance) != rgb.shape[:3]:
        raise InputError(f"distance has shape {np.shape(distance)}; expected {rgb.shape[:3]}")
    if distance_dtype not in ("float16", "float32"):
        raise InputError(f"distance_dtype must be float16 or float32, got {distance_dtype!r}")
    (folder / "rgb").mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(rgb):
        write_image(folder / "rgb" / f"{i:05d}.png", frame)
    if distance is not None:
        arrays = {"distance": np.asarray(distance).astype(distance_dtype)}
        if sky is not None:
            arrays["sky"] = np.asarray(sky, dtype=bool)
        save_npz(folder / "distance.npz", **arrays)
    ref = c2w[0] if reference_c2w is None else np.asarray(reference_c2w, dtype=np.float64)
    Trajectory(torch.from_numpy(_relative(c2w, ref)), fps=fps, name="synthetic").to_json(folder / "poses.json")
    write_text(folder / "prompt.txt", prompt.strip() + "\n")
    full_meta = {"format": CLIP_FORMAT, "version": 1, "frames": f, "height": int(rgb.shape[1]), "width": int(rgb.shape[2]),
                 "fps": float(fps), "units": "metres", "distance": "along each ray",
                 "world_from_clip": ref.reshape(-1).tolist(), **(meta or {})}
    write_text(folder / "meta.json", json.dumps(full_meta, indent=1) + "\n")
    return folder


def write_clip_atomic(folder: str | os.PathLike, *args, **kwargs) -> Path:
    """``write_clip`` into a temporary sibling folder, then rename it to ``folder``.

    An existing ``folder`` is replaced only after the new one is complete.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a dataset folder is meant to be shared
        write_clip(tmp, *args, **kwargs)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def is_complete_clip(folder: str | os.PathLike) -> bool:
    """A folder holds a complete clip in our layout (meta.json last, frame count matches)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    frames = meta.get("frames")
    return (isinstance(frames, int) and (folder / "poses.json").is_file() and (folder / "prompt.txt").is_file()
            and all((folder / "rgb" / f"{i:05d}.png").is_file() for i in range(frames)))


# --------------------------------------------------------------------------- layouts


def detect_layout(path: str | os.PathLike) -> str | None:
    """"matrix_world", "matrix_pano", "video" (a video file or folder of videos), "frames"
    (folder of images) or None."""
    path = Path(path)
    if path.is_file():
        return "video" if path.suffix.lower() in VIDEO_SUFFIXES else None
    if not path.is_dir():
        return None
    if (path / "rgb").is_dir() and (path / "meta.json").is_file():
        return "matrix_world"
    videos = _files(path, VIDEO_SUFFIXES)
    if videos and (any((path / n).is_file() for n in CAMERA_FILES) or _depth_source(path) is not None):
        return "matrix_pano"
    if videos:
        return "video"
    if _files(path, IMAGE_SUFFIXES):
        return "frames"
    return None


def _files(folder: Path, suffixes) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def _depth_source(folder: Path) -> Path | None:
    for name in ("depth.npz", "depth.npy", "depth"):
        if (folder / name).exists():
            return folder / name
    return None


def find_sequences(root: str | os.PathLike) -> list[tuple[Path, str]]:
    """Sequences under ``root``: [(path, layout)], sorted. ``root`` may itself be one."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"dataset path {root} does not exist")
    layout = detect_layout(root)
    if layout == "video" and root.is_dir():
        return [(v, "video") for v in _files(root, VIDEO_SUFFIXES)]
    if layout is not None:
        return [(root, layout)]
    out = []
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        sub = detect_layout(child)
        if sub == "video" and child.is_dir():
            out += [(v, "video") for v in _files(child, VIDEO_SUFFIXES)]
        elif sub is not None:
            out.append((child, sub))
    return out


def _read_video(path: Path, indices: list[int] | None) -> np.ndarray:
    """Frames of a video as float32 [F, H, W, 3] in [0, 1] (decoded by ``io.read_video``)."""
    return read_video(path, indices).astype(np.float32) / 255.0


def _camera_poses(path: Path) -> np.ndarray:
    """A foreign camera JSON -> c2w [F, 4, 4] (see the module docstring for the accepted forms)."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and data.get("convention") == "opencv_c2w":
        from matrix_world.trajectory import Trajectory

        return Trajectory.from_dict(data, source=str(path)).c2w.numpy()
    inverse = True  # plain lists are world-to-camera (Matrix-3D)
    if isinstance(data, dict):
        if "c2w" in data:
            data, inverse = data["c2w"], False
        elif "w2c" in data:
            data = data["w2c"]
        elif "frames" in data:
            frames = data["frames"]
            key = next((k for k in ("transform_matrix", "c2w", "w2c") if frames and k in frames[0]), None)
            if key is None:
                raise InputError(f"{path}: frames carry none of transform_matrix / c2w / w2c")
            data, inverse = [fr[key] for fr in frames], key == "w2c"
    try:
        poses = np.asarray(data, dtype=np.float64).reshape(-1, 4, 4)
    except (TypeError, ValueError):
        raise InputError(f"{path}: cannot read camera poses; expected a list of 4x4 matrices") from None
    return invert_pose(torch.from_numpy(poses)).numpy() if inverse else poses


def _foreign_depth(src: Path, indices: list[int]) -> np.ndarray:
    """Distances [F, H, W] of a Matrix-Pano-style folder, checked by the one distance rule
    (:func:`matrix_world.io.check_distance`); a 16-bit PNG's 0 (no return) becomes +inf (sky)."""
    if src.is_dir():
        files = _files(src, (".npy", ".png"))
        out = []
        for i in indices:
            p = files[i]
            if p.suffix == ".npy":
                out.append(np.load(p, allow_pickle=False))
            else:
                import cv2

                raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
                if raw is None or raw.dtype != np.uint16:
                    raise InputError(f"{p}: expected a 16-bit PNG depth map in millimetres")
                out.append(np.where(raw == 0, np.inf, raw.astype(np.float32) / 1000.0))
        return check_distance(np.stack(out), f"depth of {src}")[0]
    if src.suffix == ".npz":
        data = load_npz(src)
        key = "distance" if "distance" in data else "depth"
        if key not in data:
            raise InputError(f"{src} has neither 'distance' nor 'depth'; it has {sorted(data)}")
        return check_distance(data[key][indices], f"{src} '{key}'")[0]
    return check_distance(np.load(src, mmap_mode="r", allow_pickle=False)[indices], f"depth {src}")[0]


def sequence_length(path: Path, layout: str) -> int:
    """Frame count of a sequence without decoding images (videos are decoded once)."""
    if layout == "matrix_world":
        return int(json.loads((path / "meta.json").read_text())["frames"])
    if layout == "frames":
        return len(_files(path, IMAGE_SUFFIXES))
    video = path if layout == "video" else _pano_video(path)
    return video_length(video)


def _pano_video(folder: Path) -> Path:
    for name in ("panorama.mp4", "video.mp4", "rgb.mp4", "pano_video.mp4"):
        if (folder / name).is_file():
            return folder / name
    videos = _files(folder, VIDEO_SUFFIXES)
    if len(videos) != 1:
        raise InputError(f"{folder}: expected one panoramic video (panorama.mp4 / video.mp4 / rgb.mp4), found {len(videos)}")
    return videos[0]


def read_clip(path: str | os.PathLike, indices: list[int] | None = None) -> Clip:
    """Read a sequence of any supported layout (all frames, or the given frame indices)."""
    path = Path(path)
    layout = detect_layout(path)
    if layout is None:
        raise InputError(f"{path} is not a clip: expected our layout (rgb/ + meta.json), a Matrix-Pano-style "
                         "folder (video + depth + camera JSON), a video file, or a folder of frames")
    n = sequence_length(path, layout) if indices is None and layout in ("matrix_world", "frames") else None
    idx = list(range(n)) if n is not None else indices
    if layout == "matrix_world":
        assert idx is not None  # n is set for this layout
        meta = json.loads((path / "meta.json").read_text())
        rgb = np.stack([read_image(path / "rgb" / f"{i:05d}.png") for i in idx])
        distance = sky = None
        if (path / "distance.npz").is_file():
            data = load_npz(path / "distance.npz", keys=("distance",))
            distance = check_distance(data["distance"][idx], f"{path / 'distance.npz'} 'distance'")[0]
            sky = data["sky"][idx] if "sky" in data else None
        from matrix_world.trajectory import Trajectory

        traj = Trajectory.from_json(path / "poses.json")
        prompt = (path / "prompt.txt").read_text().strip() if (path / "prompt.txt").is_file() else ""
        return Clip(rgb, distance, sky, traj.c2w.numpy()[idx], prompt, meta, traj.fps, layout)
    if layout == "frames":
        assert idx is not None  # n is set for this layout
        files = _files(path, IMAGE_SUFFIXES)
        return Clip(np.stack([read_image(files[i]) for i in idx]), layout=layout, meta={"source": str(path)})
    if layout == "video":
        return Clip(_read_video(path, idx), layout=layout, meta={"source": str(path)})
    # matrix_pano
    rgb = _read_video(_pano_video(path), idx)
    idx = idx if idx is not None else list(range(len(rgb)))
    cam = next((path / n for n in CAMERA_FILES if (path / n).is_file()), None)
    c2w = _camera_poses(cam)[idx] if cam is not None else None
    src = _depth_source(path)
    distance = _foreign_depth(src, idx) if src is not None else None
    prompt = next(((path / n).read_text().strip() for n in ("prompt.txt", "caption.txt") if (path / n).is_file()), "")
    return Clip(rgb, distance, None, c2w, prompt, {"source": str(path)}, 16.0, layout)


# --------------------------------------------------------------------------- torch dataset


class ClipDataset(torch.utils.data.Dataset):
    """Fixed-length windows of panoramic sequences as a torch Dataset.

    roots: one or more folders/files (each a sequence, or a folder of sequences).
    clip_length: frames per item (81 = Matrix-3D's clips). frame_stride: step between the
    frames of one item. window_stride: step between the first frames of consecutive items
    of a sequence (default: the window span, i.e. non-overlapping). Sequences shorter than
    one window are skipped (listed in ``self.skipped``).
    height: resize panoramas to height x 2*height (None keeps the stored size).
    relative_poses: express poses relative to the window's first frame (world = frame 0).

    Item: dict with ``rgb`` [F, 3, H, W] float32, and where the layout has them ``distance``
    [F, H, W] float32, ``sky`` [F, H, W] bool, ``c2w`` [F, 4, 4] float64; plus ``prompt``,
    ``source`` and ``start``. Batching with the default collate needs all sequences of one
    dataset to carry the same keys.
    """

    def __init__(self, roots, clip_length: int = 81, frame_stride: int = 1, window_stride: int | None = None,
                 height: int | None = None, relative_poses: bool = True, require: tuple[str, ...] = ()):
        if clip_length < 1 or frame_stride < 1 or (window_stride is not None and window_stride < 1):
            raise InputError("clip_length, frame_stride and window_stride must be positive integers")
        roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        self.clip_length, self.frame_stride, self.height = clip_length, frame_stride, height
        self.relative_poses, self.require = relative_poses, tuple(require)
        span = (clip_length - 1) * frame_stride + 1
        step = window_stride or span
        self.items: list[tuple[Path, str, int]] = []
        self.skipped: list[str] = []
        for root in roots:
            for path, layout in find_sequences(root):
                n = sequence_length(path, layout)
                if n < span:
                    self.skipped.append(f"{path} ({n} frames < {span})")
                    continue
                self.items += [(path, layout, s) for s in range(0, n - span + 1, step)]
        if not self.items:
            raise InputError(f"no sequence of at least {span} frames under {', '.join(map(str, roots))}"
                             + (f" (skipped: {'; '.join(self.skipped[:3])})" if self.skipped else ""))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        from matrix_world.equirect import resize_equirect

        path, layout, start = self.items[i]
        idx = list(range(start, start + (self.clip_length - 1) * self.frame_stride + 1, self.frame_stride))
        clip = read_clip(path, idx)
        out: dict = {"prompt": clip.prompt, "source": str(path), "start": start}
        rgb = torch.from_numpy(np.ascontiguousarray(clip.rgb)).permute(0, 3, 1, 2)
        if self.height is not None:
            rgb = resize_equirect(rgb, self.height, mode="area")
        out["rgb"] = rgb.float().contiguous()
        if clip.distance is not None:
            d = torch.from_numpy(clip.distance)[:, None]
            out["distance"] = (resize_equirect(d, self.height, mode="nearest") if self.height else d)[:, 0]
        if clip.sky is not None:
            s = torch.from_numpy(clip.sky)[:, None].float()
            out["sky"] = (resize_equirect(s, self.height, mode="nearest") if self.height else s)[:, 0] > 0.5
        if clip.c2w is not None:
            c2w = torch.from_numpy(np.asarray(clip.c2w, dtype=np.float64))
            out["c2w"] = invert_pose(c2w[0]) @ c2w if self.relative_poses else c2w
        missing = [k for k in self.require if k not in out]
        if missing:
            raise InputError(f"{path} ({layout} layout) has no {', '.join(missing)}; this dataset requires them")
        return out
