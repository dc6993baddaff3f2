"""Continue a world: add a segment along a new camera path and merge it into RUN_DIR/world.ply.

    python scripts/explore.py outputs/harbour-20261121-101500 --trajectory straight
    python scripts/explore.py RUN_DIR --trajectory r_curve --start-frame 40
"""

import sys

from matrix_world.app.cli import run_main


def main(argv=None) -> int:
    from matrix_world.app.world_cli import explore_main

    return explore_main(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
