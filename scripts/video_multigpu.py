"""Generate the panoramic video of a run on several GPUs of one machine (Ulysses context parallelism).

    torchrun --nproc_per_node 4 scripts/video_multigpu.py RUN_DIR --prompt "a sunlit courtyard" [--resolution 720p]
    python scripts/video_multigpu.py RUN_DIR --prompt "..." --cpu     # one process, gloo: checks files and code path

Reads RUN_DIR/scaffold.npz (rgb [F, H, W, 3] uint8, mask [F, H, W] bool) and
RUN_DIR/trajectory.json, runs the Wan backend with diffusers' context parallelism (every GPU
holds the whole model; the video tokens are split across GPUs inside the transformer) and
writes RUN_DIR/video.npz (frames uint8 [F, H, W, 3]) and RUN_DIR/video.mp4 from rank 0.
Same output as one GPU up to numerical noise (docs/video.md, section 'Several GPUs').
"""

import json
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from matrix_world.app.cli import (
    choices_metavar,
    parse_options,
    require_finite,
    require_one_of,
    require_positive,
    require_seed,
    run_main,
)
from matrix_world.errors import InputError

RESOLUTIONS = ("480p", "720p")
DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class VideoOptions:
    """Options of scripts/video_multigpu.py."""

    run_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """Run directory with scaffold.npz and trajectory.json (video.npz and video.mp4 are written into it)."""
    prompt: str
    """Text prompt of the video."""
    resolution: Annotated[str, choices_metavar(RESOLUTIONS)] = "480p"
    """Wan model variant: 480p (480 x 960) or 720p (720 x 1440)."""
    model: str | None = None
    """Hub id or folder of the Wan2.1-I2V-14B diffusers model; None = the one for --resolution."""
    lora: str = "matrix3d"
    """'matrix3d' (the official LoRA for the resolution), a converted .safetensors file, or 'none'."""
    steps: int = 50
    """Denoising steps."""
    guidance: float = 5.0
    """Classifier-free guidance scale."""
    seed: int = 0
    """Seed of the video noise."""
    dtype: Annotated[str, choices_metavar(DTYPES)] = "bfloat16"
    """dtype of the model weights (the VAE and the image encoder stay float32)."""
    height: int | None = None
    """Video height in pixels, width = 2 x height; None = the --resolution's (480 or 720)."""
    cpu: bool = False
    """gloo on CPU, one process (checks the files and the code path)."""

    def check(self) -> None:
        require_one_of(self, "resolution", RESOLUTIONS)
        require_one_of(self, "dtype", DTYPES)
        require_positive(self, "steps", "height")
        require_finite(self, "guidance")
        require_seed(self, "seed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(VideoOptions, argv, prog="video_multigpu.py", doc=__doc__)
    if options.cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError(f"--cpu runs one process (diffusers' context parallelism needs a GPU per process), got "
                         f"WORLD_SIZE={os.environ['WORLD_SIZE']}; use torchrun --nproc_per_node 1, or GPUs without --cpu")
    if "RANK" not in os.environ:  # started without torchrun: a world of one process
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))

    import torch.distributed as dist
    from matrix_world.generation.video import VideoConfig
    from matrix_world.generation.video_parallel import generate_video_distributed

    from matrix_world.io import save_npz, write_video
    from matrix_world.rundir import jsonable
    from matrix_world.scaffold.build import load_scaffold
    from matrix_world.trajectory import Trajectory

    scaffold = load_scaffold(options.run_dir / "scaffold.npz")
    trajectory = Trajectory.from_json(options.run_dir / "trajectory.json")
    config = VideoConfig(backend="wan", resolution=options.resolution, height=options.height, model=options.model,
                         lora=None if options.lora == "none" else options.lora, num_inference_steps=options.steps,
                         guidance_scale=options.guidance, seed=options.seed, dtype=options.dtype)
    result = generate_video_distributed(
        config, scaffold_rgb=scaffold.rgb.astype("float32") / 255.0, scaffold_mask=scaffold.mask,
        prompt=options.prompt, c2w=trajectory.c2w.numpy(), seed=options.seed, dist_backend="gloo" if options.cpu else "nccl",
    )
    if dist.get_rank() == 0:
        frames = (result.frames * 255.0 + 0.5).clip(0, 255).astype("uint8")
        save_npz(options.run_dir / "video.npz", frames=frames)
        write_video(options.run_dir / "video.mp4", frames, fps=float(trajectory.fps))
        print(json.dumps(jsonable({k: v for k, v in result.info.items() if k != "lora"}, strict=False)))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
