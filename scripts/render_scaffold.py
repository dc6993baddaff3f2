#!/usr/bin/env python
"""Render the occlusion-aware scaffold video of a panorama along a camera path.

    python scripts/render_scaffold.py --panorama P.png --distance D.npy \
        --trajectory straight --frames 81 --height 256 --out DIR

Writes DIR/scaffold.npz (rgb [F,H,2H,3] uint8, mask [F,H,2H] bool), DIR/trajectory.json
(the c2w poses rendered), DIR/scaffold_rgb.mp4, DIR/scaffold_mask.mp4 and
DIR/manifest.json. Rerunning with the same inputs and options skips finished stages.
Bad input prints `error: ...` and exits with code 2, writing nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from matrix_world.app.cli import finite_float, note, positive_float, positive_int, run_main
from matrix_world.pipeline.scaffold_job import (
    BACKENDS,
    CUSTOM_SCALES,
    ScaffoldJob,
    run_scaffold_job,
)
from matrix_world.trajectory import PRESETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--panorama", required=True, type=Path, help="equirect image, 8-bit RGB, width = 2 x height")
    p.add_argument("--distance", required=True, type=Path,
                   help="float32 [H, W] .npy of distance along each pixel's ray, same size as the panorama "
                        "(> 0; +inf = sky); an .npz with a 'distance' array also works")
    p.add_argument("--trajectory", required=True,
                   help=f"a preset ({', '.join(PRESETS)}) or a .json file: {{\"convention\": \"opencv_c2w\", "
                        "\"poses\": [[16 floats], ...], \"fps\": 16}} or Matrix-3D's list of 4x4 world-to-camera matrices")
    p.add_argument("--frames", type=positive_int, default=None, help="frame count (presets: default 81; files: their own)")
    p.add_argument("--height", type=positive_int, default=256, help="output equirect height; width = 2 x height (default 256)")
    p.add_argument("--out", required=True, type=Path, help="run directory (created; finished stages are reused)")
    p.add_argument("--yaw", type=finite_float, default=0.0, help="presets: motion azimuth in degrees, turning right (default 0)")
    p.add_argument("--move", type=positive_float, default=0.6,
                   help="presets: path length as a fraction of the distance ahead (Matrix-3D: 0.6)")
    p.add_argument("--custom-scale", choices=sorted(CUSTOM_SCALES), default="auto",
                   help="files: keep the poses' lengths, or fit them like Matrix-3D (farthest camera at half "
                        "the distance in its direction); auto = fit Matrix-3D lists, keep our JSON")
    p.add_argument("--fps", type=positive_float, default=None, help="video frame rate (default: the file's, or 16)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="renderer: cuda (nvdiffrast) or cpu")
    p.add_argument("--device", default=None, help="cuda backend: which GPU, e.g. cuda:1 (default cuda)")
    p.add_argument("--occlusion-threshold", type=positive_float, default=0.05,
                   help="a vertex is unknown where (max-min)/d over its 3x3 neighbourhood exceeds this")
    p.add_argument("--decimate", type=positive_int, default=1,
                   help="one mesh vertex per NxN pixel block (must divide the panorama size; faster on CPU)")
    p.add_argument("--mesh-out", choices=("ply", "glb"), default=None, help="also write DIR/scaffold_mesh.ply or .glb")
    p.add_argument("--allow-convert", action="store_true",
                   help="convert gray / RGBA / 16-bit panoramas to RGB instead of rejecting them")
    p.add_argument("--force", action="store_true", help="rerun every stage even if its outputs are up to date")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    job = ScaffoldJob(panorama=args.panorama, distance=args.distance, trajectory=args.trajectory, out=args.out,
                      frames=args.frames, height=args.height, yaw=args.yaw, move=args.move,
                      custom_scale=args.custom_scale, fps=args.fps, backend=args.backend, device=args.device,
                      occlusion_threshold=args.occlusion_threshold, decimate=args.decimate, mesh_out=args.mesh_out,
                      allow_convert=args.allow_convert, force=args.force)
    run = run_scaffold_job(job, log=lambda msg: print(msg, flush=True), note=note)
    print(f"wrote {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
