"""Pure-PyTorch perspective triangle rasteriser (the CPU reference of the nvdiffrast path).

Conventions: OpenCV cameras (x right, y down, z forward); pinhole intrinsics in pixels with
pixel (row i, column j) centred at (j + 0.5, i + 0.5). A pixel is covered by a triangle
when its centre lies inside or on the triangle's edges (no back-face culling). The nearest
surface wins (z-buffer on camera z; ties go to the lower triangle index).

Method, per group of up to 6 views sharing one pass over the mesh:

1. vertices -> view coordinates; per-vertex outcodes against the 5 frustum planes (near,
   left, right, top, bottom); a triangle is culled for a view when its three vertices lie
   outside the same plane;
2. triangles that cross the near plane are clipped (Sutherland-Hodgman, one plane) into at
   most two sub-triangles that remember their barycentric coordinates in the original;
   they, and triangles reaching far outside the image (a guard band), are handled in
   float64, since their screen coordinates are huge;
3. screen bounding boxes are bucketed by size (powers of two per axis); each bucket lists
   its candidate pixel centres in a vectorised block, keeps those inside the three edge
   functions and writes ``(depth float bits << 32) | raster id`` into an int64 z-buffer
   with ``scatter_reduce(amin)``, in chunks that bound memory;
4. the winner of every covered pixel gets perspective-correct barycentrics of its original
   triangle.

Exact for any triangle size; costs scale with triangles + covered candidate pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EMPTY = torch.iinfo(torch.int64).max
_GROUP = 6  # views per pass: one outcode byte per view, packed into an int64
_GUARD = 16  # vertices projecting beyond 16 image sizes send their triangle to the float64 path


def _edge(ax, ay, bx, by, px, py):
    """Signed doubled area of (a, b, p); positive when p is left of a->b in a y-down image."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


class _ZBuffer:
    """Candidates -> int64 z-buffer over ``views x height x width`` pixels."""

    def __init__(self, views: int, height: int, width: int, device, budget: int):
        self.h, self.w = height, width
        self.keys = torch.full((views * height * width,), _EMPTY, dtype=torch.int64, device=device)
        self.budget = budget

    def add(self, sx: Tensor, sy: Tensor, z: Tensor, view: Tensor, rid: Tensor) -> None:
        """sx, sy, z: [n, 3] screen corners and camera depth (> 0); view, rid: [n] int64."""
        h, w = self.h, self.w
        x0 = torch.ceil(sx.amin(1) - 0.5).clamp(min=0)
        x1 = torch.floor(sx.amax(1) - 0.5).clamp(max=w - 1)
        y0 = torch.ceil(sy.amin(1) - 0.5).clamp(min=0)
        y1 = torch.floor(sy.amax(1) - 0.5).clamp(max=h - 1)
        nx = (x1 - x0 + 1).clamp(min=0)
        ny = (y1 - y0 + 1).clamp(min=0)
        area = _edge(sx[:, 0], sy[:, 0], sx[:, 1], sy[:, 1], sx[:, 2], sy[:, 2])
        keep = (nx > 0) & (ny > 0) & (area != 0)
        if not bool(keep.any()):
            return
        idx = keep.nonzero()[:, 0]
        sx, sy, z, view, rid = sx[idx], sy[idx], z[idx], view[idx], rid[idx]
        x0, y0, nx, ny, area = x0[idx].long(), y0[idx].long(), nx[idx].long(), ny[idx].long(), area[idx]
        # bucket by the power of two above the box size, per axis
        bx = torch.ceil(torch.log2(nx.double())).long()
        by = torch.ceil(torch.log2(ny.double())).long()
        bucket = bx * 64 + by
        for key in torch.unique(bucket).tolist():
            sel = (bucket == key).nonzero()[:, 0]
            kx, ky = 1 << (key // 64), 1 << (key % 64)
            step = max(1, self.budget // (kx * ky))
            for s in range(0, len(sel), step):
                part = sel[s : s + step]
                self._block(sx[part], sy[part], z[part], view[part], rid[part], x0[part], y0[part], nx[part], ny[part], area[part], kx, ky)

    def _block(self, sx, sy, z, view, rid, x0, y0, nx, ny, area, kx, ky):
        dev = sx.device
        dx = torch.arange(kx, device=dev).repeat(ky)  # [K]
        dy = torch.arange(ky, device=dev).repeat_interleave(kx)
        inbox = (dx[None] < nx[:, None]) & (dy[None] < ny[:, None])  # [n, K]
        px = (x0[:, None] + dx[None])
        py = (y0[:, None] + dy[None])
        cx = px.to(sx.dtype) + 0.5
        cy = py.to(sx.dtype) + 0.5
        ax, bx_, cx_ = sx[:, 0:1], sx[:, 1:2], sx[:, 2:3]
        ay, by_, cy_ = sy[:, 0:1], sy[:, 1:2], sy[:, 2:3]
        inv_area = 1.0 / area[:, None]
        wa = _edge(bx_, by_, cx_, cy_, cx, cy) * inv_area
        wb = _edge(cx_, cy_, ax, ay, cx, cy) * inv_area
        wc = _edge(ax, ay, bx_, by_, cx, cy) * inv_area
        inside = inbox & (wa >= 0) & (wb >= 0) & (wc >= 0)
        if not bool(inside.any()):
            return
        inv_depth = wa / z[:, 0:1] + wb / z[:, 1:2] + wc / z[:, 2:3]
        depth = (1.0 / inv_depth).to(torch.float32)
        m = inside.nonzero(as_tuple=True)
        bits = depth[m].clamp(min=0).view(torch.int32).to(torch.int64)
        key = (bits << 32) | rid[m[0]]
        pix = view[m[0]] * (self.h * self.w) + py[m] * self.w + px[m]
        self.keys.scatter_reduce_(0, pix, key, reduce="amin")


def _clip_near(q: Tensor, near: float) -> tuple[Tensor, Tensor, Tensor]:
    """Clip triangles against z >= near.

    q: [n, 3, 3] corner view coordinates (some z < near, not all)
    returns (sub [m, 3, 3] view coordinates, basis [m, 3, 3] barycentrics of each sub corner in
             its original triangle, parent [m] int64 index into n)
    """
    n = q.shape[0]
    eye = torch.eye(3, dtype=q.dtype, device=q.device).expand(n, 3, 3)
    inside = q[..., 2] >= near  # [n, 3]
    pts_l: list[Tensor] = []
    bas_l: list[Tensor] = []
    ok_l: list[Tensor] = []
    for i in range(3):
        j = (i + 1) % 3
        pts_l.append(q[:, i])
        bas_l.append(eye[:, i])
        ok_l.append(inside[:, i])
        zi, zj = q[:, i, 2], q[:, j, 2]
        denom = torch.where(zj == zi, torch.ones_like(zi), zj - zi)
        s = ((near - zi) / denom).clamp(0, 1)[:, None]
        pts_l.append(q[:, i] + s * (q[:, j] - q[:, i]))
        bas_l.append(eye[:, i] * (1 - s) + eye[:, j] * s)
        ok_l.append(inside[:, i] != inside[:, j])
    pts, bas, ok = torch.stack(pts_l, 1), torch.stack(bas_l, 1), torch.stack(ok_l, 1)  # [n, 6, ...]
    order = torch.sort((~ok).to(torch.int8), dim=1, stable=True).indices[:, :4]
    pts = torch.gather(pts, 1, order[..., None].expand(-1, -1, 3))
    bas = torch.gather(bas, 1, order[..., None].expand(-1, -1, 3))
    count = ok.sum(1)
    pts[..., 2] = pts[..., 2].clamp(min=near)
    first = count >= 3
    second = count == 4
    tri_a = [0, 1, 2]
    tri_b = [0, 2, 3]
    sub = torch.cat((pts[first][:, tri_a], pts[second][:, tri_b]))
    basis = torch.cat((bas[first][:, tri_a], bas[second][:, tri_b]))
    parent = torch.cat((first.nonzero()[:, 0], second.nonzero()[:, 0]))
    return sub, basis, parent


def _project(q: Tensor, fx: float, fy: float, cx: float, cy: float) -> tuple[Tensor, Tensor]:
    z = q[..., 2]
    return fx * q[..., 0] / z + cx, fy * q[..., 1] / z + cy


def _screen_bary(sx: Tensor, sy: Tensor, z: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Perspective-correct barycentrics [n, 3] of pixel centres (px, py) in triangles [n, 3]."""
    cx, cy = px.to(sx.dtype) + 0.5, py.to(sx.dtype) + 0.5
    area = _edge(sx[:, 0], sy[:, 0], sx[:, 1], sy[:, 1], sx[:, 2], sy[:, 2])
    wa = _edge(sx[:, 1], sy[:, 1], sx[:, 2], sy[:, 2], cx, cy) / area
    wb = _edge(sx[:, 2], sy[:, 2], sx[:, 0], sy[:, 0], cx, cy) / area
    w = torch.stack((wa, wb, 1.0 - wa - wb), dim=1).clamp(min=0) / z
    return w / w.sum(1, keepdim=True)


def rasterize_cpu(
    vertices: Tensor,  # [V, 3] world coordinates
    faces: Tensor,  # [T, 3] int64
    w2c: Tensor,  # [C, 4, 4] world -> view camera (OpenCV)
    intrinsics: tuple[float, float, float, float],  # (fx, fy, cx, cy) in pixels, shared by the views
    height: int,
    width: int,
    *,
    near: float,
    chunk: int = 1 << 20,
) -> tuple[Tensor, Tensor]:
    """Rasterise a triangle mesh into C perspective views.

    returns (tri [C, height, width] int64: index into ``faces`` of the visible triangle, -1 where
             none; bary [C, height, width, 3] float32: perspective-correct barycentric weights of
             that triangle's three vertices, 0 where none)
    """
    device = vertices.device
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    faces = faces.to(device=device, dtype=torch.int64)
    verts = vertices.to(torch.float32)
    num_views = w2c.shape[0]
    tri_out = torch.full((num_views, height, width), -1, dtype=torch.int64, device=device)
    bary_out = torch.zeros((num_views, height, width, 3), dtype=torch.float32, device=device)
    for g0 in range(0, num_views, _GROUP):
        views = w2c[g0 : g0 + _GROUP].to(device=device, dtype=torch.float32)
        tri, bary = _rasterize_group(verts, faces, views, (fx, fy, cx, cy), height, width, near, chunk)
        tri_out[g0 : g0 + len(views)] = tri
        bary_out[g0 : g0 + len(views)] = bary
    return tri_out, bary_out


def _rasterize_group(verts, faces, w2c, intr, h, w, near, chunk):
    fx, fy, cx, cy = intr
    g = w2c.shape[0]
    device = verts.device
    # 1. view coordinates of every vertex in every view (one matmul, view-major rows so the
    #    per-view arrays are contiguous), screen positions, outcodes
    rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]
    q = torch.addmm(trans.reshape(3 * g, 1), rot.reshape(3 * g, 3), verts.T).view(g, 3, -1)  # [G, 3, V]
    z = q[:, 2]  # [G, V]
    inv_z = torch.reciprocal(z)
    sxs = q[:, 0].mul_(inv_z).mul_(fx).add_(cx)  # in place: x -> screen x
    sys_ = q[:, 1].mul_(inv_z).mul_(fy).add_(cy)
    del inv_z
    behind = z < near
    guard = _GUARD * max(w, h)  # beyond this band float32 screen coordinates lose precision
    # Side planes from screen positions; meaningless behind the camera, so vertices behind the
    # near plane never vote for a side (conservative: their triangles are clipped anyway).
    side = (sxs < 0).to(torch.uint8) << 1
    side |= (sxs > w).to(torch.uint8) << 2
    side |= (sys_ < 0).to(torch.uint8) << 3
    side |= (sys_ > h).to(torch.uint8) << 4
    side.masked_fill_(behind, 0)
    far_out = (sxs < cx - guard) | (sxs > cx + guard) | (sys_ < cy - guard) | (sys_ > cy + guard) | behind
    codes = side | behind.to(torch.uint8) | (far_out.to(torch.uint8) << 5)  # [G, V]
    del side, far_out, behind
    packed = torch.zeros((codes.shape[1], 8), dtype=torch.uint8, device=device)
    packed[:, :g] = codes.T
    packed = packed.view(torch.int64)[:, 0]  # one byte of outcode per view
    # q now holds (screen x, screen y, z) per view: flat index (view * 3 + channel) * V + vertex
    num_v = verts.shape[0]
    flat = q.view(-1)
    del codes, sxs, sys_, z
    tc = packed[faces]  # [T, 3]
    all_out = (tc[:, 0] & tc[:, 1] & tc[:, 2]).view(torch.uint8).reshape(-1, 8)[:, :g]  # [T, G]
    any_out = (tc[:, 0] | tc[:, 1] | tc[:, 2]).view(torch.uint8).reshape(-1, 8)[:, :g]
    del tc
    vis = (all_out & 31) == 0
    crosses = (any_out & 33) != 0  # behind the near plane or outside the guard band: float64 path
    pair_t, pair_g = (vis & ~crosses).nonzero(as_tuple=True)
    clip_t, clip_g = (vis & crosses).nonzero(as_tuple=True)
    del vis, crosses, all_out, any_out
    n_direct = len(pair_t)

    def corners(t: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # (screen x, screen y, z) [n, 3] each of the triangles' corners in view v
        idx = faces[t] + (v * (3 * num_v))[:, None]
        return flat[idx], flat[idx + num_v], flat[idx + 2 * num_v]

    zbuf = _ZBuffer(g, h, w, device, budget=chunk)
    # 2./3. triangles fully in front of the near plane
    for s in range(0, n_direct, chunk):
        t, v = pair_t[s : s + chunk], pair_g[s : s + chunk]
        zbuf.add(*corners(t, v), v, torch.arange(s, s + len(t), device=device))
    # triangles crossing the near plane, clipped
    sub_q = sub_basis = sub_t = sub_g = None
    if len(clip_t):
        # float64: corners on the near plane project far outside the image, where float32 edge
        # functions would lose all precision
        rot64, trans64 = rot.double(), trans.double()
        qflat = (verts[faces[clip_t]].double() @ rot64[clip_g].transpose(1, 2)) + trans64[clip_g][:, None]  # [n, 3, 3]
        sub_q, sub_basis, parent = _clip_near(qflat, near)
        sub_t, sub_g = clip_t[parent], clip_g[parent]
        sx, sy = _project(sub_q, fx, fy, cx, cy)
        zbuf.add(sx, sy, sub_q[..., 2], sub_g, n_direct + torch.arange(len(sub_t), device=device))

    # 4. winners -> original triangle index and perspective-correct barycentrics
    keys = zbuf.keys
    tri = torch.full((g * h * w,), -1, dtype=torch.int64, device=device)
    bary = torch.zeros((g * h * w, 3), dtype=torch.float32, device=device)
    pix = (keys != _EMPTY).nonzero()[:, 0]
    if len(pix):
        rid = keys[pix] & 0xFFFFFFFF
        px, py = pix % w, (pix // w) % h
        direct = rid < n_direct
        p_d, r_d = pix[direct], rid[direct]
        if len(p_d):
            t, v = pair_t[r_d], pair_g[r_d]
            tri[p_d] = t
            bary[p_d] = _screen_bary(*corners(t, v), px[direct], py[direct])
        if sub_q is not None and not bool(direct.all()):
            assert sub_t is not None and sub_basis is not None  # set together with sub_q
            p_c, r_c = pix[~direct], rid[~direct] - n_direct
            qc = sub_q[r_c]
            sx, sy = _project(qc, fx, fy, cx, cy)
            b_sub = _screen_bary(sx, sy, qc[..., 2], px[~direct], py[~direct])
            tri[p_c] = sub_t[r_c]
            bary[p_c] = torch.einsum("ni,nij->nj", b_sub, sub_basis[r_c]).to(torch.float32)
    return tri.reshape(g, h, w), bary.reshape(g, h, w, 3)
