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

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from matrix_world.axes import PRESET_NAMES, from_axes
from matrix_world.app.cli import (
    choices_metavar,
    note,
    parse_options,
    require_finite,
    require_one_of,
    require_positive,
    run_main,
)
from matrix_world.splat_io import OPACITY_MODES, load_splats, save_splats



@dataclass
class ConvertOptions:
    """Options of scripts/convert_splats.py."""

    input: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="IN")]
    """Splat file (.ply, .spz, .splat)."""
    output: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """Output file; its extension (.ply, .spz, .splat) picks the format."""
    axes: Annotated[str, choices_metavar(PRESET_NAMES)] = "opencv"
    """Export axis preset (opencv = as trained)."""
    in_axes: Annotated[str, choices_metavar(PRESET_NAMES)] = "opencv"
    """Axis preset the INPUT .ply/.splat was exported with."""
    opacity: Annotated[str, choices_metavar(OPACITY_MODES)] = "auto"
    """.ply input: how the opacity column is stored (auto detects Matrix-3D's [0, 1] variant)."""
    min_opacity: float = 0.0
    """Drop Gaussians below this opacity (0 keeps all)."""
    budget: int | None = None
    """Keep at most this many Gaussians, the most important (opacity x volume) first; None = all."""

    def check(self) -> None:
        require_one_of(self, "axes", PRESET_NAMES)
        require_one_of(self, "in_axes", PRESET_NAMES)
        require_one_of(self, "opacity", OPACITY_MODES)
        require_finite(self, "min_opacity")
        require_positive(self, "budget")


def main(argv=None) -> int:
    options = parse_options(ConvertOptions, argv, prog="convert_splats.py", doc=__doc__)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = load_splats(options.input, opacity=options.opacity)
        if options.input.suffix.lower() != ".spz":
            g = from_axes(g, options.in_axes)
        n_in = len(g)
        if options.min_opacity > 0:
            g = g.filter_opacity(options.min_opacity)
        if options.budget is not None:
            g = g.prune(options.budget)
        save_splats(options.output, g, axes=options.axes)
    for w in caught:
        if issubclass(w.category, UserWarning):  # SplatNote and validation warnings
            note(str(w.message))
    print(f"wrote {options.output}: {len(g)} Gaussians (of {n_in} read), SH degree {g.sh_degree}, axes {options.axes}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
