"""Image metrics shared by evaluation and training losses: PSNR and SSIM (pure PyTorch).

SSIM follows Wang et al. 2004: an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2,
C2 = (0.03 L)^2 with L = 1, computed per channel on the 'valid' region (no padding) and
averaged. It is differentiable, so the splat optimiser uses the same function as its loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None, max_value: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB over all elements (or where ``mask`` is true).

    pred, target: Tensor  # same shape, values in [0, max_value]
    mask: Tensor | None   # broadcastable to pred, bool
    """
    err = (pred.to(torch.float64) - target.to(torch.float64)) ** 2
    if mask is not None:
        mask = mask.expand_as(err)
        if not bool(mask.any()):
            raise ValueError("psnr: the mask selects no pixel")
        mse = err[mask].mean()
    else:
        mse = err.mean()
    return 10.0 * torch.log10(max_value**2 / mse.clamp_min(1e-20))


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    window = g[:, None] * g[None, :]
    return window.expand(channels, 1, size, size).contiguous()


def ssim(pred: Tensor, target: Tensor, window_size: int = 11, sigma: float = 1.5, reduce: bool = True) -> Tensor:
    """Structural similarity of images in [0, 1].

    pred, target: Tensor  # [B, C, H, W] with H, W >= window_size
    returns: Tensor  # scalar mean SSIM (or [B] per image when reduce=False)
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"ssim expects two [B, C, H, W] tensors of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if min(pred.shape[-2:]) < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size}, got {tuple(pred.shape[-2:])}")
    c = pred.shape[1]
    window = _gaussian_window(window_size, sigma, c, pred.device, pred.dtype)
    conv = lambda x: torch.nn.functional.conv2d(x, window, groups=c)  # noqa: E731
    mu_x, mu_y = conv(pred), conv(target)
    sigma_x = conv(pred * pred) - mu_x**2
    sigma_y = conv(target * target) - mu_y**2
    sigma_xy = conv(pred * target) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2))
    per_image = ssim_map.flatten(1).mean(1)
    return per_image.mean() if reduce else per_image


def psnr_from_noise_std(std: float, max_value: float = 1.0) -> float:
    """PSNR of additive Gaussian noise of standard deviation ``std`` (for tests and sanity checks)."""
    return 10.0 * math.log10(max_value**2 / std**2)
