"""Depth stage benchmark: full-size MoGe ViT-L (random weights, built directly on the GPU) on the
12 icosahedron views of a 2048x1024 panorama, plus the gradient-domain merge at full size.

    python benchmarks/depth.py            # CUDA: ~1 minute on an H100/H200
    python benchmarks/depth.py --smoke    # CPU: same code path, a small MoGe, seconds

Measures, per MoGe version (MoGe-2 = the ``Ruicheng/moge-2-vitl-normal`` architecture,
MoGe-1 = ``Ruicheng/moge-vitl``), the seconds of the whole panorama depth call
(``generation.depth.panorama_depth_from_model``: 12 crops of 768², batched MoGe inference with
fp16 autocast as MoGe runs by default, distance = ||points||, merge on the sphere at 2048x1024)
split into views and merge, and the peak GPU memory. The random models' mask heads are biased
to "all valid" so the merge does its full-size work (a random mask would leave holes).

Random weights prove wiring, memory and speed, not accuracy. Accuracy of the merge itself is
measured separately: 12 exact 768² views of an analytic room (each with its own unknown
scale) are merged at 2048x1024 and compared with the exact panorama distance (relative
error mean / p95 / p99). Writes $OUT/depth.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch

from common import GB, write_results  # benchmarks/common.py (scripts run from this folder)


MOGE2_VITL = dict(
    encoder=dict(backbone="dinov2_vitl14", intermediate_layers=[5, 11, 17, 23], dim_out=1024),
    neck=dict(dim_in=[1026, 2, 2, 2, 2], dim_out=None, dim_res_blocks=[1024, 256, 128, 64, 32], num_res_blocks=[0, 2, 2, 2, 0],
              res_block_in_norm="none", res_block_hidden_norm="none", resamplers=["conv_transpose"] * 3 + ["bilinear"]),
    points_head=dict(dim_in=[1024, 256, 128, 64, 32], dim_out=[None, None, None, None, 3], dim_res_blocks=[1024, 256, 128, 64, 32],
                     num_res_blocks=[0, 1, 1, 1, 0], res_block_in_norm="none", res_block_hidden_norm="none",
                     resamplers=["conv_transpose"] * 3 + ["bilinear"]),
    normal_head=dict(dim_in=[1024, 256, 128, 64, 32], dim_out=[None, None, None, None, 3], dim_res_blocks=[1024, 256, 128, 64, 32],
                     num_res_blocks=[0, 1, 1, 1, 0], res_block_in_norm="none", res_block_hidden_norm="none",
                     resamplers=["conv_transpose"] * 3 + ["bilinear"]),
    mask_head=dict(dim_in=[1024, 256, 128, 64, 32], dim_out=[None, None, None, None, 1], dim_res_blocks=[1024, 256, 128, 64, 32],
                   num_res_blocks=[0, 1, 1, 1, 0], res_block_in_norm="none", res_block_hidden_norm="none",
                   resamplers=["conv_transpose"] * 3 + ["bilinear"]),
    scale_head=dict(dims=[1024, 1024, 1024, 1]),
    remap_output="exp",
    num_tokens_range=[1200, 3600],
)
MOGE1_VITL = dict(encoder="dinov2_vitl14", remap_output="exp", intermediate_layers=4, dim_upsample=[256, 128, 64],
                  dim_times_res_block_hidden=2, num_res_blocks=2, num_tokens_range=[1200, 2500], last_conv_channels=32,
                  last_conv_size=1)
# --smoke: the same classes with a ViT-S/14 backbone and thin heads
_SMALL = dict(dim_res_blocks=[64, 32, 16, 16, 8], num_res_blocks=[0, 1, 1, 1, 0], res_block_in_norm="none",
              res_block_hidden_norm="none", resamplers=["conv_transpose"] * 3 + ["bilinear"])
MOGE2_SMOKE = dict(encoder=dict(backbone="dinov2_vits14", intermediate_layers=[2, 5, 8, 11], dim_out=64),
                   neck=dict(dim_in=[66, 2, 2, 2, 2], dim_out=None, **_SMALL),
                   points_head=dict(dim_in=[64, 32, 16, 16, 8], dim_out=[None, None, None, None, 3], **_SMALL),
                   mask_head=dict(dim_in=[64, 32, 16, 16, 8], dim_out=[None, None, None, None, 1], **_SMALL),
                   scale_head=dict(dims=[384, 64, 1]), remap_output="exp", num_tokens_range=[48, 64])
MOGE1_SMOKE = dict(encoder="dinov2_vits14", remap_output="exp", intermediate_layers=4, dim_upsample=[32, 16, 16],
                   dim_times_res_block_hidden=1, num_res_blocks=1, res_block_norm="layer_norm", num_tokens_range=[48, 64],
                   last_conv_channels=8, last_conv_size=1)


def build_moge(version: int, smoke: bool, device):
    """A MoGe model with random weights constructed directly on ``device``; mask head biased to 'valid'."""
    from moge.model import v1, v2

    config = (MOGE2_SMOKE if smoke else MOGE2_VITL) if version == 2 else (MOGE1_SMOKE if smoke else MOGE1_VITL)
    with torch.device(device):
        model = (v2 if version == 2 else v1).MoGeModel(**config)
    with torch.no_grad():
        if version == 2:
            model.mask_head.output_blocks[-1].bias.fill_(6.0)
        else:
            model.head.output_block[1][-1].bias.fill_(6.0)
    return model.eval().requires_grad_(False)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def room_distance(dirs: torch.Tensor) -> torch.Tensor:
    """Exact distance along unit rays from the origin in an off-centre box room with a ball."""
    lo = torch.tensor((-3.0, -1.2, -2.5), dtype=dirs.dtype, device=dirs.device)
    hi = torch.tensor((4.0, 1.6, 3.5), dtype=dirs.dtype, device=dirs.device)
    t = torch.where(dirs > 0, hi / dirs.clamp_min(1e-12), lo / dirs.clamp_max(-1e-12)).min(-1).values
    c = torch.tensor((1.0, 0.3, 2.0), dtype=dirs.dtype, device=dirs.device)
    b = (dirs * c).sum(-1)
    disc = b * b - (c * c).sum() + 0.36
    ts = b - disc.clamp_min(0).sqrt()
    return torch.where((disc > 0) & (ts > 0), torch.minimum(t, ts), t)


def merge_accuracy(height: int, view_size: int, device) -> dict:
    from matrix_world.cameras import icosahedron_views
    from matrix_world.equirect import equirect_directions
    from matrix_world.generation.depth_merge import merge_log_distances

    views = icosahedron_views(view_size, 100.0)
    g = torch.Generator("cpu").manual_seed(0)
    offsets = torch.randn(12, generator=g, dtype=torch.float64)
    log_d = torch.stack([room_distance(v.directions(device=device, dtype=torch.float64)).log() + o.item()
                         for v, o in zip(views, offsets)]).float()
    valid = torch.ones_like(log_d, dtype=torch.bool)
    sync(device)
    t0 = time.perf_counter()
    x, seen, info = merge_log_distances(log_d, valid, views, height)
    sync(device)
    seconds = time.perf_counter() - t0
    gt = room_distance(equirect_directions(height, device=device, dtype=torch.float64))
    d = x.double().exp()
    d = d * (gt / d).median()
    rel = ((d - gt).abs() / gt).flatten().float().cpu()
    return {"height": height, "view_size": view_size, "seconds": round(seconds, 3), "rel_err_mean": round(float(rel.mean()), 5),
            "rel_err_p95": round(float(rel.quantile(0.95)), 5) if rel.numel() < 2**24 else None,
            "rel_err_p99": round(float(np.quantile(rel.numpy(), 0.99)), 5), "cg_iterations": info["cg_iterations"],
            "levels": info["levels"]}


def run_depth(version: int, height: int, view_size: int, smoke: bool, device) -> dict:
    from matrix_world.generation.depth import DepthConfig, panorama_depth_from_model
    from matrix_world.generation.moge_backend import LoadedMoGe

    torch.manual_seed(0)
    sync(device)
    t0 = time.perf_counter()
    model = build_moge(version, smoke, device)
    sync(device)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    rgb = rng.random((height // 8, height // 4, 3)).astype(np.float32)  # a smooth random panorama
    import cv2

    rgb = cv2.resize(rgb, (2 * height, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    moge = LoadedMoGe(model, version, version == 2, f"random MoGe-{version}")
    config = DepthConfig(view_size=view_size, batch_size=12, num_tokens=None)
    rows = []
    for _ in range(1 if smoke else 2):  # the first call includes cuDNN autotuning / allocator warm-up
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        result = panorama_depth_from_model(rgb, moge, config, device=device)
        sync(device)
        rows.append((time.perf_counter() - t0, result))
    seconds, result = rows[-1]
    peak = torch.cuda.max_memory_allocated(device) / GB if torch.device(device).type == "cuda" else None
    params = sum(p.numel() for p in model.parameters()) / 1e6
    del model
    return {"moge": version, "params_m": round(params, 1), "height": height, "width": 2 * height, "view_size": view_size,
            "build_s": round(build_s, 2), "first_call_s": round(rows[0][0], 3), "seconds": round(seconds, 3),
            "views_s": result.info["seconds_views"], "merge_s": result.info["seconds_merge"], "peak_gb": None if peak is None else round(peak, 2),
            "valid_fraction": result.info["valid_fraction"], "finite": bool(np.isfinite(result.distance).all())}


def keyframe_views_speed(smoke: bool, device, views: int = 72) -> list[dict]:
    """MoGe-2 on ``views`` keyframe views (406² px, the 480p rule) per call: cold and warm, batch 48 and 12,
    841 and 1200 tokens; each call split into MoGe's forward (fp16 autocast) and the rest of its ``infer``
    (focal/shift recovery, projection, mask)."""
    from matrix_world.generation.moge_backend import LoadedMoGe, infer_views

    size = 56 if smoke else 406
    model = build_moge(2, smoke, device)
    moge = LoadedMoGe(model, 2, True, "random MoGe-2")
    images = torch.rand(views, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    forward_s = [0.0]
    real_forward = model.forward

    def timed_forward(*a, **kw):
        sync(device)
        t = time.perf_counter()
        out = real_forward(*a, **kw)
        sync(device)
        forward_s[0] += time.perf_counter() - t
        return out

    model.forward = timed_forward
    rows = []
    for tokens, batch, label in ((48 if smoke else 841, 48, "cold"), (48 if smoke else 841, 48, "warm"),
                                 (48 if smoke else 841, 12, "warm"), (64 if smoke else 1200, 48, "cold (new size)"),
                                 (64 if smoke else 1200, 48, "warm")):
        forward_s[0] = 0.0
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            infer_views(moge, images, fov=100.0, num_tokens=tokens, batch_size=batch)
        sync(device)
        total = time.perf_counter() - t0
        rows.append({"views": views, "view_size": size, "num_tokens": tokens, "batch_size": batch, "call": label,
                     "seconds": round(total, 3), "forward_s": round(forward_s[0], 3), "rest_s": round(total - forward_s[0], 3),
                     "ms_per_view": round(1000 * total / views, 1)})
        print(json.dumps(rows[-1]), flush=True)
    model.forward = real_forward
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="ViT-S MoGe on CPU at 128x64, seconds")
    p.add_argument("--keyframes", action="store_true", help="only the keyframe-view timing (MoGe-2, 72 views of 406²)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device: run with --smoke on CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    height, view_size = (1024, 768) if cuda else (64, 56)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "rows": []}
    if args.keyframes:
        results["keyframe_views"] = keyframe_views_speed(args.smoke, device)
        save(results)
        return 0
    for version in (2, 1):
        row = run_depth(version, height, view_size, args.smoke, device)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        save(results)
        if cuda:
            torch.cuda.empty_cache()
    results["merge_accuracy"] = merge_accuracy(height, view_size, device)
    print("merge accuracy:", json.dumps(results["merge_accuracy"]), flush=True)
    save(results)
    print(f"\nMoGe panorama depth, 12 views of {view_size}², {2 * height}x{height}, random weights, on {results['device']}")
    print(f"{'model':8s} {'params M':>8s} {'total s':>8s} {'views s':>8s} {'merge s':>8s} {'peak GB':>8s}")
    for r in results["rows"]:
        print(f"MoGe-{r['moge']:<3d} {r['params_m']:8.1f} {r['seconds']:8.2f} {r['views_s']:8.2f} {r['merge_s']:8.2f} {str(r['peak_gb']):>8s}")
    m = results["merge_accuracy"]
    print(f"merge of 12 exact views (random per-view scale) vs exact room at {2 * m['height']}x{m['height']}: "
          f"rel. error mean {m['rel_err_mean']:.4%}, p99 {m['rel_err_p99']:.4%}, {m['seconds']:.2f} s")
    return 0


def save(results: dict) -> None:
    """Write $OUT/depth.json (after each section, so a late failure keeps the numbers)."""
    write_results("depth", results)


if __name__ == "__main__":
    sys.exit(main())
