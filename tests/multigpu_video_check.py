"""Multi-GPU check for the video stage (not collected by pytest; launch with torchrun).

    torchrun --nproc_per_node 2 tests/multigpu_video_check.py            # 2 GPUs, NCCL
    torchrun --nproc_per_node 2 tests/multigpu_video_check.py --cpu      # 2 CPU processes, gloo (slow, ~1 min)
    torchrun --nproc_per_node 4 tests/multigpu_video_check.py --cfg-parallel   # CFG halves, each context-parallel

Builds the tiny random Wan2.1 I2V pipeline (tests/tiny_wan.py, identical on every rank), then
on every rank runs the video stage once on ONE device (reference) and once through
``generate_video_distributed`` (diffusers Ulysses context parallelism over all ranks), for a
token count divisible by the world size and one that is not (``ulysses_anything``), or with
``--cfg-parallel`` once with the CFG passes on two halves of the ranks. Rank 0
prints the max |difference| per case and PASS/FAIL; exit code 0 only if all pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu", action="store_true", help="gloo on CPU instead of NCCL on GPUs")
    parser.add_argument("--tolerance", type=float, default=2e-3)
    parser.add_argument("--cfg-parallel", action="store_true", help="one case: the CFG passes on two halves of the ranks")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    backend = "gloo" if args.cpu else "nccl"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()

    from matrix_world.generation.video import VideoConfig, generate_video
    from matrix_world.generation.video_parallel import generate_video_distributed
    from matrix_world.generation.wan_pipeline import PanoVideoPipeline
    from tiny_wan import tiny_wan_components

    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"tiny_wan_cp_{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}"
    if rank == 0:
        PanoVideoPipeline(**tiny_wan_components()).save_pretrained(str(folder))
    dist.barrier()

    device = torch.device("cpu") if args.cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    ok = True
    # 9 frames -> 3 latent frames; 32 x 64 -> 2 x 4 patches (24 tokens), 48 x 96 -> 3 x 6 (54 tokens)
    cases = ((32, "auto"),) if args.cfg_parallel else ((32, "auto"), (48, "auto"), (48, "ulysses_anything"))
    for height, mode in cases:
        g = np.random.default_rng(height)
        frames = 9
        rgb = g.random((frames, height, 2 * height, 3)).astype(np.float32)
        mask = g.random((frames, height, 2 * height)) > 0.3
        mask[0] = True
        c2w = np.tile(np.eye(4), (frames, 1, 1))
        cfg = VideoConfig(backend="wan", height=height, model=str(folder), lora=None, dtype="float32", memory="full",
                          num_inference_steps=3, seam="wrap")
        single = generate_video(cfg, scaffold_rgb=rgb, scaffold_mask=mask, prompt="a quiet street", c2w=c2w,
                                device=device, generator=torch.Generator().manual_seed(0))
        multi = generate_video_distributed(dataclasses.replace(cfg), scaffold_rgb=rgb, scaffold_mask=mask,
                                           prompt="a quiet street", c2w=c2w, seed=0, dist_backend=backend,
                                           mode=mode, cfg_parallel=args.cfg_parallel)
        diff = float(np.abs(single.frames - multi.frames).max())
        cp = multi.info["parallel"]
        split = cp["tokens_seen"] == cp["tokens_per_rank"] and (cp["degree"] == 1 or cp["tokens_seen"] < cp["tokens"])
        passed = diff <= args.tolerance and single.frames.std() > 0 and split
        ok &= passed
        if rank == 0:
            print(f"height {height}: {cp} max|1 device - {world} ranks| = {diff:.2e} "
                  f"-> {'PASS' if passed else 'FAIL'}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
