"""Stabilise a shaky 360-degree video: its keyframes make a 3D cache, rendered along a smoothed path and filled.

    python scripts/stabilize360.py walk.mp4 --out DIR
    python scripts/stabilize360.py walk.mp4 --stride 6 --sigma 2 --video-backend wan

Writes DIR/video.mp4 (the stabilised video), DIR/trajectory.json (the smoothed path), DIR/poses.json
(the keyframes' registered poses), DIR/scaffold.npz and the keyframes. The default fill backend needs
no model weights.
"""

import sys

from matrix_world.app.cli import run_main


def main(argv=None) -> int:
    from matrix_world.app.world_cli import stabilize_main

    return stabilize_main(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
