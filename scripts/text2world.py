"""Text -> explorable 3D world of Gaussian splats.

    python scripts/text2world.py "a quiet harbour town at sunset"
    python scripts/text2world.py "a forest clearing" --preset quality --trajectory s_curve --resolution 720

Writes world.ply (+ world.spz), preview.mp4, contact_sheet.png and manifest.json into the
run directory (default outputs/<slug>-<timestamp>); rerun with --out DIR to resume.
"""

import sys

from matrix_world.app.cli import run_main


def main(argv=None) -> int:
    from matrix_world.app.world_cli import text2world_main

    return text2world_main(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
