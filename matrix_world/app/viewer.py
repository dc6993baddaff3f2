"""A local web viewer for a world of 3D Gaussians and its camera trajectories (viser).

``python scripts/view.py RUN_DIR`` (or ``world.ply``; .spz and .splat work too) serves a page at
http://127.0.0.1:8080 that draws the splats with viser's WebGL Gaussian splat renderer,
then the run's camera trajectories (a thin polyline plus a few small camera frusta per
trajectory, all of them behind a toggle; every segment of a chained world in its own colour),
and starts the camera at the first trajectory pose looking along its forward axis. An explored
world (``world_segments.npz`` next to ``world.ply``) lists its segments in the panel, each with
a visibility checkbox (its splats and its trajectory).

Conventions (DESIGN.md §3):

* Everything is shown in the world frame: OpenCV axes (x right, y down, z forward), world =
  the first camera of the first segment, uniformly scaled by ``WorldViewer.scale`` (see
  the walk speed below; directions and proportions are unchanged). The scene's up direction
  is set to -y, so the world appears upright and the orbit controls turn about -y.
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

Controls (viser 1.1.1's client; see ``viewer_gui.controls_help``): mouse drag orbits about the
look-at point, right drag pans, wheel zooms; W/S move forward/back, A/D left/right, Q/E
down/up, arrow keys turn. viser's client moves 2 scene units per second, whatever the scene:
the viewer therefore scales the scene so that this is the walk speed asked for (default:
a fifth of the world's median radius per second, about 5 s to walk it). The GUI panel
switches between first-person (look-at point just ahead of the camera, so dragging looks
around in place) and orbit (look-at point at the world's centre), jumps to any trajectory
frame, and saves a screenshot (PNG) or a recording along a trajectory (MP4), both rendered by
the browser (viser's ``get_render``) and downloaded to it.

The browser gets our build of viser 1.1.1's client (``viser_client/index.html``, made by
``tools/build_viser_client.sh``): viser's own plus ``tools/viser_client_frustum.patch`` on its
Gaussian-splat mesh. That mesh's quad geometry has a 2-component ``position`` attribute, so
three.js computed a NaN bounding sphere (reading a missing z) for frustum culling and for the
transparent-object sort, and logged "BufferGeometry.computeBoundingSphere(): Computed radius is
NaN". The patch gives the geometry a finite bounding sphere and turns frustum culling off (the
shader places every splat; the mesh was never culled). Another installed viser version gets
viser's own client, with a note saying so (see ``viser_server``).

``viser`` is an optional dependency, imported only when a viewer is started.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from matrix_world.errors import InputError, require
from matrix_world.app.viewer_gui import add_gui, evenly, wxyz
from matrix_world.gaussians import Gaussians
from matrix_world.io import load_npz
from matrix_world.splat_io import FORMATS, SplatNote, load_splats

if TYPE_CHECKING:
    import viser

VISER_INSTALL = "pip install viser==1.1.1"
VISER_CLIENT = Path(__file__).with_name("viser_client")  # index.html + built_from.json (tools/build_viser_client.sh)
DEFAULT_MAX_GAUSSIANS = 2_000_000
MIN_VISIBLE_OPACITY = 1.0 / 255.0  # below this a splat adds less than one 8-bit level
WORLD_UP = (0.0, -1.0, 0.0)  # OpenCV world: -y is up
KEY_SPEED = 2.0  # scene units per second of viser 1.1.1's W/A/S/D/Q/E keys (fixed in its client)
ALL_FRUSTA = 200  # most frusta per trajectory behind the "all camera frusta" toggle
TRAJECTORY_COLORS = ((255, 140, 0), (220, 0, 220), (0, 190, 210), (240, 200, 0), (140, 90, 255), (120, 120, 120))


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


def read_segment_ids(run_dir: Path, count: int) -> tuple[np.ndarray, list[str]] | None:
    """An explored world's ``world_segments.npz`` (``segment`` [N] int, ``names`` [S]) -> (ids [N],
    names), or None when there is none. One that does not match ``world.ply`` (another length,
    ids out of range) is ignored with a :class:`SplatNote`: the world is then shown as one part."""
    path = run_dir / "world_segments.npz"
    if not path.is_file():
        return None
    data = load_npz(path)
    ids, names = data.get("segment"), data.get("names")
    if ids is None or names is None or ids.ndim != 1 or len(ids) != count or len(names) == 0 \
            or not np.issubdtype(ids.dtype, np.integer) or ids.min(initial=0) < 0 or ids.max(initial=0) >= len(names):
        warnings.warn(SplatNote(f"{path} does not match world.ply ({count:,} Gaussians): segments not listed"))
        return None
    return ids.astype(np.int64), [str(n) for n in names]


# --------------------------------------------------------------------------- splats for the browser


@dataclass
class SplatArrays:
    """What viser's splat renderer takes, float32 numpy, in world units.

    centers [N, 3]; covariances [N, 3, 3] (R S^2 R^T); rgbs [N, 3] in [0, 1];
    opacities [N, 1] in [0, 1]; segments [N] int64 or None (segment id of each splat in an
    explored world); total: how many Gaussians the world had before dropping invisible ones
    and pruning to the browser budget.
    """

    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray
    total: int
    segments: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.centers.shape[0])

    def subset(self, keep: np.ndarray) -> SplatArrays:
        """The splats where ``keep`` [N] bool holds (``total`` unchanged)."""
        return SplatArrays(self.centers[keep], self.covariances[keep], self.rgbs[keep], self.opacities[keep],
                           self.total, None if self.segments is None else self.segments[keep])


def splats_for_browser(gaussians: Gaussians, max_gaussians: int = DEFAULT_MAX_GAUSSIANS) -> SplatArrays:
    """Drop invisible Gaussians (opacity < 1/255), prune to ``max_gaussians`` by importance
    (opacity x volume), and convert to the arrays viser draws (``segment`` ids carried along)."""
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
        segments=None if g.segment is None else g.segment.numpy().astype(np.int64),
    )


# --------------------------------------------------------------------------- the scene


@dataclass
class ViewerConfig:
    """host/port: where to serve (127.0.0.1 keeps it local; port 0 picks a free one).
    max_gaussians: browser budget (see the module docstring).
    max_frustums: camera frusta drawn per trajectory (evenly spaced, first and last kept);
    the "all camera frusta" toggle shows up to ``ALL_FRUSTA`` per trajectory.
    frustum_scale: frustum size in world units; None = 1% of the world's median radius.
    walk_speed: W/A/S/D speed in world units per second; None = the world's median radius / 5.
    spz_axes: axes of a .spz file ("rub": the SPZ spec, converted; "rdf": our frame raw).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    max_gaussians: int = DEFAULT_MAX_GAUSSIANS
    max_frustums: int = 5
    frustum_scale: float | None = None
    walk_speed: float | None = None
    spz_axes: str = "rub"
    title: str = "matrix_world"


@dataclass
class WorldPart:
    """One visibility unit of the world: the base run or one explored segment."""

    name: str  # "world", or the segment's name in world_segments.npz ("base", "001", ...)
    splats: SplatArrays
    handle: Any = None  # viser's splat handle (None: no splats)


@dataclass
class TrajectoryNodes:
    """The scene nodes of one trajectory: its path, the few frusta, all frusta (hidden at first)."""

    path: CameraPath
    line: Any = None  # viser handles
    frusta: list[Any] = field(default_factory=list)
    all_frusta: list[Any] = field(default_factory=list)


@dataclass
class WorldViewer:
    """A running viewer: the viser server, its scene handles and what it shows.

    Scene coordinates are world coordinates times ``scale`` (so that viser's fixed key speed
    of ``KEY_SPEED`` scene units per second is ``walk_speed`` world units per second).
    """

    server: viser.ViserServer
    splats: SplatArrays
    paths: list[CameraPath]
    parts: list[WorldPart] = field(default_factory=list)
    trajectories: list[TrajectoryNodes] = field(default_factory=list)
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))  # scene coordinates
    look_distance: float = 0.1  # scene units
    scale: float = 1.0
    walk_speed: float = KEY_SPEED  # world units per second
    cameras_shown: bool = True
    all_frusta_shown: bool = False

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        host = self.server.get_host()
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{'[' + shown + ']' if ':' in shown else shown}:{self.port}"

    @property
    def frustum_handles(self) -> list[Any]:
        """The frusta shown by default, all trajectories."""
        return [f for t in self.trajectories for f in t.frusta]

    @property
    def path_handles(self) -> list[Any]:
        return [t.line for t in self.trajectories if t.line is not None]

    def camera_targets(self, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, look_at) in scene coordinates that put a viewer camera at world pose
        ``c2w`` in first-person mode (looking along its +z)."""
        position = self.scale * c2w[:3, 3]
        forward = c2w[:3, 2] / np.linalg.norm(c2w[:3, 2])
        return position, position + self.look_distance * forward

    def move_camera(self, client, c2w: np.ndarray) -> None:
        """Put one browser's camera at world pose ``c2w`` [4, 4], first-person, horizon level (-y up)."""
        position, look_at = self.camera_targets(c2w)
        with client.atomic():
            client.camera.up_direction = WORLD_UP
            client.camera.position = position
            client.camera.look_at = look_at

    def set_part_visible(self, name: str, visible: bool) -> None:
        """Show or hide one part (its splats, and the trajectory of the same segment)."""
        for part in self.parts:
            if part.name == name and part.handle is not None:
                part.handle.visible = visible
        for nodes in self.trajectories:
            if _segment_of(nodes.path.name) == name:
                for h in [nodes.line, *nodes.frusta]:
                    if h is not None:
                        h.visible = visible and self.cameras_shown
                for h in nodes.all_frusta:
                    h.visible = visible and self.cameras_shown and self.all_frusta_shown

    def show_cameras(self, cameras: bool, all_frusta: bool) -> None:
        """Trajectories on/off; ``all_frusta``: every camera's frustum instead of the few."""
        self.cameras_shown, self.all_frusta_shown = cameras, all_frusta
        hidden = {p.name for p in self.parts if p.handle is not None and not p.handle.visible}
        for nodes in self.trajectories:
            on = cameras and _segment_of(nodes.path.name) not in hidden
            if nodes.line is not None:
                nodes.line.visible = on
            for h in nodes.frusta:
                h.visible = on and not all_frusta
            for h in nodes.all_frusta:
                h.visible = on and all_frusta

    def stop(self) -> None:
        self.server.stop()


def _segment_of(path_name: str) -> str:
    """A trajectory's name ("run", "segment 001") -> the part it belongs to ("base", "001")."""
    return path_name.removeprefix("segment ") if path_name.startswith("segment ") else "base"


def _scene_radius(centers: np.ndarray, origin: np.ndarray) -> float:
    if len(centers) == 0:
        return 1.0
    r = float(np.median(np.linalg.norm(centers - origin, axis=-1)))
    return r if math.isfinite(r) and r > 1e-6 else 1.0


def _parts(splats: SplatArrays, names: list[str] | None) -> list[WorldPart]:
    """One part for the whole world, or one per segment (in segment order, empty ones kept)."""
    if names is None or splats.segments is None:
        return [WorldPart("world", splats)]
    return [WorldPart(name, splats.subset(splats.segments == i)) for i, name in enumerate(names)]


def build_scene(server, splats: SplatArrays, paths: list[CameraPath], config: ViewerConfig,
                segment_names: list[str] | None = None) -> WorldViewer:
    """Put the splats (first), the trajectories, the initial camera and the GUI into a viser
    server's scene, scaled by ``KEY_SPEED / walk_speed``."""
    server.scene.set_up_direction(WORLD_UP)
    server.gui.configure_theme(show_share_button=False, dark_mode=False)
    start = paths[0].c2w[0] if paths else np.eye(4)  # the first trajectory pose, else the world frame
    radius = _scene_radius(splats.centers, start[:3, 3])
    walk = config.walk_speed if config.walk_speed is not None else radius / 5.0
    scale = KEY_SPEED / walk
    center = np.median(splats.centers, axis=0).astype(np.float64) if len(splats) else start[:3, 3] + start[:3, 2]
    viewer = WorldViewer(server=server, splats=splats, paths=paths, center=scale * center,
                         look_distance=scale * max(0.05 * radius, 0.02), scale=scale, walk_speed=walk)
    # 1. the world, one splat node per part
    viewer.parts = _parts(splats, segment_names)
    for k, part in enumerate(viewer.parts):
        s = part.splats
        if len(s):
            part.handle = server.scene.add_gaussian_splats(
                f"/world/{k}", centers=scale * s.centers, covariances=scale**2 * s.covariances, rgbs=s.rgbs,
                opacities=s.opacities)
    # 2. the cameras: a thin path, a few small frusta, all frusta hidden behind a toggle
    size = scale * (config.frustum_scale if config.frustum_scale is not None else 0.01 * radius)
    for k, path in enumerate(paths):
        color = TRAJECTORY_COLORS[k % len(TRAJECTORY_COLORS)]
        nodes = TrajectoryNodes(path)
        pos = scale * path.positions
        if len(pos) > 1:
            segs = np.stack([pos[:-1], pos[1:]], axis=1).astype(np.float32)  # [C-1, 2, 3]
            nodes.line = server.scene.add_line_segments(
                f"/cameras/{k}/path", points=segs, colors=color, thickness=1.5, thickness_units="screen")
        few = evenly(len(path.c2w), config.max_frustums)
        if k == 0 and len(few) > 1:
            few = few[1:]  # the start pose: the viewer's own camera stands there
        for group, indices, visible in ((nodes.frusta, few, True),
                                        (nodes.all_frusta, evenly(len(path.c2w), ALL_FRUSTA), False)):
            for i in indices:
                group.append(server.scene.add_camera_frustum(
                    f"/cameras/{k}/{'few' if visible else 'all'}/{i:05d}", fov=math.radians(60.0), aspect=16 / 9,
                    scale=size, thickness=1.0, thickness_units="screen", color=color,
                    wxyz=wxyz(path.c2w[i, :3, :3]), position=pos[i], visible=visible))
        viewer.trajectories.append(nodes)
    # 3. the start: the first camera, looking forward
    position, look_at = viewer.camera_targets(start)
    server.initial_camera.position = position
    server.initial_camera.look_at = look_at
    server.initial_camera.near = 1e-3 * scale * radius
    server.initial_camera.far = max(1000.0, 20.0 * scale * float(np.abs(splats.centers).max(initial=0.0)))
    # 4. the panel
    add_gui(server, viewer)
    return viewer


def viser_server(config: ViewerConfig, *, verbose: bool = False) -> viser.ViserServer:
    """A started ``viser.ViserServer`` that serves our client (``VISER_CLIENT``) when the installed
    viser is the version it was built from, else viser's own client and a :class:`SplatNote` saying so.

    viser 1.1.1 fixes its HTTP root when ``ViserServer.__init__`` starts the server thread, reading
    ``_http_server_root`` of the ``infra.WebsockServer`` it has just stored as ``_websock_server``
    (setting it afterwards does nothing); the subclass sets ours as it is stored.
    """
    viser = require("viser", VISER_INSTALL)
    stock: Any = viser.ViserServer
    options = dict(host=config.host, port=config.port, label=config.title, verbose=verbose)
    try:
        built_from = str(json.loads((VISER_CLIENT / "built_from.json").read_text())["viser"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        built_from = f"? ({exc})"
    if not (VISER_CLIENT / "index.html").is_file():
        built_from = f"? (no {VISER_CLIENT / 'index.html'})"
    if viser.__version__ != built_from:
        warnings.warn(SplatNote(f"our viser client was built for viser {built_from} but viser {viser.__version__} is "
                                "installed: serving viser's own client (the browser may log 'Computed radius is NaN')"))
        return stock(**options)

    class OurClientServer(stock):
        @property
        def _websock_server(self):
            return self.__dict__["_websock_server"]

        @_websock_server.setter
        def _websock_server(self, websock) -> None:
            websock._http_server_root = VISER_CLIENT
            self.__dict__["_websock_server"] = websock

    return OurClientServer(**options)


def start_viewer(path: str | os.PathLike, config: ViewerConfig | None = None, *, verbose: bool = False) -> WorldViewer:
    """Load a splat file (or RUN_DIR/world.ply, its trajectories and segments) and start serving.

    Returns at once; the server runs in its own thread until ``viewer.stop()``.
    """
    config = config or ViewerConfig()
    ply, run_dir = resolve_world(path)
    gaussians = load_splats(ply, spz_axes=config.spz_axes)
    segments = read_segment_ids(run_dir, len(gaussians)) if run_dir is not None and ply.name == "world.ply" else None
    if segments is not None:
        gaussians.segment = torch.from_numpy(segments[0])
    splats = splats_for_browser(gaussians, config.max_gaussians)
    paths = find_camera_paths(run_dir) if run_dir is not None else []
    server = viser_server(config, verbose=verbose)
    try:
        return build_scene(server, splats, paths, config, None if segments is None else segments[1])
    except BaseException:
        server.stop()
        raise
