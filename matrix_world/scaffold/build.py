"""The scaffold video of a panorama along a camera path: the one builder and the one file layout.

Every scaffold in the project comes from :func:`build_scaffold`: the pipeline's scaffold
stage, ``scripts/render_scaffold.py`` and the training pairs of the video model
(:mod:`matrix_world.datasets.pairs`), so what the video model is trained on is what it is
given at inference.

The rule, once:

* the occlusion-aware mesh of the panorama (:func:`~matrix_world.scaffold.mesh.build_scaffold_mesh`)
  is built at the pose ``c2w[0]`` (the panorama's own camera), together with any meshes of
  the world's 3D cache (earlier segments, already in the world frame);
* every frame is rendered from all meshes (:func:`render_union`): rgb where known, 0
  elsewhere, mask True where a visible surface was hit, distance along each ray (+inf where
  nothing was hit);
* frame 0 is the panorama itself, resized to the output height (area), with a full mask,
  or with ``known`` (resized nearest) when the panorama has holes (a re-rendered view).

The layout of ``scaffold.npz`` (:func:`save_scaffold` / :func:`load_scaffold`):
``rgb`` [F, H, 2H, 3] uint8, ``mask`` [F, H, 2H] bool, ``distance`` [F, H, 2H] float16
(+inf where nothing was hit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from matrix_world.errors import InputError
from matrix_world.io import load_npz, save_npz, to_uint8
from matrix_world.scaffold.mesh import ScaffoldConfig, ScaffoldMesh, build_scaffold_mesh
from matrix_world.scaffold.render import ScaffoldFrames, render_scaffold

SCAFFOLD_KEYS = ("rgb", "mask", "distance")
CHUNK = 8  # frames rendered per call (progress and memory)


@dataclass
class Scaffold:
    """A scaffold video in its file layout (numpy, CPU)."""

    rgb: np.ndarray  # [F, H, 2H, 3] uint8, 0 where unknown
    mask: np.ndarray  # [F, H, 2H] bool, True where known
    distance: np.ndarray  # [F, H, 2H] float16, +inf where nothing was hit

    def __len__(self) -> int:
        return int(self.mask.shape[0])


def save_scaffold(path: str | Path, scaffold: Scaffold) -> None:
    """Write ``scaffold.npz`` in the one layout (see the module docstring)."""
    save_npz(path, rgb=scaffold.rgb, mask=scaffold.mask, distance=scaffold.distance)


def load_scaffold(path: str | Path) -> Scaffold:
    """Read ``scaffold.npz`` -> :class:`Scaffold`; InputError when a key or a shape is off."""
    data = load_npz(path, keys=SCAFFOLD_KEYS)
    rgb, mask, distance = data["rgb"], data["mask"], data["distance"]
    if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[-1] != 3 or mask.shape != rgb.shape[:3] \
            or distance.shape != rgb.shape[:3]:
        raise InputError(f"{path}: expected rgb [F, H, 2H, 3] uint8 with mask and distance [F, H, 2H]; got "
                         f"rgb {rgb.dtype} {rgb.shape}, mask {mask.shape}, distance {distance.shape}")
    return Scaffold(rgb, mask.astype(bool), distance)


def panorama_mesh(
    rgb: np.ndarray,  # [H, 2H, 3] float32 in [0, 1]
    distance: np.ndarray,  # [H, 2H] distance along each ray; +inf / NaN / <= 0 = sky or invalid
    c2w: Tensor,  # [4, 4] the panorama's camera -> world
    *,
    sky: np.ndarray | None = None,  # [H, 2H] bool, True = sky
    known: np.ndarray | None = None,  # [H, 2H] bool, False = a hole (its vertices are invisible)
    config: ScaffoldConfig | None = None,
    max_height: int | None = None,
    drop_sky: bool = False,
    device: torch.device | str = "cpu",
) -> ScaffoldMesh:
    """The occlusion-aware scaffold mesh of a panorama, in the world frame.

    max_height: decimate the grid (integer factor) so it has at most this many rows; used for
    the meshes of the world's 3D cache, which need no more detail than the frames rendered.
    drop_sky: remove the triangles that touch a sky pixel (Pantheon360's sky removal for a
    3D cache of several views: each view's sky dome sits at its own far distance and would
    hide the other views' far geometry).
    """
    config = config or ScaffoldConfig()
    h = np.asarray(distance).shape[0]
    if max_height is not None:
        config = dataclasses.replace(config, decimate=max(1, -(-h // max_height)))
    if known is not None and config.decimate > 1:
        raise ValueError("decimation of a view with a known mask is not supported; build it at its own size")
    pano = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).to(device)
    dist = torch.from_numpy(np.ascontiguousarray(distance, dtype=np.float32)).to(device)
    sky_t = None if sky is None else torch.from_numpy(np.ascontiguousarray(sky).astype(bool)).to(device)
    mesh = build_scaffold_mesh(pano, dist, config, sky_mask=sky_t)
    if known is not None:
        hidden = torch.from_numpy(~np.asarray(known, dtype=bool).reshape(-1)).to(device)
        visible = mesh.visible.clone()
        visible[: hidden.numel()] &= ~hidden  # one vertex per pixel, row-major, then the pole vertices
        colors = mesh.colors * visible[:, None].to(mesh.colors.dtype)
        mesh = dataclasses.replace(mesh, visible=visible, colors=colors)
    if drop_sky and sky is not None:
        k = config.decimate
        sky_grid = torch.nn.functional.avg_pool2d(torch.from_numpy(np.asarray(sky, np.float32))[None, None], k)[0, 0] > 0
        sky_v = torch.cat((sky_grid.reshape(-1), torch.zeros(2, dtype=torch.bool))).to(mesh.faces.device)  # + the poles
        mesh = dataclasses.replace(mesh, faces=mesh.faces[~sky_v[mesh.faces].any(dim=1)])
    return mesh.transformed(torch.as_tensor(c2w).to(device=device, dtype=torch.float64))


def render_union(meshes: Sequence[ScaffoldMesh], c2w: Tensor, height: int, *, backend: str = "cpu",
                 tolerance: float = 0.03) -> ScaffoldFrames:
    """Render several scaffold meshes (one world frame) as one scene, known surfaces first.

    Each mesh is rendered on its own; a pixel takes the nearest surface of any mesh, except
    that a known surface (mask true) within ``tolerance`` (relative distance) of the nearest
    one wins over an unknown one. Two meshes that see the same surface, one of them at a
    grazing angle where the occlusion rule flags it, would otherwise z-fight into rings of
    unknown pixels. c2w: [F, 4, 4]. Returns ScaffoldFrames (rgb [F, H, 2H, 3], mask, distance).
    """
    first = render_scaffold(meshes[0], c2w, height, backend=backend)
    if len(meshes) == 1:
        return first
    rgb, mask, distance = first.rgb.clone(), first.mask.clone(), first.distance.clone()
    known_distance = torch.where(mask, distance, torch.full_like(distance, float("inf")))
    for mesh in meshes[1:]:
        f = render_scaffold(mesh, c2w, height, backend=backend)
        distance = torch.minimum(distance, f.distance)
        better = f.mask & (f.distance < known_distance)
        rgb[better], known_distance[better] = f.rgb[better], f.distance[better]
    mask = torch.isfinite(known_distance) & (known_distance <= distance * (1.0 + tolerance))
    rgb = rgb * mask[..., None]
    return dataclasses.replace(first, rgb=rgb, mask=mask, distance=distance)


def build_scaffold(
    rgb: np.ndarray,  # [H, 2H, 3] float32 in [0, 1], the panorama seen from c2w[0]
    distance: np.ndarray,  # [H, 2H] its distance along each ray (+inf = sky)
    c2w: Tensor,  # [F, 4, 4] camera -> world along the path; c2w[0] is the panorama's pose
    height: int,
    *,
    sky: np.ndarray | None = None,  # [H, 2H] bool
    known: np.ndarray | None = None,  # [H, 2H] bool (None: the whole panorama is known)
    cache_meshes: Sequence[ScaffoldMesh] = (),
    anchors: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    drop_sky: bool = False,
    config: ScaffoldConfig | None = None,
    backend: str = "cpu",
    device: torch.device | str = "cpu",
    on_frames: Callable[[int], None] | None = None,
    on_chunk: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> tuple[Scaffold, ScaffoldMesh]:
    """The scaffold video along ``c2w`` (the rule of the module docstring) and the panorama's mesh.

    anchors: {frame: (rgb [h, 2h, 3] float32, distance [h, 2h])} frames whose pose is that of
    another input panorama (a path through sparse views): like frame 0, such a frame is the
    panorama itself with a full mask and its own distance. drop_sky: the panorama's mesh
    without its sky (see :func:`panorama_mesh`; a 3D cache of several views).
    backend: the rasteriser, ``cpu`` or ``cuda`` (on ``device``); on_frames(n) is called after
    every chunk of n frames (progress); on_chunk(rgb [n, H, 2H, 3] uint8, mask [n, H, 2H] bool)
    gets each chunk's final frames in order as soon as they are on the CPU (e.g. to encode a
    preview while the next chunk renders; the arrays are views of the result: read, don't write).
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.shape[1] != 2 * rgb.shape[0]:
        raise InputError(f"the scaffold's panorama must be [H, 2H, 3], got {rgb.shape}")
    if np.shape(distance) != rgb.shape[:2]:
        raise InputError(f"distance is {np.shape(distance)} but the panorama is {rgb.shape[:2]}; expected the same size")
    if backend not in ("cpu", "cuda"):
        raise InputError(f"the scaffold rasteriser must be 'cpu' or 'cuda', got {backend!r}")
    device = torch.device(device) if backend == "cuda" else torch.device("cpu")
    c2w = torch.as_tensor(c2w).to(device=device, dtype=torch.float64)
    if c2w.dim() != 3 or c2w.shape[-2:] != (4, 4) or len(c2w) < 1:
        raise InputError(f"c2w must be [F, 4, 4] with F >= 1, got {tuple(c2w.shape)}")
    mesh = panorama_mesh(rgb, distance, c2w[0], sky=sky, known=known, config=config, drop_sky=drop_sky, device=device)
    meshes = [mesh] + [m.to(device) for m in cache_meshes]
    f, w = len(c2w), 2 * height
    out_rgb = np.empty((f, height, w, 3), np.uint8)
    mask = np.empty((f, height, w), bool)
    distance_out = np.empty((f, height, w), np.float16)
    mask0 = np.ones((height, w), bool) if known is None else resize_nearest(np.asarray(known, np.float32), height) > 0.5
    rgb0 = to_uint8(resize_rgb(rgb, height)) * mask0[..., None]  # frame 0: the panorama itself
    for start in range(0, f, CHUNK):
        frames = render_union(meshes, c2w[start:start + CHUNK], height, backend=backend)
        end = start + len(frames.mask)
        # the file layout's dtypes on the device: a quarter of the bytes cross to the CPU, and no
        # float32 copy of the whole clip is made there (same float32 rounding as on the CPU)
        out_rgb[start:end] = to_uint8(frames.rgb).cpu().numpy()
        mask[start:end] = frames.mask.cpu().numpy()
        distance_out[start:end] = frames.distance.to(torch.float16).cpu().numpy()
        if start == 0:
            out_rgb[0], mask[0] = rgb0, mask0
        for index, (anchor_rgb, anchor_distance) in (anchors or {}).items():  # the other input panoramas, exactly
            if start <= index < end:
                mask[index] = True
                out_rgb[index] = to_uint8(resize_rgb(np.asarray(anchor_rgb, np.float32), height))
                distance_out[index] = resize_nearest(np.asarray(anchor_distance, np.float32), height)
        if on_chunk is not None:
            on_chunk(out_rgb[start:end], mask[start:end])
        if on_frames is not None:
            on_frames(end - start)
    return Scaffold(out_rgb, mask, distance_out), mesh


def resize_rgb(rgb: np.ndarray, height: int) -> np.ndarray:
    """Resize an equirect image [H, 2H, 3] float32 to [height, 2*height, 3] (area when shrinking)."""
    from matrix_world.equirect import resize_equirect

    t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    return resize_equirect(t, height)[0].permute(1, 2, 0).numpy()


def resize_nearest(x: np.ndarray, height: int) -> np.ndarray:
    """Resize an equirect map [H, 2H] to [height, 2*height] by nearest neighbour (no blending across edges)."""
    from matrix_world.equirect import resize_equirect

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    return resize_equirect(t, height, mode="nearest")[0, 0].numpy()
