"""Process-level settings of a run: how many CPU threads torch uses, and the one ``auto`` rule
of the two GPU kernels that have a CPU reference (nvdiffrast for the scaffold, gsplat for splats).

torch's default is one intra-op thread per core. On a machine that other processes keep
busy, that oversubscribes the cores: OpenMP threads wait for each other at every parallel
region. Measured on the 2-core machine (benchmarks/RESULTS.md, "CPU threads"): a 17-frame
run takes 15.8 s with 2 threads and 22.9 s with 1 when the machine is idle, but with two
other busy processes 1 thread takes 34.8 s and 2 threads 64.9 s (1.9x; 4.1x at a load of 4-5). A wrong
"1" costs at most ~1.5x, a wrong "all cores" several times that, so
:func:`default_threads` takes the cores this process may use minus the machine's load
average (beyond 0.5 of noise, rounded up), at least one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None, load: float | None = None) -> tuple[int, str]:
    """(threads, why): ``cores`` (default: :func:`usable_cores`) minus the 1-minute load
    average rounded up (default: ``os.getloadavg()``), clamped to [1, cores]. With neither
    given, a positive ``OMP_NUM_THREADS`` in the environment wins (the standard knob)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if cores is None and load is None and env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS; --threads N to override"
    cores = usable_cores() if cores is None else int(cores)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    busy = math.ceil(max(0.0, load) - 0.5)  # up to 0.5 is noise (a decaying average), not a busy core
    threads = max(1, min(cores, cores - busy))
    return threads, f"{cores} usable cores, load {load:.2f}; --threads N to override"


def apply_threads(requested: int | None) -> tuple[int, str]:
    """Set torch's intra-op threads to ``requested`` (``--threads``) or :func:`default_threads`;
    returns (count, why)."""
    count, why = (int(requested), "--threads") if requested is not None else default_threads()
    torch.set_num_threads(count)
    return count, why


RASTERISERS = ("cpu", "cuda")
RASTERISER_CHOICES = ("auto", *RASTERISERS)


def pick_rasteriser(backend: str, device, *, problem: Callable[[torch.device], str | None], what: str,
                    kernel: str, reference: str) -> tuple[str, str]:
    """(rasteriser, reason) of a CUDA kernel with a CPU reference.

    ``auto`` -> ``cuda`` for tensors on a CUDA device where ``problem(device)`` (a test render,
    once per process) finds none, else ``cpu``; ``cuda`` asked for off CUDA is refused.
    what: the tensors' name in errors; kernel / reference: the two rasterisers' names in reasons.
    """
    from matrix_world.errors import InputError

    if backend not in RASTERISER_CHOICES:
        raise InputError(f"the {what} rasteriser (backend) must be 'auto', 'cpu' or 'cuda', got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        if device.type != "cuda":
            return "cpu", f"no CUDA device: {reference}"
        found = problem(device)
        if found is not None:
            return "cpu", f"{kernel} cannot run here ({found}): {reference}"
        return "cuda", f"CUDA device: {kernel}"
    if backend == "cuda" and device.type != "cuda":
        raise InputError(f"backend 'cuda' needs the {what} on a CUDA device (move the tensors with .to('cuda')), "
                         f"got {device}")
    return backend, "requested"
