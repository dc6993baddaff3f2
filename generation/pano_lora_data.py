"""Training data of the panorama LoRA: 2:1 panoramas with captions, size buckets, circular shifts.

A data folder is either

* a folder of images (``.png .jpg .jpeg .webp``, not recursive) with captions in text files of
  the same stem (``room.png`` + ``room.txt``); an image without a caption trains with an empty
  prompt (allowed, with one warning that says how many), or
* a synthetic dataset (``scripts/build_synthetic_dataset.py``, the clip layout of
  :mod:`matrix_world.datasets.clips`): one sub-folder per clip, its panorama is frame 0
  (``<clip>/rgb/00000.png``) and its caption ``<clip>/prompt.txt``.

Every image must be an equirectangular panorama, exactly 2:1 (width = 2 x height); any other
image is refused, by name.

Bucket rule (mixed sizes): the training sizes are the heights in ``heights`` (each a multiple of
16, i.e. of the VAE's 8x times the 2x2 token packing; 8 for the tiny model; width = 2 x height).
An image of height h goes to the LARGEST bucket height <= h and is downscaled to it (area
resampling); images are never upscaled, so one smaller than the smallest bucket is refused by
name. A batch holds images of one bucket only.

Order: :func:`batch_at` gives the k-th batch of an endless, deterministic stream: epoch e is a
permutation of each bucket (a generator seeded from (seed, e)), cut into batches of
``batch_size`` (the last of a bucket may be smaller), the batches shuffled. Rank r of N
processes trains batch ``step * N + r`` at each step, so a resumed run sees the same batches
without any sampler state.

Augmentation: a random circular longitude shift of each image (``np.roll`` along the width by
0..W-1 pixels), drawn from the training generator: a 360° panorama rolled in longitude is the
same scene seen from another heading, and the seam moves, so the LoRA cannot learn one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from matrix_world.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CLIP_FRAME0 = Path("rgb") / "00000.png"  # matrix_world.datasets.clips layout
CLIP_PROMPT = "prompt.txt"


@dataclass
class PanoSample:
    path: Path
    caption: str  # raw caption ("" when missing); the prompt template is applied by the trainer
    height: int  # of the file; width = 2 * height
    bucket: int  # training height (largest bucket <= height)


@dataclass
class PanoDataset:
    """The scanned data folder: samples, per-bucket indices, what was found."""

    root: Path
    layout: str  # "images" | "clips"
    samples: list[PanoSample]
    missing_captions: int = 0
    buckets: dict[int, list[int]] = field(default_factory=dict)  # bucket height -> sample indices

    def summary(self) -> str:
        sizes = ", ".join(f"{len(ix)} at {2 * h}x{h}" for h, ix in sorted(self.buckets.items()))
        return f"{len(self.samples)} panoramas ({self.layout}) in {self.root}: {sizes}"

    def fingerprint(self) -> list:
        """What identifies the data of a training run (resume refuses another): names, sizes, buckets."""
        return [[str(s.path.relative_to(self.root)), s.path.stat().st_size, s.bucket] for s in self.samples]

    def batches_per_epoch(self, batch_size: int) -> int:
        return sum(-(-len(ix) // batch_size) for ix in self.buckets.values())


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header (Pillow, no decode); InputError for a file that is no image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read {path} as an image ({type(exc).__name__}); expected a PNG/JPEG/WebP panorama") from None


def choose_bucket(height: int, heights: tuple[int, ...], name: str) -> int:
    """The bucket rule: the largest bucket height <= the image's height; smaller images are refused."""
    fitting = [h for h in heights if h <= height]
    if not fitting:
        smallest = min(heights)
        raise InputError(f"{name} is {2 * height}x{height}, smaller than the smallest training size "
                         f"{2 * smallest}x{smallest} (images are never upscaled); add a smaller bucket "
                         f"(--heights {height // 16 * 16 or 16} ...) or remove the image")
    return max(fitting)


def _read_caption(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return " ".join(path.read_text(encoding="utf-8").split())
    except UnicodeDecodeError:
        raise InputError(f"caption {path} is not UTF-8 text") from None


def scan_dataset(root: str | Path, heights: tuple[int, ...]) -> PanoDataset:
    """Find the panoramas and captions of a data folder and put each in its bucket (see the module doc)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise InputError(f"--data {root} {what}; expected a folder of 2:1 panoramas with .txt captions "
                         "or a synthetic dataset folder (scripts/build_synthetic_dataset.py)")
    images = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    clips = sorted(p for p in root.iterdir() if p.is_dir() and (p / CLIP_FRAME0).is_file())
    if images:
        layout, pairs = "images", [(p, _read_caption(p.with_suffix(".txt"))) for p in images]
    elif clips:
        layout, pairs = "clips", [(c / CLIP_FRAME0, _read_caption(c / CLIP_PROMPT)) for c in clips]
    else:
        raise InputError(f"--data {root} holds no training images: expected {'/'.join(IMAGE_SUFFIXES)} panoramas "
                         f"(captions in .txt files of the same name) or clip folders (<clip>/{CLIP_FRAME0.as_posix()} "
                         f"+ <clip>/{CLIP_PROMPT})")
    samples = []
    for path, caption in pairs:
        width, height = image_size(path)
        name = str(path.relative_to(root))
        if width != 2 * height:
            raise InputError(f"{name} is {width}x{height}, not a 2:1 equirectangular panorama (width = 2 x height); "
                             "panorama LoRA training takes 360° panoramas only: crop/resize it or remove it")
        samples.append(PanoSample(path, caption or "", height, choose_bucket(height, heights, name)))
    data = PanoDataset(root, layout, samples, missing_captions=sum(caption is None for _, caption in pairs))
    for i, s in enumerate(samples):
        data.buckets.setdefault(s.bucket, []).append(i)
    return data


# --------------------------------------------------------------------------- order and pixels


def batch_at(data: PanoDataset, k: int, batch_size: int, seed: int) -> list[int]:
    """Sample indices of the k-th batch of the endless deterministic stream (see the module doc)."""
    per_epoch = data.batches_per_epoch(batch_size)
    epoch, position = divmod(int(k), per_epoch)
    g = torch.Generator("cpu").manual_seed(int(seed) * 1_000_003 + epoch)
    batches = []
    for height in sorted(data.buckets):
        ix = data.buckets[height]
        order = [ix[int(j)] for j in torch.randperm(len(ix), generator=g)]
        batches += [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return batches[int(torch.randperm(per_epoch, generator=g)[position])]


def load_batch(data: PanoDataset, indices: list[int], *, roll: bool, generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """Pixels of one batch -> (images [B, 3, H, 2H] float32 in [-1, 1], longitude shift of each in pixels).

    Each image is read, downscaled to its bucket (area resampling) and, with ``roll``, rolled
    circularly along the width by a shift drawn from ``generator`` (0 without ``roll``: no draw).
    """
    import cv2

    from matrix_world.io import read_image

    out, shifts = [], []
    for i in indices:
        s = data.samples[i]
        rgb = read_image(s.path)  # [h, 2h, 3] float32 in [0, 1]
        if rgb.shape[0] != s.bucket:
            rgb = cv2.resize(rgb, (2 * s.bucket, s.bucket), interpolation=cv2.INTER_AREA)
        shift = int(torch.randint(0, 2 * s.bucket, (1,), generator=generator)) if roll else 0
        if shift:
            rgb = np.roll(rgb, shift, axis=1)
        out.append(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))
        shifts.append(shift)
    return torch.stack(out) * 2.0 - 1.0, shifts


def captions(data: PanoDataset, indices: list[int]) -> list[str]:
    return [data.samples[i].caption for i in indices]
