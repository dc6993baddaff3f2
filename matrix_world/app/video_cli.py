"""Command-line front ends of the perspective-video input (``scripts/video2pano.py``,
``scripts/video2world.py``): one documented options dataclass (tyro: ``--help`` lists every field),
mapped onto :class:`~matrix_world.pipeline.video2pano.Video2PanoConfig`."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from matrix_world.app.cli import (
    choices_metavar,
    parse_options,
    require_device,
    require_one_of,
    require_positive,
    require_seed,
)
from matrix_world.pipeline.config import PRESET_NAMES as PRESETS
from matrix_world.pipeline.video2pano import DEFAULT_PROMPT, Video2PanoConfig

REPRESENTATIONS = ("erp", "viewpoint")
MEMORY = ("auto", "full", "offload", "lowvram")


@dataclass
class VideoOptions:
    """Options of scripts/video2pano.py and scripts/video2world.py."""

    input: str
    """The perspective video (any format ffmpeg reads)."""
    out: str
    """Run directory (created; rerunning with the same options reuses finished stages)."""
    fov: float | None = None
    """Horizontal field of view of the video in degrees; None = estimated from the video (rotation-fit residual)."""
    poses: str | None = None
    """Known camera poses instead of estimating them: our trajectory JSON {"convention": "opencv_c2w", \
"poses": [[16 floats], ...]}, one pose per frame (re-expressed relative to frame 0)."""
    frames: int | None = None
    """Use only the first N frames; None = all."""
    height: int | None = None
    """Height of the 360° frames (width = 2 x height, multiple of 16); None = 480 for wan, 256 otherwise."""
    prompt: str = DEFAULT_PROMPT
    """Text guidance for the video model."""
    video_backend: str = "auto"
    """auto | wan | fill (auto: wan on a GPU with its weights, else fill)."""
    representation: Annotated[str, choices_metavar(REPRESENTATIONS)] = "erp"
    """What the video model sees: erp (equirect) or viewpoint (ViewPoint maps, converted back to the equirect)."""
    window: int | None = None
    """Frames per generation window for long videos (Argus' iterative sampling); None = 81 for wan, one call otherwise."""
    context_frames: int = 5
    """Frames at the start of each window known from the previous window's output."""
    stabilize: bool = False
    """Also write stabilized.mp4: the input's field of view along a smoothed orientation path."""
    smooth: float = 4.0
    """--stabilize: Gaussian sigma of the orientation smoothing, in frames."""
    look: str | None = None
    """Also write look.mp4 turned by yaw,pitch degrees from the camera's direction (e.g. 180,0 looks back)."""
    view_width: int | None = None
    """Width of stabilized.mp4 / look.mp4; None = the input's width, at most 960."""
    preset: Annotated[str, choices_metavar(PRESETS)] = "fast"
    """preview = no-weight backends only; fast / quality = real models where available."""
    steps: int | None = None
    """Denoising steps of the video model; None = the preset's (30 fast, 50 quality)."""
    depth_backend: str = "auto"
    """video2world: auto | moge | prior | file | procedural."""
    recon_backend: str = "auto"
    """video2world: auto | optimize | lift | lrm."""
    seed: int = 0
    """Seed of the video noise and the reconstruction."""
    device: str = "auto"
    """auto (CUDA when present) | cpu | cuda | cuda:N"""
    memory: Annotated[str, choices_metavar(MEMORY)] = "auto"
    """GPU memory mode of the video model."""
    wan_model: str | None = None
    """Wan2.1-I2V-14B-480P/720P-Diffusers: hub id or local folder."""
    wan_lora: str | None = None
    """Video LoRA: matrix3d (official; the default), a converted .safetensors, or none."""
    force: bool = False
    """Rerun every stage even if its outputs are up to date."""

    def check(self) -> None:
        from matrix_world.pipeline.config import backend_choices

        require_positive(self, "frames", "height", "window", "context_frames", "steps", "view_width")
        require_seed(self, "seed")
        require_device(self, "device")
        require_one_of(self, "representation", REPRESENTATIONS)
        require_one_of(self, "preset", PRESETS)
        require_one_of(self, "memory", MEMORY)
        choices = backend_choices()
        require_one_of(self, "video_backend", [c for c in choices["video"] if c != "oracle"])
        require_one_of(self, "depth_backend", choices["depth"])
        require_one_of(self, "recon_backend", choices["reconstruction"])

    def config(self) -> Video2PanoConfig:
        return Video2PanoConfig(**dataclasses.asdict(self))  # the same field names


def _parse(argv: Sequence[str] | None, prog: str, doc: str) -> VideoOptions:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        args = ["--input", args[0]] + args[1:]
    return parse_options(VideoOptions, args, prog=prog, doc=doc)


def video2pano_main(argv: Sequence[str] | None = None, doc: str = "") -> int:
    from matrix_world.pipeline.video2pano import video2pano

    video2pano(_parse(argv, "video2pano.py", doc).config(), log=lambda m: print(m, flush=True))
    return 0


def video2world_main(argv: Sequence[str] | None = None, doc: str = "") -> int:
    from matrix_world.pipeline.video2pano import video2world

    video2world(_parse(argv, "video2world.py", doc).config(), log=lambda m: print(m, flush=True))
    return 0
