"""Command-line front ends of the world pipeline (``scripts/text2world.py``, ``image2world.py``,
``explore.py``): options come from the config dataclasses through tyro, so ``--help`` lists
every field with its documentation."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from matrix_world.errors import InputError


def _parse(cls, argv: Sequence[str] | None, positional: str, prog: str, description: str, **defaults):
    """tyro over ``cls`` with its first positional argument moved into ``--<positional>``."""
    import tyro

    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        args = [f"--{positional.replace('_', '-')}", args[0]] + args[1:]
    return tyro.cli(cls, args=args, prog=prog, description=description, default=cls(**defaults))


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

