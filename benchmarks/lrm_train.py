"""Panoramic LRM training benchmark: train a small LRM from scratch on synthetic clips for a time
budget, then score it on held-out views of held-out clips against ``lift`` and ``optimize``.

    python benchmarks/lrm_train.py                 # GPU, one 10-minute device call: ~8 min (5 of them training)
    python benchmarks/lrm_train.py --minutes 3     # shorter
    python benchmarks/lrm_train.py --smoke         # CPU: tiny sizes, same code path, ~30 s

1. Data (CPU rendering, --workers processes): --train-clips synthetic clips of --frames frames
   at --height x 2 height (``datasets/build.py``, every scene kind, seed 0), and the held-out
   clips: the benchmark split's --eval-scenes (``datasets/benchmark.py``: other scenes, with
   --heldout held-out views each), into a temporary folder (or --data-dir, reused).
2. Training (``reconstruction/lrm_train.py``, latents from the ``space_to_depth_stand_in``,
   bf16 autocast on CUDA): stage 1 for --stage1-share of --minutes, then stage 2 from its
   weights for the rest; constant learning rate after the warm-up (the runs stop on time).
   The held-out PSNR is logged every --eval-every steps.
3. Evaluation on every held-out clip, all three on the clip's --frames frames, scored by
   ``benchmarks/recon.py``'s ``evaluate`` (PSNR / SSIM over the 12-crop set of --eval-size at
   each held-out view): ``lrm`` (latents -> network -> ``lrm_to_gaussians``, every 2nd frame),
   ``lift`` and ``optimize`` (``recon.py``'s ``run_backend`` and ``backend_configs``; oracle
   distances as there).

Prints a table; writes $OUT/lrm_train.json (``common.write_results``) and the two loss curves
$OUT/lrm_train_stage1_metrics.jsonl, $OUT/lrm_train_stage2_metrics.jsonl when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import GB, write_results  # benchmarks/common.py (scripts run from this folder)
from recon import backend_configs, evaluate, run_backend, warm_up


def build_data(root: Path, args) -> tuple[Path, Path]:
    """(training clips folder, held-out benchmark split folder), built or reused."""
    from matrix_world.datasets.benchmark import BENCHMARK_SCENES, build_benchmark_split
    from matrix_world.datasets.build import build_dataset

    names = args.eval_scenes.split(",")
    scenes = [s for s in BENCHMARK_SCENES if s[0] in names]
    if len(scenes) != len(names):
        raise SystemExit(f"--eval-scenes: unknown scene(s) in {names}; the split has {[s[0] for s in BENCHMARK_SCENES]}")
    train_dir, split_dir = root / "train", root / "heldout_split"
    t0 = time.perf_counter()
    build_dataset(train_dir, args.train_clips, seed=0, frames=args.frames, height=args.height, workers=args.workers,
                  backend="cpu", progress=False)
    build_benchmark_split(split_dir, frames=args.frames, height=args.height, heldout=args.heldout, backend="cpu",
                          scenes=tuple(scenes), workers=min(args.workers, len(scenes)), log=lambda _m: None)
    print(f"[lrm-train-bench] data: {args.train_clips} training clips + {len(scenes)} held-out clips of {args.frames} "
          f"frames at {args.height}x{2 * args.height} in {time.perf_counter() - t0:.1f} s ({root})", flush=True)
    return train_dir, split_dir


def train_stages(args, train_dir: Path, split_dir: Path, run_root: Path, device: torch.device) -> list[dict]:
    """Stage 1 then stage 2 for the time budget; one summary dict per stage."""
    from matrix_world.datasets.lrm_samples import LRMClipSamples, SampleConfig, split_sequences
    from matrix_world.reconstruction.lrm_train import TrainConfig, train

    cuda = device.type == "cuda"
    cache = run_root / "cache"
    common = dict(model=args.model, latent_encoder="space_to_depth_stand_in", steps=args.max_steps, lr=args.lr,
                  warmup_steps=args.warmup, min_lr=1.0, batch_size=args.batch_size, clip_length=args.frames,
                  mixed_precision="bf16" if cuda else "no", crops_per_step=args.crops, crop_size=args.crop_size,
                  eval_every=args.eval_every, eval_crop_size=args.eval_size, eval_views=args.eval_views,
                  checkpoint_every=10**9, print_every=args.print_every, seed=args.seed, device="cuda" if cuda else "cpu",
                  num_workers=args.loader_workers)
    train_seqs = split_sequences(train_dir, 0)[0]
    eval_src = LRMClipSamples(split_sequences(split_dir, 0)[0], encoder_spec="space_to_depth_stand_in", cache_dir=cache,
                              config=SampleConfig(clip_length=args.frames, targets="heldout", first_window_only=True),
                              render_backend="cpu")
    shares = (args.stage1_share, 1.0 - args.stage1_share)
    rows, init = [], None
    for stage, share in zip((1, 2), shares):
        samples = SampleConfig(clip_length=args.frames, targets="none" if stage == 1 else "novel",
                               novel_views=args.novel_views, seed=args.seed)
        train_src = LRMClipSamples(train_seqs, encoder_spec="space_to_depth_stand_in", cache_dir=cache, config=samples,
                                   render_backend="cpu", workers=args.workers)
        output = run_root / f"stage{stage}"
        shutil.rmtree(output, ignore_errors=True)
        config = TrainConfig(output=output, stage=stage, init=init, max_minutes=args.minutes * share, **common)
        t0 = time.perf_counter()
        result = train(config, train_src, eval_src, log=lambda m: print(m, flush=True))
        seconds = time.perf_counter() - t0
        lines = [json.loads(x) for x in result.metrics.read_text().splitlines() if x.strip()]
        steps = [x for x in lines if "loss" in x]
        evals = [(x["step"], round(x["heldout_psnr"], 3)) for x in lines if "heldout_psnr" in x]
        k = max(1, min(20, len(steps) // 5))
        rows.append({"stage": stage, "steps": result.step, "seconds": seconds, "stopped": result.stopped,
                     "loss_first": float(np.mean([x["loss"] for x in steps[:k]])) if steps else None,
                     "loss_last": float(np.mean([x["loss"] for x in steps[-k:]])) if steps else None,
                     "step_seconds": float(np.median([x["step_seconds"] for x in steps])) if steps else None,
                     "heldout_psnr_curve": evals, "metrics": str(result.metrics), "model": str(result.model_dir)})
        print(f"[lrm-train-bench] stage {stage}: {result.step} steps in {seconds:.0f} s, loss {rows[-1]['loss_first']:.4f} -> "
              f"{rows[-1]['loss_last']:.4f} (means of the first / last {k} steps)", flush=True)
        init = result.model_dir
    return rows


def benchmark_clip(clip, frames: int) -> dict:
    """A held-out benchmark clip in ``recon.py``'s clip layout (its first ``frames`` frames)."""
    return {"kind": clip.kind, "seed": clip.scene_seed, "c2w": torch.from_numpy(clip.c2w[:frames]),
            "rgb": clip.frames[:frames], "distance": clip.distances[:frames], "sky": clip.sky[:frames],
            "heldout_c2w": torch.from_numpy(clip.heldout_c2w), "heldout_rgb": clip.heldout_rgb, "name": clip.name}


@torch.no_grad()
def lrm_row(model, clip: dict, device: torch.device, eval_size: int, frame_stride: int) -> dict:
    """The trained LRM on one held-out clip: latents -> network -> Gaussians, scored like lift/optimize."""
    from matrix_world.reconstruction.lrm import lrm_plucker
    from matrix_world.reconstruction.lrm_gaussians import lrm_to_gaussians
    from matrix_world.reconstruction.lrm_latents import SpaceToDepthLatents

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    latents = SpaceToDepthLatents(device=device).encode(torch.from_numpy(clip["rgb"]).to(device))  # [T, 16, h, w]
    c2w = clip["c2w"].to(device=device, dtype=torch.float32)
    output = model(latents[None], lrm_plucker(c2w, clip["rgb"].shape[1], clip["rgb"].shape[2]))
    gaussians = lrm_to_gaussians(output, c2w, frame_stride=frame_stride)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / GB if device.type == "cuda" else float("nan")
    metrics = evaluate(gaussians, clip["heldout_c2w"], clip["heldout_rgb"], eval_size, device)
    return {"clip": clip["name"], "backend": "lrm", "psnr": metrics["psnr"], "ssim": metrics["ssim"], "crops": metrics["crops"],
            "gaussians": len(gaussians), "seconds": seconds, "peak_gb": peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of the same code path (seconds)")
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget for both stages together")
    ap.add_argument("--stage1-share", type=float, default=0.6, help="share of --minutes for stage 1")
    ap.add_argument("--max-steps", type=int, default=10**6, help="step cap per stage (the time budget normally stops first)")
    ap.add_argument("--model", default="small", help="LRM preset (tiny, small, official) or a JSON config")
    ap.add_argument("--train-clips", type=int, default=64)
    ap.add_argument("--eval-scenes", default="park,city,room", help="benchmark-split scenes held out")
    ap.add_argument("--frames", type=int, default=33, help="frames per clip = the LRM window (4k+1)")
    ap.add_argument("--height", type=int, default=128, help="panorama height (width 2x; multiple of 16)")
    ap.add_argument("--heldout", type=int, default=8, help="held-out views per held-out clip")
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crops", type=int, default=4, help="stage 2: crops per window and step")
    ap.add_argument("--crop-size", type=int, default=96, help="stage 2: crop size")
    ap.add_argument("--novel-views", type=int, default=8, help="stage 2: rendered target poses per training clip")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-size", type=int, default=128, help="held-out crop size (all backends)")
    ap.add_argument("--eval-views", type=int, default=4, help="held-out views per clip in the training-time evaluation")
    ap.add_argument("--print-every", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=1500, help="optimize: iterations")
    ap.add_argument("--stride", type=int, default=4, help="lift/optimize keyframe stride")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="CPU processes for the data")
    ap.add_argument("--loader-workers", type=int, default=4, help="DataLoader workers while training")
    ap.add_argument("--data-dir", default=None, help="keep the data and runs here (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.minutes, args.max_steps, args.model, args.train_clips, args.eval_scenes = 0.5, 12, "tiny", 2, "park"
        args.frames, args.height, args.heldout, args.batch_size, args.crops, args.crop_size = 5, 32, 2, 1, 2, 16
        args.novel_views, args.eval_every, args.eval_size, args.eval_views, args.print_every = 2, 6, 16, 1, 6
        args.iterations, args.stride, args.warmup, args.workers, args.loader_workers, args.lr = 20, 2, 2, 1, 0, 3e-3
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    tmp = None if args.data_dir else tempfile.mkdtemp(prefix="lrm-train-bench-")
    root = Path(args.data_dir or tmp)
    print(f"[lrm-train-bench] device {device}; model {args.model}; {args.minutes:g} min of training; data in {root}", flush=True)
    result: dict = {"args": vars(args), "smoke": args.smoke,
                    "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    try:
        t0 = time.perf_counter()
        train_dir, split_dir = build_data(root, args)
        result["data_seconds"] = time.perf_counter() - t0
        warm_up(device)
        result["stages"] = stages = train_stages(args, train_dir, split_dir, root / "runs", device)
        write_results("lrm_train", result)
        out = os.environ.get("OUT")
        for row in stages:
            if out:
                shutil.copy(row["metrics"], Path(out) / f"lrm_train_stage{row['stage']}_metrics.jsonl")

        from matrix_world.datasets.benchmark import load_benchmark_split
        from matrix_world.reconstruction.lrm import PanoLRM

        model = PanoLRM.from_pretrained(stages[-1]["model"], device=device)
        configs = backend_configs(args.stride, args.iterations, 4, args.height, 1, 1)  # crops of the panorama's height
        rows = []
        for clip in load_benchmark_split(split_dir):
            data = benchmark_clip(clip, args.frames)
            rows.append(lrm_row(model, data, device, args.eval_size, 2))
            for name in ("lift", "optimize"):
                row = run_backend(name, data, configs[name], device, args.seed, args.eval_size)
                rows.append({k: row[k] for k in ("backend", "psnr", "ssim", "crops", "gaussians", "seconds", "peak_gb")}
                            | {"clip": clip.name})
            for r in rows[-3:]:
                print(f"[lrm-train-bench]   {r['clip']:8s} {r['backend']:9s} PSNR {r['psnr']:6.2f}  SSIM {r['ssim']:.3f}  "
                      f"N {r['gaussians']:>9,d}  {r['seconds']:7.2f} s", flush=True)
        result["rows"] = rows
        result["means"] = {b: {"psnr": float(np.mean([r["psnr"] for r in rows if r["backend"] == b])),
                               "ssim": float(np.mean([r["ssim"] for r in rows if r["backend"] == b])),
                               "seconds": float(np.mean([r["seconds"] for r in rows if r["backend"] == b]))}
                           for b in ("lrm", "lift", "optimize")}
        result["total_seconds"] = time.perf_counter() - t0
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print("\n| stage | steps | seconds | s / step | loss first -> last | held-out PSNR (step: dB) |\n|---|---|---|---|---|---|")
    for s in result["stages"]:
        curve = ", ".join(f"{st}: {p:.2f}" for st, p in s["heldout_psnr_curve"][-4:])
        print(f"| {s['stage']} | {s['steps']} | {s['seconds']:.0f} | {s['step_seconds']:.3f} | {s['loss_first']:.4f} -> "
              f"{s['loss_last']:.4f} | {curve} |")
    print("\n| clip | backend | PSNR (dB) | SSIM | Gaussians | seconds |\n|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['clip']} | {r['backend']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['gaussians']:,d} | {r['seconds']:.2f} |")
    for b, m in result["means"].items():
        print(f"mean {b}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, {m['seconds']:.2f} s")
    print(f"total {result['total_seconds']:.0f} s")
    path = write_results("lrm_train", result)
    if path:
        print(f"[lrm-train-bench] wrote {path}")
    return 0


if __name__ == "__main__":
    from matrix_world.app.cli import run_main

    sys.exit(run_main(main))
