#!/usr/bin/env python
"""Splat renderer: CUDA (gsplat) vs pure-PyTorch reference parity, and CUDA speed.

    python benchmarks/splat_render.py            # on a CUDA GPU: parity + speed (~1-2 min incl. gsplat compile)
    python benchmarks/splat_render.py --smoke    # CPU, tiny sizes, seconds: same code path, reference only

Parity: the same random scenes (SH degree 3) rendered by both backends on the GPU; max/mean
absolute differences of rgb/alpha/depth, cosine similarity of the gradients, and the share
of identical screen radii. Speed: gsplat forward and forward+backward for 12 perspective
crops (the optimisation workload), a 960x480 panorama preview (6 cube faces, stitched) and,
for scale, the reference on the same device. Prints a table; writes $OUT/splat_render.json
when OUT is set.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from matrix_world.cameras import crops_12
from matrix_world.gaussians import Gaussians
from matrix_world.reconstruction.render import Cameras, render, render_panorama

from common import GB, write_results  # benchmarks/common.py (scripts run from this folder)


def room_scene(n: int, sh_degree: int, device, seed: int = 0) -> Gaussians:
    """n random Gaussians in a shell 2-8 m around the origin (every crop sees some), sizes
    ~1-4 % of their distance, SH coefficients of a trained-looking magnitude."""
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    dist = 2.0 + 6.0 * torch.rand(n, 1, generator=gen)
    scales = dist * (0.01 + 0.03 * torch.rand(n, 3, generator=gen))
    rest = 0.1 * torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=gen) if sh_degree else None
    g = Gaussians(dirs * dist, torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1), torch.log(scales),
                  torch.randn(n, generator=gen) * 1.5 + 1.0, torch.randn(n, 1, 3, generator=gen) * 0.6, rest)
    return g.to(device)


def timed(fn, device, iters: int) -> float:
    """Median seconds per call (CUDA-synchronised)."""
    fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def parity(n: int, size: int, cams: int, device) -> dict:
    g = room_scene(n, 3, device, seed=n)
    assert g.sh_rest is not None  # SH degree 3
    params = [g.means, g.log_scales, g.opacity_logits, g.sh_dc, g.sh_rest]
    for p in params:
        p.requires_grad_(True)
    cameras = Cameras.from_views(crops_12(size)[:cams]).to(device)
    backends = ["cuda", "cpu"] if device.type == "cuda" else ["cpu"]
    outs, grads = {}, {}
    weight = torch.linspace(0.5, 1.5, size, device=device)
    for b in backends:
        out = render(g, cameras, backend=b)
        loss = (out.rgb * weight).sum() + out.alpha.sum() + 0.01 * out.depth.sum()
        outs[b], grads[b] = out, torch.autograd.grad(loss, params)
    row = {"n": n, "size": size, "cameras": cams}
    if len(backends) == 1:
        row["note"] = "no CUDA: reference only"
        row["alpha_mean"] = float(outs["cpu"].alpha.detach().mean())
        return row
    images = {b: {"rgb": o.rgb, "alpha": o.alpha, "depth": o.alpha * o.depth} for b, o in outs.items()}
    for key in ("rgb", "alpha", "depth"):  # depth as accumulated depth (alpha x depth), see the parity test
        d = (images["cuda"][key] - images["cpu"][key]).abs()
        row[f"{key}_max"], row[f"{key}_mean"] = float(d.max()), float(d.mean())
    names = ("means", "log_scales", "opacity_logits", "sh_dc", "sh_rest")
    for name, ga, gb in zip(names, grads["cuda"], grads["cpu"]):
        row[f"grad_cos_{name}"] = float(torch.nn.functional.cosine_similarity(ga.flatten(), gb.flatten(), dim=0))
    row["radii_equal"] = float((outs["cuda"].info["radii"] == outs["cpu"].info["radii"]).all(-1).float().mean())
    return row


def speed(n: int, size: int, cams: int, device, backend: str, iters: int) -> dict:
    g = room_scene(n, 3, device, seed=1)
    assert g.sh_rest is not None  # SH degree 3
    leaf = [g.means, g.log_scales, g.opacity_logits, g.sh_dc, g.sh_rest]
    cameras = Cameras.from_views(crops_12(size)[:cams]).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def forward():
        with torch.no_grad():
            render(g, cameras, backend=backend)

    def forward_backward():
        for p in leaf:
            p.requires_grad_(True)
            p.grad = None
        render(g, cameras, backend=backend).rgb.sum().backward()

    fwd = timed(forward, device, iters)
    fwd_bwd = timed(forward_backward, device, iters)
    peak = torch.cuda.max_memory_allocated() / GB if device.type == "cuda" else float("nan")
    return {"backend": backend, "n": n, "size": size, "cameras": cams, "forward_ms": 1e3 * fwd, "forward_backward_ms": 1e3 * fwd_bwd,
            "ms_per_image_fwd": 1e3 * fwd / cams, "peak_gb": peak}


def panorama_speed(n: int, height: int, device, backend: str, iters: int) -> dict:
    g = room_scene(n, 3, device, seed=2)
    sec = timed(lambda: render_panorama(g, torch.eye(4, dtype=torch.float64), height, backend=backend), device, iters)
    return {"backend": backend, "n": n, "height": height, "panorama_ms": 1e3 * sec}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU run of the same code path")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    t0 = time.perf_counter()
    result: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "smoke": args.smoke}

    if cuda:  # compile gsplat's kernels outside the timings (~35 s the first time)
        t = time.perf_counter()
        speed(64, 32, 1, device, "cuda", 1)
        result["gsplat_warmup_s"] = time.perf_counter() - t

    parity_cases = [(300, 32, 2)] if args.smoke else [(2000, 64, 4), (20000, 128, 3), (50000, 256, 2)]
    result["parity"] = [parity(n, s, c, device) for n, s, c in parity_cases]

    if args.smoke:
        result["speed"] = [speed(300, 32, 2, device, "cpu", 2)]
        result["panorama"] = [panorama_speed(300, 16, device, "cpu", 1)]
    else:
        result["speed"] = [speed(n, 512, 12, device, "cuda", 10) for n in (100_000, 500_000, 2_000_000)]
        result["speed"].append(speed(20000, 128, 12, device, "cpu", 2))  # reference, same GPU, for scale
        result["panorama"] = [panorama_speed(n, 480, device, "cuda", 10) for n in (500_000, 2_000_000)]
    result["total_s"] = time.perf_counter() - t0

    print(f"\nsplat_render on {result['device']} (torch {result['torch']}){' [smoke]' if args.smoke else ''}")
    print("parity (cuda vs cpu reference)   n      size cams  rgb max/mean        alpha max/mean      a*depth max/mean     grad cos (means, opac, dc)   radii=")
    for r in result["parity"]:
        if "note" in r:
            print(f"  {r['n']:>27} {r['size']:>8} {r['cameras']:>4}  {r['note']}")
            continue
        print(f"  {r['n']:>27} {r['size']:>8} {r['cameras']:>4}  {r['rgb_max']:.1e}/{r['rgb_mean']:.1e}  {r['alpha_max']:.1e}/{r['alpha_mean']:.1e}"
              f"  {r['depth_max']:.1e}/{r['depth_mean']:.1e}  {r['grad_cos_means']:.4f} {r['grad_cos_opacity_logits']:.4f} {r['grad_cos_sh_dc']:.4f}"
              f"     {r['radii_equal']:.4f}")
    print("speed  backend        n  size cams  fwd ms  fwd+bwd ms  ms/img  peak GB")
    for r in result["speed"]:
        print(f"  {r['backend']:>12} {r['n']:>9} {r['size']:>5} {r['cameras']:>4} {r['forward_ms']:>7.2f} {r['forward_backward_ms']:>11.2f}"
              f" {r['ms_per_image_fwd']:>7.3f} {r['peak_gb']:>8.2f}")
    for r in result["panorama"]:
        print(f"  panorama {r['backend']} n={r['n']} {r['height']}x{2 * r['height']}: {r['panorama_ms']:.1f} ms")
    print(f"total {result['total_s']:.1f} s")

    path = write_results("splat_render", result)
    if path:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
