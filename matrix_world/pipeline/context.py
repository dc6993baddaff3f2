"""What every stage function gets (:class:`StageContext`) and the small helpers they share.

A stage function runs one :meth:`~matrix_world.rundir.RunDir.stage` (skipped when its
outputs exist with the same config hash) and returns what later stages need, read back
from the run directory, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from typing import Any

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

    distributed: Any = None
    """The processes of a several-GPU run (a matrix_world.pipeline.distributed.Team; rank 0's view), or None:
    the video stage then runs its Wan calls on all of them."""

    owned: set = dataclasses.field(default_factory=set)
    """Keys of ``models`` this run loaded itself: :meth:`release` drops them after their last use
    (models the caller put into ``models`` are the caller's and stay)."""

    def model(self, name: str, load: Callable[[], Any]) -> Any:
        """The model ``name``: the one in ``models`` (injected or loaded earlier in this run), else
        ``load()`` once, kept in ``models`` until :meth:`release`."""
        if name not in self.models:
            self.models[name] = load()
            self.owned.add(name)
        return self.models[name]

    def release(self, *names: str) -> None:
        """Drop the models ``names`` this run loaded, then free memory (``gc.collect()`` and, on a GPU,
        ``torch.cuda.empty_cache()``), so the next stage loads its models into a clean GPU.

        Called between the stages, also with no names: the panorama and video models live only
        inside their stage functions; this frees what they left (reference cycles, cached blocks).
        """
        for name in names:
            if name in self.owned:
                self.models.pop(name, None)
                self.owned.discard(name)
        free_memory(self.device)

    def park(self, name: str) -> None:
        """Move the model ``name`` this run loaded (a LoadedMoGe, or any ``.model`` / ``.to`` holder)
        to the CPU until it is needed again, and free its GPU memory: loaded once, not held on the
        GPU while other stages' models run."""
        if name in self.owned and self.device.type == "cuda":
            model = self.models[name]
            getattr(model, "model", model).to("cpu")
        free_memory(self.device)

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


def free_memory(device: torch.device) -> None:
    """Collect unreachable objects (diffusers pipelines hold reference cycles) and return the GPU's
    cached blocks to the driver, so the next model's peak starts from what is really in use."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        empty_host_cache()


def empty_host_cache() -> bool:
    """Return the pinned host memory torch's caching host allocator holds (group offloading under
    --memory lowvram fills it: without this one model's pinned weights stay held during the next's).
    True where this torch has the call (torch.accelerator.empty_host_cache in 2.13; the H200 image's
    2.11 lacks it, where the older private name is tried)."""
    empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None) or getattr(torch._C, "_host_emptyCache", None)
    if empty is None:
        return False
    empty()
    return True
