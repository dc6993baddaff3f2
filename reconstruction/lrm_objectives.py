"""What the panoramic LRM is trained on and how it is scored: samples, the two stages' losses,
which parameters each stage trains, and the held-out evaluation.

Matrix-3D publishes no training code; this is our recipe (issue 12), on the official network.

**Samples** (:class:`LRMSample`): a clip window of F = 4(T-1)+1 frames with its latents, poses
(world = the window's first camera), ground-truth frames and distances, and ground-truth
panoramas at novel poses (between the frames, a little beyond the clip, or held-out views).
The dataset glue (``matrix_world.datasets.lrm_samples``) makes them; this module reads only
the protocol.

**Stage 1** (geometry + colour, no rendering):

* depth: smooth-L1 on INVERSE distance, ``1 / d_pred`` against ``1 / d_gt``. Why inverse: a
  depth error moves a pixel seen from a camera displaced by b by about b * |1/d_pred - 1/d_gt|,
  so inverse-distance errors are what novel views show; the loss therefore weights near
  geometry (where parallax is) and gives far geometry little weight. It is also bounded where
  the network's range is: the LRM predicts d = 30 sigmoid(.) in (0, 30) m, so targets are
  clamped to ``far = 0.95 * distance_scale`` (28.5 m) and 1/d_gt lies in [1/28.5, 1/d_min];
  on distance, an outdoor ground plane at 40-150 m would dominate the loss with errors the
  network cannot remove. Sky and no-return pixels (non-finite distance) are mapped to the far
  shell 1/far rather than excluded, so the sky's Gaussians sit behind the scene instead of
  floating wherever the untrained head puts them (the ``lift`` backend's ``sky="shell"``);
  ``sky_weight`` scales their share. NaN or non-positive ground truth is excluded.
  Targets are pooled to the output grid (H/2, W/2) by averaging the inverse distance of each
  2 x 2 block (a block is valid only when all four pixels are).
* colour: L1 between the Gaussians' colour, ``0.5 + C0 * gaussians_raw[..., 10:13]`` (the SH
  DC that :mod:`.lrm_gaussians` stores, as the renderer evaluates degree 0), and the ground-
  truth frame averaged over 2 x 2 blocks to (H/2, W/2).

**Stage 2** (appearance by rendering): the depth branch is frozen and the Gaussian branch is
trained by rendering perspective crops (random yaw, pitch in ``pitch_range``, horizontal FOV
in [60, 120] degrees) at context poses, interpolated poses and extrapolated poses through
:func:`matrix_world.reconstruction.render.render` (the PyTorch reference on CPU, gsplat on
CUDA); loss ``mse_weight * MSE + ssim_weight * (1 - SSIM)`` (+ ``lpips_weight * LPIPS`` only
when the ``lpips`` package and its weights are already on the machine).

**Which parameters feed which output** (by the official names; ``parameter_branch``, checked
against autograd in the tests): the input layers ``video_conv``, ``video_layer_norm``,
``camera_conv``, ``linear_proj``, ``transformer_input_layernorm`` and the first stack
``transformer`` feed BOTH outputs (``transformer_gs`` continues from ``transformer``'s last
layer); ``dpt_head`` and ``deconv3d_dpt`` feed only ``depth_raw``; ``transformer_gs``,
``dpt_head_gs`` and ``deconv3d_sh`` feed only ``gaussians_raw``. Stage 2 freezes everything
that feeds ``depth_raw`` -- the shared input layers and stack 1 included -- and runs those
modules in eval mode (no dropout): the predicted distances, i.e. the Gaussians' positions, are
then exactly stage 1's, and the rendering loss cannot trade geometry for colour. It trains
``transformer_gs``, ``dpt_head_gs`` and ``deconv3d_sh``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from matrix_world.cameras import PerspectiveView, crop_perspective, crops_12, invert_pose
from matrix_world.errors import InputError
from matrix_world.gaussians import sh_dc_to_rgb
from matrix_world.metrics import psnr, ssim
from matrix_world.reconstruction.lrm import LRMOutput, PanoLRM, lrm_plucker
from matrix_world.reconstruction.lrm_gaussians import RAW_SH_DC, lrm_to_gaussians
from matrix_world.reconstruction.render import Cameras, render

TARGET_KINDS = ("interpolated", "extrapolated", "heldout")
FAR_FRACTION = 0.95  # targets are clamped to FAR_FRACTION * distance_scale (inside the sigmoid's range)


# --------------------------------------------------------------------------- samples


@dataclass
class LRMSample:
    """One clip window, everything the losses and the evaluation read (CPU tensors).

    latents: Tensor  # [T, 16, h, w] normalised latents of the window's frames
    c2w: Tensor  # [F, 4, 4] float32 context poses, OpenCV c2w, world = the first frame's camera
    rgb: Tensor  # [F, 3, H, W] float32 in [0, 1]; F = 4(T-1)+1, H = 8h, W = 8w
    distance: Tensor | None  # [F, H, W] float32 ground-truth distance along each ray (inf: no return)
    sky: Tensor | None  # [F, H, W] bool
    target_c2w: Tensor  # [K, 4, 4] float32 novel poses in the same world (K may be 0)
    target_rgb: Tensor  # [K, 3, Ht, Wt] float32 ground-truth panoramas at those poses
    target_kind: tuple[str, ...]  # K of TARGET_KINDS
    """

    latents: Tensor
    c2w: Tensor
    rgb: Tensor
    distance: Tensor | None = None
    sky: Tensor | None = None
    target_c2w: Tensor = field(default_factory=lambda: torch.zeros(0, 4, 4))
    target_rgb: Tensor = field(default_factory=lambda: torch.zeros(0, 3, 16, 32))
    target_kind: tuple[str, ...] = ()
    name: str = ""

    def check(self, latent_channels: int = 16) -> None:
        """InputError (one line) unless the shapes fit together as documented."""
        t, ch, h, w = self.latents.shape if self.latents.dim() == 4 else (0, 0, 0, 0)
        f = 4 * (t - 1) + 1
        want = {"latents": (t, latent_channels, h, w), "c2w": (f, 4, 4), "rgb": (f, 3, 8 * h, 8 * w)}
        got = {"latents": tuple(self.latents.shape), "c2w": tuple(self.c2w.shape), "rgb": tuple(self.rgb.shape)}
        if self.distance is not None:
            want["distance"], got["distance"] = (f, 8 * h, 8 * w), tuple(self.distance.shape)
        k = len(self.target_kind)
        want["target_c2w"], got["target_c2w"] = (k, 4, 4), tuple(self.target_c2w.shape)
        if t < 1 or ch != latent_channels or got != want or self.target_rgb.shape[:2] != (k, 3):
            raise InputError(f"LRM sample {self.name!r} has shapes {got}, target_rgb {tuple(self.target_rgb.shape)}; expected "
                             f"{want} and target_rgb [{k}, 3, Ht, Wt] (F = 4(T-1)+1, H = 8h, W = 8w)")
        bad = [k for k in self.target_kind if k not in TARGET_KINDS]
        if bad:
            raise InputError(f"LRM sample {self.name!r}: unknown target kinds {bad}; expected some of {TARGET_KINDS}")


@dataclass
class LRMBatch:
    """Samples of one size stacked on a device: latents [B, T, 16, h, w], c2w [B, F, 4, 4],
    rgb [B, F, 3, H, W], distance [B, F, H, W] or None, sky [B, F, H, W] or None, and the
    samples themselves (for their targets)."""

    latents: Tensor
    c2w: Tensor
    rgb: Tensor
    distance: Tensor | None
    sky: Tensor | None
    samples: list[LRMSample]

    def plucker(self) -> Tensor:
        """The LRM's ray input [B, F, H, W, 6] for the context poses."""
        return lrm_plucker(self.c2w, self.rgb.shape[-2], self.rgb.shape[-1])


def collate(samples: list[LRMSample], device: torch.device) -> LRMBatch:
    """Stack samples of one size onto ``device`` (float32)."""
    if not samples:
        raise InputError("a batch needs at least one sample")
    sizes = {(tuple(s.latents.shape), tuple(s.rgb.shape)) for s in samples}
    if len(sizes) != 1:
        raise InputError(f"samples of one batch must share their sizes, got {sorted(sizes)}")
    stack = lambda xs: torch.stack(xs).to(device=device, dtype=torch.float32)  # noqa: E731
    distances = [s.distance for s in samples if s.distance is not None]
    skies = [s.sky for s in samples if s.sky is not None]
    has_distance = len(distances) == len(samples)
    return LRMBatch(
        latents=stack([s.latents for s in samples]), c2w=stack([s.c2w for s in samples]),
        rgb=stack([s.rgb for s in samples]), distance=stack(distances) if has_distance else None,
        sky=torch.stack(skies).to(device) if has_distance and len(skies) == len(samples) else None,
        samples=list(samples))


# --------------------------------------------------------------------------- branches

SHARED_INPUT = ("video_conv", "video_layer_norm", "camera_conv", "linear_proj", "transformer_input_layernorm")
BRANCHES = {
    "shared": SHARED_INPUT + ("transformer",),  # feed depth_raw and gaussians_raw
    "depth": ("dpt_head", "deconv3d_dpt"),  # feed depth_raw only
    "gaussian": ("transformer_gs", "dpt_head_gs", "deconv3d_sh"),  # feed gaussians_raw only
}


def parameter_branch(name: str) -> str:
    """'shared', 'depth' or 'gaussian' for a PanoLRM parameter name (its top-level module)."""
    top = name.split(".", 1)[0]
    for branch, modules in BRANCHES.items():
        if top in modules:
            return branch
    raise InputError(f"parameter {name!r} belongs to no known branch of the LRM ({BRANCHES}); the network changed: "
                     "place its module in matrix_world.reconstruction.lrm_objectives.BRANCHES")


def trained_in_stage(name: str, stage: int) -> bool:
    """Stage 1 trains every parameter; stage 2 only those that feed ``gaussians_raw`` alone."""
    if stage not in (1, 2):
        raise InputError(f"stage must be 1 or 2, got {stage}")
    return stage == 1 or parameter_branch(name) == "gaussian"


def set_stage_modes(model: PanoLRM, stage: int, training: bool) -> None:
    """``model.train(training)``; in stage 2 the frozen modules stay in eval mode (no dropout)."""
    model.train(training)
    if stage == 2:
        for name, module in model.named_children():
            if not trained_in_stage(name + ".", 2):
                module.eval()


# --------------------------------------------------------------------------- stage 1


def depth_targets(distance: Tensor, sky: Tensor | None, distance_scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse-distance targets on the output grid (see the module docstring).

    distance: Tensor  # [B, F, H, W] metres along each ray
    sky: Tensor | None  # [B, F, H, W] bool
    returns (inverse distance [B, F, H/2, W/2], valid [B, F, H/2, W/2] bool,
             far [B, F, H/2, W/2] bool: the block holds sky or no-return pixels)
    """
    far = FAR_FRACTION * distance_scale
    no_return = ~torch.isfinite(distance) & ~torch.isnan(distance)
    shell = no_return | (sky if sky is not None else torch.zeros_like(no_return))
    valid = ((distance > 0) & ~torch.isnan(distance)) | shell
    d = torch.where(shell | ~valid, torch.full_like(distance, far), distance.clamp(max=far))
    inv = torch.where(valid, 1.0 / d.clamp(min=1e-6), torch.zeros_like(d))
    b, f, h, w = inv.shape
    pool = lambda x: F.avg_pool2d(x.reshape(b * f, 1, h, w), 2).reshape(b, f, h // 2, w // 2)  # noqa: E731
    return pool(inv), pool(valid.float()) > 0.999, pool(shell.float()) > 0


def stage1_losses(output: LRMOutput, batch: LRMBatch, *, depth_weight: float = 1.0, colour_weight: float = 1.0,
                  depth_beta: float = 0.05, sky_weight: float = 1.0) -> dict[str, Tensor]:
    """{'loss', 'loss_depth', 'loss_colour'} (scalars, float32) of one batch.

    depth_beta: smooth-L1's beta in 1/m (quadratic below it).
    """
    colour = sh_dc_to_rgb(output.gaussians_raw[..., RAW_SH_DC].float())  # [B, F, H/2, W/2, 3]
    b, f, _, h, w = batch.rgb.shape
    target = F.avg_pool2d(batch.rgb.reshape(b * f, 3, h, w), 2).reshape(b, f, 3, h // 2, w // 2).permute(0, 1, 3, 4, 2)
    loss_colour = (colour - target).abs().mean()
    out = {"loss_colour": loss_colour}
    total = colour_weight * loss_colour
    if batch.distance is not None:
        inv_gt, valid, far = depth_targets(batch.distance, batch.sky, output.distance_scale)
        inv_pred = 1.0 / output.distance().clamp(min=1e-3)  # [B, F, H/2, W/2]
        per_pixel = F.smooth_l1_loss(inv_pred, inv_gt, beta=depth_beta, reduction="none")
        weight = valid.float() * torch.where(far, torch.full_like(inv_gt, sky_weight), torch.ones_like(inv_gt))
        loss_depth = (per_pixel * weight).sum() / weight.sum().clamp(min=1.0)
        out["loss_depth"] = loss_depth
        total = total + depth_weight * loss_depth
    out["loss"] = total
    return out


# --------------------------------------------------------------------------- stage 2


def random_crops(generator: torch.Generator, count: int, size: int, fov_range: tuple[float, float] = (60.0, 120.0),
                 pitch_range: tuple[float, float] = (-45.0, 45.0)) -> list[PerspectiveView]:
    """``count`` square crops: yaw uniform in [0, 360), pitch in ``pitch_range``, horizontal FOV in ``fov_range``."""
    u = torch.rand(count, 3, generator=generator, dtype=torch.float64)
    lo, hi = fov_range
    p0, p1 = pitch_range
    return [PerspectiveView(float(360.0 * a), float(p0 + (p1 - p0) * b), float(lo + (hi - lo) * c), size, size)
            for a, b, c in u.tolist()]


def crop_cameras(views: list[PerspectiveView], pano_c2w: Tensor) -> Cameras:
    """Cameras of crop ``views[i]`` of the panoramic camera ``pano_c2w[i]`` [C, 4, 4] (one size)."""
    c2w = torch.stack([v.c2w(p) for v, p in zip(views, pano_c2w.double().cpu())])
    K = torch.stack([v.intrinsics() for v in views])
    return Cameras(invert_pose(c2w).float(), K.float(), views[0].width, views[0].height)


def _pose_pool(sample: LRMSample, rgb: Tensor, c2w: Tensor) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """kind -> [(c2w [4, 4], panorama [3, H, W])]: the context frames and the sample's targets."""
    pool: dict[str, list[tuple[Tensor, Tensor]]] = {"context": [(c2w[i], rgb[i]) for i in range(len(c2w))]}
    for k, kind in enumerate(sample.target_kind):
        pool.setdefault(kind, []).append((sample.target_c2w[k], sample.target_rgb[k]))
    return pool


def stage2_losses(output: LRMOutput, batch: LRMBatch, generator: torch.Generator, *, crops: int = 4, crop_size: int = 64,
                  fov_range: tuple[float, float] = (60.0, 120.0), pitch_range: tuple[float, float] = (-45.0, 45.0),
                  frame_stride: int = 2, mse_weight: float = 1.0, ssim_weight: float = 0.2, lpips_weight: float = 0.0,
                  lpips_model=None, backend: str = "auto") -> dict[str, Tensor]:
    """{'loss', 'loss_mse', 'loss_ssim' (1 - SSIM)[, 'loss_lpips']} of ``crops`` random crops per sample.

    Each crop draws its pose kind uniformly among the kinds the sample has (context,
    interpolated, extrapolated, heldout), then a pose of that kind, then a random crop of it.
    The Gaussians are those of every ``frame_stride``-th frame (:func:`lrm_to_gaussians`).
    """
    with torch.autocast(batch.rgb.device.type, enabled=False):  # Gaussians and renders in float32
        return _stage2(output, batch, generator, crops, crop_size, fov_range, pitch_range, frame_stride, mse_weight,
                       ssim_weight, lpips_weight, lpips_model, backend)


def _stage2(output, batch, generator, crops, crop_size, fov_range, pitch_range, frame_stride, mse_weight, ssim_weight,
            lpips_weight, lpips_model, backend) -> dict[str, Tensor]:
    rendered, targets = [], []
    for b, sample in enumerate(batch.samples):
        gaussians = lrm_to_gaussians(output, batch.c2w, frame_stride=frame_stride, batch_index=b)
        pool = _pose_pool(sample, batch.rgb[b], batch.c2w[b])
        kinds = sorted(pool)
        picks = []
        for _ in range(crops):
            kind = kinds[int(torch.randint(len(kinds), (1,), generator=generator))]
            picks.append(pool[kind][int(torch.randint(len(pool[kind]), (1,), generator=generator))])
        views = random_crops(generator, crops, crop_size, fov_range, pitch_range)
        cams = crop_cameras(views, torch.stack([p[0].detach().cpu() for p in picks]))
        rendered.append(render(gaussians, cams, backend=backend).rgb)  # [crops, 3, s, s]
        targets.append(torch.cat([crop_perspective(p[1].to(batch.rgb.device, torch.float32)[None], v)[0]
                                  for p, v in zip(picks, views)]).clamp(0, 1))
    pred, target = torch.cat(rendered), torch.cat(targets)  # [B*crops, 3, s, s]
    loss_mse = F.mse_loss(pred, target)
    loss_ssim = 1.0 - ssim(pred, target)
    out = {"loss_mse": loss_mse, "loss_ssim": loss_ssim}
    total = mse_weight * loss_mse + ssim_weight * loss_ssim
    if lpips_model is not None and lpips_weight > 0:
        out["loss_lpips"] = lpips_model(pred * 2 - 1, target * 2 - 1).mean()
        total = total + lpips_weight * out["loss_lpips"]
    out["loss"] = total
    return out


_LPIPS_WEIGHTS = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def load_lpips(device: torch.device, net: str = "alex"):
    """(LPIPS model, '') when the ``lpips`` package and its backbone weights are already on this
    machine (torch hub cache), else (None, 'lpips: skipped (no weights) ...'). Never downloads."""
    if importlib.util.find_spec("lpips") is None:
        return None, "lpips: skipped (no weights): the 'lpips' package is not installed"
    weights = Path(torch.hub.get_dir()) / "checkpoints" / _LPIPS_WEIGHTS[net]
    if not weights.is_file():
        return None, f"lpips: skipped (no weights): {weights} is not on this machine (nothing is downloaded)"
    import lpips

    try:
        model = lpips.LPIPS(net=net, verbose=False).to(device).eval().requires_grad_(False)
    except (OSError, RuntimeError) as exc:
        return None, f"lpips: skipped (no weights): could not load them offline ({exc})"
    return model, ""


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def heldout_metrics(model: PanoLRM, samples, device: torch.device, *, crop_size: int = 64, frame_stride: int = 2,
                    max_views: int | None = None, backend: str = "auto") -> dict | None:
    """Mean PSNR / SSIM over the 12-crop set (``crops_12``, FOV 90) of every target view of every
    sample, rendered from the LRM's Gaussians (the views' own panoramas cut the same way), as
    ``benchmarks/recon.py`` scores ``lift`` and ``optimize``. None when no sample has a target.

    samples: iterable of :class:`LRMSample`; max_views: at most this many targets per sample.
    """
    views = crops_12(crop_size)
    psnrs, ssims, poses = [], [], 0
    for sample in samples:
        if not sample.target_kind:
            continue
        batch = collate([sample], device)
        output = model(batch.latents, batch.plucker())
        gaussians = lrm_to_gaussians(output, batch.c2w, frame_stride=frame_stride)
        count = len(sample.target_kind) if max_views is None else min(len(sample.target_kind), max_views)
        for k in range(count):
            cams = Cameras.from_views(views, sample.target_c2w[k].double()).to(device)
            pred = render(gaussians, cams, backend=backend).rgb.clamp(0, 1)  # [12, 3, s, s]
            pano = sample.target_rgb[k].to(device, torch.float32)[None]
            target = torch.cat([crop_perspective(pano, v)[0] for v in views]).clamp(0, 1)
            psnrs += [float(psnr(pred[i], target[i])) for i in range(len(views))]
            ssims += ssim(pred, target, reduce=False).tolist()
            poses += 1
    if not psnrs:
        return None
    return {"heldout_psnr": sum(psnrs) / len(psnrs), "heldout_ssim": sum(ssims) / len(ssims), "heldout_views": poses,
            "heldout_crops": len(psnrs)}
