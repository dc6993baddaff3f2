"""Host-memory transfer rates that lowvram's pinning choice rests on (generation.memory.pin_up_front).

Measures, on one CUDA device, in GB/s (decimal): allocating pinned host memory
(``torch.empty(pin_memory=True)``, what diffusers' up-front pinning does per tensor, through torch's
caching host allocator), pinning a pageable tensor (``Tensor.pin_memory()``: allocation + copy),
host-to-device copies from pageable and from pinned memory, and refilling an already pinned buffer
(what pinning a group at a time costs once torch's cache holds the blocks). Fresh allocations each time
(the cache emptied between), so the allocator's reuse does not hide the page-locking cost.

    python benchmarks/pinning.py [--gb 4]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from common import GB, write_results  # benchmarks/common.py
from matrix_world.pipeline.context import empty_host_cache



def _rate(nbytes: int, fn, device: torch.device) -> float:
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    del out
    empty_host_cache()  # freed pinned blocks go back to the OS (where torch can): the next allocation pays again
    return nbytes / GB / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=4.0, help="size of each buffer in GB (default 4)")
    p.add_argument("--name", default="pinning", help="results file $OUT/<name>.json (default pinning)")
    p.add_argument("--register-at-runtime", action="store_true",
                   help="switch to the cudaHostRegister allocator the way lowvram does (generation.memory."
                        "use_registering_pinned_allocator), after CUDA has started")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/pinning.py needs a CUDA device")
    device = torch.device("cuda")
    n = int(args.gb * GB)
    allocator = "default (or as PYTORCH_CUDA_ALLOC_CONF says)"
    if args.register_at_runtime:
        from matrix_world.generation.memory import use_registering_pinned_allocator

        torch.empty(1, device=device)  # CUDA started first: what the pipeline's switch meets
        allocator = use_registering_pinned_allocator()
    pageable = torch.ones(n, dtype=torch.uint8)  # touched: its pages exist, as loaded weights' do
    pinned = pageable.pin_memory()
    rows = {
        "pinned_alloc_gbps": _rate(n, lambda: torch.empty(n, dtype=torch.uint8, pin_memory=True), device),
        "pin_memory_copy_gbps": _rate(n, lambda: pageable.pin_memory(), device),
        "h2d_pageable_gbps": _rate(n, lambda: pageable.to(device), device),
        "h2d_pinned_gbps": _rate(n, lambda: pinned.to(device, non_blocking=True), device),
        "host_copy_gbps": _rate(n, lambda: pageable.clone(), device),
        "copy_into_pinned_gbps": _rate(n, lambda: pinned.copy_(pageable), device),  # a cached pinned block refilled
    }
    result = {"name": args.name, "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "buffer_gb": args.gb,
              "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""), "allocator": allocator,
              "host_cache_emptied": empty_host_cache(),
              **{k: round(v, 2) for k, v in rows.items()}}
    print(json.dumps(result))
    write_results(args.name, result)


if __name__ == "__main__":
    main()
