"""Generate the panoramic video of a run on several GPUs of one machine (Ulysses context parallelism).

    torchrun --nproc_per_node 4 scripts/video_multigpu.py RUN_DIR --prompt "a sunlit courtyard" [--resolution 720p]
    python scripts/video_multigpu.py RUN_DIR --prompt "..." --cpu     # one process, gloo: checks files and code path

Reads RUN_DIR/scaffold.npz (rgb [F, H, W, 3] uint8, mask [F, H, W] bool) and
RUN_DIR/trajectory.json, runs the Wan backend with diffusers' context parallelism (every GPU
holds the whole model; the video tokens are split across GPUs inside the transformer) and
writes RUN_DIR/video.npz (frames uint8 [F, H, W, 3]) and RUN_DIR/video.mp4 from rank 0.
Same output as one GPU up to numerical noise (docs/video.md, section 'Several GPUs').
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--resolution", default="480p", choices=["480p", "720p"])
    parser.add_argument("--model", default=None, help="hub id or folder (default: Wan2.1-I2V-14B for the resolution)")
    parser.add_argument("--lora", default="matrix3d", help="'matrix3d' (official), a file, or 'none'")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--height", type=int, default=None,
                        help="video height in pixels, width = 2 x height (default: the --resolution's, 480 or 720)")
    parser.add_argument("--cpu", action="store_true", help="gloo on CPU, one process (checks the files and the code path)")
    args = parser.parse_args(argv)
    if args.cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print(f"error: --cpu runs one process (diffusers' context parallelism needs a GPU per process), got "
              f"WORLD_SIZE={os.environ['WORLD_SIZE']}; use torchrun --nproc_per_node 1, or GPUs without --cpu",
              file=sys.stderr)
        return 2
    if "RANK" not in os.environ:  # started without torchrun: a world of one process
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))

    import torch.distributed as dist
    from matrix_world.generation.video import VideoConfig, generate_video_distributed

    from matrix_world.errors import InputError
    from matrix_world.io import load_npz, save_npz, write_video
    from matrix_world.rundir import jsonable
    from matrix_world.trajectory import Trajectory

    try:
        scaffold = load_npz(args.run_dir / "scaffold.npz", keys=("rgb", "mask"))
        trajectory = Trajectory.from_json(args.run_dir / "trajectory.json")
        config = VideoConfig(backend="wan", resolution=args.resolution, height=args.height, model=args.model,
                             lora=None if args.lora == "none" else args.lora, num_inference_steps=args.steps,
                             guidance_scale=args.guidance, seed=args.seed, dtype=args.dtype)
        result = generate_video_distributed(
            config, scaffold_rgb=scaffold["rgb"].astype("float32") / 255.0, scaffold_mask=scaffold["mask"],
            prompt=args.prompt, c2w=trajectory.c2w.numpy(), seed=args.seed, dist_backend="gloo" if args.cpu else "nccl",
        )
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if dist.get_rank() == 0:
        frames = (result.frames * 255.0 + 0.5).clip(0, 255).astype("uint8")
        save_npz(args.run_dir / "video.npz", frames=frames)
        write_video(args.run_dir / "video.mp4", frames, fps=float(trajectory.fps))
        print(json.dumps(jsonable({k: v for k, v in result.info.items() if k != "lora"}, strict=False)))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
