"""Panoramic LRM benchmark: Matrix-3D's official-size network (random weights built on the GPU)
at 480p (T = 21 latent frames, 81 frames, 960 x 480) and 720p (1440 x 720).

    python benchmarks/lrm.py                          # CUDA: 480p and 720p, bf16
    python benchmarks/lrm.py --resolutions 720p --dpt-frames-per-chunk 7
    python benchmarks/lrm.py --smoke                  # CPU: tiny network, same code path, seconds

Per row, after ``--warmup`` calls, the mean of ``--repeats`` calls (each part timed between
torch.cuda.synchronize calls): Plücker rays from the c2w poses (``lrm_plucker``), the network
(latents + rays -> raw outputs, SDPA attention, torch.inference_mode), and the raw outputs ->
world-frame Gaussians (``lrm_to_gaussians``, every 2nd frame); and the peak GPU memory of a
whole call (torch.cuda.max_memory_allocated, weights included). Random weights prove wiring,
memory and speed, nothing about quality. Writes $OUT/lrm.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch

from common import GB, write_results  # benchmarks/common.py (scripts run from this folder)

SIZES = {"480p": (60, 120), "720p": (90, 180)}  # latent grid (h, w); the video is 8x
SMOKE_SIZES = {"480p": (4, 8), "720p": (6, 12)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(config, device: torch.device, dtype: torch.dtype):
    """PanoLRM with random weights created directly on ``device`` in ``dtype``."""
    from matrix_world.reconstruction.lrm import PanoLRM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = PanoLRM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def trajectory(frames: int, device: torch.device) -> torch.Tensor:
    """c2w [F, 4, 4]: 2 m forward along +z while turning 30 degrees right (OpenCV, ours)."""
    s = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)
    yaw = math.radians(30.0) * s
    c2w = torch.eye(4, dtype=torch.float64).repeat(frames, 1, 1)
    c2w[:, 0, 0], c2w[:, 0, 2], c2w[:, 2, 0], c2w[:, 2, 2] = yaw.cos(), yaw.sin(), -yaw.sin(), yaw.cos()
    c2w[:, 2, 3] = 2.0 * s
    return c2w.to(device=device, dtype=torch.float32)


def run_row(model, res: str, grid: tuple[int, int], args, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from matrix_world.reconstruction.lrm import lrm_plucker
    from matrix_world.reconstruction.lrm_gaussians import lrm_to_gaussians

    cfg = model.config
    t, (h, w) = args.latent_frames, grid
    frames, height, width = cfg.frames_for(t), h * cfg.video_scale, w * cfg.video_scale
    latents = torch.randn(1, t, cfg.latent_channels, h, w, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    c2w = trajectory(frames, device)
    times: dict[str, list[float]] = {"plucker_s": [], "network_s": [], "gaussians_s": []}
    peak, n_gaussians = None, 0
    for i in range(args.warmup + args.repeats):
        measured = i >= args.warmup
        if device.type == "cuda" and i == args.warmup:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            sync(device)
            t0 = time.perf_counter()
            plucker = lrm_plucker(c2w, height, width).to(dtype)  # [1, F, H, W, 6]
            sync(device)
            t1 = time.perf_counter()
            out = model(latents, plucker, dpt_frames_per_chunk=args.dpt_frames_per_chunk)
            sync(device)
            t2 = time.perf_counter()
            gaussians = lrm_to_gaussians(out, c2w, frame_stride=args.frame_stride)
            sync(device)
            t3 = time.perf_counter()
        n_gaussians = len(gaussians)
        del plucker, out, gaussians
        if measured:
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[key].append(dt)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / GB
    row: dict[str, Any] = {"resolution": res, "video": f"{width}x{height}", "frames": frames, "latent_frames": t,
                           "tokens": t * (h // cfg.latent_patch) * (w // cfg.latent_patch),
                           "output": f"{width // 2}x{height // 2}", "gaussians": n_gaussians}
    row.update({k: round(sum(v) / len(v), 4) for k, v in times.items()})
    row["total_s"] = round(sum(row[k] for k in times), 4)
    row["peak_gb"] = None if peak is None else round(peak, 2)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", nargs="+", default=["480p", "720p"], choices=sorted(SIZES))
    parser.add_argument("--latent-frames", type=int, default=21, help="T (81 frames for 21)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="measured calls per row")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dpt-frames-per-chunk", type=int, default=None,
                        help="run the DPT heads on this many latent frames at a time (default: as many as keep "
                        "every map under 2^31 elements; fewer: less memory, same values)")
    parser.add_argument("--frame-stride", type=int, default=2, help="frames kept by lrm_to_gaussians (2: official)")
    parser.add_argument("--smoke", action="store_true", help="tiny network on CPU (checks the code path)")
    args = parser.parse_args(argv)

    from matrix_world.reconstruction.lrm import LRMConfig

    if not args.smoke and not torch.cuda.is_available():
        print("error: benchmarks/lrm.py measures the official-size LRM on a CUDA GPU and none is visible; "
              "run it on the GPU machine, or pass --smoke for the tiny CPU check", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else getattr(torch, args.dtype)
    config = LRMConfig.tiny() if args.smoke else LRMConfig.official()
    if args.smoke:
        args.latent_frames = min(args.latent_frames, 3)
    start = time.perf_counter()
    t0 = time.perf_counter()
    model = build(config, device, dtype)
    sync(device)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)", "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."), "params": params, "build_s": round(build_s, 1),
        "attention": "F.scaled_dot_product_attention", "smoke": args.smoke, "rows": []}
    for res in args.resolutions:
        grid = (SMOKE_SIZES if args.smoke else SIZES)[res]
        try:
            row = run_row(model, res, grid, args, device, dtype)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            row = {"resolution": res, "skipped": "CUDA out of memory (try --dpt-frames-per-chunk 4)"}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        write_results("lrm", result)
    result["total_s"] = round(time.perf_counter() - start, 1)

    print(f"\nPanoLRM {params / 1e6:.1f}M params (random {result['dtype']}), device {result['device']}, "
          f"{args.latent_frames} latent frames, SDPA attention, DPT frames per chunk: {args.dpt_frames_per_chunk or 'auto'}")
    print(f"{'res':5} {'video':>10} {'frames':>6} {'tokens':>7} {'output':>8} {'plucker s':>9} {'network s':>9} "
          f"{'gauss. s':>8} {'total s':>8} {'peak GB':>8} {'Gaussians':>10}")
    for r in result["rows"]:
        if "skipped" in r:
            print(f"{r['resolution']:5} skipped: {r['skipped']}")
            continue
        peak = "-" if r["peak_gb"] is None else f"{r['peak_gb']:.1f}"
        print(f"{r['resolution']:5} {r['video']:>10} {r['frames']:>6} {r['tokens']:>7} {r['output']:>8} {r['plucker_s']:9.3f} "
              f"{r['network_s']:9.3f} {r['gaussians_s']:8.3f} {r['total_s']:8.3f} {peak:>8} {r['gaussians']:>10,}")
    print(f"total {result['total_s']:.0f} s")
    write_results("lrm", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
