"""Sparse 360-degree views (panoramas taken at different places) -> their poses, one 3D cache, a
video along a path through them, and one world of Gaussian splats in view A's frame.

    python scripts/views2world.py A.png B.png C.png --out DIR
    python scripts/views2world.py A.png B.png --distance A.npy B.npy --trajectory through --frames 81
    python scripts/views2world.py A.png B.png --poses poses.json --trajectory straight

Without --poses the views are registered (features on perspective cuts of each panorama, one pose
per panorama, essential matrix on bearing vectors, scale from the distance maps) and the poses are
written to DIR/poses.json (c2w, world = view A). --trajectory through (the default) passes through
every view's pose; the video's frames there are the input panoramas.
"""

import sys

from matrix_world.app.cli import run_main


def main(argv=None) -> int:
    from matrix_world.app.world_cli import views2world_main

    return views2world_main(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
