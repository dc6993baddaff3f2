"""Images on their way into a panorama: any image input -> float RGB, and a photo placed on the sphere.

Shared by the panorama backends: ``as_rgb_image`` (every backend that takes an image), and
the photo placement of image -> panorama (``flux-fill`` in ``image2pano.py``, the no-model
``photo`` preview in ``photo_pano.py``): the photo is a pinhole view at yaw = pitch = 0 with
horizontal FOV ``fov``, pasted into an empty H x 2H equirect; ``keep_mask`` erodes its
footprint and ``composite`` copies the kept pixels back exactly over a generated surround.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from matrix_world.cameras import PerspectiveView, paste_perspective
from matrix_world.errors import InputError
from matrix_world.io import read_image


def as_rgb_image(image, *, what: str = "image") -> np.ndarray:
    """A path, PIL image, numpy array (uint8 or float [0,1]) or tensor -> float32 [H, W, 3] in [0, 1]."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, Tensor):
        image = image.detach().cpu().float().numpy()
        if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
            image = image.transpose(1, 2, 0)
    if not isinstance(image, np.ndarray):
        raise InputError(f"{what} must be an image file path, a PIL image or an array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{what} must be an RGB image [H, W, 3], got an array of shape {tuple(image.shape)}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype.kind != "f":
        raise InputError(f"{what} must be uint8 or float in [0, 1], got dtype {image.dtype}")
    image = image.astype(np.float32)
    if not np.isfinite(image).all() or image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise InputError(f"{what} values must be finite and in [0, 1] (got min {image.min():.3g}, max {image.max():.3g})")
    return np.clip(image, 0.0, 1.0)


# --------------------------------------------------------------------------- a photo on the sphere

DEFAULT_FOV = 60.0
FOV_RANGE = (10.0, 170.0)
MAX_PHOTO_SIDE = 8192


def check_photo(photo: np.ndarray) -> np.ndarray:
    """The photo [h, w, 3] itself; InputError when a side is under 16 or over MAX_PHOTO_SIDE pixels."""
    h, w = photo.shape[:2]
    if min(h, w) < 16:
        raise InputError(f"the input photo is {w}x{h}; expected at least 16 pixels on each side")
    if max(h, w) > MAX_PHOTO_SIDE:
        raise InputError(f"the input photo is {w}x{h}; photos above {MAX_PHOTO_SIDE} pixels on a side are rejected (downscale it)")
    return photo


def place_photo(photo: np.ndarray, fov: float, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Paste a photo at yaw = pitch = 0 into an empty equirect of the given height.

    photo: np.ndarray  # [h, w, 3] float32 in [0, 1]
    fov: horizontal field of view of the photo in degrees
    returns (placed [H, 2H, 3] float32 with zeros outside the photo, coverage [H, 2H] bool)
    """
    if not FOV_RANGE[0] <= fov <= FOV_RANGE[1]:
        raise InputError(f"photo FOV must be in [{FOV_RANGE[0]:g}, {FOV_RANGE[1]:g}] degrees, got {fov:g}")
    h, w = photo.shape[:2]
    # footprint: the panorama has W / (2 pi) pixels per radian, the photo f pixels per radian at its centre
    f = 0.5 * w / math.tan(math.radians(fov) / 2.0)
    pano_per_rad = 2 * height / (2.0 * math.pi)
    if f > 1.5 * pano_per_rad:
        import cv2

        scale = pano_per_rad / f
        w2, h2 = max(8, round(w * scale)), max(8, round(h * scale))
        photo = cv2.resize(photo, (w2, h2), interpolation=cv2.INTER_AREA)
        h, w = h2, w2
    view = PerspectiveView(0.0, 0.0, float(fov), w, h)
    image = torch.from_numpy(np.ascontiguousarray(photo, dtype=np.float32)).permute(2, 0, 1)
    placed, coverage = paste_perspective(image, view, height)
    return placed.permute(1, 2, 0).numpy().astype(np.float32), coverage.numpy()


def keep_mask(coverage: np.ndarray, erode: int) -> np.ndarray:
    """Pixels of the placed photo that are kept: its footprint eroded by ``erode`` pixels [H, W] bool."""
    if erode < 0:
        raise InputError(f"mask_erode must be >= 0, got {erode}")
    if erode == 0:
        return coverage.copy()
    import cv2

    kernel = np.ones((2 * erode + 1, 2 * erode + 1), np.uint8)
    return cv2.erode(coverage.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def composite(generated: np.ndarray, placed: np.ndarray, keep: np.ndarray, coverage: np.ndarray, blend_width: int) -> np.ndarray:
    """Kept pixels exactly from ``placed``; a linear fade over ``blend_width`` px outside them (within the photo)."""
    import cv2

    out = generated.astype(np.float32).copy()
    if blend_width > 0:
        dist = cv2.distanceTransform((~keep).astype(np.uint8), cv2.DIST_L2, 3)  # px to the nearest kept pixel
        alpha = np.clip(1.0 - dist / float(blend_width + 1), 0.0, 1.0) * coverage
        out = alpha[..., None] * placed + (1.0 - alpha[..., None]) * out
    out[keep] = placed[keep]
    return np.clip(out, 0.0, 1.0).astype(np.float32)
