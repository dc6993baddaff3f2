"""Render triangle meshes into equirectangular panoramas; render the scaffold along a path.

Method: per frame, the six cube faces of the panoramic camera are rasterised as
perspective images (exact linear rasterisation with perspective-correct barycentrics, CPU
or CUDA backend), vertex attributes and the world position are interpolated, and the faces
are resampled bilinearly into the equirect. Faces are ``face_size`` pixels across 90
degrees plus a margin of ``_MARGIN`` pixels on every side (same focal), so bilinear taps
never cross a face border. Only the rasteriser differs between backends; interpolation and
resampling are shared PyTorch code.

Resampling rules, per output pixel with bilinear taps k (weights w_k, coverage c_k):
``covered = sum w_k c_k >= 0.5``; attributes are averaged over covered taps only
(weights renormalised); inverse face depth likewise where the covered taps agree within
20 %, else that of the heaviest covered tap (depth edges do not blend), converted to the
distance along the output ray (exact on planes); ``inf`` where nothing was hit.

Conventions: OpenCV frames, poses ``c2w`` [F, 4, 4] map the panoramic camera to the world
the mesh lives in; equirect geometry as in :mod:`matrix_world.equirect`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from matrix_world.cameras import cube_faces, invert_pose
from matrix_world.equirect import equirect_directions
from matrix_world.errors import InputError
from matrix_world.runtime import pick_rasteriser
from matrix_world.scaffold.mesh import ScaffoldMesh

_MARGIN = 2  # extra pixels on each side of a 90-degree cube face
_SMOOTH = 0.2  # taps whose inverse depths differ by less than 20 % are blended (else nearest)
_MASK_ALPHA = 0.999  # a pixel is known where the interpolated alpha exceeds this


@dataclass
class ScaffoldFrames:
    """Scaffold renders along a camera path."""

    rgb: Tensor  # [F, H, 2H, 3] float32 in [0, 1]; 0 where unknown
    mask: Tensor  # [F, H, 2H] bool; True where known (all three vertices visible)
    distance: Tensor  # [F, H, 2H] float32; inf where nothing was hit


def default_face_size(height: int) -> int:
    """Cube-face size for an output equirect of this height: 0.75 x height, multiple of 8."""
    return max(8, int(round(0.75 * height / 8.0)) * 8)


def _face_rotations(dtype=torch.float64) -> Tensor:
    """R_c2p [6, 3, 3] of the cube faces (front, right, back, left, up, down)."""
    return torch.stack([view.rotation(dtype=dtype) for view in cube_faces()])


def _face_intrinsics(face_size: int) -> tuple[tuple[float, float, float, float], int]:
    """((fx, fy, cx, cy), image size) of a cube face with the margin."""
    size = face_size + 2 * _MARGIN
    f = face_size / 2.0
    return (f, f, size / 2.0, size / 2.0), size


@functools.lru_cache(maxsize=16)
def _lookup(height: int, face_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear taps of every equirect pixel into the stacked face images.

    returns (index [H*W, 4] int64 into a flat [6 * S * S] face stack, weight [H*W, 4] float32,
             secant [H*W] float32: 1 / cos of the angle between the pixel's ray and its face axis)
    """
    (fx, fy, cx, cy), size = _face_intrinsics(face_size)
    dirs = equirect_directions(height, device=device, dtype=torch.float64).reshape(-1, 3)
    local = torch.einsum("nj,fjk->fnk", dirs, _face_rotations().to(device))  # R^T d: [6, N, 3]
    face = local[..., 2].argmax(0)  # the face whose axis is closest
    q = local.gather(0, face[None, :, None].expand(1, -1, 3))[0]
    px = fx * q[:, 0] / q[:, 2] + cx - 0.5
    py = fy * q[:, 1] / q[:, 2] + cy - 0.5
    x0 = torch.floor(px).clamp(0, size - 2)
    y0 = torch.floor(py).clamp(0, size - 2)
    ax, ay = (px - x0).clamp(0, 1), (py - y0).clamp(0, 1)
    base = face * size * size + y0.long() * size + x0.long()
    index = torch.stack((base, base + 1, base + size, base + size + 1), dim=1)
    weight = torch.stack(((1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay), dim=1)
    secant = 1.0 / q[:, 2]  # distance along the ray = face depth z / cos(angle to the face axis)
    return index, weight.to(torch.float32), secant.to(torch.float32)


def _resample(
    face_attrs: Tensor,  # [F, 6, S, S, C]
    face_inv_depth: Tensor,  # [F, 6, S, S] 1 / face z-depth (linear in screen space on planes)
    face_cov: Tensor,  # [F, 6, S, S] bool
    height: int,
    face_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cube faces -> equirect (attrs [F, H, 2H, C], distance [F, H, 2H], covered [F, H, 2H]).

    Inverse depth is linear in screen space on a plane, so blending it bilinearly and
    converting back to distance along the output ray is exact on planar surfaces.
    """
    f, c = face_attrs.shape[0], face_attrs.shape[-1]
    index, weight, secant = _lookup(height, face_size, face_attrs.device)
    cov = face_cov.reshape(f, -1)[:, index]  # [F, N, 4]
    wc = weight[None] * cov
    total = wc.sum(-1)  # [F, N]
    covered = total >= 0.5
    norm = wc / total.clamp(min=1e-12)[..., None]
    attrs = (face_attrs.reshape(f, -1, c)[:, index] * norm[..., None]).sum(-2)  # [F, N, C]
    inv = face_inv_depth.reshape(f, -1)[:, index]  # [F, N, 4]
    i_max = torch.where(cov, inv, torch.zeros_like(inv)).amax(-1)
    i_min = torch.where(cov, inv, torch.full_like(inv, float("inf"))).amin(-1)
    smooth = (i_max - i_min) <= _SMOOTH * i_min
    blended = (torch.where(cov, inv, torch.zeros_like(inv)) * norm).sum(-1)
    nearest = inv.gather(-1, wc.argmax(-1, keepdim=True))[..., 0]
    inv_depth = torch.where(smooth, blended, nearest)
    distance = torch.where(covered, secant[None] / inv_depth, torch.full_like(inv_depth, float("inf")))
    attrs = attrs * covered[..., None]
    w = 2 * height
    return attrs.reshape(f, height, w, c), distance.reshape(f, height, w), covered.reshape(f, height, w)


def rasteriser_for(backend: str, device: torch.device) -> tuple[str, str]:
    """(rasteriser, reason) of the scaffold: nvdiffrast where it works on the mesh's CUDA device, else
    the CPU rasteriser (:func:`matrix_world.runtime.pick_rasteriser`, the one rule)."""
    def problem(device):
        from matrix_world.scaffold.raster_cuda import nvdiffrast_problem

        return nvdiffrast_problem(device)

    return pick_rasteriser(backend, device, problem=problem, what="scaffold mesh", kernel="the CUDA rasteriser",
                           reference="the CPU rasteriser")


def _clip_range(vertices: Tensor, centres: Tensor) -> tuple[float, float]:
    """(near, far) that enclose the whole mesh seen from every camera centre [F, 3]."""
    lo, hi = vertices.amin(0), vertices.amax(0)
    corner = torch.maximum((centres - lo).abs(), (centres - hi).abs())  # farthest box corner per axis
    far = float(corner.norm(dim=-1).max()) * 1.01 + 1e-6
    return far * 1e-5, far


def _check_poses(c2w: Tensor) -> Tensor:
    c2w = torch.as_tensor(c2w)
    if c2w.dim() == 2:
        c2w = c2w[None]
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4) or c2w.shape[0] < 1:
        raise InputError(f"c2w must be [F, 4, 4] with F >= 1, got shape {tuple(c2w.shape)}")
    if not bool(torch.isfinite(c2w).all()):
        raise InputError("c2w contains NaN or inf; expected finite rigid 4x4 poses")
    return c2w


def render_mesh_equirect(
    vertices: Tensor,  # [V, 3] world coordinates
    faces: Tensor,  # [T, 3] int
    attributes: Tensor,  # [V, C] float, interpolated perspective-correctly
    c2w: Tensor,  # [F, 4, 4] panoramic camera -> world
    height: int,
    *,
    backend: str = "auto",
    face_size: int | None = None,
    frames_per_chunk: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render a triangle mesh into equirect panoramas (any closed or open mesh, any size).

    returns (attrs [F, H, 2H, C] float32 (0 where nothing was hit),
             distance [F, H, 2H] float32 from the camera centre (inf where nothing was hit),
             covered [F, H, 2H] bool)
    """
    device = vertices.device
    backend, _ = rasteriser_for(backend, device)
    c2w = _check_poses(c2w).to(device=device, dtype=torch.float64)
    face_size = default_face_size(height) if face_size is None else int(face_size)
    if vertices.dim() != 2 or vertices.shape[-1] != 3 or faces.dim() != 2 or faces.shape[-1] != 3:
        raise InputError(f"vertices must be [V, 3] and faces [T, 3], got {tuple(vertices.shape)} and {tuple(faces.shape)}")
    if attributes.dim() != 2 or attributes.shape[0] != vertices.shape[0]:
        raise InputError(f"attributes must be [V, C] with V = {vertices.shape[0]}, got {tuple(attributes.shape)}")
    verts = vertices.to(torch.float32)
    faces = faces.to(device=device, dtype=torch.int64)
    attrs_ext = torch.cat((attributes.to(device=device, dtype=torch.float32), verts), dim=1)  # [V, C + 3]
    num_attr = attributes.shape[1]
    intr, size = _face_intrinsics(face_size)
    rot_faces = _face_rotations().to(device)
    face_w2c = torch.zeros(6, 4, 4, dtype=torch.float64, device=device)
    face_w2c[:, :3, :3] = rot_faces.transpose(1, 2)
    face_w2c[:, 3, 3] = 1.0
    w2c = invert_pose(c2w)  # [F, 4, 4]
    centres = c2w[:, :3, 3]
    near, far = _clip_range(verts.to(torch.float64), centres)

    if backend == "cuda":
        from matrix_world.scaffold.raster_cuda import rasterize_cuda

        def raster(view_w2c):
            return rasterize_cuda(verts, faces, view_w2c, intr, size, size, near=near, far=far)
        chunk = frames_per_chunk or 8
    else:
        from matrix_world.scaffold.raster_cpu import rasterize_cpu

        def raster(view_w2c):
            return rasterize_cpu(verts, faces, view_w2c, intr, size, size, near=near)
        chunk = frames_per_chunk or 1

    num_frames = c2w.shape[0]
    out_attrs, out_dist, out_cov = [], [], []
    for s in range(0, num_frames, chunk):
        f = min(chunk, num_frames - s)
        view_w2c = (face_w2c[None] @ w2c[s : s + f, None]).reshape(-1, 4, 4)  # [f*6, 4, 4]
        tri, bary = raster(view_w2c)
        hit = tri >= 0
        corner = faces[tri.clamp(min=0)]  # [f*6, S, S, 3]
        interp = attrs_ext[corner[..., 0]] * bary[..., 0:1]  # [f*6, S, S, C+3]
        interp.addcmul_(attrs_ext[corner[..., 1]], bary[..., 1:2]).addcmul_(attrs_ext[corner[..., 2]], bary[..., 2:3])
        pos = interp[..., num_attr:].reshape(f, 6, size, size, 3)
        axes = view_w2c[:, 2, :3].reshape(f, 6, 1, 1, 3).to(torch.float32)  # face axes in world
        depth = ((pos - centres[s : s + f, None, None, None].to(torch.float32)) * axes).sum(-1)
        inv_depth = torch.where(hit.reshape(depth.shape), 1.0 / depth.clamp(min=near), torch.zeros_like(depth))
        a, d, c = _resample(
            interp[..., :num_attr].reshape(f, 6, size, size, num_attr), inv_depth, hit.reshape(f, 6, size, size), height, face_size
        )
        out_attrs.append(a)
        out_dist.append(d)
        out_cov.append(c)
    return torch.cat(out_attrs), torch.cat(out_dist), torch.cat(out_cov)


def render_scaffold(
    mesh: ScaffoldMesh,
    c2w: Tensor,  # [F, 4, 4] panoramic camera -> world (the mesh's frame)
    height: int,
    *,
    backend: str = "auto",
    face_size: int | None = None,
) -> ScaffoldFrames:
    """Render the scaffold along a camera path.

    Known pixels (mask True) are those whose interpolated vertex alpha (1 visible, 0
    invisible) exceeds 0.999, i.e. all three vertices of the triangle are visible; unknown
    rgb is 0. (The scaffold video's frame 0 is the panorama itself: that rule lives in the
    one scaffold builder, :func:`matrix_world.scaffold.build.build_scaffold`.)
    """
    device = mesh.vertices.device
    c2w = _check_poses(c2w).to(device=device, dtype=torch.float64)
    attrs = torch.cat((mesh.colors, mesh.visible[:, None].to(mesh.colors.dtype)), dim=1)
    rendered, distance, covered = render_mesh_equirect(
        mesh.vertices, mesh.faces, attrs, c2w, height, backend=backend, face_size=face_size
    )
    mask = covered & (rendered[..., 3] > _MASK_ALPHA)
    rgb = (rendered[..., :3] * mask[..., None]).clamp(0, 1)
    return ScaffoldFrames(rgb=rgb, mask=mask, distance=distance)
