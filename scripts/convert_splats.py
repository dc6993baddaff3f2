#!/usr/bin/env python
"""Convert 3D Gaussian splat files between .ply, .spz, .splat and .glb (and fix Matrix-3D's .ply).

    python scripts/convert_splats.py IN OUT [--axes PRESET] [--spz-axes rub|rdf] [--collider MESH.glb]

The output extension picks the format (.glb: glTF 2.0 with the Khronos KHR_gaussian_splatting
extension, in glTF's axes). Input .ply files may be standard 3DGS, another
tool's (extra properties are ignored with a note) or one of Matrix-3D's variants (a
`filter_3D` field is fused into scales/opacities; opacities stored in [0, 1] become logits);
the output is always standard. --axes re-expresses the splats for a viewer or engine
(opencv = as trained, opengl/three.js, blender, unity, unreal in centimetres); .spz always
stores the axes --spz-axes names (rub, the SPZ spec's, is the default; rdf stores our frame raw,
as the .ply, for readers that take .spz raw) for .spz read and written. --collider also writes a
closed, decimated collider mesh of the (filtered) splats for game engines. Bad input prints
`error: ...` and exits with code 2.
"""

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from matrix_world.axes import PRESET_NAMES, from_axes
from matrix_world.errors import InputError
from matrix_world.app.cli import (
    choices_metavar,
    note,
    parse_options,
    require_finite,
    require_one_of,
    require_positive,
    run_main,
)
from matrix_world.splat_io import OPACITY_MODES, SPZ_AXES, load_splats, save_splats



@dataclass
class ConvertOptions:
    """Options of scripts/convert_splats.py."""

    input: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="IN")]
    """Splat file (.ply, .spz, .splat, .glb)."""
    output: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """Output file; its extension (.ply, .spz, .splat, .glb) picks the format."""
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
    spz_axes: Annotated[str, choices_metavar(SPZ_AXES)] = "rub"
    """Axes of .spz files read or written: rub (the SPZ spec; converted) or rdf (our frame raw, like .ply)."""
    collider: Path | None = None
    """Also write a collider mesh (.glb: closed, decimated, glTF axes) of the splats to this path."""
    collider_resolution: int = 128
    """Collider voxels along the longest side of the scene (finer = more detail, more triangles)."""
    collider_faces: int = 50_000
    """Collider triangle budget after decimation (0 = no decimation)."""
    collider_max_distance: float | None = None
    """Collider: ignore splats farther than this from the origin (default: a sky shell is detected and dropped)."""

    def check(self) -> None:
        require_one_of(self, "axes", PRESET_NAMES)
        require_one_of(self, "in_axes", PRESET_NAMES)
        require_one_of(self, "opacity", OPACITY_MODES)
        require_finite(self, "min_opacity")
        require_positive(self, "budget")
        require_one_of(self, "spz_axes", SPZ_AXES)
        require_finite(self, "collider_max_distance")
        if self.collider is not None:
            if self.collider.suffix.lower() != ".glb":
                raise InputError(f"--collider must be a .glb path, got {self.collider.name!r}")
            if self.collider.resolve() == self.output.resolve():
                raise InputError("--collider must differ from OUT (the splats)")
            self.collider_config().check()

    def collider_config(self):
        from matrix_world.collider import ColliderConfig

        return ColliderConfig(resolution=self.collider_resolution, target_faces=self.collider_faces,
                              max_distance=self.collider_max_distance)


def main(argv=None) -> int:
    options = parse_options(ConvertOptions, argv, prog="convert_splats.py", doc=__doc__)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = load_splats(options.input, opacity=options.opacity, spz_axes=options.spz_axes)
        if options.input.suffix.lower() not in (".spz", ".glb"):  # both define their own axes
            g = from_axes(g, options.in_axes)
        n_in = len(g)
        if options.min_opacity > 0:
            g = g.filter_opacity(options.min_opacity)
        if options.budget is not None:
            g = g.prune(options.budget)
        save_splats(options.output, g, axes=options.axes, spz_axes=options.spz_axes)
        mesh = None
        if options.collider is not None:
            from matrix_world.collider import collider_mesh, write_collider

            mesh = collider_mesh(g, options.collider_config())
            write_collider(options.collider, mesh)
    for w in caught:
        if issubclass(w.category, UserWarning):  # SplatNote and validation warnings
            note(str(w.message))
    print(f"wrote {options.output}: {len(g)} Gaussians (of {n_in} read), SH degree {g.sh_degree}, axes {options.axes}")
    if mesh is not None:
        print(f"wrote {options.collider}: collider of {len(mesh.faces)} triangles, {len(mesh.vertices)} vertices "
              f"(voxel {mesh.voxel_size:.3g}, from {mesh.gaussians_used} Gaussians), glTF axes")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
