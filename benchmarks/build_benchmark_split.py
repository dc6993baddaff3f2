#!/usr/bin/env python
"""Build the fixed synthetic benchmark split (8 outdoor + 4 indoor clips, held-out views).

    python benchmarks/build_benchmark_split.py                 # 81 frames + 16 held-out at 256x512
    python benchmarks/build_benchmark_split.py --backend cuda  # on the GPU machine
    python benchmarks/build_benchmark_split.py --smoke         # tiny sizes, seconds, on CPU

Writes benchmarks/data/synthetic_v1/ (git-ignored; --out to change), resumes finished
clips, prints the time taken per clip and in total, and writes $OUT/build_benchmark_split.json
when the OUT environment variable is set. Load it with
matrix_world.datasets.benchmark.load_benchmark_split().
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from matrix_world.datasets.benchmark import (
    BENCHMARK_SCENES,
    DEFAULT_ROOT,
    build_benchmark_split,
    load_benchmark_split,
)

from matrix_world.app.cli import positive_int, run_main

from common import write_results  # benchmarks/common.py (scripts run from this folder)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help=f"split folder (default {DEFAULT_ROOT})")
    p.add_argument("--frames", type=positive_int, default=81)
    p.add_argument("--height", type=positive_int, default=256)
    p.add_argument("--heldout", type=positive_int, default=16, help="held-out novel views per scene")
    p.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel processes, one thread each (CPU rendering)")
    p.add_argument("--force", action="store_true", help="rebuild even if the split is complete")
    p.add_argument("--smoke", action="store_true", help="2 scenes, 9 frames + 4 held-out at 32x64, in a temp folder")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scenes = BENCHMARK_SCENES
    root = args.out or DEFAULT_ROOT
    tmp = None
    if args.smoke:
        scenes = (BENCHMARK_SCENES[0], BENCHMARK_SCENES[8])
        args.frames, args.height, args.heldout = 9, 32, 4
        tmp = tempfile.mkdtemp(prefix="bench-split-smoke-")
        root = Path(tmp)
    if args.force and root.exists() and not args.smoke:
        shutil.rmtree(root)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"building {len(scenes)} clips of {args.frames}+{args.heldout} frames at {args.height}x{2 * args.height} "
          f"(backend {args.backend}, device {device}, {args.workers} worker(s), {torch.get_num_threads()} threads) "
          f"into {root}", flush=True)
    t0 = time.perf_counter()
    split = build_benchmark_split(root, frames=args.frames, height=args.height, heldout=args.heldout,
                                  backend=args.backend, scenes=scenes, workers=args.workers,
                                  log=lambda m: print(m, flush=True))
    total = time.perf_counter() - t0
    clips = load_benchmark_split(root)  # check that it loads
    assert len(clips) == len(scenes) and clips[0].frames.shape[0] == args.frames
    built = [c for c in split["clips"] if not c.get("skipped")]
    frames = sum(c["frames"] for c in built)
    print(f"\n| clips built | frames rendered | total s | s / frame | device |\n|---|---|---|---|---|\n"
          f"| {len(built)} | {frames} | {total:.1f} | {total / max(frames, 1):.3f} | {device} |")
    result = {"name": "build_benchmark_split", "smoke": args.smoke, "clips_built": len(built), "frames_rendered": frames,
              "height": args.height, "total_seconds": round(total, 2), "seconds_per_frame": round(total / max(frames, 1), 4),
              "backend": args.backend, "device": device, "workers": args.workers, "threads": torch.get_num_threads(), "per_clip": split["clips"]}
    out = write_results("build_benchmark_split", result)
    if out:
        print(f"wrote {out}")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
