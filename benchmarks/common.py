"""What the benchmark scripts share: writing their numbers to ``$OUT/<name>.json``; synchronised
timing of wrapped calls (:class:`Timers`), of a module's forward passes (:class:`PassTimer`) and of a
pipeline's components (:class:`CallTimer`), which call raised the peak GPU memory (:class:`PeakLog`); a host-RAM watchdog (:func:`watch_host_memory`)."""

from __future__ import annotations

import faulthandler
import functools
import json
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from matrix_world.rundir import jsonable


GB = 1e9  # decimal gigabytes, as generation.memory.GB and FACTS §A: every benchmark's memory figure is in these


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

    def wrap(self, owner, name: str, label: str, after: Callable[[str], None] | None = None) -> None:
        """Time ``owner.name`` under ``label``; ``after(label)`` runs when each call returns (synchronised)."""
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
                if after is not None:
                    after(label)

        setattr(owner, name, timed)
        self._undo.append((owner, name, fn if own else None))

    def restore(self) -> None:
        for owner, name, fn in reversed(self._undo):
            if fn is None:
                vars(owner).pop(name, None)
            else:
                setattr(owner, name, fn)
        self._undo.clear()


class PeakLog:
    """Which call of a stage raised its peak GPU memory: after each marked call the running
    ``max_memory_allocated`` is read (no reset, so the stage's own peak stays whole); a rise is
    recorded under that call's label -> {label: the peak in GB when it last rose there}."""

    def __init__(self, device: torch.device):
        self.device, self.last = device, 0.0
        self.set_by: dict[str, float] = {}

    def mark(self, label: str) -> None:
        if self.device.type != "cuda":
            return
        peak = torch.cuda.max_memory_allocated(self.device) / GB
        if peak > self.last + 0.005:
            self.set_by[label], self.last = round(peak, 2), peak


class PassTimer:
    """Synchronised seconds of every forward pass of a module (pre/post forward hooks); each pass's
    end is marked in ``peaks`` (a :class:`PeakLog`) when one is given."""

    def __init__(self, module: torch.nn.Module, device: torch.device, peaks: PeakLog | None = None):
        self.device, self._t0, self.peaks = device, 0.0, peaks
        self.passes: list[float] = []
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, module, args):
        sync(self.device)
        self._t0 = time.perf_counter()

    def _post(self, module, args, output):
        sync(self.device)
        self.passes.append(time.perf_counter() - self._t0)
        if self.peaks is not None:
            self.peaks.mark("transformer")

    def summary(self, steps: int) -> dict:
        for h in self.handles:
            h.remove()
        p = sorted(self.passes)
        per_step_passes = len(p) / max(steps, 1)
        median = p[len(p) // 2] if p else float("nan")
        k = int(per_step_passes) if per_step_passes == int(per_step_passes) else 0
        step_s = [round(sum(self.passes[i:i + k]), 4) for i in range(0, len(self.passes), k)] if k else None
        return {"passes": len(p), "passes_per_step": per_step_passes, "first_pass_s": round(self.passes[0], 4) if p else None,
                "transformer_s": round(sum(p), 3), "per_step_s": round(median * per_step_passes, 4), "step_s": step_s}


class CallTimer(Timers):
    """Synchronised seconds of the calls of some methods of a pipeline's components (VAE encode / decode,
    text and image encoders): where a stage's time outside the transformer goes."""

    METHODS = (("vae", "encode"), ("vae", "decode"), ("text_encoder", "forward"), ("text_encoder_2", "forward"),
               ("image_encoder", "forward"))

    def __init__(self, pipe, device: torch.device, peaks: PeakLog | None = None):
        super().__init__(device)
        for component, method in self.METHODS:
            obj = getattr(pipe, component, None)
            if obj is not None and hasattr(obj, method):
                self.wrap(obj, method, f"{component}.{method}" if method != "forward" else component,
                          after=None if peaks is None else peaks.mark)

    def summary(self) -> dict:
        """Unwrap (the wrappers hold the components) -> {label: seconds}."""
        self.restore()
        return {k: round(v, 3) for k, v in self.seconds.items()}


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
