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

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from matrix_world.datasets.benchmark import (
    BENCHMARK_SCENES,
    DEFAULT_ROOT,
    build_benchmark_split,
    load_benchmark_split,
)

from matrix_world.app.cli import choices_metavar, parse_options, require_one_of, require_positive, run_main

from common import write_results  # benchmarks/common.py (scripts run from this folder)

BACKENDS = ("auto", "cpu", "cuda")


@dataclass
class SplitOptions:
    """Options of benchmarks/build_benchmark_split.py."""

    out: Path | None = None
    """Split folder; None = benchmarks/data/synthetic_v1."""
    frames: int = 81
    """Frames per clip."""
    height: int = 256
    """Equirect height in pixels; width = 2 x height."""
    heldout: int = 16
    """Held-out novel views per scene."""
    backend: Annotated[str, choices_metavar(BACKENDS)] = "auto"
    """Renderer backend."""
    threads: int | None = None
    """torch CPU threads; None = torch's choice."""
    workers: int = 1
    """Parallel processes, one thread each (CPU rendering)."""
    force: bool = False
    """Rebuild even if the split is complete."""
    smoke: bool = False
    """2 scenes, 9 frames + 4 held-out at 32x64, in a temporary folder."""

    def check(self) -> None:
        require_positive(self, "frames", "height", "heldout", "threads", "workers")
        require_one_of(self, "backend", BACKENDS)


def main(argv=None) -> int:
    options = parse_options(SplitOptions, argv, prog="build_benchmark_split.py", doc=__doc__)
    if options.threads:
        torch.set_num_threads(options.threads)
    scenes = BENCHMARK_SCENES
    root = options.out or DEFAULT_ROOT
    tmp = None
    if options.smoke:
        scenes = (BENCHMARK_SCENES[0], BENCHMARK_SCENES[8])
        options.frames, options.height, options.heldout = 9, 32, 4
        tmp = tempfile.mkdtemp(prefix="bench-split-smoke-")
        root = Path(tmp)
    if options.force and root.exists() and not options.smoke:
        shutil.rmtree(root)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"building {len(scenes)} clips of {options.frames}+{options.heldout} frames at {options.height}x{2 * options.height} "
          f"(backend {options.backend}, device {device}, {options.workers} worker(s), {torch.get_num_threads()} threads) "
          f"into {root}", flush=True)
    t0 = time.perf_counter()
    split = build_benchmark_split(root, frames=options.frames, height=options.height, heldout=options.heldout,
                                  backend=options.backend, scenes=scenes, workers=options.workers,
                                  log=lambda m: print(m, flush=True))
    total = time.perf_counter() - t0
    clips = load_benchmark_split(root)  # check that it loads
    assert len(clips) == len(scenes) and clips[0].frames.shape[0] == options.frames
    built = [c for c in split["clips"] if not c.get("skipped")]
    frames = sum(c["frames"] for c in built)
    print(f"\n| clips built | frames rendered | total s | s / frame | device |\n|---|---|---|---|---|\n"
          f"| {len(built)} | {frames} | {total:.1f} | {total / max(frames, 1):.3f} | {device} |")
    result = {"name": "build_benchmark_split", "smoke": options.smoke, "clips_built": len(built), "frames_rendered": frames,
              "height": options.height, "total_seconds": round(total, 2), "seconds_per_frame": round(total / max(frames, 1), 4),
              "backend": options.backend, "device": device, "workers": options.workers, "threads": torch.get_num_threads(), "per_clip": split["clips"]}
    out = write_results("build_benchmark_split", result)
    if out:
        print(f"wrote {out}")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
