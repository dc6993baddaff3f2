"""Open a local web viewer of a world's Gaussian splats and camera trajectories.

    python scripts/view.py RUN_DIR            # or path/to/world.ply
    python scripts/view.py RUN_DIR --port 8090 --max-gaussians 1000000

    Then open the printed URL in a browser. The world is shown first, its camera paths second
    (a thin line and a few small frusta; the panel shows all of them, jumps to a frame, lists
    an explored world's segments with a checkbox each, saves a screenshot or a recording).
    Navigation: mouse drag looks around (or orbits, switch in the panel), right-drag pans,
    wheel zooms; W/S/A/D move, Q/E down/up (at --walk-speed), arrow keys turn. The camera
    starts at the first trajectory pose, looking forward. Serves on 127.0.0.1 only unless
    --host says otherwise. Ctrl-C stops it.

Bad input prints `error: ...` and exits with code 2.
"""

import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from matrix_world.app.cli import (
    parse_options,
    require_in_range,
    require_positive,
    run_main,
)
from matrix_world.app.viewer import DEFAULT_MAX_GAUSSIANS, ViewerConfig, start_viewer
from matrix_world.splat_io import SplatNote

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ViewOptions:
    """Options of scripts/view.py."""

    world: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_OR_PLY")]
    """A run directory (with world.ply, trajectory.json, manifest.json) or a splat file (.ply, .spz, .splat, .glb)."""
    spz_axes: Literal["rub", "rdf"] = "rub"
    """Axes of a .spz file: rub (the SPZ spec; converted, as our world.spz is written by default) or rdf (our
    frame raw, like .ply: a file written with --spz-axes rdf)."""
    host: str = "127.0.0.1"
    """Address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)."""
    port: int = 8080
    """Port to serve on (the next free one if taken; 0 = any)."""
    max_gaussians: int = DEFAULT_MAX_GAUSSIANS
    """Most splats sent to the browser; bigger worlds keep the most opaque x largest."""
    max_frustums: int = 5
    """Camera frusta drawn per trajectory (first and last kept); the panel's toggle shows all."""
    frustum_scale: float | None = None
    """Frustum size in world units; None = 1% of the world's median radius."""
    walk_speed: float | None = None
    """W/A/S/D speed in world units per second; None = a fifth of the world's median radius."""

    def check(self) -> None:
        require_in_range(self, "port", 0, 65535)
        require_positive(self, "max_gaussians", "max_frustums", "frustum_scale", "walk_speed")


def view(argv: Sequence[str] | None = None) -> int:
    options = parse_options(ViewOptions, argv, prog="view.py", doc=__doc__)
    config = ViewerConfig(host=options.host, port=options.port, max_gaussians=options.max_gaussians,
                          max_frustums=options.max_frustums, frustum_scale=options.frustum_scale,
                          walk_speed=options.walk_speed, spz_axes=options.spz_axes)
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", SplatNote)
        viewer = start_viewer(options.world, config)
    try:
        for note in notes:
            print(f"note: {note.message}")
        s = viewer.splats
        print(f"showing {len(s):,} of {s.total:,} Gaussians, {len(viewer.paths)} trajectory(ies)")
        if len(viewer.parts) > 1:
            print("  segments: " + ", ".join(f"{p.name} ({len(p.splats):,})" for p in viewer.parts))
        print(f"  keys move {viewer.walk_speed:.3g} world units per second (--walk-speed)")
        if len(s) < s.total:
            print(f"  ({s.total - len(s):,} dropped: invisible, or over the --max-gaussians budget)")
        if options.host not in LOCAL_HOSTS:
            print(f"warning: serving on {options.host}: other machines on the network can open it")
        print(f"viewer at {viewer.url}  (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        viewer.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command: ``error: <one line>`` and exit code 2 on bad input; serves until Ctrl-C."""
    return run_main(view, argv)


if __name__ == "__main__":
    sys.exit(main())
