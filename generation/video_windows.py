"""Videos longer than one model call: Argus' context-aware iterative sampling, for every video backend.

The frames are cut into windows of ``window`` frames. Window 0 is the scaffold as it is. Every later
window starts ``window - context`` frames after the previous one, so its first ``context`` frames
(at least) were already generated: they are handed to the backend as fully known scaffold frames
(the previous output, mask all True), and only the frames after them are taken from this window's
output. The last window is moved back to end at the last frame (so every call has exactly
``window`` frames, as the Wan model's 4k+1 rule needs), which gives it more context, never less.

A backend that keeps known pixels (``fill``) reproduces the context exactly, so the windows join
without a jump; a generative model is conditioned on the context and continues from it (Argus trains
for this with S known frames; the Matrix-3D LoRA has seen known pixels anywhere in its scaffolds, not
whole known frames, so how well the public LoRA continues is not measured here).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from matrix_world.errors import InputError


def window_starts(frames: int, window: int, context: int) -> list[int]:
    """First frame of every window: 0, window - context, 2 (window - context), ..., the last one moved
    back to ``frames - window``. One window when ``frames <= window``."""
    if window < 2 or not 1 <= context < window:
        raise InputError(f"windows need window >= 2 and 1 <= context < window, got window {window}, context {context}")
    if frames <= window:
        return [0]
    step = window - context
    starts = list(range(0, frames - window, step)) + [frames - window]
    return sorted(set(starts))


def generate_in_windows(
    call: Callable,  # (rgb [T, H, W, 3] float32, mask [T, H, W] bool, c2w [T, 4, 4]) -> object with .frames, .info
    rgb: np.ndarray,  # [F, H, W, 3] float32 in [0, 1]
    mask: np.ndarray,  # [F, H, W] bool
    c2w: np.ndarray,  # [F, 4, 4]
    *,
    window: int,
    context: int,
) -> tuple[np.ndarray, dict]:
    """Fill a long scaffold video window by window (see the module docstring) -> (frames [F, H, W, 3]
    float32, info). info["windows"] lists each window's [start, end) and how many of its frames were
    context. Latents are not joined (they belong to single windows).
    """
    f = len(rgb)
    out = np.zeros_like(rgb, dtype=np.float32)
    done = 0
    windows, infos = [], []
    for start in window_starts(f, window, context):
        end = start + window
        known = done - start  # frames of this window already generated
        r, m = rgb[start:end].copy(), mask[start:end].copy()
        if known > 0:
            r[:known], m[:known] = out[start:done], True
        result = call(r, m, c2w[start:end])
        if result.frames.shape[0] != end - start:
            raise RuntimeError(f"the video backend returned {result.frames.shape[0]} frames for a window of {end - start}")
        out[done:end] = result.frames[known:]
        windows.append({"start": start, "end": end, "context": max(known, 0)})
        infos.append(result.info)
        done = end
    return out, {"windows": windows, "window": window, "context_frames": context, "last_window": infos[-1]}
