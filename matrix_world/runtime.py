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
import re
from collections.abc import Callable

import torch

from matrix_world.errors import InputError


DEVICE_RULE = "expected auto, cpu, cuda or cuda:N (N = a GPU index)"
MEMORY_HEADROOM = 0.8  # what a run may plan to hold of the memory that is available when it starts


def check_device(name: str | None, option: str = "--device", *, allow_auto: bool = True) -> None:
    """A device string the CLI accepts (None skipped): ``auto`` (when allowed), ``cpu``, ``cuda``
    or ``cuda:N``; a CUDA device must exist. An :class:`InputError` naming ``option`` otherwise
    (torch would list its twenty device types in a RuntimeError)."""
    if name is None:
        return
    allowed = ("auto|" if allow_auto else "") + r"cpu|cuda|cuda:\d{1,3}"
    if not re.fullmatch(allowed, str(name)):
        rule = DEVICE_RULE if allow_auto else DEVICE_RULE.replace("auto, ", "")
        raise InputError(f"{option} {name!r} is not a device; {rule}")
    if str(name).startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"{option} {name} needs a CUDA GPU, and none is visible; use --device cpu (or auto)")
        index = str(name).partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise InputError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                             f"expected cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def available_memory() -> int:
    """Bytes of memory this process can still allocate: ``MemAvailable`` of /proc/meminfo (Linux),
    else physical pages x page size."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return 1 << 62  # unknown: no limit


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def check_memory(nbytes: int, what: str, expected: str) -> None:
    """Refuse, before allocating, a job whose arrays (``nbytes``, estimated from the sizes the
    user asked for) exceed :data:`MEMORY_HEADROOM` of the available memory: an InputError
    naming ``what`` and the sizes to change (``expected``)."""
    free = available_memory()
    if nbytes > MEMORY_HEADROOM * free:
        raise InputError(f"{what} needs about {gib(nbytes)} of memory but {gib(free)} is available; expected "
                         f"{expected}")


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
