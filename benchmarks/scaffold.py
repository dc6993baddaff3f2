"""Benchmark: scaffold mesh build + 81-frame scaffold rendering from a 2048 x 1024 panorama.

Targets (issue 2): CUDA <= 1.0 s for all 81 frames at 720 x 1440 including the mesh build;
CPU <= 2 s per frame at 480 x 960 on a 2-core machine.

    python benchmarks/scaffold.py                 # CUDA if available (full), else CPU
    python benchmarks/scaffold.py --device cpu --cpu-frames 3
    python benchmarks/scaffold.py --smoke         # tiny sizes on CPU, seconds

The panorama is a synthetic box room with a pillar (analytic distance, smooth colours), or
``--panorama P.png`` (resized to the panorama size) with that room's distance. The camera
moves forward 0.6 x the distance ahead with a slight sideways sway, like the ``straight``
preset. Timings synchronise the GPU, follow a warm-up (nvdiffrast's plugin compiles on its
first use, reported apart) and are the median of ``--repeats`` runs. Writes
``$OUT/scaffold.json`` when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any

import torch

from matrix_world.equirect import equirect_directions, resize_equirect
from matrix_world.scaffold.mesh import ScaffoldConfig, build_scaffold_mesh
from matrix_world.scaffold.render import render_scaffold

from common import GB, write_results  # benchmarks/common.py (scripts run from this folder)

ROOM_LO = torch.tensor([-3.0, -1.6, -3.5], dtype=torch.float64)
ROOM_HI = torch.tensor([4.0, 1.4, 5.0], dtype=torch.float64)
PILLAR_LO = torch.tensor([0.6, -1.6, 2.0], dtype=torch.float64)
PILLAR_HI = torch.tensor([1.3, 1.4, 2.6], dtype=torch.float64)


def synthetic_room(height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb [H, 2H, 3], distance [H, 2H]) of a box room with a pillar, seen from the origin."""
    d = equirect_directions(height, dtype=torch.float64)
    safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    dist = torch.where(safe > 0, ROOM_HI / safe, ROOM_LO / safe).amin(-1)
    t1, t2 = PILLAR_LO / safe, PILLAR_HI / safe
    t_near, t_far = torch.minimum(t1, t2).amax(-1), torch.maximum(t1, t2).amin(-1)
    dist = torch.where((t_near <= t_far) & (t_near > 0) & (t_near < dist), t_near, dist)
    p = d * dist[..., None]
    rgb = 0.5 + 0.4 * torch.stack(
        (torch.sin(2.1 * p[..., 0] + 0.3), torch.sin(1.7 * p[..., 1] + 1.3 * p[..., 2]), torch.sin(1.9 * p[..., 2] - 0.8 * p[..., 0])), -1
    )
    return rgb.float(), dist.float()


def trajectory(frames: int, forward: float) -> torch.Tensor:
    """c2w [F, 4, 4]: forward 0.6 x ``forward`` along +z with a small sideways sway."""
    s = torch.linspace(0, 1, frames, dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(frames, 1, 1)
    c2w[:, 2, 3] = 0.6 * forward * s
    c2w[:, 0, 3] = 0.1 * forward * torch.sin(math.pi * s)
    return c2w


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> tuple[float, float, Any]:
    """(median wall seconds, median process CPU seconds, last output)."""
    times: list[float] = []
    cpu: list[float] = []
    out = None
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpu), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (checks the code path in seconds)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--panorama", default=None, help="optional real panorama image (rgb); distance stays the synthetic room")
    ap.add_argument("--pano-height", type=int, default=1024)
    ap.add_argument("--heights", type=int, nargs="+", default=[480, 720])
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--cpu-frames", type=int, default=3, help="frames timed on CPU (per-frame figure)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decimate", type=int, nargs="+", default=[1], help="mesh decimation factors to time")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.device, args.pano_height, args.heights, args.frames, args.cpu_frames, args.repeats = "cpu", 64, [24, 32], 3, 2, 1
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    backend = "cuda" if device.type == "cuda" else "cpu"

    rgb, dist = synthetic_room(args.pano_height)
    source = "synthetic room"
    if args.panorama:
        from matrix_world.io import read_image

        img = torch.from_numpy(read_image(args.panorama)).permute(2, 0, 1)[None]
        rgb = resize_equirect(img, args.pano_height, mode="area")[0].permute(1, 2, 0).contiguous()
        source = f"{os.path.basename(args.panorama)} + synthetic room distance"
    rgb, dist = rgb.to(device), dist.to(device)
    forward = float(dist[args.pano_height // 2 + 4, args.pano_height])  # just below the horizon, straight ahead
    frames = args.frames if device.type == "cuda" else args.cpu_frames
    c2w = trajectory(args.frames, forward)[:frames].to(device)

    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "backend": backend,
        "torch": torch.__version__,
        "panorama": f"{2 * args.pano_height}x{args.pano_height} ({source})",
        "frames": frames,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        info["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    rows = []

    # warm-up: imports, lookup tables, nvdiffrast plugin compile / context
    t0 = time.perf_counter()
    warm_mesh = build_scaffold_mesh(rgb[:64, :128], dist[:64, :128])
    render_scaffold(warm_mesh, c2w[:1], 16, backend=backend)
    _sync(device)
    info["warmup_s"] = round(time.perf_counter() - t0, 3)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    for k in args.decimate:
        config = ScaffoldConfig(decimate=k)
        build_s, _, mesh = timed(lambda config=config: build_scaffold_mesh(rgb, dist, config), device, args.repeats)
        for height in args.heights:
            render_scaffold(mesh, c2w[:1], height, backend=backend)  # per-size lookup tables
            render_s, render_cpu_s, out = timed(
                lambda mesh=mesh, height=height: render_scaffold(mesh, c2w, height, backend=backend), device, args.repeats
            )
            rows.append(
                {
                    "decimate": k,
                    "triangles": int(mesh.faces.shape[0]),
                    "output": f"{height}x{2 * height}",
                    "frames": frames,
                    "build_s": round(build_s, 4),
                    "render_s": round(render_s, 4),
                    "per_frame_s": round(render_s / frames, 4),
                    "per_frame_cpu_s": round(render_cpu_s / frames, 4),  # process CPU time (all threads)
                    "total_s": round(build_s + render_s, 4),
                    "known_fraction_last": round(float(out.mask[-1].float().mean()), 4),
                }
            )
            del out
    if device.type == "cuda":
        info["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / GB, 2)
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    print(json.dumps(info))
    header = f"{'dec':>3} {'tris':>9} {'output':>10} {'frames':>6} {'build s':>8} {'render s':>9} {'s/frame':>8} {'cpu s/fr':>8} {'total s':>8} {'known':>6}"
    print(header)
    for r in rows:
        print(
            f"{r['decimate']:>3} {r['triangles']:>9} {r['output']:>10} {r['frames']:>6} {r['build_s']:>8.3f} "
            f"{r['render_s']:>9.3f} {r['per_frame_s']:>8.3f} {r['per_frame_cpu_s']:>8.3f} {r['total_s']:>8.3f} {r['known_fraction_last']:>6.3f}"
        )
    write_results("scaffold", {"info": info, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
