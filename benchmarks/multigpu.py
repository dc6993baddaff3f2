"""Several-GPU benchmark (issue 17): the full-size Wan2.1-I2V-14B transformer (random bf16 weights)
inside our PanoVideoPipeline with the library's context parallelism, s/step on 1, 2, 4 GPUs.

    python benchmarks/multigpu.py --gpus 1 2 4                 # CUDA: 480p and 720p, 81 frames
    python benchmarks/multigpu.py --gpus 4 --e2e               # + text2world end to end on 4 GPUs
    python benchmarks/multigpu.py --gpus 1 2 --tiny --cpu      # CPU, gloo: the same code path, tiny model

For each N one ``torchrun --nproc_per_node N`` of this file (``--worker``) is started: every rank
builds the same random transformer (same seed), loads it through
``generation.video_parallel.load_parallel_pipeline`` (speed options + context parallelism in the
library's order, the context-parallel rule's choice recorded) and runs one call per resolution
with classifier-free guidance (2 passes per step), random prompt / CLIP embeddings and a random
scaffold condition of the real shapes, ``output_type="latent"`` (no decode). s/step = mean of
``--steps`` steps after ``--warmup`` steps (synchronised step ends). Scaling efficiency =
t1 / (N x tN). Goals of the issue: >= 1.8x on 2 and >= 3.4x on 4 GPUs at 720p.

``--e2e``: text2world through ``WorldPipeline`` on the largest N of ``--gpus`` with every model's
full-size architecture and random weights (FLUX + MoGe built by benchmarks/e2e.py's builders on
rank 0, Wan on every rank through the same loader), the quality preset's steps unless
``--e2e-steps`` cuts them; goal: a 480p quality world <= 90 s on 4 H200s. The wall time excludes
building FLUX and MoGe but includes building the random Wan on every rank inside the video stage
(where a real run loads its weights).

Random weights prove wiring, memory and speed, nothing about quality. Writes $OUT/multigpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from common import GB, write_results  # noqa: E402  (benchmarks/common.py)

SIZES = {"480p": (480, 960), "720p": (720, 1440), "tiny": (64, 128)}


# --------------------------------------------------------------------------- one rank


def random_loader(tiny: bool, *, full_pipeline: bool = False):
    """``load(config, device, num_frames, parallelize) -> (pipe, info)`` for load_parallel_pipeline: a random
    PanoVideoPipeline (the same weights on every rank: seeded), the speed options and parallelism applied.
    full_pipeline: with the random full-size text / image encoders (what the world's video stage calls)."""

    def load(config, device, *, num_frames, parallelize=None):
        from matrix_world.generation.video import apply_video_speed

        torch.manual_seed(0)
        if full_pipeline or tiny:
            import e2e  # benchmarks/e2e.py's builder: full-size Wan + UMT5 + CLIP + VAE (tiny when smoke)

            pipe, _ = e2e.build_wan(tiny, device)
        else:
            pipe = _transformer_only_pipeline(device)
        if tiny:
            pipe.to(torch.float32)
        return pipe, {"speed": apply_video_speed(pipe, config, device, memory_mode="full", parallelize=parallelize)}

    return load


def _transformer_only_pipeline(device):
    """PanoVideoPipeline with the full-size random transformer and VAE, no encoders (embeddings are passed in)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from matrix_world.generation.wan_pipeline import WAN_I2V_14B_CONFIG, PanoVideoPipeline

    import video as bench_video  # benchmarks/video.py: build_transformer

    transformer = bench_video.build_transformer(WAN_I2V_14B_CONFIG, device, torch.bfloat16)
    pipe = PanoVideoPipeline(tokenizer=None, text_encoder=None, vae=AutoencoderKLWan().eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
                             image_processor=None, image_encoder=None, transformer=transformer)
    pipe.use_flow_matching(5.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def worker(args) -> int:
    import torch.distributed as dist
    from matrix_world.generation.video import VideoConfig
    from matrix_world.generation.video_parallel import init_distributed, load_parallel_pipeline, parallel_layout

    import video as bench_video  # StepTimer

    device = init_distributed("gloo" if args.cpu else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    for res in args.resolutions:
        height, width = SIZES["tiny" if args.tiny else res]
        config = VideoConfig(backend="wan", height=height, lora=None, memory="full", num_inference_steps=args.steps + args.warmup,
                             dtype="float32" if args.tiny else "bfloat16", attention=args.attention, compile=args.compile)
        layout = parallel_layout(world, cfg_parallel=args.cfg_parallel, guidance_scale=5.0)
        t0 = time.perf_counter()
        pipe, info = load_parallel_pipeline(config, device, num_frames=args.frames, layout=layout, load=random_loader(args.tiny))
        build_s = time.perf_counter() - t0
        tr = pipe.transformer
        g = torch.Generator().manual_seed(1)
        dtype = tr.dtype
        text_dim, image_dim = tr.config.text_dim, tr.config.image_dim
        t_lat = (args.frames - 1) // 4 + 1
        condition = torch.randn(1, 20, t_lat, height // 8, width // 8, generator=g).to(device, dtype)
        embeds = {"prompt_embeds": torch.randn(1, 512, text_dim, generator=g).to(device, dtype),
                  "negative_prompt_embeds": torch.randn(1, 512, text_dim, generator=g).to(device, dtype),
                  "image_embeds": torch.randn(1, 257, image_dim, generator=g).to(device, dtype)}
        timer = bench_video.StepTimer(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        dist.barrier()
        pipe(condition=condition, num_inference_steps=args.steps + args.warmup, guidance_scale=5.0,
             generator=torch.Generator().manual_seed(0), output_type="latent", callback_on_step_end=timer, **embeds)
        row = {"resolution": res, "gpus": world, "height": height, "width": width, "frames": args.frames,
               "s_per_step": round(timer.per_step(args.warmup), 4), "first_step_s": round(timer.times[0] - t0 - build_s, 2),
               "build_s": round(build_s, 1), "parallel": info.get("parallel"), "speed": info.get("speed"),
               "peak_gb": round(torch.cuda.max_memory_allocated(device) / GB, 1) if device.type == "cuda" else None}
        rows.append(row)
        if rank == 0:
            print(f"[multigpu] {json.dumps(row)}", flush=True)
        del pipe, tr
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result: dict = {"rows": rows}
    if args.e2e:
        result["e2e"] = world_end_to_end(args)
    if rank == 0 and args.result:
        Path(args.result).write_text(json.dumps(result, default=str))
    if dist.is_initialized():  # (run_team of --e2e ends the process group itself)
        dist.barrier()
        dist.destroy_process_group()
    return 0


def world_end_to_end(args) -> dict | None:
    """text2world on all ranks of this launch (rank 0: the stages; all: the video); rank 0's numbers."""
    from matrix_world.pipeline import WorldConfig, WorldPipeline
    from matrix_world.pipeline.distributed import DistributedConfig, run_team

    import e2e  # benchmarks/e2e.py's FLUX / MoGe builders

    steps = dict(zip(("panorama", "video", "reconstruction"), args.e2e_steps))
    out = Path(tempfile.gettempdir()) / "matrix_world_multigpu_e2e"
    found: dict = {}

    def body(team) -> None:
        device = team.device
        models: dict = {}
        smoke = args.tiny
        models["panorama"], _ = e2e.build_flux(smoke, device, torch.float32 if smoke else torch.bfloat16)
        models["depth"], _ = e2e.build_moge(smoke, device)

        def adjust(plan):
            plan.panorama.steps, plan.video.num_inference_steps, plan.video.lora = steps["panorama"], steps["video"], None
            plan.recon.optimize.iterations = steps["reconstruction"]
            if smoke:
                plan.panorama.height, plan.depth.view_size = 64, 56
            return plan

        config = WorldConfig(prompt="a quiet harbour town at sunset", out=str(out), preset="quality", panorama_backend="flux",
                             depth_backend="moge", video_backend="wan", recon_backend="lift" if smoke else "optimize",
                             resolution=64 if smoke else 480, frames=args.frames, device=str(device), resume=False,
                             overwrite=True, exports=(), gpus=team.world_size, cfg_parallel=args.cfg_parallel)
        t0 = time.perf_counter()
        WorldPipeline(models=models, adjust_plan=adjust, distributed=team)(config)
        manifest = json.loads((out / "manifest.json").read_text())
        found.update(wall_s=round(time.perf_counter() - t0, 1), steps=steps, gpus=team.world_size,
                     stages={k: v.get("seconds") for k, v in manifest["stages"].items()},
                     video_parallel=manifest["stages"]["video"]["info"].get("parallel"))

    def run(fn) -> int:
        fn()
        return 0

    config = DistributedConfig(backend="gloo" if args.cpu else "nccl", cfg_parallel=args.cfg_parallel)
    code = run_team(body, config, run=run, load=random_loader(args.tiny, full_pipeline=True))
    return {**found, "exit": code} if found else None


# --------------------------------------------------------------------------- the launcher


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4], help="process counts, one torchrun each")
    p.add_argument("--resolutions", nargs="+", default=["480p", "720p"], choices=("480p", "720p"))
    p.add_argument("--frames", type=int, default=None, help="frames, 4k+1 (default 81; tiny 9)")
    p.add_argument("--steps", type=int, default=3, help="timed denoising steps (CFG: 2 passes each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps (compile, cuDNN plans)")
    p.add_argument("--attention", default="auto", help="--video-attention (auto: cuDNN on Hopper)")
    p.add_argument("--compile", default="off", help="--video-compile (off by default: the compile would enter the steps)")
    p.add_argument("--cfg-parallel", action="store_true", help="CFG passes on two halves of the GPUs")
    p.add_argument("--e2e", action="store_true", help="text2world end to end on the largest --gpus")
    p.add_argument("--e2e-steps", type=int, nargs=3, default=None, metavar=("PANO", "VIDEO", "ITER"),
                   help="FLUX steps, Wan steps, optimisation iterations (default: the quality preset's 50 50 3000)")
    p.add_argument("--tiny", action="store_true", help="the tiny Wan (code path only)")
    p.add_argument("--cpu", action="store_true", help="gloo on CPU processes (with --tiny)")
    p.add_argument("--timeout-s", type=int, default=560, help="limit of one torchrun")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.frames = args.frames or (9 if args.tiny else 81)
    args.e2e_steps = args.e2e_steps or ([1, 1, 10] if args.tiny else [50, 50, 3000])
    if args.cpu and not args.tiny:
        print("--cpu runs the tiny model only (add --tiny)", file=sys.stderr)
        return 2
    if args.worker:
        return worker(args)
    if not args.cpu and (not torch.cuda.is_available() or torch.cuda.device_count() < max(args.gpus)):
        print(f"needs {max(args.gpus)} CUDA GPUs (found {torch.cuda.device_count()}); on CPU: --tiny --cpu", file=sys.stderr)
        return 2

    results: dict = {"torch": torch.__version__, "device": "cpu (gloo, tiny)" if args.cpu else torch.cuda.get_device_name(0),
                     "frames": args.frames, "steps": args.steps, "warmup": args.warmup, "attention": args.attention,
                     "compile": args.compile, "cfg_parallel": args.cfg_parallel, "tiny": args.tiny, "rows": [], "failed": []}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    largest = max(args.gpus)
    for n in args.gpus:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            result_path = f.name
        forward = [a for a in (argv if argv is not None else sys.argv[1:])]
        forward = _without(forward, "--gpus", len(args.gpus)) + ["--worker", "--result", result_path]
        if args.e2e and n != largest:
            forward = [a for a in forward if a != "--e2e"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), __file__, *forward]
        print(f"=== {n} process(es): {' '.join(cmd[3:])}", flush=True)
        try:
            proc = subprocess.run(cmd, env=env, timeout=args.timeout_s, check=False)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = 124
        text = Path(result_path).read_text() if Path(result_path).stat().st_size else ""
        Path(result_path).unlink()
        if code or not text:
            results["failed"].append({"gpus": n, "exit": code})
        else:
            got = json.loads(text)
            results["rows"] += got["rows"]
            if "e2e" in got:
                results["e2e"] = got["e2e"]
        write_results("multigpu", add_scaling(results))
    report(add_scaling(results))
    return 1 if results["failed"] else 0


def _without(args: list[str], flag: str, count: int) -> list[str]:
    if flag not in args:
        return args
    at = args.index(flag)
    return args[:at] + args[at + 1 + count:]


def add_scaling(results: dict) -> dict:
    """speedup t1 / tN and efficiency t1 / (N tN) per row, against the 1-GPU row of its resolution."""
    one = {r["resolution"]: r["s_per_step"] for r in results["rows"] if r["gpus"] == 1}
    for r in results["rows"]:
        t1 = one.get(r["resolution"])
        r["speedup"] = None if t1 is None else round(t1 / r["s_per_step"], 2)
        r["efficiency"] = None if t1 is None else round(t1 / (r["gpus"] * r["s_per_step"]), 3)
    return results


def report(r: dict) -> None:
    print(f"\nWan2.1-I2V-14B {'(TINY)' if r['tiny'] else 'full size'}, random weights, {r['frames']} frames, CFG, "
          f"on {r['device']} (torch {r['torch']}); attention {r['attention']}, compile {r['compile']}")
    print(f"{'res':6s} {'gpus':>4s} {'s/step':>8s} {'speedup':>8s} {'eff.':>6s} {'peak GB':>8s}  context parallelism")
    for row in sorted(r["rows"], key=lambda x: (x["resolution"], x["gpus"])):
        sp = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        eff = "-" if row["efficiency"] is None else f"{row['efficiency']:.2f}"
        peak = "-" if row["peak_gb"] is None else f"{row['peak_gb']:.1f}"
        print(f"{row['resolution']:6s} {row['gpus']:4d} {row['s_per_step']:8.3f} {sp:>8s} {eff:>6s} {peak:>8s}  "
              f"{(row['parallel'] or {}).get('reason', '')}")
    if r.get("e2e"):
        e = r["e2e"]
        print(f"text2world on {e['gpus']} GPU(s), steps {e['steps']}: {e['wall_s']} s (FLUX/MoGe building excluded, Wan's included); "
              f"stages {e['stages']}")
    for f in r["failed"]:
        print(f"FAILED: {f['gpus']} process(es), exit {f['exit']}")


if __name__ == "__main__":
    sys.exit(main())
