#!/usr/bin/env python
"""Perspective video -> 360° video -> explorable 3D world of Gaussian splats.

    python scripts/video2world.py INPUT.mp4 --out DIR [--fov DEG] [--poses FILE.json] [--preset preview]

Runs scripts/video2pano.py's steps, then the pipeline's own stages on the 360° video: panorama.png
(its first frame), depth.npz, world.ply (+ world.spz), preview.mp4 and contact_sheet.png. Without
translations in --poses the 360° frames all sit at one point (the camera only turned): the world is
what one viewpoint sees. Bad input prints `error: ...` and exits with code 2, writing nothing.
"""

import sys

from matrix_world.app.cli import run_main


def main(argv=None) -> int:
    from matrix_world.app.video_cli import video2world_main

    return video2world_main(argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
