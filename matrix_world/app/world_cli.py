"""Command-line front ends of the world pipeline (``scripts/text2world.py``, ``image2world.py``,
``explore.py``): options come from the config dataclasses through tyro, so ``--help`` lists
every field with its documentation."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from matrix_world.app.cli import tyro_cli
from matrix_world.errors import InputError


def _parse(cls, argv: Sequence[str] | None, positional: str, prog: str, description: str, **defaults):
    """tyro over ``cls`` with its first positional argument moved into ``--<positional>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        args = [f"--{positional.replace('_', '-')}", args[0]] + args[1:]
    return tyro_cli(cls, args, prog=prog, description=description, default=cls(**defaults))


def text2world_main(argv: Sequence[str] | None = None) -> int:
    from matrix_world.pipeline import WorldConfig, WorldPipeline

    config = _parse(WorldConfig, argv, "prompt", "text2world.py",
                    'Text -> explorable 3D world of Gaussian splats.  Usage: text2world.py "PROMPT" [OPTIONS]')
    if config.image is not None:
        raise InputError("text2world takes a prompt; for an image use scripts/image2world.py IMAGE")
    WorldPipeline()(config)
    return 0


def image2world_main(argv: Sequence[str] | None = None) -> int:
    from matrix_world.pipeline import WorldConfig, WorldPipeline

    config = _parse(WorldConfig, argv, "image", "image2world.py",
                    "Photo (or --panorama 360-degree image) -> explorable 3D world.  Usage: image2world.py IMAGE [OPTIONS]")
    if config.image is None:
        raise InputError("image2world needs an image: image2world.py IMAGE [--panorama] [--distance FILE]")
    WorldPipeline()(config)
    return 0


def explore_main(argv: Sequence[str] | None = None) -> int:
    from matrix_world.pipeline import ExploreConfig, explore

    config = _parse(ExploreConfig, argv, "run_dir", "explore.py",
                    "Add a segment to an existing world and rewrite RUN_DIR/world.ply as the merged world.  "
                    "Usage: explore.py RUN_DIR --trajectory PRESET_OR_JSON")
    explore(config)
    return 0



def split_views_args(argv: Sequence[str]) -> list[str]:
    """``A.png B.png [C.png ...] [--distance A.npy B.npy ...] OPTIONS`` -> WorldConfig's options:
    view A becomes ``--image`` (a panorama), the others ``--views``; the first distance map
    ``--distance``, the others ``--view-distances``."""
    args = list(argv)
    views = []
    while args and not args[0].startswith("-"):
        views.append(args.pop(0))
    distances: list[str] = []
    if "--distance" in args:
        at = args.index("--distance")
        end = at + 1
        while end < len(args) and not args[end].startswith("-"):
            end += 1
        distances, args = args[at + 1:end], args[:at] + args[end:]
    if len(views) == 1:
        raise InputError(f"views2world needs at least two 360-degree views, got one ({views[0]}); for one panorama use "
                         f"scripts/image2world.py {views[0]} --panorama")
    out = (["--image", views[0], "--panorama", "--views", *views[1:]] if views else [])
    if distances:
        out += ["--distance", distances[0]] + (["--view-distances", *distances[1:]] if distances[1:] else [])
    return out + args


def views2world_main(argv: Sequence[str] | None = None) -> int:
    from matrix_world.pipeline import WorldConfig, WorldPipeline

    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        args = ["--help"]
    config = tyro_cli(WorldConfig, split_views_args(args), prog="views2world.py",
                      description="Sparse 360-degree views (panoramas taken at different places) -> their poses, one 3D "
                                  "cache, a video along a path through them and one world in view A's frame.  Usage: "
                                  "views2world.py A.png B.png [C.png ...] --out DIR [--distance A.npy B.npy ...] "
                                  "[--poses FILE.json] [--trajectory through|PRESET|FILE.json]",
                      default=WorldConfig(trajectory="through"))
    if not config.views:
        raise InputError("views2world needs at least two 360-degree views: views2world.py A.png B.png [C.png ...]")
    WorldPipeline()(config)
    return 0


def stabilize_main(argv: Sequence[str] | None = None) -> int:
    from matrix_world.pipeline.stabilize import StabilizeConfig, stabilize

    config = _parse(StabilizeConfig, argv, "video", "stabilize360.py",
                    "Stabilise a shaky 360-degree video: keyframes -> 3D cache -> smoothed path -> re-rendered and "
                    "filled video.  Usage: stabilize360.py VIDEO.mp4 [--out DIR] [--stride 8] [--sigma 1.5]")
    stabilize(config)
    return 0
