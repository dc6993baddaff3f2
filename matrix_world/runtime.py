"""Process-level settings of a run: how many CPU threads torch uses.

torch's default is one intra-op thread per core. On a machine that other processes keep
busy, that oversubscribes the cores: OpenMP threads wait for each other at every parallel
region, and a 2-core machine under load runs 5-10x slower than with one thread (measured:
benchmarks/RESULTS.md, "CPU threads"). :func:`default_threads` takes the cores this process
may use minus the machine's load average, at least one.
"""

from __future__ import annotations

import math
import os


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
    busy = math.ceil(max(0.0, load) - 0.25)  # a load of 0.2 is noise, not a busy core
    threads = max(1, min(cores, cores - busy))
    return threads, f"{cores} usable cores, load {load:.2f}; --threads N to override"
