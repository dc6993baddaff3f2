"""Axis presets for exporting splats to viewers and engines (applied only at export).

Our world frame is OpenCV's (DESIGN.md §3): x right, y down, z forward, right-handed, in the
scene's units (metres when the depth is metric). A preset is a similarity ``x' = s M x``
taking our coordinates to the target's:

=========  ==========================================  ============  ========  =====
preset     target axes (expressed in ours)              handedness    det M     scale
=========  ==========================================  ============  ========  =====
opencv     x right, y down, z forward (no change)       right         +1        1
opengl     x right, y up, z backward (three.js, Spark)  right         +1        1
gltf       x left, y up, z forward (glTF 2.0)           right         +1        1
blender    x right, y forward, z up                     right         +1        1
unity      x right, y up, z forward                     left          -1        1
unreal     x forward, y right, z up, centimetres        left          -1        100
=========  ==========================================  ============  ========  =====

``threejs`` / ``three.js`` are aliases of ``opengl``. ``gltf`` is glTF 2.0's frame ("+Y up, +Z
forward, -X right": our frame turned 180 degrees about z; the frame PlayCanvas splat-transform's
.glb writer uses, and Niantic's spz library calls LUF). The four right-handed presets are
proper rotations. The left-handed ones are reflections (det -1): a Gaussian's covariance
still maps exactly as ``Sigma' = s^2 M Sigma M^T``, and its rotation is re-expressed as the
proper rotation ``R' = M R diag(1, 1, -1)`` (flipping one local axis of a Gaussian changes
nothing because its density is symmetric). Higher SH bands are transformed with the same M
(``Gaussians.transform``).

Which preset to pick: tools that read a standard 3DGS .ply and convert it themselves
(SuperSplat, most Unity/Unreal splat plug-ins, nerfstudio) expect the file as trained, i.e.
``opencv``. Use ``opengl`` for three.js-style viewers that show raw .ply data upside down,
and the engine presets when the points go straight into the engine's own frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from matrix_world.errors import InputError
from matrix_world.gaussians import Gaussians


@dataclass(frozen=True)
class AxisPreset:
    """Our (OpenCV) frame -> a target frame: ``x' = scale * matrix @ x``."""

    name: str
    matrix: tuple  # 3x3 rows: each target axis written in our coordinates
    scale: float
    description: str

    def linear(self, dtype=torch.float64) -> Tensor:
        """``scale * M`` [3, 3]."""
        return self.scale * torch.tensor(self.matrix, dtype=dtype)

    def transform(self, dtype=torch.float64) -> Tensor:
        """The similarity as a 4x4 matrix (no translation)."""
        out = torch.eye(4, dtype=dtype)
        out[:3, :3] = self.linear(dtype)
        return out

    @property
    def is_reflection(self) -> bool:
        return bool(torch.linalg.det(torch.tensor(self.matrix, dtype=torch.float64)) < 0)


PRESETS: dict[str, AxisPreset] = {
    "opencv": AxisPreset("opencv", ((1, 0, 0), (0, 1, 0), (0, 0, 1)), 1.0, "x right, y down, z forward (ours; standard 3DGS .ply)"),
    "opengl": AxisPreset("opengl", ((1, 0, 0), (0, -1, 0), (0, 0, -1)), 1.0, "x right, y up, z backward (OpenGL, three.js, Spark)"),
    "gltf": AxisPreset("gltf", ((-1, 0, 0), (0, -1, 0), (0, 0, 1)), 1.0, "x left, y up, z forward (glTF 2.0: -X right)"),
    "blender": AxisPreset("blender", ((1, 0, 0), (0, 0, 1), (0, -1, 0)), 1.0, "x right, y forward, z up (Blender)"),
    "unity": AxisPreset("unity", ((1, 0, 0), (0, -1, 0), (0, 0, 1)), 1.0, "x right, y up, z forward, left-handed (Unity)"),
    "unreal": AxisPreset("unreal", ((0, 0, 1), (1, 0, 0), (0, -1, 0)), 100.0, "x forward, y right, z up, left-handed, centimetres (Unreal)"),
}
ALIASES = {"threejs": "opengl", "three.js": "opengl", "three": "opengl"}
PRESET_NAMES = tuple(PRESETS) + tuple(ALIASES)


def get_preset(name: str) -> AxisPreset:
    """Look a preset up by name (case-insensitive; aliases accepted)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PRESETS:
        raise InputError(f"unknown axis preset {name!r}; expected one of {', '.join(PRESET_NAMES)}")
    return PRESETS[key]


def to_axes(gaussians: Gaussians, preset: str) -> Gaussians:
    """Express Gaussians (our frame) in a preset's frame, for export."""
    p = get_preset(preset)
    if p.name == "opencv":
        return gaussians
    return gaussians.transform(p.transform())


def from_axes(gaussians: Gaussians, preset: str) -> Gaussians:
    """Inverse of ``to_axes``: Gaussians stored in a preset's frame -> our frame."""
    p = get_preset(preset)
    if p.name == "opencv":
        return gaussians
    return gaussians.transform(torch.linalg.inv(p.transform()))


def points_to_axes(points: Tensor, preset: str) -> Tensor:
    """Points [..., 3] in our frame -> the preset's frame."""
    lin = get_preset(preset).linear(points.dtype).to(points.device)
    return points @ lin.T
