"""A local web viewer for a world of 3D Gaussians and its camera trajectories (viser).

``python scripts/view.py RUN_DIR`` (or ``world.ply``; .spz and .splat work too) serves a page at
http://127.0.0.1:8080 that draws the splats with viser's WebGL Gaussian splat renderer,
the run's camera trajectories (a polyline plus camera frustums per trajectory; every
segment of a chained world is drawn in its own colour) and starts the camera at the first
trajectory pose.

Conventions (DESIGN.md §3):

* Everything is shown in the world frame as stored: OpenCV axes (x right, y down,
  z forward), world = the first camera of the first segment. The scene's up direction is
  set to -y, so the world appears upright and the orbit controls turn about -y.
* Trajectories are read from ``trajectory.json`` files (``{"convention": "opencv_c2w",
  "poses": [[16 floats, row-major c2w], ...], "fps": ...}``): the run directory's own,
  plus ``segments/<name>/trajectory.json`` for each segment the manifest lists
  (``"segments": {name: relative path}``). Segment poses are drawn as stored, i.e. they
  must be in the world frame.
* Colours are the view-independent SH DC term, ``0.5 + C0 * sh_dc`` clamped to [0, 1];
  viser's renderer has no higher SH bands, so view-dependent colour is dropped.
* A browser holds a bounded number of splats: worlds above ``max_gaussians`` (default
  2,000,000) are pruned to the most important ones (``Gaussians.prune``: opacity x
  volume); Gaussians with opacity < 1/255 are never sent (they draw nothing).

Controls (viser 1.1.1's client; see :data:`CONTROLS_HELP`): mouse drag orbits about the
look-at point, right drag pans, wheel zooms; W/S move forward/back, A/D left/right, Q/E
down/up (2 scene units per second, fixed in viser's client), arrow keys turn. The GUI
panel switches between first-person (look-at point just ahead of the camera, so dragging
looks around in place) and orbit (look-at point at the world's centre), and jumps to any
trajectory frame.

``viser`` is an optional dependency, imported only when a viewer is started.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from matrix_world.errors import InputError, require
from matrix_world.gaussians import Gaussians, rotmat_to_quat
from matrix_world.splat_io import FORMATS, load_splats

if TYPE_CHECKING:
    import viser

VISER_INSTALL = "pip install viser==1.1.1"
DEFAULT_MAX_GAUSSIANS = 2_000_000
MIN_VISIBLE_OPACITY = 1.0 / 255.0  # below this a splat adds less than one 8-bit level
WORLD_UP = (0.0, -1.0, 0.0)  # OpenCV world: -y is up
TRAJECTORY_COLORS = ((255, 140, 0), (220, 0, 220), (0, 190, 210), (240, 200, 0), (140, 90, 255), (120, 120, 120))
CONTROLS_HELP = """\
**Mouse**: drag to look around (first person) or orbit (orbit mode); right-drag pans; wheel zooms.

**Keys** (click the 3D view first): **W/S** forward/back, **A/D** left/right, **Q/E** down/up,
**arrows** turn. Keys move 2 scene units per second.
"""


# --------------------------------------------------------------------------- inputs


@dataclass
class CameraPath:
    """One trajectory to draw. ``c2w`` [C, 4, 4] float64, OpenCV camera-to-world."""

    name: str
    c2w: np.ndarray
    fps: float = 16.0

    @property
    def positions(self) -> np.ndarray:
        """Camera centres [C, 3]."""
        return self.c2w[:, :3, 3]


def read_camera_path(path: str | os.PathLike, name: str | None = None) -> CameraPath:
    """Read our ``trajectory.json`` (``{"convention": "opencv_c2w", "poses": [[16 floats]], "fps"}``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read trajectory {path}: {exc}") from exc
    if not isinstance(data, dict) or "poses" not in data:
        raise InputError(f"trajectory {path} must be a JSON object with 'poses' (a list of 16-float row-major c2w matrices)")
    convention = data.get("convention", "opencv_c2w")
    if convention != "opencv_c2w":
        raise InputError(f"trajectory {path} has convention {convention!r}; the viewer reads 'opencv_c2w'")
    try:
        c2w = np.asarray(data["poses"], dtype=np.float64).reshape(-1, 4, 4)
    except (TypeError, ValueError) as exc:
        raise InputError(f"trajectory {path}: 'poses' must be a list of 16-float row-major 4x4 matrices ({exc})") from exc
    if len(c2w) == 0 or not np.isfinite(c2w).all():
        raise InputError(f"trajectory {path}: expected at least one pose with finite values")
    fps = float(data.get("fps", 16.0))
    return CameraPath(name=name or path.parent.name or "trajectory", c2w=c2w, fps=fps)


def find_camera_paths(run_dir: str | os.PathLike) -> list[CameraPath]:
    """The run's trajectory and every listed segment's, in order; identical paths drawn once.

    Segments come from ``manifest.json``: ``"segments"`` as ``{name: relative dir}`` (what
    ``RunDir.segment`` writes) or a list of relative dirs / ``{"name", "dir"}`` objects.
    A listed segment without a ``trajectory.json`` is skipped.
    """
    run_dir = Path(run_dir)
    found: list[tuple[str, Path]] = []
    if (run_dir / "trajectory.json").is_file():
        found.append(("run", run_dir / "trajectory.json"))
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        try:
            segments = json.loads(manifest.read_text()).get("segments") or {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise InputError(f"cannot read {manifest}: {exc}") from exc
        if isinstance(segments, dict):
            items = list(segments.items())
        else:
            items = []
            for i, seg in enumerate(segments):
                if isinstance(seg, dict):
                    items.append((str(seg.get("name", i)), seg.get("dir") or seg.get("path")))
                else:
                    items.append((str(i), seg))
        for name, rel in items:
            if isinstance(rel, str) and (run_dir / rel / "trajectory.json").is_file():
                found.append((f"segment {name}", run_dir / rel / "trajectory.json"))
    paths: list[CameraPath] = []
    for name, file in found:
        path = read_camera_path(file, name)
        if not any(p.c2w.shape == path.c2w.shape and np.allclose(p.c2w, path.c2w) for p in paths):
            paths.append(path)
    return paths


def resolve_world(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """``world.ply`` (or .spz/.splat) or a run directory -> (splat file, run directory
    holding trajectories, or None)."""
    path = Path(path)
    if path.is_dir():
        ply = path / "world.ply"
        if not ply.is_file():
            raise InputError(f"{path} has no world.ply; expected a run directory (from text2world, image2world "
                             "or explore) or a splat file")
        return ply, path
    if not path.is_file():
        raise InputError(f"{path} does not exist; expected a splat file ({'/'.join(FORMATS)}) or a run directory")
    if path.suffix.lower() not in FORMATS:
        raise InputError(f"{path} is not a splat file; expected {', '.join(FORMATS)} or a run directory")
    parent = path.parent
    has_run = (parent / "trajectory.json").is_file() or (parent / "manifest.json").is_file()
    return path, parent if has_run else None


# --------------------------------------------------------------------------- splats for the browser


@dataclass
class SplatArrays:
    """What viser's splat renderer takes, float32 numpy.

    centers [N, 3]; covariances [N, 3, 3] (R S^2 R^T); rgbs [N, 3] in [0, 1];
    opacities [N, 1] in [0, 1]; total: how many Gaussians the world had before
    dropping invisible ones and pruning to the browser budget.
    """

    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray
    total: int

    def __len__(self) -> int:
        return int(self.centers.shape[0])


def splats_for_browser(gaussians: Gaussians, max_gaussians: int = DEFAULT_MAX_GAUSSIANS) -> SplatArrays:
    """Drop invisible Gaussians (opacity < 1/255), prune to ``max_gaussians`` by importance
    (opacity x volume), and convert to the arrays viser draws."""
    if max_gaussians < 1:
        raise InputError(f"max_gaussians must be >= 1, got {max_gaussians}")
    total = len(gaussians)
    g = gaussians.detach().to("cpu", torch.float32).validated(drop_invalid=True, name="splats for the viewer")
    g = g.filter_opacity(MIN_VISIBLE_OPACITY).prune(max_gaussians)
    return SplatArrays(
        centers=g.means.numpy().astype(np.float32),
        covariances=g.covariances().numpy().astype(np.float32),
        rgbs=g.rgb.numpy().astype(np.float32),
        opacities=g.opacities.numpy().astype(np.float32)[:, None],
        total=total,
    )


# --------------------------------------------------------------------------- the scene


@dataclass
class ViewerConfig:
    """host/port: where to serve (127.0.0.1 keeps it local; port 0 picks a free one).
    max_gaussians: browser budget (see the module docstring).
    max_frustums: camera frustums drawn per trajectory (evenly spaced, first and last kept).
    frustum_scale: frustum size in scene units; None = 4% of the world's median radius.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    max_gaussians: int = DEFAULT_MAX_GAUSSIANS
    max_frustums: int = 40
    frustum_scale: float | None = None
    title: str = "matrix_world"


def _wxyz(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] -> quaternion (w, x, y, z) [4]."""
    return rotmat_to_quat(torch.as_tensor(rotation, dtype=torch.float64)).numpy()


def _evenly(count: int, limit: int) -> np.ndarray:
    """At most ``limit`` indices spread over range(count), first and last included."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, max(limit, 2))).astype(int))


@dataclass
class WorldViewer:
    """A running viewer: the viser server, its scene handles and what it shows."""

    server: viser.ViserServer
    splats: SplatArrays
    paths: list[CameraPath]
    splat_handle: object | None
    path_handles: list[object] = field(default_factory=list)
    frustum_handles: list[object] = field(default_factory=list)
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    look_distance: float = 0.1

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        host = self.server.get_host()
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{'[' + shown + ']' if ':' in shown else shown}:{self.port}"

    def camera_targets(self, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, look_at) that put a viewer camera at ``c2w`` in first-person mode."""
        position = c2w[:3, 3]
        forward = c2w[:3, 2] / np.linalg.norm(c2w[:3, 2])
        return position, position + self.look_distance * forward

    def move_camera(self, client, c2w: np.ndarray) -> None:
        """Put one browser's camera at pose ``c2w`` [4, 4], first-person, horizon level (-y up)."""
        position, look_at = self.camera_targets(c2w)
        with client.atomic():
            client.camera.up_direction = WORLD_UP
            client.camera.position = position
            client.camera.look_at = look_at

    def stop(self) -> None:
        self.server.stop()


def _scene_radius(centers: np.ndarray, origin: np.ndarray) -> float:
    if len(centers) == 0:
        return 1.0
    r = float(np.median(np.linalg.norm(centers - origin, axis=-1)))
    return r if math.isfinite(r) and r > 1e-6 else 1.0


def build_scene(server, splats: SplatArrays, paths: list[CameraPath], config: ViewerConfig) -> WorldViewer:
    """Put the splats, trajectories, initial camera and GUI into a viser server's scene."""
    server.scene.set_up_direction(WORLD_UP)
    server.gui.configure_theme(show_share_button=False, dark_mode=False)
    splat_handle = None
    if len(splats):
        splat_handle = server.scene.add_gaussian_splats(
            "/world", centers=splats.centers, covariances=splats.covariances, rgbs=splats.rgbs, opacities=splats.opacities)
    start = paths[0].c2w[0] if paths else np.eye(4)  # the first trajectory pose, else the world frame
    center = np.median(splats.centers, axis=0).astype(np.float64) if len(splats) else start[:3, 3] + start[:3, 2]
    radius = _scene_radius(splats.centers, start[:3, 3])
    viewer = WorldViewer(server=server, splats=splats, paths=paths, splat_handle=splat_handle,
                         center=center, look_distance=max(0.05 * radius, 0.02))

    scale = config.frustum_scale if config.frustum_scale is not None else 0.04 * radius
    for k, path in enumerate(paths):
        color = TRAJECTORY_COLORS[k % len(TRAJECTORY_COLORS)]
        pos = path.positions.astype(np.float32)
        if len(pos) > 1:
            segs = np.stack([pos[:-1], pos[1:]], axis=1)  # [C-1, 2, 3]
            viewer.path_handles.append(server.scene.add_line_segments(
                f"/trajectories/{k}/path", points=segs, colors=color, thickness=3.0, thickness_units="screen"))
        for i in _evenly(len(path.c2w), config.max_frustums):
            viewer.frustum_handles.append(server.scene.add_camera_frustum(
                f"/trajectories/{k}/frame_{i:05d}", fov=math.radians(60.0), aspect=16 / 9, scale=scale,
                thickness=1.5, thickness_units="screen", color=color,
                wxyz=_wxyz(path.c2w[i, :3, :3]), position=path.c2w[i, :3, 3]))

    position, look_at = viewer.camera_targets(start)
    far = max(1000.0, 20.0 * float(np.abs(splats.centers).max(initial=0.0)))
    server.initial_camera.position = position
    server.initial_camera.look_at = look_at
    server.initial_camera.near = 1e-3 * radius
    server.initial_camera.far = far
    _add_gui(server, viewer)
    return viewer


def _add_gui(server, viewer: WorldViewer) -> None:
    """Navigation panel: help text, first-person/orbit switch, jump to a trajectory frame."""
    s = viewer.splats
    shown = f"{len(s):,} splats" + (f" of {s.total:,} (the rest: invisible or over the budget)" if len(s) < s.total else "")
    server.gui.add_markdown(f"{shown}; {len(viewer.paths)} trajectory(ies).\n\n" + CONTROLS_HELP)
    mode = server.gui.add_dropdown("Mouse drag", options=("look around (first person)", "orbit the world"))

    @mode.on_update
    def _(event) -> None:
        client = event.client
        if client is None:
            return
        cam = client.camera
        if mode.value.startswith("orbit"):
            cam.look_at = viewer.center
        else:
            forward = cam.look_at - cam.position
            forward = forward / max(np.linalg.norm(forward), 1e-12)
            cam.look_at = cam.position + viewer.look_distance * forward

    if not viewer.paths:
        return
    names = [p.name for p in viewer.paths]
    which = server.gui.add_dropdown("Trajectory", options=names)
    frame = server.gui.add_slider("Frame", min=0, max=max(1, max(len(p.c2w) for p in viewer.paths) - 1), step=1, initial_value=0)
    go = server.gui.add_button("Go to frame")

    @go.on_click
    def _(event) -> None:
        client = event.client
        if client is None:
            return
        path = viewer.paths[names.index(which.value)]
        viewer.move_camera(client, path.c2w[min(int(frame.value), len(path.c2w) - 1)])


def start_viewer(path: str | os.PathLike, config: ViewerConfig | None = None, *, verbose: bool = False) -> WorldViewer:
    """Load a splat file (or RUN_DIR/world.ply and its trajectories) and start serving.

    Returns at once; the server runs in its own thread until ``viewer.stop()``.
    """
    config = config or ViewerConfig()
    ply, run_dir = resolve_world(path)
    splats = splats_for_browser(load_splats(ply), config.max_gaussians)
    paths = find_camera_paths(run_dir) if run_dir is not None else []
    viser = require("viser", VISER_INSTALL)
    server = viser.ViserServer(host=config.host, port=config.port, label=config.title, verbose=verbose)
    try:
        return build_scene(server, splats, paths, config)
    except BaseException:
        server.stop()
        raise
