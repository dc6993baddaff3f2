"""Seam-free 360° generation: circular latent rolls and wrap-aware decoding.

An equirectangular panorama wraps in longitude: column W-1 touches column 0. A diffusion
model and its VAE do not know that, so a plain generation shows a visible seam at the left
and right border. Two remedies, both generic over the latent layout as long as the WIDTH
(longitude) is the LAST dimension:

* image latents  ``[B, C, h, w]``  (FLUX after unpacking, SD-style VAEs)
* video latents  ``[B, C, F, h, w]`` (Wan)

1. Circular rolls while denoising (:func:`late_step_rolls`): in the late steps the denoiser
   sees its input rolled by a random number of columns (and its output is rolled back), so
   the seam sits somewhere else at every step and the model blends across it. Because a
   flow-matching / Euler step is pointwise, rolling the denoiser's input and output is the
   same as rolling the latents themselves (Matrix-3D) followed by a final un-roll: the
   content stays where it was, nothing needs undoing afterwards.
2. Wrap-aware decoding: :func:`wrap_decode` decodes the latent with ``pad_cols`` wrapped
   columns on each side and cross-fades the duplicated pixels, :func:`blended_decode`
   (Argus-style) decodes the latent and its half-turned copy and blends them by distance
   to each decode's own seam.

:func:`seam_score` measures a seam: mean |leftmost - rightmost column| divided by the mean
|difference of neighbouring interior columns|. A seamless panorama scores about 1 (its
wrap-around neighbours differ like any other neighbours); a visible seam scores well above 1.
It is a statistic of one image: to compare decoders, compare with a periodic reference.

Latitude (the poles) is left as the model produces it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

DecodeFn = Callable[[Tensor], Tensor]  # latents [..., w] -> pixels [..., W] with W = s * w


# --------------------------------------------------------------------------- latent ops


def roll_latents(latents: Tensor, shift: int) -> Tensor:
    """Roll latents circularly along the width (last) dimension.

    latents: Tensor  # [B, C, h, w] or [B, C, F, h, w]
    shift: columns; positive moves content to the right (column j goes to j + shift).
    """
    return torch.roll(latents, shifts=int(shift), dims=-1)


def circular_pad(latents: Tensor, pad_cols: int) -> Tensor:
    """Append the last ``pad_cols`` columns on the left and the first ones on the right.

    latents: Tensor  # [..., w]  ->  [..., w + 2 * pad_cols]
    """
    w = latents.shape[-1]
    if not 0 <= pad_cols <= w:
        raise ValueError(f"pad_cols must be in [0, {w}] for a latent of width {w}, got {pad_cols}")
    if pad_cols == 0:
        return latents
    return torch.cat((latents[..., w - pad_cols :], latents, latents[..., :pad_cols]), dim=-1)


def _scale_factor(decoded_width: int, latent_width: int) -> int:
    if decoded_width % latent_width:
        raise ValueError(f"decoded width {decoded_width} is not a multiple of the latent width {latent_width}")
    return decoded_width // latent_width


# --------------------------------------------------------------------------- decoding


def wrap_decode(decode_fn: DecodeFn, latents: Tensor, pad_cols: int = 2) -> Tensor:
    """Decode with wrapped latent columns and blend the duplicates into a seamless result.

    decode_fn: latents [..., w'] -> pixels [..., W'] with W' = s * w' (any fixed s)
    latents: Tensor  # [B, C, h, w] or [B, C, F, h, w]
    returns: Tensor  # decode_fn's layout with width W = s * w

    The latent is padded circularly by ``pad_cols`` columns on both sides and decoded once, so
    every border pixel is decoded with its true wrap-around neighbours. Each output column then
    appears twice near the seam (once in the body, once in a pad); the copies are cross-faded
    with weights that are 0 on the outer ``pad_cols / 2`` latent columns of the padded decode
    (decoded without context) and ramp to 1 at ``1.5 * pad_cols`` columns in (0.5 each at the
    seam). Both copies are continuous across the seam and the weights are continuous, so the
    result is continuous across longitude 180°.
    """
    w = latents.shape[-1]
    if pad_cols <= 0:
        return decode_fn(latents)
    pad_cols = min(int(pad_cols), w // 2)
    decoded = decode_fn(circular_pad(latents, pad_cols))  # [..., s * (w + 2p)]
    total = decoded.shape[-1]
    s = _scale_factor(total, w + 2 * pad_cols)
    width, pad_px = s * w, s * pad_cols
    k = torch.arange(total, device=decoded.device, dtype=torch.float64)
    edge = torch.minimum(k, total - 1 - k) + 0.5
    weight = ((edge - 0.5 * pad_px) / pad_px).clamp(0.0, 1.0).to(decoded.dtype)  # [W + 2 p s]
    target = torch.remainder(torch.arange(total, device=decoded.device) - pad_px, width)
    out_shape = (*decoded.shape[:-1], width)
    num = torch.zeros(out_shape, dtype=decoded.dtype, device=decoded.device).index_add_(-1, target, decoded * weight)
    den = torch.zeros(width, dtype=decoded.dtype, device=decoded.device).index_add_(0, target, weight)
    return num / den


def blended_decode(decode_fn: DecodeFn, latents: Tensor) -> Tensor:
    """Argus-style decoding: decode the latent and its 180°-rolled copy, blend by seam distance.

    latents: Tensor  # [B, C, h, w] or [B, C, F, h, w]
    returns: Tensor  # decode_fn's layout, width W = s * w

    Decode A has its seam at the image border; decode B (latent rolled by w // 2 columns,
    pixels rolled back) has its seam in the middle. Each pixel takes A and B weighted by its
    circular distance to the other decode's seam, so neither seam survives.
    """
    w = latents.shape[-1]
    half = w // 2
    first = decode_fn(latents)
    width = first.shape[-1]
    s = _scale_factor(width, w)
    second = torch.roll(decode_fn(roll_latents(latents, half)), shifts=-half * s, dims=-1)
    x = torch.arange(width, device=first.device, dtype=torch.float64) + 0.5
    dist_a = torch.minimum(x, width - x)  # to A's seam at x = 0 / W
    seam_b = float(width - half * s)
    dist_b = torch.abs(x - seam_b)
    dist_b = torch.minimum(dist_b, width - dist_b)
    weight_a = (dist_a / (dist_a + dist_b)).to(first.dtype)
    return first * weight_a + second * (1 - weight_a)


# --------------------------------------------------------------------------- metric


def seam_score(image, *, width_dim: int = -1, eps: float = 1e-12) -> float:
    """Seam visibility of a panorama: about 1 when the wrap-around step looks like any other step.

    Well above 1: a visible seam. Below 1: the border columns are unusually alike (e.g. both
    dimmed by a decoder's zero padding), not better; compare with a seamless reference when one
    exists (the benchmarks also report the error to a periodic reference decode).

    image: Tensor or np.ndarray  # [..., H, W] (channels first), or pass width_dim=-2 for [H, W, 3]
    returns mean |image[..., 0] - image[..., W-1]| / mean |image[..., j+1] - image[..., j]|,
    the denominator over all interior neighbouring column pairs j = 0 .. W-2.
    """
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image).to(torch.float64)
    x = x.movedim(width_dim, -1)
    if x.shape[-1] < 3:
        raise ValueError(f"seam_score needs a width of at least 3 columns, got {x.shape[-1]}")
    seam = (x[..., 0] - x[..., -1]).abs().mean()
    interior = (x[..., 1:] - x[..., :-1]).abs().mean()
    return float(seam / (interior + eps))


# --------------------------------------------------------------------------- rolls while denoising


def late_roll_steps(num_steps: int, late_fraction: float) -> int:
    """Index of the first step that is rolled: the last ``late_fraction`` of the steps are."""
    if not 0.0 <= late_fraction <= 1.0:
        raise ValueError(f"late_fraction must be in [0, 1], got {late_fraction}")
    return num_steps - int(math.floor(late_fraction * num_steps + 1e-9))


@contextlib.contextmanager
def late_step_rolls(
    denoiser: torch.nn.Module,
    *,
    num_steps: int,
    late_fraction: float,
    width: int,
    generator: torch.Generator | None,
    to_grid: Callable[[Tensor], Tensor] | None = None,
    from_grid: Callable[[Tensor], Tensor] | None = None,
    input_name: str = "hidden_states",
    shifts: list[int] | None = None,
) -> Iterator[list[int]]:
    """Roll the denoiser's input and output circularly in the late denoising steps.

    denoiser: the transformer a diffusers pipeline calls as ``denoiser(hidden_states=..., timestep=...)``
    num_steps, late_fraction: the last ``floor(late_fraction * num_steps)`` steps are rolled
    width: width of the grid returned by ``to_grid`` (latent columns, or packed-token columns)
    generator: CPU generator for the random shifts (uniform in [0, width))
    to_grid / from_grid: convert the denoiser's input/output to a width-last layout and back
        (identity for [B, C, (F,) h, w]; FLUX unpacks [B, h*w, C] tokens to [B, C, h, w])
    shifts: record of the shift used at every step (0 when not rolled), yielded for inspection

    Steps are counted by distinct ``timestep`` values, so the two calls of classifier-free
    guidance in one step share one shift. The content stays in place: what the pipeline holds
    is never rolled, only what the denoiser sees (equivalent to rolling the latents, because
    the scheduler step is pointwise).
    """
    to_grid = to_grid or (lambda x: x)
    from_grid = from_grid or (lambda x: x)
    first_rolled = late_roll_steps(num_steps, late_fraction)
    record = [] if shifts is None else shifts
    seen: dict[float, int] = {}
    current = {"shift": 0}

    def pre_hook(module, args, kwargs):
        t = kwargs.get("timestep")
        key = float(t.flatten()[0]) if isinstance(t, Tensor) else float(t) if t is not None else float(len(seen))
        if key not in seen:
            step = len(seen)
            shift = 0
            if step >= first_rolled:
                shift = int(torch.randint(0, width, (1,), generator=generator).item())
            seen[key] = shift
            record.append(shift)
        current["shift"] = seen[key]
        if current["shift"] == 0:
            return None
        if input_name not in kwargs:
            raise RuntimeError(f"late_step_rolls expects the denoiser to be called with {input_name}=...")
        kwargs = dict(kwargs)
        kwargs[input_name] = from_grid(roll_latents(to_grid(kwargs[input_name]), current["shift"]))
        return args, kwargs

    def unroll(x: Tensor) -> Tensor:
        return from_grid(roll_latents(to_grid(x), -current["shift"]))

    def post_hook(module, args, kwargs, output):
        if current["shift"] == 0:
            return None
        if isinstance(output, Tensor):
            return unroll(output)
        if isinstance(output, tuple):
            return (unroll(output[0]), *output[1:])
        output.sample = unroll(output.sample)  # diffusers Transformer2DModelOutput
        return output

    handles = [
        denoiser.register_forward_pre_hook(pre_hook, with_kwargs=True),
        denoiser.register_forward_hook(post_hook, with_kwargs=True),
    ]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()
