#!/usr/bin/env python
"""Build a synthetic panoramic-video dataset with exact ground truth.

    python scripts/build_synthetic_dataset.py --out DIR --clips N --frames F --height H --seed S [--workers W]

Writes DIR/00000/, DIR/00001/, ... each with rgb/*.png, distance.npz, poses.json,
prompt.txt and meta.json (layout: matrix_world.datasets.clips). Clips already complete are
skipped, so an interrupted build resumes where it stopped. Bad input prints `error: ...`
and exits with code 2.
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from matrix_world.datasets.scenes import KINDS
from matrix_world.runtime import RASTERISER_CHOICES

from matrix_world.app.cli import (
    choices_metavar,
    parse_options,
    require_finite,
    require_one_of,
    require_new_or_folder,
    require_positive,
    require_seed,
    run_main,
)

BACKENDS = RASTERISER_CHOICES
DISTANCE_DTYPES = ("float16", "float32")


@dataclass
class DatasetOptions:
    """Options of scripts/build_synthetic_dataset.py."""

    out: Path
    """Dataset folder (created; complete clips are kept)."""
    clips: int
    """Number of clips."""
    frames: int = 81
    """Frames per clip."""
    height: int = 256
    """Equirect height in pixels; width = 2 x height."""
    seed: int = 0
    """Dataset seed (clip i depends only on the seed and i)."""
    workers: int = 1
    """Parallel processes (CPU rendering)."""
    kinds: str = ",".join(KINDS)
    """Comma-separated scene kinds."""
    backend: Annotated[str, choices_metavar(BACKENDS)] = "auto"
    """Renderer backend."""
    distance_dtype: Annotated[str, choices_metavar(DISTANCE_DTYPES)] = "float16"
    """Precision of distance.npz."""
    min_length: float | None = None
    """Minimum path length in metres; None = 18 outdoors, half the room diagonal indoors."""
    look_around: float = 0.0
    """Look-around yaw amplitude in degrees."""

    def check(self) -> None:
        require_positive(self, "clips", "frames", "height", "workers")
        require_finite(self, "min_length", "look_around")
        require_one_of(self, "backend", BACKENDS)
        require_one_of(self, "distance_dtype", DISTANCE_DTYPES)
        require_seed(self, "seed")
        require_new_or_folder(self, "out")
        from matrix_world.runtime import check_memory

        check_memory(self.workers * self.frames * self.height * 2 * self.height * 12,  # rgb, distance, render buffers
                     f"--workers {self.workers} clips of --frames {self.frames} at --height {self.height}",
                     "a smaller --height, fewer --frames or fewer --workers")


def main(argv=None) -> int:
    from matrix_world.datasets.build import build_dataset

    options = parse_options(DatasetOptions, argv, prog="build_synthetic_dataset.py", doc=__doc__)
    kinds = tuple(k.strip() for k in options.kinds.split(",") if k.strip())
    t0 = time.perf_counter()
    results = build_dataset(options.out, options.clips, options.seed, frames=options.frames, height=options.height,
                            workers=options.workers, kinds=kinds, backend=options.backend,
                            distance_dtype=options.distance_dtype, min_length=options.min_length,
                            look_around_deg=options.look_around)
    built = [r for r in results if not r["skipped"]]
    print(f"{len(built)} clip(s) built, {len(results) - len(built)} already complete, "
          f"{time.perf_counter() - t0:.1f} s in total -> {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
