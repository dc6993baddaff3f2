"""Reconstruction benchmark: `lift` and `optimize` on synthetic clips with ground truth.

For each clip (a procedural scene, a Matrix-Pano-style 81-frame trajectory, the ``oracle``
panoramic video = ground-truth renders with distances and sky masks):

* reconstruct with each backend (frame 0's distance as from the depth stage, the other
  keyframes' distances from the oracle through ``depth_fn``, aligned as in the pipeline);
* render held-out perspective crops (the 12-crop set, FOV 90) at novel poses: halfway
  between training frames pushed sideways and turned (``heldout_poses`` of the dataset
  module), plus one pose before the first and one beyond the last frame, and compare with
  the same crops cut from ground-truth panoramas at those poses: PSNR, SSIM (means over
  crops), number of Gaussians, seconds (reconstruction only, ground-truth rendering
  excluded), peak GPU memory.

Targets (issue 6, one H100/H200, 480x960, 81 frames): optimize >= 30 dB in <= 120 s per
clip; lift >= 24 dB in <= 10 s.

    python benchmarks/recon.py                 # GPU: 4 clips at 480x960, ~4 min
    python benchmarks/recon.py --smoke         # CPU: one tiny clip, same code path

Writes ``$OUT/recon.json`` when OUT is set.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from matrix_world.cameras import crops_12, invert_pose
from matrix_world.datasets.evaluation import perspective_crops
from matrix_world.datasets.scenes import make_scene
from matrix_world.datasets.trajectories import heldout_poses, sample_trajectory
from matrix_world.errors import InputError
from matrix_world.metrics import psnr, ssim
from matrix_world.reconstruction.keyframes import KeyframeConfig
from matrix_world.reconstruction.lift import LiftConfig
from matrix_world.reconstruction.optimize import OptimizeConfig
from matrix_world.reconstruction.render import Cameras, render
from matrix_world.reconstruction.stage import ReconConfig, reconstruct

from common import GB, write_results  # benchmarks/common.py (scripts run from this folder)

TARGETS = {"lift": (24.0, 10.0), "optimize": (30.0, 120.0)}  # (min PSNR dB, max seconds)


def render_scene(scene, c2w: torch.Tensor, height: int, device: torch.device):
    """Ground-truth panoramas (rgb [F, H, 2H, 3], distance [F, H, 2H], sky [F, H, 2H]) as numpy.

    ``Scene.render`` keeps the mesh on the CPU; on a GPU the mesh goes to the device so
    the scaffold renderer picks nvdiffrast.
    """
    if device.type != "cuda":
        return scene.render(c2w, height)
    from matrix_world.scaffold.render import render_mesh_equirect

    verts = torch.from_numpy(scene.vertices).to(device)
    faces = torch.from_numpy(scene.faces).to(device)
    attrs = torch.from_numpy(np.concatenate([scene.colors, scene.sky[:, None].astype(np.float32)], 1)).to(device)
    out, dist, covered = render_mesh_equirect(verts, faces, attrs, c2w.to(device), height)
    rgb = torch.where(covered[..., None], out[..., :3], 0.0).clamp(0, 1)
    return (rgb.cpu().numpy(), torch.where(covered, dist, torch.inf).cpu().numpy(), (covered & (out[..., 3] > 0.5)).cpu().numpy())


def extrapolated(c2w: torch.Tensor, metres: float) -> torch.Tensor:
    """Poses ``metres`` before the first and beyond the last camera, along their forward axes: [2, 4, 4]."""
    first, last = c2w[0].clone(), c2w[-1].clone()
    first[:3, 3] -= metres * first[:3, 2]
    last[:3, 3] += metres * last[:3, 2]
    return torch.stack([first, last])


def make_clip(kind: str, seed: int, frames: int, height: int, heldout: int, device: torch.device) -> dict:
    """A synthetic clip in the frame-0 world (DESIGN §3) with its held-out poses and panoramas."""
    scene = make_scene(kind, seed)
    path = sample_trajectory(scene, seed, frames=frames)
    novel = heldout_poses(scene, path, seed + 1000, count=heldout)
    novel = torch.cat([novel, extrapolated(path.c2w, 0.5)])
    to_frame0 = invert_pose(path.c2w[0])
    c2w = to_frame0 @ path.c2w
    rgb, dist, sky = render_scene(scene, path.c2w, height, device)
    ho_rgb, _, _ = render_scene(scene, novel, height, device)
    return {"kind": kind, "seed": seed, "c2w": c2w, "rgb": rgb, "distance": dist, "sky": sky,
            "heldout_c2w": to_frame0 @ novel, "heldout_rgb": ho_rgb, "length_m": float(path.length)}


@torch.no_grad()
def evaluate(gaussians, heldout_c2w: torch.Tensor, heldout_rgb: np.ndarray, size: int, device: torch.device) -> dict:
    """Mean PSNR / SSIM over the 12 crops of every held-out pose."""
    views = crops_12(size)
    targets = perspective_crops(heldout_rgb, views, size)  # [P, 12, 3, s, s]
    psnrs, ssims = [], []
    for p in range(len(heldout_c2w)):
        out = render(gaussians, Cameras.from_views(views, heldout_c2w[p]).to(device)).rgb.clamp(0, 1)
        tgt = targets[p].to(device)
        psnrs += [float(psnr(out[i], tgt[i])) for i in range(len(views))]
        ssims += ssim(out, tgt, reduce=False).tolist()
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "crops": len(psnrs)}


def backend_configs(stride: int, iterations: int, batch_size: int, crop_size: int, init_downsample: int,
                    lift_downsample: int) -> dict[str, ReconConfig]:
    """The ``lift`` and ``optimize`` configs of this benchmark (also used by benchmarks/lrm_train.py)."""
    return {
        "lift": ReconConfig(backend="lift", keyframes=KeyframeConfig(stride=stride),
                            lift=LiftConfig(sky="shell", downsample=lift_downsample)),
        "optimize": ReconConfig(backend="optimize", keyframes=KeyframeConfig(stride=stride), optimize=OptimizeConfig(
            iterations=iterations, batch_size=batch_size, crop_size=crop_size,
            densify_start=min(500, iterations // 6), densify_stop=min(1500, iterations // 2),
            densify_every=min(100, max(1, iterations // 30)),
            init=LiftConfig(sky="shell", downsample=init_downsample, opacity=0.9), progress=sys.stderr.isatty())),
    }


def run_backend(name: str, clip: dict, config: ReconConfig, device: torch.device, seed: int, eval_size: int) -> dict:
    rgb, dist, sky = clip["rgb"], clip["distance"], clip["sky"]
    depth_fn = lambda i, _rgb: (dist[i], sky[i])  # (the oracle's distances of the keyframes i, a list)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    gaussians, info = reconstruct(config, frames=rgb, distance0=dist[0], c2w=clip["c2w"], sky0=sky[0], depth_fn=depth_fn,
                                  device=device, generator=torch.Generator().manual_seed(seed))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / GB if device.type == "cuda" else float("nan")
    metrics = evaluate(gaussians, clip["heldout_c2w"], clip["heldout_rgb"], eval_size, device)
    psnr_min, sec_max = TARGETS[name]
    row = {"clip": f"{clip['kind']}-{clip['seed']}", "backend": name, "psnr": metrics["psnr"], "ssim": metrics["ssim"],
           "crops": metrics["crops"], "gaussians": len(gaussians), "seconds": seconds, "peak_gb": peak,
           "keyframes": len(info["keyframes"]), "steps": info["seconds"],
           "target_psnr": psnr_min, "target_seconds": sec_max,
           "met": bool(metrics["psnr"] >= psnr_min and seconds <= sec_max)}
    if name == "optimize":
        train = info["details"]["train"]
        row.update(num_init=info["details"]["num_init"], train_psnr_last=train["psnr"][-1] if train["psnr"] else None,
                   train_seconds=train["seconds"])
    return row


def warm_up(device: torch.device) -> None:
    """Compile gsplat's CUDA kernels (first call ~35 s) outside the timed runs."""
    if device.type != "cuda":
        return
    from matrix_world.gaussians import Gaussians

    g = Gaussians.from_values(torch.randn(64, 3, device=device) + torch.tensor([0.0, 0.0, 4.0], device=device),
                              torch.rand(64, 3, device=device), torch.full((64,), 0.05, device=device),
                              torch.full((64,), 0.5, device=device))
    g.means.requires_grad_(True)
    cams = Cameras.from_views(crops_12(32)[:1]).to(device)
    render(g, cams).rgb.sum().backward()
    torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of the same code path")
    ap.add_argument("--kinds", default="park,city,forest,room", help="scene kinds, one clip each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480, help="panorama height (width = 2 x height)")
    ap.add_argument("--heldout", type=int, default=8, help="held-out poses between frames (+2 extrapolated)")
    ap.add_argument("--eval-size", type=int, default=256, help="held-out crop size")
    ap.add_argument("--backends", default="lift,optimize")
    ap.add_argument("--stride", type=int, default=5, help="keyframe stride")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crop-size", type=int, default=256)
    ap.add_argument("--init-downsample", type=int, default=2)
    ap.add_argument("--lift-downsample", type=int, default=1)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.kinds, args.frames, args.height, args.heldout, args.eval_size = "park", 6, 32, 2, 32
        args.iterations, args.batch_size, args.crop_size, args.init_downsample = 20, 1, 32, 1
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in TARGETS:
            raise InputError(f"unknown backend {b!r}; expected lift and/or optimize")

    config_for = backend_configs(args.stride, args.iterations, args.batch_size, args.crop_size, args.init_downsample,
                                 args.lift_downsample)
    print(f"[recon] device {device}; {args.frames} frames at {args.height}x{2 * args.height}; backends {backends}", flush=True)
    warm_up(device)
    rows, clips_meta = [], []
    for k, kind in enumerate(args.kinds.split(",")):
        t0 = time.perf_counter()
        clip = make_clip(kind, args.seed + k, args.frames, args.height, args.heldout, device)
        gt_seconds = time.perf_counter() - t0
        clips_meta.append({"kind": kind, "seed": args.seed + k, "path_m": clip["length_m"], "gt_seconds": gt_seconds})
        print(f"[recon] clip {kind}-{args.seed + k}: path {clip['length_m']:.1f} m, ground truth in {gt_seconds:.1f} s", flush=True)
        for b in backends:
            row = run_backend(b, clip, config_for[b], device, args.seed, args.eval_size)
            rows.append(row)
            print(f"[recon]   {b:9s} PSNR {row['psnr']:6.2f}  SSIM {row['ssim']:.3f}  N {row['gaussians']:>9,d}  "
                  f"{row['seconds']:7.1f} s  peak {row['peak_gb']:.2f} GB", flush=True)

    print("\n| clip | backend | PSNR (dB) | SSIM | Gaussians | seconds | peak GB | target | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {r['backend']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['gaussians']:,d} | {r['seconds']:.1f} | "
              f"{r['peak_gb']:.2f} | >= {r['target_psnr']:.0f} dB, <= {r['target_seconds']:.0f} s | {'yes' if r['met'] else 'NO'} |")
    for b in backends:
        sel = [r for r in rows if r["backend"] == b]
        print(f"mean {b}: PSNR {np.mean([r['psnr'] for r in sel]):.2f} dB, SSIM {np.mean([r['ssim'] for r in sel]):.3f}, "
              f"{np.mean([r['seconds'] for r in sel]):.1f} s")
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "args": vars(args),
              "clips": clips_meta, "rows": rows, "smoke": args.smoke}
    path = write_results("recon", result)
    if path:
        print(f"[recon] wrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
