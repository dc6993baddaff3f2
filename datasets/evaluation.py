"""Evaluation: image metrics on perspective crops of panoramas, scaffold coverage, pose error.

Image metrics are computed on perspective crops cut from both panoramas with the same
views (a panorama's poles are oversampled, so metrics on the raw equirect would weight
them wrongly):

* ``"12"``: yaw 0/90/180/270 x pitch 0/+45/-45, FOV 90 (``cameras.crops_12``, the views the
  Matrix-3D optimisation trains on);
* ``"horizontal"``: the four FOV 90 views at pitch 0 (our reading of the paper's 90-degree
  crops for evaluation);
* ``"cube"``: the six cube faces.

PSNR and SSIM come from ``matrix_world.metrics``; reported values are means over all
crops of all frames of per-crop PSNR / SSIM. LPIPS runs only when the ``lpips`` package AND
its backbone weights are already on this machine (torch hub cache); otherwise it is
reported as ``None`` with a message saying why. It is never approximated.

Pose error (``pose_error``): predicted c2w poses are first aligned to the ground truth, then
R_err = mean geodesic angle between rotations (radians; degrees also given) and T_err =
mean distance between camera centres (ground-truth units). Alignment methods:

* ``"umeyama"`` (default): least-squares similarity (Umeyama 1991) fitted to the camera
  centres AND to points one spread-length along each camera axis, so that orientations
  also constrain the rotation (centres alone are degenerate on straight paths). The scale
  is the ratio of the centres' RMS spreads (``with_scale=False`` keeps scale 1).
* ``"first"``: the rigid transform that maps the first predicted pose onto the first
  ground-truth pose, scaled by the ratio of path lengths (``with_scale``).
* ``"none"``: compare as given.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from matrix_world.cameras import PerspectiveView, crop_perspective, crops_12, cube_faces
from matrix_world.metrics import psnr, ssim

# --------------------------------------------------------------------------- crops


def view_set(name: str | list[PerspectiveView], size: int = 256) -> list[PerspectiveView]:
    """Named crop set ("12", "horizontal", "cube") at ``size`` x ``size``, or a list passed through."""
    if not isinstance(name, str):
        return list(name)
    if name == "12":
        return crops_12(size)
    if name == "horizontal":
        return [PerspectiveView(yaw, 0.0, 90.0, size, size) for yaw in (0.0, 90.0, 180.0, 270.0)]
    if name == "cube":
        return cube_faces(size)
    raise ValueError(f"unknown view set {name!r}; expected '12', 'horizontal', 'cube' or a list of PerspectiveView")


def as_bchw(images) -> Tensor:
    """[H, W, 3] / [B, H, W, 3] numpy-or-torch (channels last) or [B, 3, H, W] torch -> [B, 3, H, W] float32."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"expected images [H, W, 3], [B, H, W, 3] or [B, 3, H, W], got {tuple(x.shape)}")
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return x.contiguous()


def perspective_crops(panos, views: str | list[PerspectiveView] = "12", size: int = 256, mode: str = "bilinear") -> Tensor:
    """Cut the same perspective views from every panorama: -> [B, V, 3, size, size]."""
    x = as_bchw(panos)
    crops = [crop_perspective(x, v, mode=mode)[0] for v in view_set(views, size)]
    return torch.stack(crops, 1).clamp(0, 1)


# --------------------------------------------------------------------------- LPIPS

_LPIPS_WEIGHTS = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}


def load_lpips(net: str = "alex", device="cpu"):
    """-> (model, None) when LPIPS can run offline here, else (None, reason)."""
    if importlib.util.find_spec("lpips") is None:
        return None, "LPIPS skipped: the 'lpips' package is not installed (pip install lpips; it needs torchvision)"
    weights = Path(torch.hub.get_dir()) / "checkpoints" / _LPIPS_WEIGHTS[net]
    if not weights.is_file():
        return None, f"LPIPS skipped: backbone weights {weights} are not on this machine (no downloads here)"
    import lpips

    try:
        model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
    except (OSError, RuntimeError) as exc:
        return None, f"LPIPS skipped: could not load its weights offline ({exc})"
    return model, None


# --------------------------------------------------------------------------- image metrics


def image_metrics(pred, target, views: str | list[PerspectiveView] = "12", size: int = 256, *, lpips: bool = True,
                  mask=None, mode: str = "bilinear", device="cpu", batch: int = 32) -> dict:
    """PSNR / SSIM (/ LPIPS) between panoramas on perspective crops.

    pred, target: panoramas [B, H, W, 3] / [H, W, 3] / [B, 3, H, W] in [0, 1].
    mask: optional [B, H, W] bool of pixels to score (PSNR only; crops of the mask pick
        the pixels, SSIM/LPIPS ignore it).
    mode: crop sampling, "bilinear" (default) or "nearest" (copies pixels: keeps per-pixel
        noise statistics intact).
    Returns {"psnr", "ssim", "lpips" (float or None), "lpips_note" (why None), "views", "crops"}.
    """
    p = perspective_crops(pred, views, size, mode).flatten(0, 1)
    t = perspective_crops(target, views, size, mode).flatten(0, 1)
    if p.shape != t.shape:
        raise ValueError(f"pred and target crops differ: {tuple(p.shape)} vs {tuple(t.shape)}")
    m = None
    if mask is not None:
        mk = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask).float()
        mk = mk[None] if mk.dim() == 2 else mk
        m = (perspective_crops(mk[:, None].expand(-1, 3, -1, -1), views, size, mode).flatten(0, 1) > 0.999)[:, :1]
    psnrs, ssims = [], []
    for i in range(0, len(p), batch):
        pp, tt = p[i : i + batch].to(device), t[i : i + batch].to(device)
        for k in range(len(pp)):
            if m is None:
                psnrs.append(float(psnr(pp[k], tt[k])))
            elif bool(m[i + k].any()):
                psnrs.append(float(psnr(pp[k], tt[k], m[i + k].to(device))))
        ssims += ssim(pp, tt, reduce=False).tolist()
    out = {"psnr": float(np.mean(psnrs)) if psnrs else math.nan, "ssim": float(np.mean(ssims)), "lpips": None,
           "lpips_note": None, "views": views if isinstance(views, str) else "custom", "crops": len(p)}
    if lpips:
        model, note = load_lpips(device=device)
        out["lpips_note"] = note
        if model is not None:
            with torch.no_grad():
                vals = [model(p[i : i + batch].to(device) * 2 - 1, t[i : i + batch].to(device) * 2 - 1).flatten()
                        for i in range(0, len(p), batch)]
            out["lpips"] = float(torch.cat(vals).mean())
    else:
        out["lpips_note"] = "LPIPS not requested"
    return out


def scaffold_coverage(mask, solid_angle: bool = False) -> np.ndarray:
    """Fraction of known pixels per frame: mask [F, H, W] (or [H, W]) bool -> [F] float.

    solid_angle=True weights each row by cos(latitude), i.e. the fraction of the sphere.
    """
    m = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask).astype(np.float64)
    if m.ndim == 2:
        m = m[None]
    if not solid_angle:
        return m.mean(axis=(1, 2))
    h = m.shape[1]
    w = np.cos((0.5 - (np.arange(h) + 0.5) / h) * math.pi)
    return (m.mean(axis=2) * w).sum(1) / w.sum()


# --------------------------------------------------------------------------- pose error


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ~ s R src + t for points [N, 3] -> (s, R [3, 3], t [3])."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2, 2] = -1.0
    rot = u @ d @ vt
    var_s = (xs**2).sum() / len(src)
    s = float(np.trace(np.diag(sig) @ d) / var_s) if with_scale and var_s > 1e-18 else 1.0
    return s, rot, mu_d - s * rot @ mu_s


def _spread(c: np.ndarray) -> float:
    return float(np.sqrt(((c - c.mean(0)) ** 2).sum(1).mean()))


def align_poses(c2w_pred, c2w_gt, method: str = "umeyama", with_scale: bool = True) -> np.ndarray:
    """Align predicted poses [F, 4, 4] to the ground truth (see module docstring) -> [F, 4, 4]."""
    p = np.asarray(c2w_pred.cpu() if isinstance(c2w_pred, Tensor) else c2w_pred, dtype=np.float64)
    g = np.asarray(c2w_gt.cpu() if isinstance(c2w_gt, Tensor) else c2w_gt, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 3 or p.shape[1:] != (4, 4):
        raise ValueError(f"pose arrays must both be [F, 4, 4], got {p.shape} and {g.shape}")
    cp, cg = p[:, :3, 3], g[:, :3, 3]
    if method == "none":
        return p.copy()
    if method == "first":
        rot = g[0, :3, :3] @ p[0, :3, :3].T
        lp, lg = np.linalg.norm(np.diff(cp, axis=0), axis=1).sum(), np.linalg.norm(np.diff(cg, axis=0), axis=1).sum()
        s = lg / lp if with_scale and lp > 1e-12 else 1.0
        t = cg[0] - s * rot @ cp[0]
    elif method == "umeyama":
        sp, sg = _spread(cp), _spread(cg)
        s0 = sg / sp if with_scale and sp > 1e-12 and sg > 1e-12 else 1.0
        lg = sg if sg > 1e-12 else 1.0
        lp = lg / s0
        src = np.concatenate([cp] + [cp + lp * p[:, :3, k] for k in range(3)])
        dst = np.concatenate([cg] + [cg + lg * g[:, :3, k] for k in range(3)])
        s, rot, t = umeyama(src, dst, with_scale)
    else:
        raise ValueError(f"unknown alignment {method!r}; expected 'umeyama', 'first' or 'none'")
    out = p.copy()
    out[:, :3, :3] = rot @ p[:, :3, :3]
    out[:, :3, 3] = s * cp @ rot.T + t
    return out


def rotation_angle(r: np.ndarray) -> np.ndarray:
    """Geodesic angle of rotation matrices [..., 3, 3] in radians.

    Uses ||R - I||_F = 2 sqrt(2) sin(theta / 2), accurate for small angles (arccos of the
    trace loses half the digits there).
    """
    dev = np.linalg.norm(r - np.eye(3), axis=(-2, -1))
    return 2.0 * np.arcsin(np.clip(dev / (2.0 * np.sqrt(2.0)), 0.0, 1.0))


def pose_error(c2w_pred, c2w_gt, align: str = "umeyama", with_scale: bool = True) -> dict:
    """R_err / T_err between two trajectories [F, 4, 4] after alignment.

    Returns {"R_err" (mean radians), "R_err_deg", "T_err" (mean, ground-truth units),
    "R_per_frame" [F], "T_per_frame" [F], "align"}.
    """
    a = align_poses(c2w_pred, c2w_gt, align, with_scale)
    g = np.asarray(c2w_gt.cpu() if isinstance(c2w_gt, Tensor) else c2w_gt, dtype=np.float64)
    r = rotation_angle(np.swapaxes(g[:, :3, :3], -1, -2) @ a[:, :3, :3])
    t = np.linalg.norm(g[:, :3, 3] - a[:, :3, 3], axis=1)
    return {"R_err": float(r.mean()), "R_err_deg": float(np.degrees(r.mean())), "T_err": float(t.mean()),
            "R_per_frame": r, "T_per_frame": t, "align": align}
