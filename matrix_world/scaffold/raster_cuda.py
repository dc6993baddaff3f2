"""nvdiffrast triangle rasteriser (CUDA), same interface as :func:`raster_cpu.rasterize_cpu`.

nvdiffrast is the PyPI distribution ``diffrp-nvdiffrast`` (imported lazily; its CUDA plugin
compiles on first use, ~15 s). Recent torch versions do not put the plugin's build folder on
``sys.path``, so the first import fails with ``ModuleNotFoundError: nvdiffrast_plugin_...``;
:func:`load_nvdiffrast` prepends that folder before the first context is made.

Clip space: for OpenCV view coordinates (x, y, z) and intrinsics (fx, fy, cx, cy) of an
image W x H, ``x_clip = 2 fx / W x + (2 cx / W - 1) z`` and likewise for y, ``w_clip = z``.
nvdiffrast's output row 0 is NDC y = -1, so OpenCV's y-down image maps without a flip and
pixel (row i, column j) is centred at (j + 0.5, i + 0.5) as in the CPU rasteriser.
Vertices snap to 1/16 pixel inside nvdiffrast, so pixels whose centre lies within that of
a triangle edge may pick the neighbouring triangle; the depth test is in float NDC depth.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import Tensor

from matrix_world.errors import one_line, require

_INSTALL = "pip install diffrp-nvdiffrast==0.3.3.1  (needs a CUDA GPU, nvcc and ninja)"
_MAX_VIEWPORT = 2048  # nvdiffrast CudaRaster tiles larger images; we keep faces below this


def load_nvdiffrast():
    """Import ``nvdiffrast.torch`` with the plugin import fix; raises MissingDependencyError."""
    dr = require("nvdiffrast.torch", _INSTALL)
    import nvdiffrast
    from nvdiffrast.torch import ops
    from torch.utils import cpp_extension

    name = ops.sanitize_name(f"nvdiffrast_plugin_{nvdiffrast.__version__}_torch{torch.__version__}")
    build_dir = cpp_extension._get_build_directory(name, False)
    if build_dir not in sys.path:
        sys.path.insert(0, build_dir)
    return dr


def nvdiffrast_available() -> bool:
    """True when CUDA is available and nvdiffrast renders (see :func:`nvdiffrast_problem`)."""
    return nvdiffrast_problem() is None


@functools.cache
def nvdiffrast_problem(device: torch.device | str = "cuda") -> str | None:
    """None when nvdiffrast works on the CUDA ``device``, else why not (one line).

    Importing the package is not enough: its CUDA plugin compiles on first use and fails
    where nvcc, ninja or the headers are missing. So this compiles it and rasterises one
    triangle into a 4 x 4 image, once per process (the compiled plugin is cached on disk by
    torch's extension builder), and checks the triangle covers the pixel it should.
    """
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        load_nvdiffrast()
    except ImportError as exc:
        return f"nvdiffrast does not import ({one_line(exc)[:200]})"
    try:
        device = torch.device(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        clip = torch.tensor([[[-1.0, -1.0, 0.5, 1.0], [1.0, -1.0, 0.5, 1.0], [-1.0, 1.0, 0.5, 1.0]]], device=device)
        tri = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=device)
        rast, _ = load_nvdiffrast().rasterize(_context(index), clip, tri, resolution=[4, 4])
        covered = rast[0, :, :, 3] > 0
        if not (bool(covered[0, 0]) and not bool(covered[3, 3])):
            return "nvdiffrast's test render of one triangle came out wrong"
    except Exception as exc:  # noqa: BLE001 - any failure of the plugin build or the render means: do not use it
        return f"nvdiffrast's CUDA plugin failed ({type(exc).__name__}: {one_line(exc)[:200]})"
    return None


@functools.cache
def _context(device_index: int):
    """One RasterizeCudaContext per GPU (making one allocates its buffers; reuse it)."""
    dr = load_nvdiffrast()
    return dr.RasterizeCudaContext(device=torch.device("cuda", device_index))


def clip_matrix(intrinsics, height: int, width: int, near: float, far: float, *, device=None) -> Tensor:
    """OpenCV view coordinates -> nvdiffrast clip space: [4, 4] float32."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    a = (far + near) / (far - near)
    b = -2.0 * far * near / (far - near)
    return torch.tensor(
        [
            [2.0 * fx / width, 0.0, 2.0 * cx / width - 1.0, 0.0],
            [0.0, 2.0 * fy / height, 2.0 * cy / height - 1.0, 0.0],
            [0.0, 0.0, a, b],
            [0.0, 0.0, 1.0, 0.0],
        ],
        dtype=torch.float32,
        device=device,
    )


def _decode_triangle_ids(channel: Tensor) -> Tensor:
    """nvdiffrast's float-encoded (triangle index + 1) -> int64 triangle index (-1 = none)."""
    as_int = channel.view(torch.int32).to(torch.int64)
    small = channel <= float(1 << 24)
    return torch.where(small, channel.to(torch.int64), as_int - 0x4A800000) - 1


def rasterize_cuda(
    vertices: Tensor,  # [V, 3] world coordinates (CUDA)
    faces: Tensor,  # [T, 3] int64 or int32
    w2c: Tensor,  # [C, 4, 4] world -> view camera (OpenCV)
    intrinsics: tuple[float, float, float, float],  # (fx, fy, cx, cy) in pixels
    height: int,
    width: int,
    *,
    near: float,
    far: float,
    max_elements: int = 1 << 26,
) -> tuple[Tensor, Tensor]:
    """Rasterise into C perspective views with nvdiffrast (instanced mode, views chunked so
    that views x vertices <= ``max_elements``).

    returns (tri [C, height, width] int64, -1 where none; bary [C, height, width, 3] float32
             perspective-correct weights of the triangle's three vertices)
    """
    if not vertices.is_cuda:
        raise ValueError("rasterize_cuda needs CUDA tensors; use the CPU rasteriser for CPU tensors")
    if max(height, width) > _MAX_VIEWPORT:
        raise ValueError(f"view size {height} x {width} exceeds {_MAX_VIEWPORT} pixels")
    dr = load_nvdiffrast()
    device = vertices.device
    ctx = _context(device.index if device.index is not None else torch.cuda.current_device())
    tri32 = faces.to(device=device, dtype=torch.int32).contiguous()
    verts_h = torch.cat((vertices.to(torch.float32), torch.ones_like(vertices[:, :1], dtype=torch.float32)), dim=1)
    proj = clip_matrix(intrinsics, height, width, near, far, device=device)
    full = proj @ w2c.to(device=device, dtype=torch.float32)  # [C, 4, 4] world -> clip
    num_views = w2c.shape[0]
    step = max(1, max_elements // max(1, vertices.shape[0]))
    tri_out = torch.empty((num_views, height, width), dtype=torch.int64, device=device)
    bary_out = torch.empty((num_views, height, width, 3), dtype=torch.float32, device=device)
    for s in range(0, num_views, step):
        pos = torch.matmul(verts_h[None], full[s : s + step].transpose(1, 2)).contiguous()  # [c, V, 4] clip
        with torch.no_grad():
            rast, _ = dr.rasterize(ctx, pos, tri32, (height, width), grad_db=False)
        del pos
        u, v = rast[..., 0], rast[..., 1]
        tri = _decode_triangle_ids(rast[..., 3].contiguous())
        hit = tri >= 0
        bary = torch.stack((u, v, 1.0 - u - v), dim=-1) * hit[..., None]
        tri_out[s : s + step] = tri
        bary_out[s : s + step] = bary
    return tri_out, bary_out
