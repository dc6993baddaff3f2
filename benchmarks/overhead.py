"""Pipeline overheads (issue 14, item 3): the scaffold stage and the reconstruction stage, part by part.

    python benchmarks/overhead.py                  # CUDA: 81 frames at 480x960, nvdiffrast, MoGe-2 ViT-L, gsplat
    python benchmarks/overhead.py --smoke          # CPU: tiny sizes and models, same code path, seconds
    python benchmarks/overhead.py --device cpu --parts scaffold --panorama P.png   # CPU at full size (minutes)

Both stages run through the pipeline's own stage functions into a fresh run directory, as in
``WorldPipeline``: ``panorama.png``, ``depth.npz`` and ``trajectory.json`` are written by their
stages (file / procedural-free: a synthetic box room, 2048x1024, or ``--panorama``'s texture on
it), then

1. ``scaffold_stage`` (the GPU rasteriser where it works), then a second ``RunDir`` on the same
   folder checks that the stage is reused (the resume path: hashes or stat signatures);
2. ``video_stage`` with a stand-in backend that returns the scaffold frames (``copy``, registered
   here): the video stage's I/O only (video.npz, video.mp4);
3. ``reconstruction_stage`` with the ``optimize`` backend as the e2e benchmark runs it (keyframes
   every 5th frame, ``align_distances`` off, 1500 iterations) and the keyframe distances from
   ``make_depth_fn`` with MoGe-2 ViT-L (random weights, built on the device) injected.

Every part is timed by wrapping the library function that does it (synchronised on CUDA;
the preview writers run in threads fed while the frames render, so their time overlaps the
render and the npz write); a table prints
calls and seconds per part, and the stage totals against the goals: scaffold stage <= 1.5 s,
reconstruction overhead (stage time minus the optimisation iterations) <= 25 % of the
iterations' time. Writes ``$OUT/overhead.json`` when OUT is set.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Timers, sync, write_results  # noqa: E402  (benchmarks/common.py)

SCAFFOLD_GOAL_S = 1.5
RECON_OVERHEAD_GOAL = 0.25

# (module, function) pairs timed in each part; missing ones are skipped (older code)
SCAFFOLD_PARTS = [
    ("matrix_world.pipeline.scaffold", "build_scaffold"),
    ("matrix_world.scaffold.build", "render_union"),
    ("matrix_world.scaffold.build", "save_scaffold"),
    ("matrix_world.pipeline.scaffold", "save_scaffold"),
    ("matrix_world.pipeline.scaffold", "write_video"),
    ("matrix_world.pipeline.scaffold", "write_scaffold_outputs"),  # (the code before issue 14 had neither)
    ("matrix_world.pipeline.scaffold", "build_and_write"),
    ("matrix_world.pipeline.scaffold", "load_scaffold"),
    ("matrix_world.rundir", "file_sha256"),
    ("matrix_world.rundir.RunDir", "write_manifest"),
]
VIDEO_PARTS = [
    ("matrix_world.pipeline.video", "generate_video"),
    ("matrix_world.pipeline.video", "save_npz"),
    ("matrix_world.pipeline.video", "write_video"),
    ("matrix_world.pipeline.video", "load_npz"),
    ("matrix_world.rundir", "file_sha256"),
]
RECON_PARTS = [
    ("matrix_world.pipeline.reconstruction", "reconstruct"),
    ("matrix_world.reconstruction.stage", "prepare_keyframes"),
    ("matrix_world.pipeline.depth", "estimate_frame_distances"),
    ("matrix_world.pipeline.depth", "fill_unknown"),
    ("matrix_world.generation.depth", "infer_views"),
    ("matrix_world.generation.depth", "merge_log_distances"),
    ("matrix_world.reconstruction.keyframes", "align_to_previous"),
    ("matrix_world.reconstruction.stage", "optimize_keyframes"),
    ("matrix_world.reconstruction.optimize", "lift_keyframes"),
    ("matrix_world.reconstruction.optimize", "cut_crops"),
    ("matrix_world.reconstruction.optimize", "train_gaussians"),
    ("matrix_world.pipeline.reconstruction", "save_splats"),
    ("matrix_world.pipeline.reconstruction", "load_splats"),
    ("matrix_world.rundir", "file_sha256"),
    ("matrix_world.rundir.RunDir", "write_manifest"),
]


class PartTimers(Timers):
    """:class:`common.Timers` over the library functions named by (module, name) parts."""

    def wrap_parts(self, parts: list[tuple[str, str]]) -> PartTimers:
        for module_name, name in parts:
            if module_name.endswith(".RunDir"):  # a method of the run directory
                owner = importlib.import_module(module_name.rsplit(".", 1)[0]).RunDir
            else:
                owner = importlib.import_module(module_name)
            if getattr(owner, name, None) is not None:
                self.wrap(owner, name, f"{module_name.rsplit('.', 1)[-1]}.{name}")
        return self

    def rows(self) -> list[dict]:
        return [{"part": k, "calls": self.calls[k], "seconds": round(v, 4)} for k, v in self.seconds.items()]


def room_world(pano_height: int, frames: int, panorama: str | None, device: torch.device):
    """(rgb [H, 2H, 3] float32, distance [H, 2H], c2w [F, 4, 4]) of benchmarks/scaffold.py's box room."""
    from scaffold import synthetic_room, trajectory  # benchmarks/scaffold.py

    rgb, dist = synthetic_room(pano_height)
    if panorama:
        from matrix_world.equirect import resize_equirect
        from matrix_world.io import read_image

        img = torch.from_numpy(read_image(panorama)).permute(2, 0, 1)[None]
        rgb = resize_equirect(img, pano_height, mode="area")[0].permute(1, 2, 0).contiguous()
    forward = float(dist[pano_height // 2 + 4, pano_height])
    return rgb.numpy(), dist.numpy(), trajectory(frames, forward)


def prepare_run(out: Path, rgb: np.ndarray, dist: np.ndarray, c2w: torch.Tensor, device: torch.device, fps: float):
    """A run directory with panorama.png, depth.npz and trajectory.json, each written by a stage."""
    from matrix_world.io import save_npz, write_image
    from matrix_world.pipeline.context import StageContext
    from matrix_world.rundir import RunDir
    from matrix_world.trajectory import Trajectory

    run = RunDir(out, seed=0)
    with run.stage("panorama", {"bench": 1}, outputs=["panorama.png"], backend="file") as st:
        write_image(st.path("panorama.png"), rgb)
    sky = ~np.isfinite(dist)
    with run.stage("depth", {"bench": 1}, inputs=["panorama.png"], outputs=["depth.npz"], backend="file") as st:
        save_npz(st.path("depth.npz"), distance=dist.astype(np.float32), sky=sky, valid=~sky)
    traj = Trajectory(c2w=c2w.to(torch.float64), fps=fps, name="bench")
    with run.stage("trajectory", {"bench": 1}, outputs=["trajectory.json"], backend="preset") as st:
        traj.to_json(st.path("trajectory.json"))
    traj = Trajectory.from_json(out / "trajectory.json")
    from matrix_world.io import read_image

    ctx = StageContext(run=run, device=device, seed=0, log=lambda line: print(line, flush=True))
    return ctx, read_image(out / "panorama.png"), {"distance": dist.astype(np.float32), "sky": sky}, traj


def register_copy_backend() -> None:
    """Video backend ``copy``: the scaffold frames themselves (the video stage's I/O, no model)."""
    from matrix_world.generation.video import VideoResult, register_video_backend

    @register_video_backend("copy")
    def _copy(config, rgb, mask, c2w, **_):
        return VideoResult(np.asarray(rgb, dtype=np.float32), {"backend": "copy"})


def scaffold_part(ctx, rgb, depth, traj, height: int, backend: str, device) -> tuple[dict, Any]:
    from matrix_world.pipeline.scaffold import scaffold_stage
    from matrix_world.rundir import RunDir

    timers = PartTimers(device).wrap_parts(SCAFFOLD_PARTS)
    try:
        sync(device)
        t0 = time.perf_counter()
        scaffold = scaffold_stage(ctx, backend, height, rgb, depth, traj)
        sync(device)
        wall = time.perf_counter() - t0
    finally:
        timers.restore()
    record = ctx.run.manifest["stages"]["scaffold"]
    resume_t0 = time.perf_counter()
    again = RunDir(ctx.run.path)
    with again.stage("scaffold", record["config"], inputs=["panorama.png", "depth.npz", "trajectory.json"],
                     outputs=record["outputs"], backend=backend) as st:
        reused = st.done
    resume_s = time.perf_counter() - resume_t0
    return {"wall_s": round(wall, 4), "manifest_s": record["seconds"], "info": record["info"], "parts": timers.rows(),
            "resume_check_s": round(resume_s, 4), "reused_on_resume": reused, "frames": len(scaffold),
            "bytes": {k: (ctx.run.path / k).stat().st_size for k in record["outputs"]}}, scaffold


def video_part(ctx, scaffold, traj, height: int, device) -> tuple[dict, np.ndarray]:
    from matrix_world.generation.video import VideoConfig
    from matrix_world.pipeline.video import video_stage

    register_copy_backend()
    timers = PartTimers(device).wrap_parts(VIDEO_PARTS)
    try:
        t0 = time.perf_counter()
        frames = video_stage(ctx, VideoConfig(backend="copy", height=height), scaffold, traj, "bench")
        wall = time.perf_counter() - t0
    finally:
        timers.restore()
    return {"wall_s": round(wall, 4), "manifest_s": ctx.run.manifest["stages"]["video"]["seconds"],
            "parts": timers.rows()}, frames


def recon_part(ctx, frames, depth, traj, scaffold, iterations: int, moge, view_size: int | None, num_tokens,
               known_fraction: float | None, batch_size: int, device) -> dict:
    from matrix_world.generation.depth import DepthConfig
    from matrix_world.pipeline.config import WorldConfig
    from matrix_world.pipeline.depth import make_depth_fn
    from matrix_world.pipeline.reconstruction import configure, reconstruction_stage

    config = configure(WorldConfig(prompt="bench", preset="quality"), "optimize")
    config.optimize.iterations = iterations
    config.optimize.progress = False
    depth_config = DepthConfig(backend="moge", keyframe_view_size=view_size, keyframe_num_tokens=num_tokens,
                               keyframe_known_fraction=known_fraction, keyframe_batch_size=batch_size)
    ctx.models["depth"] = moge
    depth_fn = make_depth_fn(depth_config, device, scaffold, traj, ctx)
    timers = PartTimers(device).wrap_parts(RECON_PARTS)
    try:
        sync(device)
        t0 = time.perf_counter()
        gaussians = reconstruction_stage(ctx, config, frames, depth, traj, depth_fn, exports=("spz",),
                                         depth_config=depth_config.to_dict())
        sync(device)
        wall = time.perf_counter() - t0
    finally:
        timers.restore()
    rec = ctx.run.manifest["stages"]["reconstruction"]
    seconds = {r["part"]: r["seconds"] for r in timers.rows()}
    iterations_s = seconds.get("optimize.train_gaussians", 0.0)
    overhead = wall - iterations_s
    return {"wall_s": round(wall, 4), "manifest_s": rec["seconds"], "iterations": iterations,
            "iterations_s": round(iterations_s, 4), "overhead_s": round(overhead, 4),
            "overhead_ratio": round(overhead / iterations_s, 4) if iterations_s > 0 else None,
            "gaussians": len(gaussians), "keyframes": len(rec["info"].get("keyframes") or []),
            "keyframe_depth": rec["info"].get("keyframe_depth"), "parts": timers.rows()}


# parts that do not nest in one another (per stage): the rest of the wall time is "other"
TOP_LEVEL = {"scaffold": ["scaffold.build_scaffold", "scaffold.build_and_write", "scaffold.save_scaffold",
                          "scaffold.write_video", "scaffold.load_scaffold", "rundir.file_sha256", "RunDir.write_manifest"],
             "video": ["video.generate_video", "video.save_npz", "video.write_video", "video.load_npz",
                       "rundir.file_sha256"],
             "reconstruction": ["reconstruction.reconstruct", "reconstruction.save_splats", "reconstruction.load_splats",
                                "rundir.file_sha256", "RunDir.write_manifest"]}


def add_other(stage: str, result: dict) -> None:
    """Append the row 'other' = wall - the stage's top-level parts (conversions, copies, small steps)."""
    seconds = {r["part"]: r["seconds"] for r in result["parts"]}
    top = [k for k in TOP_LEVEL[stage] if k in seconds]
    if "scaffold.build_and_write" in top:  # render, npz and the previews (threads) run inside it
        top = [k for k in top if k not in ("scaffold.build_scaffold", "scaffold.write_video", "scaffold.save_scaffold")]
    result["parts"].append({"part": "other (not in the parts above)", "calls": 0,
                            "seconds": round(result["wall_s"] - sum(seconds[k] for k in top), 4)})


def print_part(title: str, result: dict) -> None:
    print(f"\n{title}: wall {result['wall_s']:.3f} s (manifest {result['manifest_s']:.3f} s)")
    print("| part | calls | seconds |\n|---|---|---|")
    for r in result["parts"]:
        print(f"| {r['part']} | {r['calls'] or ''} | {r['seconds']:.3f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and models on CPU (seconds)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--parts", default="scaffold,video,reconstruction", help="which stages (comma separated)")
    ap.add_argument("--height", type=int, default=480, help="video height (width 2x)")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--pano-height", type=int, default=1024)
    ap.add_argument("--panorama", default=None, help="optional texture for the room (an equirect image)")
    ap.add_argument("--iterations", type=int, default=1500, help="optimisation iterations (e2e: 1500)")
    ap.add_argument("--moge", choices=("vitl", "small"), default=None, help="MoGe-2 size (default: vitl; smoke: small)")
    ap.add_argument("--view-size", type=int, default=None,
                    help="MoGe view size of the keyframes (default: DepthConfig.keyframe_views' rule from the frame height; "
                         "768 = the panorama stage's, the code before the rule)")
    ap.add_argument("--num-tokens", type=int, default=None,
                    help="MoGe tokens per keyframe view (default: (view size / 14)^2)")
    ap.add_argument("--known-fraction", type=float, default=0.995,
                    help="keyframes the scaffold knows this much of skip MoGe (DepthConfig default 0.995; >1: never)")
    ap.add_argument("--batch-size", type=int, default=48, help="keyframe views per MoGe forward (DepthConfig default 48)")
    ap.add_argument("--run-dir", default=None, help="default: a temporary folder, removed at the end")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.height, args.frames, args.pano_height, args.iterations = "cpu", 32, 9, 64, 10
        args.moge = args.moge or "small"
        torch.set_num_threads(1)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    parts = [p for p in args.parts.split(",") if p]
    from matrix_world.pipeline.scaffold import choose

    backend, why = choose(argparse.Namespace(scaffold_backend="auto"), device)
    out = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="mw_overhead_")) / "run"
    shutil.rmtree(out, ignore_errors=True)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "torch": torch.__version__, "frames": args.frames, "video": f"{2 * args.height}x{args.height}",
            "panorama": f"{2 * args.pano_height}x{args.pano_height}", "rasteriser": f"{backend} ({why})",
            "date": time.strftime("%Y-%m-%d %H:%M")}
    print(info, flush=True)
    results: dict = {"info": info}

    rgb, dist, c2w = room_world(args.pano_height, args.frames, args.panorama, device)
    ctx, rgb, depth, traj = prepare_run(out, rgb, dist, c2w, device, fps=16.0)
    if "scaffold" in parts or "video" in parts or "reconstruction" in parts:  # later parts need the scaffold
        from matrix_world.scaffold.build import build_scaffold

        warm = build_scaffold(rgb[:64, :128], dist[:64, :128], c2w[:2], 16, backend=backend, device=device)  # noqa: F841
        results["scaffold"], scaffold = scaffold_part(ctx, rgb, depth, traj, args.height, backend, device)
        add_other("scaffold", results["scaffold"])
        print_part("scaffold stage", results["scaffold"])
        print(f"goal <= {SCAFFOLD_GOAL_S} s: {'met' if results['scaffold']['wall_s'] <= SCAFFOLD_GOAL_S else 'NOT met'}"
              f"; resume check {results['scaffold']['resume_check_s']:.3f} s (reused: {results['scaffold']['reused_on_resume']})")
        write_results("overhead", results)
    if "video" in parts or "reconstruction" in parts:
        results["video"], frames = video_part(ctx, scaffold, traj, args.height, device)
        add_other("video", results["video"])
        print_part("video stage I/O (stand-in backend 'copy')", results["video"])
        write_results("overhead", results)
    if "reconstruction" in parts:
        import depth as bench_depth  # benchmarks/depth.py
        from matrix_world.generation.moge_backend import LoadedMoGe
        from recon import warm_up  # benchmarks/recon.py: gsplat's kernels compiled outside the timing

        warm_up(device)
        moge = LoadedMoGe(bench_depth.build_moge(2, args.moge == "small", device), 2, True, "random MoGe-2 (overhead.py)")
        # A world run's depth stage has already run MoGe once on the panorama (same process, ctx.models):
        # that first call (kernel selection, allocator growth) is not the reconstruction stage's overhead.
        from matrix_world.generation.depth import DepthConfig, panorama_depth_from_model

        sync(device)
        t0 = time.perf_counter()
        panorama_depth_from_model(rgb, moge, DepthConfig(backend="moge"), device=device)
        sync(device)
        results["moge_depth_stage_call_s"] = round(time.perf_counter() - t0, 4)
        print(f"MoGe warm-up (the depth stage's 12-view call on the panorama): {results['moge_depth_stage_call_s']:.3f} s")
        results["reconstruction"] = recon_part(ctx, frames, depth, traj, scaffold, args.iterations, moge,
                                               args.view_size, args.num_tokens,
                                               args.known_fraction if args.known_fraction <= 1 else None,
                                               args.batch_size, device)
        r = results["reconstruction"]
        add_other("reconstruction", r)
        print_part(f"reconstruction stage (optimize, {r['iterations']} iterations, {r['keyframes']} keyframes)", r)
        ratio = r["overhead_ratio"]
        print(f"keyframe depth: {r['keyframe_depth']}")
        print(f"overhead {r['overhead_s']:.3f} s = stage wall - iterations {r['iterations_s']:.3f} s; ratio "
              f"{'-' if ratio is None else f'{100 * ratio:.0f} %'} (goal <= {100 * RECON_OVERHEAD_GOAL:.0f} %)")
        write_results("overhead", results)
    if not args.run_dir:
        shutil.rmtree(out.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
