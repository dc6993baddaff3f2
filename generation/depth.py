"""Depth stage: a 2:1 RGB panorama -> per-pixel distance along each ray (+ valid and sky masks).

The depth stage lives in ``generation/`` (beside the panorama stage it follows; it runs a
learned model, MoGe). Output convention (DESIGN §3): ``distance`` [H, 2H] is the length along
each equirect pixel's ray from the panorama centre — never perspective z-depth.

Backends (``DepthConfig.backend``):

* ``moge``        MoGe-1 or MoGe-2 (auto-detected from the checkpoint) on the 12 perspective
                  views at the icosahedron vertices (FOV 100°, ``view_size``² each, batched),
                  distance = ‖points‖ per view, merged on the sphere in the gradient domain
                  (:mod:`depth_merge`: sparse least squares, coarse to fine, continuous across
                  the ±180° seam). MoGe-2's metric scale is kept (units: metres); MoGe-1 gives
                  a normalised scale (geometric-mean distance = 1) and ``info['units']`` says so.
* ``prior``       a heuristic for any panorama without weights: a ground plane ``camera_height``
                  metres below the camera (below the horizon) and a dome of radius
                  ``dome_radius`` above, joined by a smooth minimum. Not a measurement.
* ``file``        a distance map from ``.npz`` (``distance`` [+ ``sky``, ``valid``]) or ``.npy``,
                  read by :func:`matrix_world.io.read_distance` (one rule for every reader).
* ``procedural``  the exact distance of the synthetic scene behind a ``procedural`` panorama
                  (same prompt, seed and size; checked against the given RGB), registered by
                  :mod:`matrix_world.datasets.synthetic_backends`.

``auto`` is resolved by the pipeline (:func:`matrix_world.pipeline.depth.choose`, the one rule).

Masks: ``valid`` = pixels with a measured distance; ``sky`` = pixels with no geometry (MoGe's
invalid mask: sky and undefined regions). Invalid pixels get ``sky_factor`` x the largest
valid distance (FACTS §C: 2x), so the array is finite everywhere.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from matrix_world.cameras import crop_perspective, icosahedron_views, project_to_view
from matrix_world.equirect import equirect_directions, resize_equirect
from matrix_world.errors import InputError
from matrix_world.generation.depth_merge import MergeConfig, merge_log_distances
from matrix_world.generation.moge_backend import MOGE2_DEFAULT, LoadedMoGe, estimate_fov, infer_views, load_moge
from matrix_world.generation.panorama import as_rgb_image

MAX_HEIGHT = 4096  # panoramas up to 8192 x 4096
MAX_MERGE_HEIGHT = 1024  # the merge runs at <= 2048 x 1024 and is upsampled (Matrix-3D: 1920 x 960)
MAX_MERGE_BATCH = 16  # panoramas merged together (memory: K x 12 views x H x 2H per array)
PATCH = 14  # MoGe's (DINOv2's) patch size in pixels
KEYFRAME_OVERSAMPLE = 1.5  # keyframe views: this many times the frame's angular density


@dataclass
class DepthConfig:
    """Options of the depth stage (one dataclass for all backends; unused fields are ignored)."""

    backend: str = "prior"  # moge | prior | file | procedural (auto: resolved by the pipeline)
    model: str = MOGE2_DEFAULT  # MoGe hub id, folder or model.pt (MoGe-1: Ruicheng/moge-vitl)
    view_size: int = 768  # pixels per icosahedron view (square)
    view_fov: float = 100.0
    num_tokens: int | None = None  # MoGe ViT tokens per view; None -> the model's maximum
    batch_size: int = 12  # views per MoGe forward
    use_fp16: bool = True  # MoGe's fp16 autocast (CUDA only)
    merge_height: int | None = None  # None -> min(H, 1024)
    sky_factor: float = 2.0  # invalid pixels get sky_factor x max valid distance
    camera_height: float = 1.6  # prior: metres from the camera down to the ground
    dome_radius: float = 30.0  # prior: metres to the far dome
    path: str | None = None  # file backend
    prompt: str | None = None  # procedural backend: the panorama's prompt ...
    seed: int = 0  # ... and seed
    allow_download: bool = False
    # reconstruction keyframes (video frames, not the panorama): views matched to the frame
    keyframe_view_size: int | None = None  # None -> keyframe_views(frame height): KEYFRAME_OVERSAMPLE x its density
    keyframe_num_tokens: int | None = None  # None -> (keyframe view size / 14)^2, MoGe's patch grid of the view
    keyframe_batch_size: int = 48  # views per MoGe forward across keyframes (4 keyframes of 12 views)
    keyframe_known_fraction: float | None = 0.995  # a keyframe the scaffold knows this much of skips MoGe (None: never)
    keyframe_skip_known_views: bool = True  # MoGe only on a keyframe's views that see unknown pixels (views_touching)

    def to_dict(self) -> dict:
        return asdict(self)

    def keyframe_views(self, frame_height: int) -> tuple[int, int]:
        """(view size, MoGe tokens) of the keyframe depth of frames [frame_height, 2 frame_height].

        A frame has frame_height / 180 pixels per degree; a view of ``view_fov`` degrees keeps
        KEYFRAME_OVERSAMPLE x that (mean over the view), rounded to MoGe's patch (14 px), at least
        2 patches and at most ``view_size`` (rounded down to the patch) (480-row frames, 100 degrees: 406 px, 29^2 = 841 tokens;
        the panorama stage's 768 px would be 2.9x the frame's density)."""
        size = self.keyframe_view_size
        if size is None:
            size = PATCH * round(KEYFRAME_OVERSAMPLE * frame_height / 180.0 * self.view_fov / PATCH)
            size = min(max(size, 2 * PATCH), max(PATCH * (self.view_size // PATCH), 2 * PATCH))
        tokens = self.keyframe_num_tokens if self.keyframe_num_tokens is not None else (size // PATCH) ** 2
        return size, tokens


@dataclass
class DepthResult:
    distance: np.ndarray  # [H, 2H] float32, finite, > 0 (metres, or normalised: see info['units'])
    valid: np.ndarray  # [H, 2H] bool: measured
    sky: np.ndarray  # [H, 2H] bool: no geometry (filled with sky_factor x max)
    info: dict = field(default_factory=dict)


def check_panorama(rgb, *, what: str = "panorama") -> np.ndarray:
    """RGB panorama -> float32 [H, 2H, 3] in [0, 1]; InputError unless 2:1 and at most MAX_HEIGHT rows."""
    shape = getattr(rgb, "shape", None)
    if shape is not None and len(shape) == 3 and shape[0] > MAX_HEIGHT:  # before converting a huge array
        raise InputError(f"{what} height must be in [8, {MAX_HEIGHT}] rows, got {shape[0]}; resize it")
    rgb = as_rgb_image(rgb, what=what)
    h, w = rgb.shape[:2]
    if w != 2 * h:
        raise InputError(f"a {what} must be 2:1 (width = 2 x height); got {w}x{h}")
    if h > MAX_HEIGHT or h < 8:
        raise InputError(f"{what} height must be in [8, {MAX_HEIGHT}] rows, got {h} ({w}x{h}); resize it")
    return rgb


def fill_invalid(distance: np.ndarray, valid: np.ndarray, sky_factor: float) -> np.ndarray:
    """Invalid pixels -> sky_factor x the largest valid distance (all-invalid -> 1)."""
    out = distance.astype(np.float32).copy()
    far = float(out[valid].max()) * sky_factor if valid.any() else 1.0
    out[~valid] = far
    return out


def fill_unknown(distance: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill the unknown pixels of a distance map from the known ones (push-pull of the log-distance).

    distance: [H, W] (anything where not known); known: [H, W] bool, at least one True.
    returns [H, W] float32: the known values as they are; each unknown pixel gets the mean
    log-distance of the known pixels in the smallest 2^l x 2^l block of the pyramid that has any,
    upsampled (nearest) back level by level. Finite and > 0 wherever the known values are.
    """
    if not known.any():
        raise InputError("fill_unknown needs at least one known pixel")
    x = torch.from_numpy(np.where(known, np.log(np.maximum(distance, 1e-12)), 0.0).astype(np.float64))[None, None]
    w = torch.from_numpy(known.astype(np.float64))[None, None]
    pyramid = [(x, w)]
    while bool((pyramid[-1][1] == 0).any()) and min(pyramid[-1][1].shape[-2:]) > 1:  # push: masked 2x2 means
        x, w = pyramid[-1]
        num = torch.nn.functional.avg_pool2d(x * w, 2, ceil_mode=True)
        den = torch.nn.functional.avg_pool2d(w, 2, ceil_mode=True)
        pyramid.append((torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num)), (den > 0).double()))
    x, w = pyramid[-1]
    if bool((w == 0).any()):  # one row or column left: its known mean everywhere
        x = torch.where(w > 0, x, (x * w).sum() / w.sum())
    for fine_x, fine_w in reversed(pyramid[:-1]):  # pull: unknown pixels take the coarser level's value
        up = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")[..., :fine_x.shape[-2], :fine_x.shape[-1]]
        x = torch.where(fine_w > 0, fine_x, up)
    out = x[0, 0].exp().numpy().astype(np.float32)
    return np.where(known, distance, out).astype(np.float32)


# --------------------------------------------------------------------------- moge


def check_views(config: DepthConfig) -> None:
    if not 16 <= config.view_size <= 2048:
        raise InputError(f"view_size must be in [16, 2048], got {config.view_size}")


def panorama_depth_from_model(rgb: np.ndarray, moge: LoadedMoGe, config: DepthConfig, *, device) -> DepthResult:
    """12-view MoGe panorama depth with a loaded model (or any object with MoGe's ``infer``).

    rgb: [H, 2H, 3] float32 in [0, 1]. :func:`panorama_depths_from_model` with one panorama."""
    return panorama_depths_from_model(rgb[None], moge, config, device=device)[0]


def view_footprints(config: DepthConfig, height: int, *, device=None) -> torch.Tensor:
    """Which pixels of an [height, 2 height] panorama each of the 12 icosahedron views sees.

    returns [12, height, 2 height] bool: the pixel's ray is in front of the view and projects inside it."""
    views = icosahedron_views(config.view_size, config.view_fov)
    dirs = equirect_directions(height, device=device, dtype=torch.float64)
    out = []
    for v in views:
        px, py, front = project_to_view(dirs, v)
        out.append(front & (px >= 0) & (px <= v.width) & (py >= 0) & (py <= v.height))
    return torch.stack(out)


def views_touching(unknown, config: DepthConfig) -> tuple[np.ndarray, np.ndarray]:
    """The views MoGe has to see to estimate the unknown pixels of K panoramas, and what they cover.

    unknown: [K, H, 2H] bool (pixels without a distance). returns (need [K, 12] bool: the view sees at
    least one unknown pixel; covered [K, H, 2H] bool: pixels seen by at least one needed view). Every
    unknown pixel is covered (the 12 views tile the sphere); a view that sees only known pixels adds
    nothing to them and is skipped (:func:`panorama_depths_from_model`'s ``need``)."""
    unknown_t = torch.as_tensor(np.asarray(unknown, dtype=bool))
    feet = view_footprints(config, int(unknown_t.shape[1]))  # [12, H, 2H]
    need = (unknown_t[:, None] & feet[None]).flatten(2).any(-1)  # [K, 12]
    covered = (need[:, :, None, None] & feet[None]).any(1)  # [K, H, 2H]
    return need.numpy(), covered.numpy()


def panorama_depths_from_model(rgb, moge: LoadedMoGe, config: DepthConfig, *, device, need=None) -> list[DepthResult]:
    """12-view MoGe depth of K panoramas at once: all K x 12 views through MoGe in batches of
    ``config.batch_size`` views, the K merges solved together (:func:`merge_log_distances`, up to
    MAX_MERGE_BATCH at a time); each result is what the panorama gives alone.

    rgb: [K, H, 2H, 3] float32 in [0, 1], numpy or a tensor (kept on its device when on ``device``).
    need: optional [K, 12] bool (:func:`views_touching`): only these views go through MoGe; the others
    count as seeing nothing (each panorama needs at least one). returns K DepthResults; their ``info``
    seconds are the batch's, split evenly.
    """
    check_views(config)
    k, h = rgb.shape[0], rgb.shape[1]
    start = time.perf_counter()
    views = icosahedron_views(config.view_size, config.view_fov)
    run = torch.ones(k * len(views), dtype=torch.bool) if need is None else torch.as_tensor(np.asarray(need, bool)).flatten()
    if run.numel() != k * len(views) or not run.view(k, -1).any(1).all():
        raise InputError(f"need must be [{k}, {len(views)}] bool with at least one view per panorama, got {tuple(np.shape(need))}")
    pano = torch.as_tensor(rgb).to(device=device, dtype=torch.float32).permute(0, 3, 1, 2)  # [K, 3, H, 2H]
    crops = torch.stack([crop_perspective(pano, v)[0] for v in views], dim=1).clamp(0, 1)  # [K, 12, 3, s, s]
    crops = crops.flatten(0, 1)[run.to(crops.device)]  # [R, 3, s, s]: the views that run
    some, some_mask = infer_views(moge, crops, fov=config.view_fov, num_tokens=config.num_tokens,
                                  batch_size=config.batch_size, use_fp16=config.use_fp16)  # [R, s, s, (3)]
    del crops
    if bool(run.all()):
        points, mask = some, some_mask
    else:  # the skipped views see nothing: zero points, mask False
        points = some.new_zeros((k * len(views), *some.shape[1:]))
        mask = some_mask.new_zeros((k * len(views), *some_mask.shape[1:]))
        points[run.to(points.device)], mask[run.to(mask.device)] = some, some_mask
        del some, some_mask
    t_views = time.perf_counter() - start
    dist = points.norm(dim=-1).unflatten(0, (k, len(views)))  # [K, 12, s, s] distance along each view ray
    mask = mask.unflatten(0, (k, len(views)))
    del points
    valid = mask & torch.isfinite(dist) & (dist > 0)
    log_d = torch.where(valid, dist.clamp_min(1e-12).log(), torch.zeros_like(dist))
    merge_h = min(h, config.merge_height or MAX_MERGE_HEIGHT)
    merge_h -= merge_h % 2
    log_pano, seen, merge_info = [], [], []
    for first in range(0, k, MAX_MERGE_BATCH):
        x, s, info = merge_log_distances(log_d[first:first + MAX_MERGE_BATCH], valid[first:first + MAX_MERGE_BATCH],
                                         views, merge_h, MergeConfig())
        log_pano.append(x)
        seen.append(s)
        merge_info += [{**info, "cg_iterations": its} for its in info["cg_iterations"]]
    log_pano_t, seen_t = torch.cat(log_pano), torch.cat(seen)  # [K, merge_h, 2 merge_h]
    t_merge = time.perf_counter() - start - t_views
    results = []
    for i in range(k):
        result = _finish(log_pano_t[i], seen_t[i], h, merge_h, moge, config, len(views), merge_info[i], t_views / k, t_merge / k)
        result.info["views_run"] = int(run.view(k, -1)[i].sum())
        results.append(result)
    return results


def _finish(log_pano, seen, h: int, merge_h: int, moge: LoadedMoGe, config: DepthConfig, num_views: int,
            merge_info: dict, t_views: float, t_merge: float) -> DepthResult:
    """One merged log-distance [merge_h, 2 merge_h] -> the panorama's DepthResult at height h."""
    if not seen.any():
        raise InputError(f"MoGe found no valid geometry in any of the {num_views} views (all sky or undefined)")
    if not moge.metric:  # arbitrary scale: geometric-mean distance over valid pixels = 1
        log_pano = log_pano - log_pano[seen].mean()
    distance = log_pano.exp()
    if merge_h != h:
        distance = resize_equirect(distance[None, None], h, mode="bilinear")[0, 0]
        seen = resize_equirect(seen[None, None].float(), h, mode="nearest")[0, 0] > 0.5
    valid_np = seen.cpu().numpy()
    out = fill_invalid(distance.cpu().numpy(), valid_np, config.sky_factor)
    info = {
        "backend": "moge", "model": config.model, "checkpoint": moge.checkpoint, "moge_version": moge.version,
        "metric": moge.metric, "units": "metres" if moge.metric else "normalised (geometric-mean distance = 1)",
        "views": num_views, "view_size": config.view_size, "view_fov": config.view_fov, "merge_height": merge_h,
        "merge": merge_info, "seconds_views": round(t_views, 3), "seconds_merge": round(t_merge, 3),
        "valid_fraction": round(float(valid_np.mean()), 5),
    }
    return DepthResult(out, valid_np, ~valid_np, info)


# --------------------------------------------------------------------------- prior


def prior_distance(height: int, *, camera_height: float = 1.6, dome_radius: float = 30.0, sharpness: float = 4.0) -> np.ndarray:
    """Heuristic distance [H, 2H]: ground plane ``camera_height`` below, dome of ``dome_radius`` above.

    Below the horizon the ray meets the ground at t = camera_height / sin(-lat); the result is a
    smooth minimum (t^-p + R^-p)^(-1/p) with the dome, so it is continuous at the horizon
    (-> R) and everywhere else.
    """
    if camera_height <= 0 or dome_radius <= camera_height:
        raise InputError(f"prior needs 0 < camera_height < dome_radius, got {camera_height} and {dome_radius}")
    dirs = equirect_directions(height, dtype=torch.float64)
    down = dirs[..., 1].clamp_min(0.0)  # y points down: the ground is at y = +camera_height
    inv_ground = (down / camera_height) ** sharpness  # (1 / t_ground)^p, 0 above the horizon
    dist = (inv_ground + dome_radius ** -sharpness) ** (-1.0 / sharpness)
    return dist.numpy().astype(np.float32)


# --------------------------------------------------------------------------- backends

DepthBackend = Callable[..., DepthResult]
DEPTH_BACKENDS: dict[str, DepthBackend] = {}


def register_depth_backend(name: str):
    def deco(fn: DepthBackend) -> DepthBackend:
        DEPTH_BACKENDS[name] = fn
        return fn

    return deco


@register_depth_backend("moge")
def _moge_backend(rgb: np.ndarray, config: DepthConfig, *, device) -> DepthResult:
    check_views(config)
    moge = load_moge(config.model, device=device, allow_download=config.allow_download)
    return panorama_depth_from_model(rgb, moge, config, device=device)


@register_depth_backend("prior")
def _prior_backend(rgb: np.ndarray, config: DepthConfig, *, device) -> DepthResult:
    h = rgb.shape[0]
    dist = prior_distance(h, camera_height=config.camera_height, dome_radius=config.dome_radius)
    ones = np.ones((h, 2 * h), bool)
    return DepthResult(dist, ones, ~ones, {"backend": "prior", "units": "metres (heuristic, not measured)",
                                          "camera_height": config.camera_height, "dome_radius": config.dome_radius})


@register_depth_backend("file")
def _file_backend(rgb: np.ndarray, config: DepthConfig, *, device) -> DepthResult:
    """A distance file read by :func:`matrix_world.io.read_distance` (the one rule: float, > 0, no NaN,
    +inf = sky, .npy or .npz with 'distance' [+ 'sky', 'valid']); a 2:1 map of another height than
    the panorama is resampled (nearest). The command-line tools require the panorama's size."""
    from matrix_world.io import read_distance

    if not config.path:
        raise InputError("depth backend 'file' needs config.path: a .npz with 'distance' (optional 'sky', 'valid') or a .npy")
    path = Path(config.path)
    distance, sky = read_distance(path)
    if distance.shape[1] != 2 * distance.shape[0]:
        raise InputError(f"depth file {path}: distance must be a 2:1 array [H, 2H], got shape {distance.shape}")
    valid = ~sky
    h = rgb.shape[0]
    if distance.shape[0] != h:
        def resize(a, mode):
            return resize_equirect(torch.from_numpy(a.astype(np.float32))[None, None], h, mode=mode)[0, 0].numpy()
        distance = resize(np.where(valid, distance, 0), "nearest")
        valid = resize(valid, "nearest") > 0.5
        sky = ~valid
    out = fill_invalid(np.where(valid, distance, 0.0), valid, config.sky_factor)
    return DepthResult(out, valid, sky, {"backend": "file", "path": str(path), "units": "as in the file"})


def estimate_depth(rgb, config: DepthConfig | None = None, *, device="cpu") -> DepthResult:
    """Run the depth stage on a panorama (path, PIL image or array [H, 2H, 3]) -> DepthResult."""
    config = config or DepthConfig()
    rgb = check_panorama(rgb)
    backend = config.backend
    if backend not in DEPTH_BACKENDS:
        raise InputError(f"unknown depth backend {backend!r}; expected one of {', '.join(DEPTH_BACKENDS)} "
                         "(auto is resolved by matrix_world.pipeline.depth.choose)")
    start = time.perf_counter()
    result = DEPTH_BACKENDS[backend](rgb, replace(config, backend=backend), device=device)
    result.info.setdefault("backend", backend)
    result.info["seconds"] = round(time.perf_counter() - start, 3)
    h = rgb.shape[0]
    for name in ("distance", "valid", "sky"):
        if getattr(result, name).shape != (h, 2 * h):
            raise RuntimeError(f"depth backend {backend} returned {name} of shape {getattr(result, name).shape}, expected {(h, 2 * h)}")
    if not np.isfinite(result.distance).all() or (result.distance <= 0).any():
        raise RuntimeError(f"depth backend {backend} returned non-finite or non-positive distances")
    return result


__all__ = ["DepthConfig", "DepthResult", "estimate_depth", "fill_invalid", "fill_unknown", "DEPTH_BACKENDS", "register_depth_backend",
           "panorama_depth_from_model", "panorama_depths_from_model", "prior_distance", "estimate_fov", "check_panorama"]
