#!/usr/bin/env python
r"""Render the occlusion-aware scaffold video of a panorama along a camera path.

    python scripts/render_scaffold.py --panorama P.png --distance D.npy \
        --trajectory straight --frames 81 --height 256 --out DIR

Writes DIR/scaffold.npz (rgb [F,H,2H,3] uint8, mask [F,H,2H] bool), DIR/trajectory.json
(the c2w poses rendered), DIR/scaffold_rgb.mp4, DIR/scaffold_mask.mp4 and
DIR/manifest.json. Rerunning with the same inputs and options skips finished stages.
Bad input prints `error: ...` and exits with code 2, writing nothing.
"""

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from matrix_world.app.cli import (
    choices_metavar,
    note,
    parse_options,
    require_finite,
    require_one_of,
    require_positive,
    run_main,
)
from matrix_world.pipeline.scaffold_job import (
    BACKENDS,
    CUSTOM_SCALES,
    ScaffoldJob,
    run_scaffold_job,
)

MESH_FORMATS = ("ply", "glb")


@dataclass
class ScaffoldOptions:
    """Options of scripts/render_scaffold.py: the fields of ScaffoldJob, documented for --help."""

    panorama: Path
    """Equirect image, 8-bit RGB, width = 2 x height."""
    distance: Path
    """float32 [H, W] .npy of the distance along each pixel's ray, same size as the panorama (> 0; +inf = sky); \
an .npz with a 'distance' array also works."""
    trajectory: str
    """A preset (straight, s_curve, l_curve, r_curve, orbit) or a .json file: {"convention": "opencv_c2w", \
"poses": [[16 floats], ...], "fps": 16} or Matrix-3D's list of 4x4 world-to-camera matrices."""
    out: Path
    """Run directory (created; finished stages are reused)."""
    frames: int | None = None
    """Frame count; None = 81 for a preset, a file's own pose count."""
    height: int = 256
    """Output equirect height; width = 2 x height."""
    yaw: float = 0.0
    """Presets: motion azimuth in degrees, turning right."""
    move: float = 0.6
    """Presets: path length as a fraction of the distance ahead (Matrix-3D: 0.6)."""
    custom_scale: Annotated[str, choices_metavar(sorted(CUSTOM_SCALES))] = "auto"
    """Files: keep the poses' lengths, or fit them like Matrix-3D (farthest camera at half the distance in its \
direction); auto = fit Matrix-3D lists, keep our JSON."""
    fps: float | None = None
    """Video frame rate; None = the file's, or 16."""
    backend: Annotated[str, choices_metavar(BACKENDS)] = "auto"
    """Renderer: cuda (nvdiffrast) or cpu; auto = cuda when available."""
    device: str | None = None
    """cuda backend: which GPU, e.g. cuda:1; None = cuda."""
    occlusion_threshold: float = 0.05
    """A vertex is unknown where (max-min)/d over its 3x3 neighbourhood exceeds this."""
    decimate: int = 1
    """One mesh vertex per NxN pixel block (must divide the panorama size; faster on CPU)."""
    mesh_out: Annotated[str | None, choices_metavar(MESH_FORMATS)] = None
    """Also write DIR/scaffold_mesh.ply or .glb; None = no mesh file."""
    allow_convert: bool = False
    """Convert gray / RGBA / 16-bit panoramas to RGB instead of rejecting them."""
    force: bool = False
    """Rerun every stage even if its outputs are up to date."""

    def check(self) -> None:
        require_positive(self, "frames", "height", "decimate", "move", "fps", "occlusion_threshold")
        require_finite(self, "yaw")
        require_one_of(self, "custom_scale", sorted(CUSTOM_SCALES))
        require_one_of(self, "backend", BACKENDS)
        require_one_of(self, "mesh_out", MESH_FORMATS)


def main(argv=None) -> int:
    options = parse_options(ScaffoldOptions, argv, prog="render_scaffold.py", doc=__doc__)
    job = ScaffoldJob(**dataclasses.asdict(options))  # the same field names
    run = run_scaffold_job(job, log=lambda msg: print(msg, flush=True), note=note)
    print(f"wrote {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
