#!/usr/bin/env python
"""Convert 3D Gaussian splat files between .ply, .spz and .splat (and fix Matrix-3D's .ply).

    python scripts/convert_splats.py IN OUT [--axes PRESET]

The output extension picks the format. Input .ply files may be standard 3DGS, another
tool's (extra properties are ignored with a note) or one of Matrix-3D's variants (a
`filter_3D` field is fused into scales/opacities; opacities stored in [0, 1] become logits);
the output is always standard. --axes re-expresses the splats for a viewer or engine
(opencv = as trained, opengl/three.js, blender, unity, unreal in centimetres); .spz always
stores its own RUB axes. Bad input prints `error: ...` and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from matrix_world.axes import PRESET_NAMES, from_axes
from matrix_world.app.cli import note, positive_int, run_main
from matrix_world.splat_io import FORMATS, load_splats, save_splats


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, help=f"splat file ({', '.join(FORMATS)})")
    p.add_argument("output", type=Path, help=f"output file; its extension ({', '.join(FORMATS)}) picks the format")
    p.add_argument("--axes", default="opencv", choices=PRESET_NAMES, help="export axis preset (default: opencv, as trained)")
    p.add_argument("--in-axes", default="opencv", choices=PRESET_NAMES,
                   help="axis preset the INPUT .ply/.splat was exported with (default: opencv)")
    p.add_argument("--opacity", default="auto", choices=("auto", "logit", "linear"),
                   help=".ply input: how the opacity column is stored (auto detects Matrix-3D's [0, 1] variant)")
    p.add_argument("--min-opacity", type=float, default=0.0, help="drop Gaussians below this opacity (default: keep all)")
    p.add_argument("--budget", type=positive_int, default=None,
                   help="keep at most this many Gaussians, the most important (opacity x volume) first")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = load_splats(args.input, opacity=args.opacity)
        if args.input.suffix.lower() != ".spz":
            g = from_axes(g, args.in_axes)
        n_in = len(g)
        if args.min_opacity > 0:
            g = g.filter_opacity(args.min_opacity)
        if args.budget is not None:
            g = g.prune(args.budget)
        save_splats(args.output, g, axes=args.axes)
    for w in caught:
        if issubclass(w.category, UserWarning):  # SplatNote and validation warnings
            note(str(w.message))
    print(f"wrote {args.output}: {len(g)} Gaussians (of {n_in} read), SH degree {g.sh_degree}, axes {args.axes}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
