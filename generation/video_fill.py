"""Video backend ``fill``: the scaffold video with its unknown pixels filled classically.

No model, runs anywhere: the offline default and a baseline for the Wan backend. Per frame,
in trajectory order:

1. known scaffold pixels are kept exactly;
2. an unknown pixel takes the LAST KNOWN colour seen in its viewing direction: a memory
   panorama of last observed colours is carried from frame to frame, turned by the relative
   camera rotation ``R_prev^T R_cur`` (directions treated as far away, translation ignored);
   ``max_age`` optionally forgets colours older than that many frames;
3. what is still unknown (never observed in that direction) is inpainted with OpenCV
   (Telea or Navier-Stokes) on the panorama padded circularly in longitude, so holes that
   cross the 180° seam are filled from both sides.

Inpainted colours are not written back to the memory: it only ever holds observed colours.
Frames are float32 [0, 1] ``[F, H, W, 3]``, masks ``[F, H, W]`` bool (True = known), poses
``c2w [F, 4, 4]`` OpenCV camera-to-world (DESIGN §3).
"""

from __future__ import annotations

import numpy as np
import torch

from matrix_world.equirect import direction_to_pixel, equirect_directions
from matrix_world.errors import InputError

_METHODS = {"telea": "INPAINT_TELEA", "ns": "INPAINT_NS"}


def inpaint_wrapped(image: np.ndarray, unknown: np.ndarray, *, radius: float = 3.0, method: str = "telea", pad_cols: int | None = None) -> np.ndarray:
    """Inpaint the unknown pixels of one panorama, wrapping in longitude.

    image: np.ndarray  # [H, W, 3] float32 in [0, 1] (values under ``unknown`` are ignored)
    unknown: np.ndarray  # [H, W] bool
    pad_cols: columns copied from the other side before inpainting (default W // 4)
    returns: np.ndarray  # [H, W, 3] float32; known pixels bit-identical to ``image``
    """
    import cv2

    if method not in _METHODS:
        raise InputError(f"inpainting method must be one of {sorted(_METHODS)}, got {method!r}")
    if not unknown.any():
        return image.astype(np.float32, copy=True)
    if unknown.all():
        raise InputError("cannot inpaint a frame with no known pixel (and nothing seen before in any direction)")
    w = unknown.shape[1]
    pad = min(w, w // 4 if pad_cols is None else int(pad_cols))
    idx = np.r_[np.arange(w - pad, w), np.arange(w), np.arange(pad)]
    # 16-bit channels: OpenCV's Telea is unstable on float32 input (oscillating values), and
    # 1/65535 steps are far below what a video model or a viewer can tell apart.
    padded = np.round(np.clip(np.where(unknown[..., None], 0.0, image), 0.0, 1.0) * 65535.0).astype(np.uint16)[:, idx]
    hole = unknown[:, idx].astype(np.uint8)
    flag = getattr(cv2, _METHODS[method])
    filled = np.stack([cv2.inpaint(np.ascontiguousarray(padded[..., c]), hole, radius, flag) for c in range(3)], axis=-1)
    out = image.astype(np.float32, copy=True)
    out[unknown] = filled[:, pad : pad + w][unknown].astype(np.float32) / 65535.0
    return out


def rotation_lookup(rot_prev: np.ndarray, rot_cur: np.ndarray, height: int, width: int) -> np.ndarray | None:
    """Flat index into the previous panorama for every pixel of the current one (None if no turn).

    Pixel p of the current frame looks along camera direction d; the previous camera sees the
    same (far) direction at R_prev^T R_cur d. Nearest pixel, wrapping in longitude.
    returns: np.ndarray  # [H * W] int64, or None when the relative rotation is the identity
    """
    rel = rot_prev.T @ rot_cur
    if np.allclose(rel, np.eye(3), atol=1e-9):
        return None
    dirs = equirect_directions(height, width, dtype=torch.float64)  # [H, W, 3]
    dirs_prev = dirs @ torch.from_numpy(rel).T
    px, py = direction_to_pixel(dirs_prev, height, width)
    xi = torch.remainder(torch.floor(px).long(), width)
    yi = torch.floor(py).long().clamp(0, height - 1)
    return (yi * width + xi).reshape(-1).numpy()


def fill_video(
    rgb: np.ndarray,
    mask: np.ndarray,
    c2w: np.ndarray | None = None,
    *,
    radius: float = 3.0,
    method: str = "telea",
    max_age: int | None = None,
    pad_cols: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Fill every unknown pixel of a scaffold video.

    rgb: np.ndarray  # [F, H, W, 3] float in [0, 1] (unknown pixels are ignored)
    mask: np.ndarray  # [F, H, W] bool, True = known
    c2w: np.ndarray  # [F, 4, 4] camera-to-world poses (None: no rotation between frames)
    returns: (frames [F, H, W, 3] float32, info {'from_memory': pixels, 'inpainted': pixels})
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or mask.shape != rgb.shape[:3]:
        raise InputError(f"fill_video expects rgb [F, H, W, 3] and mask [F, H, W]; got {rgb.shape} and {mask.shape}")
    f, h, w, _ = rgb.shape
    rotations = None if c2w is None else np.asarray(c2w, dtype=np.float64)[:, :3, :3]
    memory = np.zeros((h * w, 3), np.float32)
    age = np.full(h * w, -1, np.int64)  # frames since last observed in this direction; -1 = never
    out = np.empty_like(rgb)
    from_memory = inpainted = 0
    for i in range(f):
        if i > 0 and rotations is not None:
            lookup = rotation_lookup(rotations[i - 1], rotations[i], h, w)
            if lookup is not None:
                memory, age = memory[lookup], age[lookup]
            age = np.where(age >= 0, age + 1, -1)  # one frame older
        known = mask[i].reshape(-1)
        frame = rgb[i].reshape(-1, 3).copy()
        valid = (age >= 0) & (age <= (max_age if max_age is not None else np.iinfo(np.int64).max))
        use = ~known & valid
        frame[use] = memory[use]
        holes = ~known & ~valid
        if holes.any():
            frame = inpaint_wrapped(frame.reshape(h, w, 3), holes.reshape(h, w), radius=radius, method=method, pad_cols=pad_cols)
            frame = frame.reshape(-1, 3)
        out[i] = frame.reshape(h, w, 3)
        from_memory += int(use.sum())
        inpainted += int(holes.sum())
        memory[known] = rgb[i].reshape(-1, 3)[known]
        age[known] = 0
    return out, {"from_memory": from_memory, "inpainted": inpainted}
