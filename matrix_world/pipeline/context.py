"""What every stage function gets (:class:`StageContext`) and the small helpers they share.

A stage function runs one :meth:`~matrix_world.rundir.RunDir.stage` (skipped when its
outputs exist with the same config hash) and returns what later stages need, read back
from the run directory, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from matrix_world.rundir import RunDir

Log = Callable[[str], None]


@dataclasses.dataclass
class StageContext:
    """What every stage gets: the run directory, device, seed and a log function."""

    run: RunDir
    device: torch.device
    seed: int
    log: Log = print
    models: dict = dataclasses.field(default_factory=dict)
    """Already loaded models to use instead of loading from weights: "panorama" (a FLUX
    panorama pipeline), "depth" (a LoadedMoGe), "video" (a PanoVideoPipeline). Keeps models
    in memory across runs and segments; the random-weight end-to-end benchmark injects here."""

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run's seed (offset per stage)."""
        return torch.Generator().manual_seed(self.seed + offset)


def progress_bar(total: int, desc: str, unit: str):
    """A tqdm progress bar with ETA on stderr, removed when done."""
    from tqdm import tqdm

    return tqdm(total=total, desc=f"  {desc}", unit=unit, leave=False, dynamic_ncols=True)


def log_stage(ctx: StageContext, st, name: str, started: float) -> None:
    """One line per stage: its time, or 'reused', and its backend."""
    word = "reused" if st.done else f"{time.perf_counter() - started:.1f} s"
    ctx.log(f"  {name}: {word} [{st.backend}]")
