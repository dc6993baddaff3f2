"""Open a local web viewer of a world's Gaussian splats and camera trajectories.

    python scripts/view.py RUN_DIR            # or path/to/world.ply
    python scripts/view.py RUN_DIR --port 8090 --max-gaussians 1000000

Then open the printed URL in a browser. Navigation: mouse drag looks around (or orbits,
switch in the panel), right-drag pans, wheel zooms; W/S/A/D move, Q/E down/up, arrow keys
turn. Serves on 127.0.0.1 only unless --host says otherwise. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from matrix_world.errors import InputError, MissingDependencyError
from matrix_world.splat_io import SplatNote
from matrix_world.app.viewer import DEFAULT_MAX_GAUSSIANS, ViewerConfig, start_viewer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("world", help="a run directory (with world.ply, trajectory.json, manifest.json) "
                                      "or a splat file (.ply, .spz, .splat)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8080,
                        help="port to serve on (default 8080; the next free one if taken; 0 = any)")
    parser.add_argument("--max-gaussians", type=int, default=DEFAULT_MAX_GAUSSIANS,
                        help="most splats sent to the browser; bigger worlds keep the most opaque x largest "
                             f"(default {DEFAULT_MAX_GAUSSIANS:,})")
    parser.add_argument("--max-frustums", type=int, default=40, help="camera frustums drawn per trajectory (default 40)")
    parser.add_argument("--frustum-scale", type=float, default=None,
                        help="frustum size in scene units (default: 4%% of the world's median radius)")
    args = parser.parse_args(argv)

    config = ViewerConfig(host=args.host, port=args.port, max_gaussians=args.max_gaussians,
                          max_frustums=args.max_frustums, frustum_scale=args.frustum_scale)
    try:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", SplatNote)
            viewer = start_viewer(args.world, config)
    except (InputError, MissingDependencyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        for note in notes:
            print(f"note: {note.message}")
        s = viewer.splats
        print(f"showing {len(s):,} of {s.total:,} Gaussians, {len(viewer.paths)} trajectory(ies)")
        if len(s) < s.total:
            print(f"  ({s.total - len(s):,} dropped: invisible, or over the --max-gaussians budget)")
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: serving on {args.host}: other machines on the network can open it")
        print(f"viewer at {viewer.url}  (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        viewer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
