"""What the benchmark scripts share: writing their numbers to ``$OUT/<name>.json``; synchronised
timing of wrapped calls (:class:`Timers`); a host-RAM watchdog (:func:`watch_host_memory`)."""

from __future__ import annotations

import faulthandler
import functools
import json
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

from matrix_world.rundir import jsonable


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a CUDA no-op elsewhere), so a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timers:
    """Cumulative synchronised seconds and calls of wrapped callables, under a label each; undone by
    :meth:`restore`. The owner is a module, a class or an instance: an instance's method is wrapped as
    an instance attribute over its class's, and restoring deletes it again."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner, name: str, label: str) -> None:
        fn = getattr(owner, name)
        own = name in vars(owner)  # the owner's own attribute (module, class); else the class's method

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            sync(self.device)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1

        setattr(owner, name, timed)
        self._undo.append((owner, name, fn if own else None))

    def restore(self) -> None:
        for owner, name, fn in reversed(self._undo):
            if fn is None:
                vars(owner).pop(name, None)
            else:
                setattr(owner, name, fn)
        self._undo.clear()


def write_results(name: str, results: dict) -> Path | None:
    """Write ``results`` to ``$OUT/<name>.json`` when the OUT environment variable is set.

    Values go through ``rundir.jsonable(strict=False)``, as the run manifest does: NaN and
    infinities become the strings ``'nan'``, ``'inf'``, ``'-inf'`` and objects JSON has no
    type for become their ``str``. Benchmarks call it after every section, so a late failure
    keeps the numbers measured so far.
    """
    out = os.environ.get("OUT")
    if not out:
        return None
    path = Path(out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(results, strict=False), indent=1, allow_nan=False) + "\n")
    return path


def watch_host_memory(floor_gb: float = 4.0, every_s: float = 0.5) -> dict:
    """Watch the host's available RAM from a daemon thread; below ``floor_gb`` print every thread's Python stack
    and torch's pinned host allocator statistics, then end the process (exit code 3), so a run that would be
    killed by the kernel's OOM killer (which leaves nothing behind) says where it was. Returns a dict whose
    'lowest_gb' the thread keeps up to date."""
    from matrix_world.generation.memory import host_available_gb

    seen: dict = {"lowest_gb": host_available_gb(), "floor_gb": floor_gb}
    if seen["lowest_gb"] is None:
        return seen

    def watch() -> None:
        while True:
            gb = host_available_gb() or 0.0
            seen["lowest_gb"] = min(seen["lowest_gb"], gb)
            if gb < floor_gb:
                print(f"[watchdog] host MemAvailable {gb:.1f} GB < {floor_gb} GB: ending the process; stacks:", flush=True)
                faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
                stats = getattr(torch.cuda, "host_memory_stats", None)
                if stats is not None and torch.cuda.is_initialized():
                    print(f"[watchdog] pinned host allocator: {stats()}", flush=True)
                sys.stdout.flush()
                os._exit(3)
            time.sleep(every_s)

    threading.Thread(target=watch, name="host-memory-watchdog", daemon=True).start()
    return seen
