#!/usr/bin/env python
"""Perspective video -> 360° video (Argus / ViewPoint): orientations, canvas, the video model fills the rest.

    python scripts/video2pano.py INPUT.mp4 --out DIR [--fov DEG] [--poses FILE.json] [--height H] [--video-backend fill|wan]
    python scripts/video2pano.py INPUT.mp4 --out DIR --stabilize --look 180,0

Writes DIR/trajectory.json (the camera's c2w per frame, world = frame 0's camera, rotation only
unless --poses has translations; the FOV in its meta), DIR/scaffold.npz (+ scaffold_rgb.mp4,
scaffold_mask.mp4: every frame pasted into the equirect at its orientation), DIR/video.npz and
DIR/video.mp4 (the 360° video, world-aligned), stabilized.mp4 / look.mp4 when asked, and
DIR/manifest.json. Rerunning with the same options reuses finished stages. Bad input prints
`error: ...` and exits with code 2, writing nothing.
"""

import sys

from matrix_world.app.cli import run_main


def main(argv=None) -> int:
    from matrix_world.app.video_cli import video2pano_main

    return video2pano_main(argv, __doc__)


if __name__ == "__main__":
    sys.exit(run_main(main))
