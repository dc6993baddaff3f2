"""Photo or 360-degree panorama -> explorable 3D world of Gaussian splats.

    python scripts/image2world.py photo.jpg --prompt "a mountain lake"
    python scripts/image2world.py pano.png --panorama [--distance distance.npy]
"""

import sys

from matrix_world.app.cli import run_main


def main(argv=None) -> int:
    from matrix_world.app.world_cli import image2world_main

    return image2world_main(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
