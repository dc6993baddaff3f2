"""Backend ``optimize``: 3D Gaussian splatting over 12 perspective crops per keyframe.

Matrix-3D's optimisation pipeline (FACTS §C), in three steps:

1. keyframes with aligned distances (:mod:`matrix_world.reconstruction.keyframes`);
2. initial Gaussians from the keyframes' points (:func:`lift_keyframes`, with a sky shell);
3. each keyframe cut into the 12 crops of :func:`matrix_world.cameras.crops_12` (yaw
   0/90/180/270 x pitch 0/+-45, FOV 90) with their exact poses
   ``c2w_crop = c2w_keyframe @ [R_y(yaw) R_x(pitch) | 0]``; then 3DGS training with the loss
   ``0.8 L1 + 0.2 (1 - SSIM)`` (SSIM of :mod:`matrix_world.metrics`), Adam per parameter, and
   densification / pruning by gsplat's ``DefaultStrategy`` (clone small / split large
   Gaussians with high screen-space gradients, prune transparent ones).

Rendering goes through :func:`matrix_world.reconstruction.render.rasterize`: gsplat's CUDA
rasterizer on a GPU, its pure-PyTorch reference on CPU. ``DefaultStrategy`` works with both:
it reads ``means2d`` (with its gradient), ``radii`` [C, N, 2], ``width``, ``height`` and
``n_cameras`` from the rasterizer's ``info``, which the CPU reference provides too, and its
tensor operations (duplicate / split / remove) are plain PyTorch. ``MCMCStrategy`` is NOT
used: its relocation calls a CUDA kernel. gsplat 1.5.3's opacity reset never fires (an
operator-precedence slip: ``step % reset_every == 0 & step > 0`` is always False), so the
schedule here does not rely on it.

Pixels the video does not know (``masks``) do not count in the loss: the target takes the
(detached) render there, so both L1 and SSIM ignore them.

Determinism: crops are drawn from ``generator``; gsplat's split draws from the global RNG,
so each densification step runs inside ``torch.random.fork_rng`` seeded from ``generator``
(the caller's global RNG state is left untouched). On CPU a seed gives the same crops and
splits; values are bit-identical with one thread (``torch.set_num_threads(1)``) and equal
to float rounding otherwise (multi-threaded scatter-adds sum in varying order). gsplat's
CUDA backward sums gradients with atomics, so GPU runs also agree only to rounding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from matrix_world.cameras import crop_perspective, crops_12
from matrix_world.errors import InputError, require
from matrix_world.gaussians import Gaussians
from matrix_world.metrics import ssim
from matrix_world.reconstruction.keyframes import Keyframes
from matrix_world.reconstruction.lift import LiftConfig, lift_keyframes
from matrix_world.reconstruction.render import GSPLAT_INSTALL, rasterize, rasteriser_for

SuperResolution = Callable[[Tensor], Tensor]  # [B, 3, h, w] -> [B, 3, s*h, s*w]


@dataclass
class OptimizeConfig:
    """Hyper-parameters of the ``optimize`` backend (defaults: the paper's 3DGS recipe).

    iterations: training steps (paper: 3000).
    crop_size: crop width = height in pixels; None -> half the panorama height (a 90 degree
        crop then matches the panorama's angular resolution at its centre).
    batch_size: crops rendered per step.
    ssim_weight: loss = (1 - w) L1 + w (1 - SSIM).
    lr_*: Adam learning rates (3DGS); ``lr_means`` is multiplied by the scene scale and decays
        exponentially to ``lr_means_final_ratio`` of itself.
    densify: use gsplat's DefaultStrategy between ``densify_start`` and ``densify_stop`` every
        ``densify_every`` steps (paper: 500-1500), growing where the mean screen-space
        gradient exceeds ``grow_grad2d``; prune below ``prune_opacity``.
    max_gaussians: after training keep at most this many (most important), None: all.
    init: how the initial Gaussians are lifted (a sky shell, every 2nd pixel, opacity 0.9).
    background: rendered where no Gaussian is (RGB in [0, 1]).
    super_resolution: optional hook applied to the crops before training (extension point,
        e.g. a super-resolution model); crops and intrinsics are scaled by its factor.
    backend: renderer backend ("auto", "cuda", "cpu").
    progress: show a tqdm bar with loss / PSNR.
    log_every: record (and show) the loss every this many steps.
    """

    iterations: int = 3000
    crop_size: int | None = None
    crop_fov: float = 90.0
    batch_size: int = 4
    ssim_weight: float = 0.2
    lr_means: float = 1.6e-4
    lr_means_final_ratio: float = 0.01
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_colors: float = 2.5e-3
    densify: bool = True
    densify_start: int = 500
    densify_stop: int = 1500
    densify_every: int = 100
    grow_grad2d: float = 0.0002
    prune_opacity: float = 0.005
    max_gaussians: int | None = None
    init: LiftConfig = field(default_factory=lambda: LiftConfig(sky="shell", downsample=2, opacity=0.9))
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    super_resolution: SuperResolution | None = None
    backend: str = "auto"
    progress: bool = True
    log_every: int = 10

    def __post_init__(self):
        if self.iterations < 0:
            raise InputError(f"iterations must be >= 0, got {self.iterations}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.ssim_weight <= 1.0:
            raise InputError(f"ssim_weight must be in [0, 1], got {self.ssim_weight}")


# --------------------------------------------------------------------------- training views


@dataclass
class TrainViews:
    """Perspective training images with their cameras (V views).

    images: [V, 3, h, w] float32.  masks: [V, 1, h, w] bool (pixel known).
    w2c: [V, 4, 4] float32 world -> camera.  K: [V, 3, 3] float32.  keyframe: [V] long.
    """

    images: Tensor
    masks: Tensor
    w2c: Tensor
    K: Tensor
    keyframe: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def width(self) -> int:
        return int(self.images.shape[-1])

    @property
    def height(self) -> int:
        return int(self.images.shape[-2])


def cut_crops(
    keyframes: Keyframes,
    size: int,
    fov: float = 90.0,
    super_resolution: SuperResolution | None = None,
) -> TrainViews:
    """The 12 crops (:func:`crops_12`) of every keyframe with their exact cameras.

    A crop pixel is known when the bilinear footprint in the panorama is entirely known.
    """
    kf = keyframes
    views = crops_12(size, fov)
    rgb = kf.rgb.permute(0, 3, 1, 2)  # [K, 3, H, W]
    known = kf.known[:, None].float()  # [K, 1, H, W]
    images, masks, w2c, Ks, index = [], [], [], [], []
    for view in views:
        img, K, _ = crop_perspective(rgb, view)
        msk, _, _ = crop_perspective(known, view)
        c2w = kf.c2w.to(torch.float64) @ view.c2w().to(kf.c2w.device)  # [K, 4, 4]
        images.append(img)
        masks.append(msk > 0.999)
        w2c.append(torch.linalg.inv(c2w))
        Ks.append(K[None].expand(len(kf.indices), 3, 3))
        index.append(torch.arange(len(kf.indices), device=kf.rgb.device))
    images_t = torch.cat(images).clamp(0.0, 1.0)
    masks_t = torch.cat(masks)
    K_t = torch.cat(Ks).to(device=kf.rgb.device, dtype=torch.float64).clone()
    if super_resolution is not None:
        up = super_resolution(images_t)
        if up.dim() != 4 or up.shape[:2] != images_t.shape[:2] or up.shape[-1] != up.shape[-2]:
            raise InputError(f"super_resolution must map [B, 3, h, w] to [B, 3, s*h, s*w], got {tuple(up.shape)}")
        factor = up.shape[-1] / size
        masks_t = torch.nn.functional.interpolate(masks_t.float(), size=up.shape[-2:], mode="nearest") > 0.5
        K_t[:, :2, :] *= factor
        images_t = up.clamp(0.0, 1.0)
    return TrainViews(images_t.float().contiguous(), masks_t.contiguous(), torch.cat(w2c).float(), K_t.float(), torch.cat(index))


# --------------------------------------------------------------------------- training


def masked_loss(render: Tensor, target: Tensor, mask: Tensor, ssim_weight: float) -> Tensor:
    """``(1 - w) L1 + w (1 - SSIM)`` over known pixels: render, target [B, 3, h, w]; mask [B, 1, h, w]."""
    target = torch.where(mask, target, render.detach())
    l1 = (render - target).abs().sum() / (mask.sum() * 3).clamp_min(1)
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - ssim(render, target))


def scene_scale_of(keyframes: Keyframes) -> float:
    """Median surface distance of keyframe 0: sets the means' learning rate and split sizes."""
    d = keyframes.distance[0][keyframes.geometry(0)]
    return float(d.median()) if d.numel() else 1.0


def _params_from(gaussians: Gaussians) -> torch.nn.ParameterDict:
    g = gaussians.detach().to(dtype=torch.float32)
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter(g.means.clone()),
        "scales": torch.nn.Parameter(g.log_scales.clone()),
        "quats": torch.nn.Parameter(torch.nn.functional.normalize(g.quats, dim=-1).clone()),
        "opacities": torch.nn.Parameter(g.opacity_logits.clone()),
        "sh0": torch.nn.Parameter(g.sh_dc.clone()),
    })


def _gaussians_from(params: torch.nn.ParameterDict) -> Gaussians:
    return Gaussians(
        means=params["means"].detach().clone(),
        quats=torch.nn.functional.normalize(params["quats"].detach(), dim=-1),
        log_scales=params["scales"].detach().clone(),
        opacity_logits=params["opacities"].detach().clone(),
        sh_dc=params["sh0"].detach().clone(),
    )


def _render(params, w2c, K, width, height, background, backend):
    """Differentiable render of the raw parameters: (rgb [B, 3, h, w], info)."""
    colors, _, info = rasterize(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
        params["sh0"], w2c, K, width, height, sh_degree=0, backgrounds=background.expand(w2c.shape[0], 3),
        backend=backend,
    )
    return colors[..., :3].permute(0, 3, 1, 2), info


def train_gaussians(
    init: Gaussians,
    views: TrainViews,
    config: OptimizeConfig,
    *,
    scene_scale: float,
    generator: torch.Generator,
) -> tuple[Gaussians, dict]:
    """Optimise Gaussians against the training views (3DGS, see the module docstring).

    generator: drives the crop order and densification (a CPU ``torch.Generator``).
    returns (Gaussians, info: ``loss`` and ``psnr`` per logged step, ``num_gaussians``,
    ``seconds``)
    """
    if len(init) == 0:
        raise InputError("optimize needs at least one initial Gaussian (no keyframe pixel had a usable distance)")
    device = views.images.device
    backend, _ = rasteriser_for(config.backend, device)
    params = _params_from(init.to(device))
    lrs = {"means": config.lr_means * scene_scale, "scales": config.lr_scales, "quats": config.lr_quats,
           "opacities": config.lr_opacities, "sh0": config.lr_colors}
    optimizers = {k: torch.optim.Adam([{"params": [params[k]], "lr": lr, "name": k}], eps=1e-15) for k, lr in lrs.items()}
    decay = config.lr_means_final_ratio ** (1.0 / max(config.iterations, 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizers["means"], gamma=decay)
    strategy = state = None
    if config.densify:
        gs_strategy = require("gsplat.strategy", GSPLAT_INSTALL)
        strategy = gs_strategy.DefaultStrategy(
            prune_opa=config.prune_opacity, grow_grad2d=config.grow_grad2d, refine_start_iter=config.densify_start,
            refine_stop_iter=config.densify_stop, refine_every=config.densify_every,
            reset_every=max(config.iterations + 1, 3000), verbose=False,
        )
        strategy.check_sanity(params, optimizers)
        state = strategy.initialize_state(scene_scale=scene_scale)
    background = torch.tensor(config.background, device=device, dtype=torch.float32)

    tqdm = require("tqdm", "pip install tqdm").tqdm
    bar = tqdm(range(config.iterations), desc="optimize", disable=not config.progress, dynamic_ncols=True, leave=False)
    order = torch.empty(0, dtype=torch.long)
    log: dict[str, Any] = {"step": [], "loss": [], "psnr": []}
    start = time.perf_counter()
    for step in bar:
        if order.numel() < config.batch_size:
            order = torch.cat((order, torch.randperm(len(views), generator=generator)))
        batch, order = order[: config.batch_size].to(device), order[config.batch_size :]
        rgb, info = _render(params, views.w2c[batch], views.K[batch], views.width, views.height, background, backend)
        target, mask = views.images[batch], views.masks[batch]
        if strategy is not None:
            strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = masked_loss(rgb, target, mask, config.ssim_weight)
        loss.backward()
        if step % config.log_every == 0 or step == config.iterations - 1:
            with torch.no_grad():
                mse = ((rgb.detach().clamp(0, 1) - target) ** 2 * mask).sum() / (mask.sum() * 3).clamp_min(1)
                value = float(-10.0 * torch.log10(mse.clamp_min(1e-10)))
            log["step"].append(step)
            log["loss"].append(float(loss.detach()))
            log["psnr"].append(value)
            bar.set_postfix(loss=f"{log['loss'][-1]:.4f}", psnr=f"{value:.2f}", n=len(params["means"]))
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        scheduler.step()
        if strategy is not None and step % config.densify_every == 0:  # may split: random offsets
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        elif strategy is not None:  # only accumulates screen-space gradients
            strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
    bar.close()
    gaussians = _gaussians_from(params)
    if config.max_gaussians is not None:
        gaussians = gaussians.prune(config.max_gaussians)
    log["num_gaussians"] = len(gaussians)
    log["seconds"] = time.perf_counter() - start
    return gaussians, log


def optimize_keyframes(
    keyframes: Keyframes,
    config: OptimizeConfig | None = None,
    *,
    generator: torch.Generator,
) -> tuple[Gaussians, dict]:
    """Steps 2-3 of the module docstring on prepared keyframes.

    returns (Gaussians, info with ``init`` (lift info), ``num_init``, ``train`` (training log),
    ``num_views``, ``crop_size``)
    """
    config = config or OptimizeConfig()
    size = config.crop_size or max(16, keyframes.height // 2)
    init, init_info = lift_keyframes(keyframes, config.init)
    views = cut_crops(keyframes, size, config.crop_fov, config.super_resolution)
    gaussians, log = train_gaussians(init, views, config, scene_scale=scene_scale_of(keyframes), generator=generator)
    return gaussians, {"init": init_info, "num_init": len(init), "train": log, "num_views": len(views), "crop_size": size}
