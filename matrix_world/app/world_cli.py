"""Command-line front ends of the world pipeline (``scripts/text2world.py``, ``image2world.py``,
``explore.py``): options come from the config dataclasses through tyro, so ``--help`` lists
every field with its documentation."""

from __future__ import annotations

import os
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
    from matrix_world.pipeline import WorldConfig

    config = _parse(WorldConfig, argv, "prompt", "text2world.py",
                    'Text -> explorable 3D world of Gaussian splats.  Usage: text2world.py "PROMPT" [OPTIONS]')
    if config.image is not None:
        raise InputError("text2world takes a prompt; for an image use scripts/image2world.py IMAGE")
    return run_world(config, "text2world", argv)


def image2world_main(argv: Sequence[str] | None = None) -> int:
    from matrix_world.pipeline import WorldConfig

    config = _parse(WorldConfig, argv, "image", "image2world.py",
                    "Photo (or --panorama 360-degree image) -> explorable 3D world.  Usage: image2world.py IMAGE [OPTIONS]")
    if config.image is None:
        raise InputError("image2world needs an image: image2world.py IMAGE [--panorama] [--distance FILE]")
    return run_world(config, "image2world", argv)


def run_world(config, command: str, argv: Sequence[str] | None) -> int:
    """The world run of ``config``: in this process (--gpus 1), in --gpus N processes started here
    (each runs ``command`` with the same arguments), or as one rank of a torchrun launch (WORLD_SIZE
    set): rank 0 runs the stages, all ranks the video (matrix_world.pipeline.distributed)."""
    from matrix_world.pipeline import WorldPipeline
    from matrix_world.pipeline import distributed as ranks

    launched = ranks.torchrun_world_size()
    if launched == 1 and config.gpus == 1:
        WorldPipeline()(config)
        return 0
    backend = ranks.distributed_backend()
    if launched == 1:  # --gpus N: checked here, then N processes run this command
        from matrix_world.app import cli
        from matrix_world.pipeline.config import check_inputs

        ranks.check_gpus(config.gpus, config.device, backend)
        check_inputs(config)  # a bad input is refused once, here, before any process starts
        if cli._debug:
            os.environ[cli.DEBUG_ENV] = "1"  # the ranks show tracebacks too
        return ranks.launch(config.gpus, launched_main, (command, list(sys.argv[1:] if argv is None else argv)))
    if config.gpus not in (1, launched):
        raise InputError(f"--gpus {config.gpus} but torchrun started {launched} processes; give one of them "
                         "(torchrun --nproc_per_node N, or --gpus N without torchrun)")
    team = ranks.DistributedConfig(backend=backend, cfg_parallel=config.cfg_parallel)
    return ranks.run_team(lambda t: WorldPipeline(distributed=t)(config), team, run=_exit_status)


def _exit_status(fn) -> int:
    """``fn()`` -> its exit status, an error printed as one line (run_main's rules)."""
    from matrix_world.app.cli import run_main

    return run_main(lambda _: (fn(), 0)[1], [])


def launched_main(command: str, argv: list[str]) -> int:
    """What each process of ``--gpus N`` runs: the world command ``command`` on ``argv``."""
    from matrix_world.app.cli import run_main

    mains = {"text2world": text2world_main, "image2world": image2world_main, "views2world": views2world_main}
    return run_main(mains[command], argv)


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
    from matrix_world.pipeline import WorldConfig

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
    return run_world(config, "views2world", argv)


def stabilize_main(argv: Sequence[str] | None = None) -> int:
    from matrix_world.pipeline.stabilize import StabilizeConfig, stabilize

    config = _parse(StabilizeConfig, argv, "video", "stabilize360.py",
                    "Stabilise a shaky 360-degree video: keyframes -> 3D cache -> smoothed path -> re-rendered and "
                    "filled video.  Usage: stabilize360.py VIDEO.mp4 [--out DIR] [--stride 8] [--sigma 1.5]")
    stabilize(config)
    return 0
