"""Render 3D Gaussians: gsplat's CUDA rasterizer, or a pure-PyTorch reference that runs anywhere.

Two layers, as in gsplat:

* ``rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, ...)``:
  a pure function with gsplat's ``rasterization`` contract in ``render_mode="RGB+ED"``:
  returns (colors+depth [C, H, W, D+1], alphas [C, H, W, 1], info). ``info`` carries what
  gsplat's densification strategies read (``means2d``, ``radii`` [C, N, 2], ``width``,
  ``height``, ``n_cameras``, ``gaussian_ids`` ...), for both backends.
* ``render(gaussians, cameras)``: the user-facing call on a ``Gaussians`` container,
  returning images in the project layout (``rgb`` [C, 3, H, W], ``alpha`` [C, 1, H, W],
  ``depth`` [C, 1, H, W]), and ``render_panorama`` that renders the 6 cube faces and
  stitches an equirectangular panorama (rgb, alpha, distance).

Backends (``backend=``): ``"cuda"`` calls ``gsplat.rasterization`` (tensors must be on a
CUDA device; gsplat compiles its kernels on first use); ``"cpu"`` is the pure-PyTorch
reference: gsplat's own projection (``gsplat.cuda._torch_impl``, pinned gsplat 1.5.3) and
the differentiable front-to-back compositor below, which runs on any device; ``"auto"``
picks ``cuda`` for CUDA tensors and ``cpu`` otherwise.

Conventions: cameras are OpenCV (x right, y down, z forward); ``viewmats``/``w2c`` map
world to camera. Pixel (row i, column j) has its centre at (j + 0.5, i + 0.5), as in gsplat
and ``matrix_world.cameras``. ``depth`` is the expected camera z (sum of w_i z_i / alpha),
0 where alpha is 0. Colours are SH evaluated towards the camera, plus 0.5, clamped below
at 0 (gsplat/INRIA), not clamped above; ``background`` is composited as
``rgb + (1 - alpha) * background``.

The compositor follows gsplat's CUDA kernel rule for rule: alpha = min(0.999, o exp(-s))
with s the conic's Mahalanobis half-square, pairs with s < 0 or alpha < 1/255 skipped, and
a pixel stops before the Gaussian that would bring its transmittance to <= 1e-4. Gaussians
touch pixels inside gsplat's opacity-aware 3-sigma box (extent min(3.33, sqrt(2 ln(255 o)))
standard deviations, which is exactly where alpha >= 1/255 can hold).
"""

from __future__ import annotations

import functools

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from matrix_world.cameras import CUBE_FACE_NAMES, PerspectiveView, c2w_to_w2c, cube_faces, depth_to_distance, project_to_view, sample_image
from matrix_world.equirect import equirect_directions
from matrix_world.errors import InputError, one_line, require
from matrix_world.runtime import pick_rasteriser
from matrix_world.gaussians import Gaussians

ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
MAX_ALPHA = 0.999
GSPLAT_INSTALL = "pip install gsplat==1.5.3"

__all__ = ["CUBE_FACE_NAMES", "Cameras", "PanoramaRender", "RenderOutput", "composite", "rasterize", "render", "render_panorama", "rasteriser_for"]


# --------------------------------------------------------------------------- cameras


@dataclass
class Cameras:
    """C pinhole cameras of one image size.

    w2c: Tensor  # [C, 4, 4] world -> camera (gsplat's ``viewmats``), OpenCV axes
    K: Tensor  # [C, 3, 3] intrinsics in pixels, pixel centres at +0.5
    """

    w2c: Tensor
    K: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.w2c.dim() == 2:
            self.w2c = self.w2c[None]
        if self.K.dim() == 2:
            self.K = self.K[None].expand(self.w2c.shape[0], 3, 3)
        self.w2c, self.K = self.w2c.contiguous(), self.K.contiguous()  # gsplat's kernels read raw memory
        if self.w2c.shape[1:] != (4, 4) or self.K.shape != (self.w2c.shape[0], 3, 3):
            raise InputError(f"cameras need w2c [C, 4, 4] and K [C, 3, 3], got {tuple(self.w2c.shape)} and {tuple(self.K.shape)}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise InputError(f"image size must be positive, got {self.width}x{self.height}")
        if not (torch.isfinite(self.w2c).all() and torch.isfinite(self.K).all()):
            raise InputError("camera poses and intrinsics must be finite")

    @classmethod
    def from_c2w(cls, c2w: Tensor, K: Tensor, width: int, height: int) -> Cameras:
        """From camera-to-world poses [C, 4, 4] (or [4, 4]) and K [C, 3, 3] (or [3, 3])."""
        return cls(c2w_to_w2c(c2w.to(torch.float64)).to(c2w.dtype if c2w.is_floating_point() else torch.float32), K, width, height)

    @classmethod
    def from_views(cls, views: list[PerspectiveView], pano_c2w: Tensor | None = None) -> Cameras:
        """The crops ``views`` (one image size) of a panoramic camera at ``pano_c2w`` [4, 4] (identity by default)."""
        if not views or len({(v.width, v.height) for v in views}) != 1:
            raise InputError("from_views needs at least one view, all of the same size")
        c2w = torch.stack([v.c2w(pano_c2w) for v in views])
        K = torch.stack([v.intrinsics() for v in views])
        return cls(c2w_to_w2c(c2w), K, views[0].width, views[0].height)

    def __len__(self) -> int:
        return self.w2c.shape[0]

    def to(self, device=None, dtype: torch.dtype | None = torch.float32) -> Cameras:
        """Move/cast (float32 by default: what gsplat's CUDA kernels take)."""
        return Cameras(self.w2c.to(device=device, dtype=dtype), self.K.to(device=device, dtype=dtype), self.width, self.height)


@dataclass
class RenderOutput:
    """Rendered images (project layout, float32, differentiable)."""

    rgb: Tensor  # [C, 3, H, W]
    alpha: Tensor  # [C, 1, H, W]
    depth: Tensor  # [C, 1, H, W] expected camera z, 0 where alpha = 0
    info: dict = field(default_factory=dict)  # gsplat-style meta (means2d, radii, ...)


@dataclass
class PanoramaRender:
    """An equirectangular render (H x 2H) of a panoramic camera."""

    rgb: Tensor  # [3, H, 2H]
    alpha: Tensor  # [1, H, 2H]
    distance: Tensor  # [1, H, 2H] expected distance along the ray, 0 where alpha = 0


@functools.cache
def gsplat_problem(device: torch.device | str = "cuda") -> str | None:
    """None when gsplat's CUDA rasteriser works on the CUDA ``device``, else why not (one line).

    gsplat compiles its CUDA kernels on first use (or ships them prebuilt); an import that
    succeeds says nothing about that. So this renders one Gaussian into an 8 x 8 image once
    per process and checks it lands on the centre pixel.
    """
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        gsplat = require("gsplat", GSPLAT_INSTALL)
    except ImportError as exc:
        return f"gsplat does not import ({one_line(exc)[:200]})"
    try:
        device = torch.device(device)
        means, quats = torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        scales, opacities, colors = torch.full((1, 3), 0.2), torch.ones(1), torch.ones(1, 3)
        viewmats, Ks = torch.eye(4)[None], torch.tensor([[[8.0, 0.0, 4.0], [0.0, 8.0, 4.0], [0.0, 0.0, 1.0]]])
        _, alphas, _ = gsplat.rasterization(*(t.to(device) for t in (means, quats, scales, opacities, colors,
                                                                     viewmats, Ks)), 8, 8)
        if not float(alphas[0, 3, 3, 0]) > 0.5 or not float(alphas[0, 0, 0, 0]) < float(alphas[0, 3, 3, 0]):
            return "gsplat's test render of one Gaussian came out wrong"
    except Exception as exc:  # noqa: BLE001 - any failure of the kernels means: do not use them
        return f"gsplat's CUDA rasteriser failed ({type(exc).__name__}: {one_line(exc)[:200]})"
    return None


def rasteriser_for(backend: str, device: torch.device) -> tuple[str, str]:
    """(rasteriser, reason) of the splats: gsplat where its kernels work on the CUDA device (a test
    render, once per process), else the PyTorch reference (:func:`matrix_world.runtime.pick_rasteriser`)."""
    return pick_rasteriser(backend, device, problem=gsplat_problem, what="Gaussians and cameras", kernel="gsplat",
                           reference="the PyTorch reference rasteriser")


# --------------------------------------------------------------------------- compositor


def composite(
    means2d: Tensor,  # [C, N, 2] pixel coordinates
    conics: Tensor,  # [C, N, 3] upper triangle (a, b, c) of the inverse 2D covariance
    opacities: Tensor,  # [C, N]
    colors: Tensor,  # [C, N, D]
    depths: Tensor,  # [C, N] camera z, sets the front-to-back order
    radii: Tensor,  # [C, N, 2] int, 0 = not visible
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Differentiable front-to-back alpha compositing (gsplat's CUDA rules, see module doc).

    returns (colors [C, H, W, D], alphas [C, H, W, 1])
    Memory is O(number of (Gaussian, pixel) pairs in the boxes); meant for small images.
    """
    cams, n, d = colors.shape
    out_colors, out_alphas = [], []
    hw = height * width
    for c in range(cams):
        vis = (radii[c] > 0).all(dim=-1)
        ids = torch.nonzero(vis, as_tuple=True)[0]
        ids = ids[torch.sort(depths[c, ids].detach(), stable=True).indices]  # front to back
        mx, my = means2d[c, ids, 0].detach(), means2d[c, ids, 1].detach()
        rx, ry = radii[c, ids, 0].to(mx.dtype), radii[c, ids, 1].to(mx.dtype)
        x0 = torch.floor(mx - rx).clamp(0, width - 1).long()
        x1 = torch.ceil(mx + rx).clamp(0, width - 1).long()
        y0 = torch.floor(my - ry).clamp(0, height - 1).long()
        y1 = torch.ceil(my + ry).clamp(0, height - 1).long()
        bw = (x1 - x0 + 1).clamp(min=0)
        count = bw * (y1 - y0 + 1).clamp(min=0)
        total = int(count.sum())
        color_acc = colors.new_zeros(hw, d)
        alpha_acc = colors.new_zeros(hw)
        if total > 0:
            # one row per (Gaussian, pixel-in-its-box) pair, Gaussians in depth order
            pair_g = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), count)
            start = torch.cumsum(count, 0) - count
            local = torch.arange(total, device=ids.device) - start[pair_g]
            px = x0[pair_g] + local % bw[pair_g]
            py = y0[pair_g] + local // bw[pair_g]
            gid = ids[pair_g]
            dx = means2d[c, gid, 0] - (px.to(means2d.dtype) + 0.5)
            dy = means2d[c, gid, 1] - (py.to(means2d.dtype) + 0.5)
            con = conics[c, gid]
            sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
            alpha = torch.clamp_max(opacities[c, gid] * torch.exp(-sigma), MAX_ALPHA)
            keep = (sigma.detach() >= 0) & (alpha.detach() >= ALPHA_THRESHOLD)
            pixel = (py * width + px)[keep]
            alpha, gid = alpha[keep], gid[keep]
            # group by pixel; the stable sort keeps the depth order inside a pixel
            order = torch.sort(pixel, stable=True).indices
            pixel, alpha, gid = pixel[order], alpha[order], gid[order]
            # exclusive product of (1 - alpha) within each pixel, as a segmented log-cumsum (float64)
            log1m = torch.log1p(-alpha.to(torch.float64))
            csum = torch.cumsum(log1m, 0)
            first = torch.ones_like(pixel, dtype=torch.bool)
            first[1:] = pixel[1:] != pixel[:-1]
            seg = torch.cumsum(first.long(), 0) - 1
            base = (csum - log1m)[first][seg]
            log_t_before = csum - log1m - base
            alive = (log_t_before + log1m).detach() > math.log(TRANSMITTANCE_MIN)
            weight = (alpha * torch.exp(log_t_before).to(alpha.dtype)) * alive.to(alpha.dtype)
            color_acc = color_acc.index_add(0, pixel, weight[:, None] * colors[c, gid])
            alpha_acc = alpha_acc.index_add(0, pixel, weight)
        out_colors.append(color_acc.reshape(height, width, d))
        out_alphas.append(alpha_acc.reshape(height, width, 1))
    return torch.stack(out_colors), torch.stack(out_alphas)


def _project_torch(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d, antialiased):
    """gsplat's pure-PyTorch EWA projection, with gsplat CUDA's opacity-aware radii."""
    impl = require("gsplat.cuda._torch_impl", GSPLAT_INSTALL)
    covars, _ = impl._quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
    radii, means2d, depths, conics, comp = impl._fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        calc_compensations=antialiased,
    )
    ops = opacities[None].expand(viewmats.shape[0], -1)
    if comp is not None:
        ops = ops * comp
    # radii as gsplat's CUDA projection: extent min(3.33, sqrt(2 ln(o / (1/255)))) standard deviations
    a, b, c = conics.detach().unbind(-1)
    det = (a * c - b * b).clamp(min=1e-20)
    var_x, var_y = c / det, a / det
    op = ops.detach()
    extend = torch.sqrt(2.0 * torch.log(op.clamp(min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=3.33)
    rad = torch.stack((torch.ceil(extend * var_x.sqrt()), torch.ceil(extend * var_y.sqrt())), -1)
    ok = (radii > 0).all(-1) & (op >= ALPHA_THRESHOLD)
    inside = (means2d[..., 0].detach() + rad[..., 0] > 0) & (means2d[..., 0].detach() - rad[..., 0] < width)
    inside &= (means2d[..., 1].detach() + rad[..., 1] > 0) & (means2d[..., 1].detach() - rad[..., 1] < height)
    rad = torch.where((ok & inside & (rad > 0).all(-1))[..., None], rad, torch.zeros_like(rad))
    return rad.int(), means2d, depths, conics, ops


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] (w, x, y, z), need not be normalised
    scales: Tensor,  # [N, 3] linear standard deviations
    opacities: Tensor,  # [N] in [0, 1]
    colors: Tensor,  # [N, D] post-activation, or [N, K, 3] SH coefficients with sh_degree
    viewmats: Tensor,  # [C, 4, 4] world -> camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D]
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    rasterize_mode: str = "classic",
    packed: bool = False,
    absgrad: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, dict]:
    """gsplat ``rasterization(..., render_mode="RGB+ED")`` on either backend.

    returns (render_colors [C, H, W, D+1] with the expected depth last, render_alphas [C, H, W, 1], info)
    ``packed``/``absgrad`` only matter for the CUDA backend (the reference is always unpacked).
    """
    backend, _ = rasteriser_for(backend, means.device)
    if rasterize_mode not in ("classic", "antialiased"):
        raise InputError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    if backend == "cuda":
        gsplat = require("gsplat", GSPLAT_INSTALL)
        return gsplat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree, packed=packed,
            backgrounds=backgrounds, render_mode="RGB+ED", rasterize_mode=rasterize_mode, absgrad=absgrad,
        )
    cams = viewmats.shape[0]
    radii, means2d, depths, conics, ops = _project_torch(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d, rasterize_mode == "antialiased"
    )
    if sh_degree is None:
        cols = colors[None].expand(cams, *colors.shape) if colors.dim() == 2 else colors
    else:
        impl = require("gsplat.cuda._torch_impl", GSPLAT_INSTALL)
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        dirs = means[None] - campos[:, None]  # [C, N, 3]
        shs = colors[None].expand(cams, *colors.shape) if colors.dim() == 3 else colors
        cols = torch.clamp_min(impl._spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)
    cols = torch.cat((cols, depths[..., None]), dim=-1)
    render_colors, render_alphas = composite(means2d, conics, ops, cols, depths, radii, width, height)
    if backgrounds is not None:
        bg = torch.cat((backgrounds, backgrounds.new_zeros(cams, 1)), dim=-1)
        render_colors = render_colors + bg[:, None, None, :] * (1.0 - render_alphas)
    render_colors = torch.cat((render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)), dim=-1)
    info = {
        "camera_ids": None, "gaussian_ids": None, "radii": radii, "means2d": means2d, "depths": depths,
        "conics": conics, "opacities": ops, "width": width, "height": height, "n_cameras": cams, "n_batches": 1,
    }
    return render_colors, render_alphas, info


# --------------------------------------------------------------------------- user-facing


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    *,
    backend: str = "auto",
    background: Tensor | None = None,  # [3] or [C, 3]
    sh_degree: int | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    rasterize_mode: str = "classic",
    packed: bool = False,
    absgrad: bool = False,
) -> RenderOutput:
    """Render ``gaussians`` from ``cameras`` (differentiable w.r.t. the Gaussians' tensors).

    sh_degree: SH degree to evaluate (default: all the bands the Gaussians carry).
    returns RenderOutput(rgb [C, 3, H, W], alpha [C, 1, H, W], depth [C, 1, H, W], info)
    """
    dev, dt = gaussians.device, gaussians.dtype
    cams = cameras.to(dev, dt)
    c, h, w = len(cams), cams.height, cams.width
    bg = None
    if background is not None:
        bg = torch.as_tensor(background, device=dev, dtype=dt)
        bg = bg.expand(c, 3) if bg.dim() == 1 else bg
    if len(gaussians) == 0:
        rgb = torch.zeros(c, 3, h, w, device=dev, dtype=dt)
        if bg is not None:
            rgb = rgb + bg[:, :, None, None]
        zeros = torch.zeros(c, 1, h, w, device=dev, dtype=dt)
        return RenderOutput(rgb, zeros, zeros.clone(), {"width": w, "height": h, "n_cameras": c})
    degree = gaussians.sh_degree if sh_degree is None else min(sh_degree, gaussians.sh_degree)
    colors, alphas, info = rasterize(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.sh_coeffs(),
        cams.w2c, cams.K, w, h, sh_degree=degree, backgrounds=bg, near_plane=near_plane, far_plane=far_plane,
        rasterize_mode=rasterize_mode, packed=packed, absgrad=absgrad, backend=backend,
    )
    colors = colors.permute(0, 3, 1, 2)
    return RenderOutput(colors[:, :3], alphas.permute(0, 3, 1, 2), colors[:, 3:4], info)


def render_panorama(
    gaussians: Gaussians,
    c2w: Tensor,  # [4, 4] panoramic camera -> world
    height: int,
    *,
    face_size: int | None = None,
    backend: str = "auto",
    background: Tensor | None = None,  # [3]
) -> PanoramaRender:
    """Equirectangular render (H x 2H) of a panoramic camera: 6 cube faces, stitched.

    Each panorama pixel takes the cube face whose optical axis is closest to its ray, and
    samples it bilinearly. Distances are resampled as (distance x alpha) / alpha so that
    silhouettes do not blend with the empty background. ``face_size`` defaults to
    ceil(0.64 H), where a face's central pixels match the panorama's angular resolution.
    """
    face_size = face_size or max(8, math.ceil(0.64 * height))
    views = cube_faces(face_size)
    out = render(gaussians, Cameras.from_views(views, torch.as_tensor(c2w).detach().cpu().to(torch.float64)), backend=backend)
    dev, dt = out.rgb.device, out.rgb.dtype
    K = views[0].intrinsics(dtype=dt).to(dev)
    dist_alpha = depth_to_distance(out.depth[:, 0], K)[:, None] * out.alpha  # [6, 1, s, s]
    stack = torch.cat((out.rgb, out.alpha, dist_alpha), dim=1)  # [6, 5, s, s]
    dirs = equirect_directions(height, device=dev, dtype=torch.float64)  # [H, 2H, 3]
    axes = torch.stack([v.rotation()[:, 2] for v in views]).to(dev)  # optical axes [6, 3]
    face = (dirs @ axes.T).argmax(dim=-1)  # [H, 2H]
    pano = torch.zeros(5, height, 2 * height, device=dev, dtype=dt)
    for f, view in enumerate(views):
        sel = face == f
        px, py, _ = project_to_view(dirs[sel], view)
        pano[:, sel] = sample_image(stack[f : f + 1], px, py)[0]
    rgb, alpha, da = pano[:3], pano[3:4], pano[4:5]
    distance = torch.where(alpha > 1e-6, da / alpha.clamp(min=1e-6), torch.zeros_like(da))
    if background is not None:
        rgb = rgb + (1.0 - alpha) * torch.as_tensor(background, device=dev, dtype=dt)[:, None, None]
    return PanoramaRender(rgb, alpha, distance)
