"""Merge per-view log-distances of perspective crops into one equirect distance, in the gradient domain.

Each view's depth network output is right up to its own scale (an unknown offset in log
space, and for metric models a small per-view scale error). Averaging values would leave
steps at the view borders; averaging *gradients* does not: log-distance differences between
neighbouring panorama pixels do not depend on a view's offset. So

1. each view's log-distance is warped to the equirect (bilinear; a pixel is valid for a view
   when the four samples around it are valid), with a weight that falls linearly to 0 at the
   view's border;
2. for every pair of neighbouring equirect pixels (horizontal pairs wrap around in
   longitude, so the result is continuous across the ±180° seam) the weighted mean of the
   views' log-distance differences is the target gradient, its weight the summed view weight;
   pixel pairs no view sees get a weak smoothness term (target 0), which fills holes smoothly;
3. the log-distance x is the least-squares fit  min Σ_e w_e (x_q - x_p - g_e)^2
   + λ Σ_p (x_p - x0_p)^2  where x0 is the upsampled solution of the next coarser level
   (coarse-to-fine pyramid, halving down to ``min_height`` rows). The coarsest levels (up to
   ``direct_max_pixels``) are solved directly (scipy sparse LU, on the CPU), finer ones by
   Jacobi-preconditioned conjugate gradients with a matrix-free 5-point operator warm-started
   from x0 (runs on the GPU when the data is there);
4. the free constant is set so that the weighted mean residual to the views is 0 (for a metric
   model: the views' mean metric scale).

Pure PyTorch + scipy; no geometry is re-implemented (``cameras.project_to_view``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from matrix_world.cameras import PerspectiveView, project_to_view
from matrix_world.equirect import equirect_directions, resize_equirect


@dataclass
class MergeConfig:
    min_height: int = 16  # coarsest pyramid level (rows)
    smooth_weight: float = 1e-3  # weight of the smoothness term where no view sees an edge (relative to 1 = one centred view)
    anchor_weight: float = 1e-3  # λ: pull towards the coarser level's solution
    cg_iterations: int = 400  # per level, at most
    cg_tolerance: float = 1e-6  # relative residual
    # levels up to this many pixels (60 x 120) are solved directly: scipy's sparse LU runs on the CPU and
    # took ~1 s at 240 x 480 (once per reconstruction keyframe); CG there takes ~220 cheap iterations and
    # gives the same log-distance to 6e-6 (12 views merged at 480 rows: 5.0 s -> 3.3 s on a CPU core)
    direct_max_pixels: int = 1 << 13


def pool_view(log_d: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Halve per-view maps by masked 2x2 averaging: [K, V, h, w] -> [K, V, h/2, w/2]."""
    k, n, h, w = log_d.shape
    v = valid.to(log_d.dtype).reshape(k * n, 1, h, w)
    num = F.avg_pool2d(torch.where(valid, log_d, torch.zeros_like(log_d)).reshape(k * n, 1, h, w), 2, ceil_mode=True)
    den = F.avg_pool2d(v, 2, ceil_mode=True)
    pooled = torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))
    return pooled.reshape(k, n, *pooled.shape[-2:]), (den > 0.999).reshape(k, n, *den.shape[-2:])


def warp_views(log_d: Tensor, valid: Tensor, views: list[PerspectiveView], height: int) -> tuple[Tensor, Tensor]:
    """Warp per-view log-distances to an equirect of the given height.

    log_d: Tensor  # [K, V, h, w] log distance per view pixel (anything where invalid), K panoramas
    valid: Tensor  # [K, V, h, w] bool
    views: the V crops (their width/height are rescaled to the maps' size), the same for all K
    returns (values [K, V, H, 2H], weights [K, V, H, 2H]; weight 0 where the view has no valid sample)
    """
    k, n, h, w = log_d.shape
    dirs = equirect_directions(height, device=log_d.device, dtype=torch.float64)  # [H, W, 3]
    values, weights = [], []
    clean = torch.where(valid, log_d, torch.zeros_like(log_d))
    for i, view in enumerate(views):  # one projection per view serves all K panoramas
        scaled = PerspectiveView(view.yaw, view.pitch, view.fov, w, h)
        px, py, in_front = project_to_view(dirs, scaled)
        inside = in_front & (px >= 0.5) & (px <= w - 0.5) & (py >= 0.5) & (py <= h - 0.5)
        grid = torch.stack((px / w * 2 - 1, py / h * 2 - 1), dim=-1)[None].to(log_d.dtype)  # [1, H, W, 2]
        stack = torch.cat((clean[:, i], valid[:, i].to(log_d.dtype)))[None]  # [1, 2K, h, w]: values, then valid
        sampled = F.grid_sample(stack, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        ok = inside & (sampled[k:] > 0.999)  # [K, H, W]
        edge = torch.minimum(torch.minimum(px, w - px) / (w / 2), torch.minimum(py, h - py) / (h / 2))
        weight = torch.where(ok, edge.clamp(0, 1).to(log_d.dtype) + 1e-3, torch.zeros_like(sampled[:k]))
        values.append(torch.where(ok, sampled[:k], torch.zeros_like(sampled[:k])))
        weights.append(weight)
    return torch.stack(values, dim=1), torch.stack(weights, dim=1)


def edge_targets(values: Tensor, weights: Tensor, smooth_weight: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Target gradients and weights of horizontal (wrapping) and vertical neighbour pairs.

    values, weights: [K, V, H, W]
    returns gh, wh [K, H, W] (pair (i, j)-(i, j+1 mod W)), gv, wv [K, H-1, W] (pair (i, j)-(i+1, j))
    """
    nb_v, nb_w = torch.roll(values, -1, dims=-1), torch.roll(weights, -1, dims=-1)
    pair_w = torch.minimum(weights, nb_w)
    wh = pair_w.sum(-3)
    gh = (pair_w * (nb_v - values)).sum(-3) / wh.clamp_min(1e-12)
    pair_w = torch.minimum(weights[..., :-1, :], weights[..., 1:, :])
    wv = pair_w.sum(-3)
    gv = (pair_w * (values[..., 1:, :] - values[..., :-1, :])).sum(-3) / wv.clamp_min(1e-12)
    wh = torch.where(wh > 0, wh, torch.full_like(wh, smooth_weight))
    wv = torch.where(wv > 0, wv, torch.full_like(wv, smooth_weight))
    gh = torch.where(wh > smooth_weight, gh, torch.zeros_like(gh))
    gv = torch.where(wv > smooth_weight, gv, torch.zeros_like(gv))
    return gh, wh, gv, wv


def apply_operator(x: Tensor, wh: Tensor, wv: Tensor, anchor: float) -> Tensor:
    """M x for M = Σ_e w_e (e_q - e_p)(e_q - e_p)^T + anchor I, on [K, H, W] grids (matrix-free)."""
    dh = wh * (torch.roll(x, -1, dims=-1) - x)  # flow along each horizontal pair
    out = anchor * x - dh + torch.roll(dh, 1, dims=-1)
    dv = wv * (x[..., 1:, :] - x[..., :-1, :])
    out[..., :-1, :] -= dv
    out[..., 1:, :] += dv
    return out


def rhs(gh: Tensor, wh: Tensor, gv: Tensor, wv: Tensor, anchor: float, x0: Tensor) -> Tensor:
    """b = Σ_e w_e g_e (e_q - e_p) + anchor x0."""
    fh = wh * gh
    b = anchor * x0 - fh + torch.roll(fh, 1, dims=-1)
    fv = wv * gv
    b[..., :-1, :] -= fv
    b[..., 1:, :] += fv
    return b


def diagonal(wh: Tensor, wv: Tensor, anchor: float) -> Tensor:
    d = anchor + wh + torch.roll(wh, 1, dims=-1)
    d = d.clone()
    d[..., :-1, :] += wv
    d[..., 1:, :] += wv
    return d


def solve_direct(gh, wh, gv, wv, anchor: float, x0: Tensor) -> Tensor:
    """Exact solution of the normal equations with a sparse LU (scipy) on small grids.

    gh, wh: [K, H, W]; gv, wv: [K, H-1, W]; x0: [K, H, W] -> x [K, H, W] (one CPU copy per level,
    one LU per panorama)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    k, h, w = wh.shape
    idx = np.arange(h * w).reshape(h, w)
    p_h, q_h = idx.ravel(), np.roll(idx, -1, axis=1).ravel()
    p_v, q_v = idx[:-1].ravel(), idx[1:].ravel()
    p = np.concatenate((p_h, p_v))
    q = np.concatenate((q_h, q_v))
    rows = np.concatenate((p, q, p, q))
    cols = np.concatenate((p, q, q, p))
    wh_np, wv_np = wh.double().cpu().numpy().reshape(k, -1), wv.double().cpu().numpy().reshape(k, -1)
    b = rhs(gh.double(), wh.double(), gv.double(), wv.double(), anchor, x0.double()).cpu().numpy().reshape(k, -1)
    out = np.empty((k, h * w))
    for i in range(k):
        wt = np.concatenate((wh_np[i], wv_np[i]))
        vals = np.concatenate((wt, wt, -wt, -wt))
        m = sp.coo_matrix((vals, (rows, cols)), shape=(h * w, h * w)).tocsc() + anchor * sp.identity(h * w, format="csc")
        out[i] = spla.spsolve(m, b[i])
    return torch.from_numpy(out.reshape(k, h, w)).to(device=x0.device, dtype=x0.dtype)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-panorama inner product of [K, H, W] grids -> [K, 1, 1]."""
    return (a * b).sum(dim=(-2, -1), keepdim=True)


def solve_cg(gh, wh, gv, wv, anchor: float, x0: Tensor, *, iterations: int, tolerance: float) -> tuple[Tensor, list[int]]:
    """Jacobi-preconditioned conjugate gradients on the normal equations, warm-started at x0.

    All tensors [K, ...] (K independent panoramas, one operator launch for all); each panorama stops
    at its own convergence (relative residual <= tolerance): its x, r, p freeze there, so the result
    per panorama is that of solving it alone. returns (x [K, H, W], iterations per panorama)."""
    b = rhs(gh, wh, gv, wv, anchor, x0)
    inv_d = 1.0 / diagonal(wh, wv, anchor)
    x = x0.clone()
    r = b - apply_operator(x, wh, wv, anchor)
    z = inv_d * r
    p = z.clone()
    rz = _dot(r, z)
    limit = tolerance * _dot(b, b).sqrt().clamp_min(1e-30)  # [K, 1, 1]
    active = torch.ones_like(rz, dtype=torch.bool)  # [K, 1, 1]: not converged yet
    counts = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(iterations):
        mp = apply_operator(p, wh, wv, anchor)
        alpha = torch.where(active, rz / _dot(p, mp).clamp_min(1e-30), torch.zeros_like(rz))
        x = x + alpha * p
        r = r - alpha * mp
        counts += active.view(-1)
        active = active & (_dot(r, r).sqrt() > limit)
        if not bool(active.any()):
            break
        z = inv_d * r
        rz_new = _dot(r, z)
        p = torch.where(active, z + (rz_new / rz) * p, p)
        rz = torch.where(active, rz_new, rz)
    return x, counts.tolist()


def merge_log_distances(
    log_d: Tensor,
    valid: Tensor,
    views: list[PerspectiveView],
    height: int,
    config: MergeConfig | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Merge V perspective log-distance maps into one equirect log-distance, for one or K panoramas.

    log_d: Tensor  # [V, h, w] or [K, V, h, w]: log of the distance along each view pixel's ray
    valid: Tensor  # same shape, bool
    views: the V crops, in the panorama camera's frame (cameras.PerspectiveView), the same for all K
    height: output height H (width 2H)
    returns (log_distance [H, 2H] or [K, H, 2H] float32, valid (same shape) bool: seen by at least
    one view, info). The K panoramas are solved together (one warp per view, one operator launch per
    CG step for all) and each gives what it gives merged alone.
    """
    config = config or MergeConfig()
    single = log_d.dim() == 3
    if single:
        log_d, valid = log_d[None], valid[None]
    if log_d.shape != valid.shape or log_d.dim() != 4 or len(views) != log_d.shape[1]:
        raise ValueError(f"expected log_d and valid [V, h, w] or [K, V, h, w] with V = {len(views)} views, "
                         f"got {tuple(log_d.shape)} and {tuple(valid.shape)}")
    k = log_d.shape[0]
    dtype = torch.float64 if log_d.device.type == "cpu" else torch.float32
    log_d = log_d.to(dtype)
    valid = valid & torch.isfinite(log_d)
    # pyramid: level 0 = finest
    heights = [height]
    while heights[-1] // 2 >= config.min_height and heights[-1] % 2 == 0:
        heights.append(heights[-1] // 2)
    view_pyramid = [(log_d, valid)]
    for level in range(1, len(heights)):
        ratio = log_d.shape[-1] / (2 * heights[0])  # view pixels per equirect pixel at level 0
        prev = view_pyramid[-1]
        if prev[0].shape[-1] / (2 * heights[level]) > ratio and min(prev[0].shape[-2:]) >= 8:
            view_pyramid.append(pool_view(*prev))
        else:
            view_pyramid.append(prev)
    x = None
    iterations: list[list[int]] = []
    for level in reversed(range(len(heights))):
        h = heights[level]
        values, weights = warp_views(*view_pyramid[level], views, h)  # [K, V, h, 2h]
        gh, wh, gv, wv = edge_targets(values, weights, config.smooth_weight)
        if x is None:
            x0 = torch.zeros(k, h, 2 * h, dtype=dtype, device=log_d.device)
            anchor = 1e-6
        else:
            x0 = resize_equirect(x[:, None], h, mode="bilinear")[:, 0]
            anchor = config.anchor_weight
        if h * 2 * h <= config.direct_max_pixels:
            x = solve_direct(gh, wh, gv, wv, anchor, x0)
            iterations.append([0] * k)
        else:
            x, its = solve_cg(gh, wh, gv, wv, anchor, x0, iterations=config.cg_iterations, tolerance=config.cg_tolerance)
            iterations.append(its)
        if level == 0:
            seen = weights.sum(-3) > 0
            # 4. the free constant: weighted mean residual to the views is zero
            resid = (weights * (values - x[:, None])).sum(dim=(-3, -2, -1)) / weights.sum(dim=(-3, -2, -1)).clamp_min(1e-12)
            x = x + resid[:, None, None]
    assert x is not None  # the loop always ends with level 0
    per_level = [list(its) for its in zip(*iterations)]  # [K][levels]
    info = {"levels": heights[::-1], "cg_iterations": per_level[0] if single else per_level, "views": len(views)}
    if single:
        return x[0].float(), seen[0], info
    return x.float(), seen, info


def views_from_equirect(distance: Tensor, views: list[PerspectiveView]) -> Tensor:
    """Distances seen by each view, sampled from an equirect distance [H, W] -> [V, h, w] (for tests)."""
    from matrix_world.cameras import crop_perspective

    out = [crop_perspective(distance[None, None].double(), v)[0][0, 0] for v in views]
    return torch.stack(out)


def radial_distance(points: Tensor) -> Tensor:
    """Distance along the ray from a camera-frame point map [..., 3] -> [...] (= ||points||)."""
    return points.norm(dim=-1)


__all__ = ["MergeConfig", "merge_log_distances", "warp_views", "edge_targets", "radial_distance", "views_from_equirect"]
