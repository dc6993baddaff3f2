"""The splat viewer: .ply reading, browser budget, trajectory discovery, the viser scene,
and a real headless-browser check that the page draws the splats where they should be.

The browser test needs Debian's ``chromium`` (or Chrome). It is skipped with a reason when
none is found, unless ``MATRIX_WORLD_INSTALL_BROWSER=1`` is set and we run as root on a
Debian-like system: then the test installs it with apt-get first (CI's way; a developer
machine is never changed without asking).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from matrix_world.errors import InputError
from matrix_world.gaussians import Gaussians
from matrix_world.splat_io import SplatNote, load_splats, write_ply
from matrix_world.app.viewer_gui import record, screenshot
from matrix_world.app.viewer import (
    KEY_SPEED, TRAJECTORY_COLORS, VISER_CLIENT, ViewerConfig, find_camera_paths, read_camera_path, resolve_world,
    splats_for_browser, start_viewer, viser_server,
)

needs_viser = pytest.mark.skipif(importlib.util.find_spec("viser") is None,
                                 reason="the viewer needs viser: pip install viser==1.1.1")

REPO = Path(__file__).resolve().parents[1]
# Three coloured clusters in front of the start camera: red left (-x), green right (+x),
# blue above (-y is up in OpenCV).
# (Placed to stay clear of viser's panel at the top right of an 800x600 page.)
CLUSTERS = {"red": ((-1.0, 0.6, 4.0), (1.0, 0.0, 0.0)), "green": ((1.0, 0.6, 4.0), (0.0, 1.0, 0.0)),
            "blue": ((0.0, -0.4, 4.0), (0.0, 0.0, 1.0))}
START = (0.0, 0.0, -1.0)  # first trajectory pose: 1 unit behind the world origin, looking +z


# --------------------------------------------------------------------------- fixtures


def write_world(path: Path, means, rgb, scales, opacities, quats) -> None:
    """A standard 3DGS .ply from activated values (numpy)."""
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    write_ply(path, Gaussians.from_values(t(means), t(rgb), t(scales), t(opacities), t(quats)))


def pose(position, yaw_deg: float = 0.0) -> np.ndarray:
    """OpenCV c2w [4, 4]: camera at ``position`` turned right by ``yaw_deg`` about -y."""
    a = math.radians(yaw_deg)
    c2w = np.eye(4)
    c2w[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    c2w[:3, 3] = position
    return c2w


def write_trajectory(path: Path, poses) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"convention": "opencv_c2w", "poses": [p.reshape(16).tolist() for p in poses], "fps": 16}))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory with a few hundred coloured Gaussians and a short forward trajectory."""
    rng = np.random.default_rng(0)
    means, rgb = [], []
    for centre, colour in CLUSTERS.values():
        means.append(rng.normal(centre, 0.12, (100, 3)))
        rgb.append(np.tile(colour, (100, 1)))
    means, rgb = np.concatenate(means), np.concatenate(rgb)
    n = len(means)
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    write_world(tmp_path / "world.ply", means, rgb, np.full((n, 3), 0.06), np.full(n, 0.95), quats)
    # A path curving to the right and down from the start pose (a straight line through the
    # camera would project to a point).
    poses = [pose((0.08 * i * i, 0.1 * i, -1.0 + 0.5 * i)) for i in range(6)]
    write_trajectory(tmp_path / "trajectory.json", poses)
    (tmp_path / "manifest.json").write_text(json.dumps({"segments": {}}))
    return tmp_path


# --------------------------------------------------------------------------- loading


def test_ply_to_browser_arrays_covariances_colours_opacities(tmp_path):
    rng = np.random.default_rng(1)
    n = 50
    means = rng.normal(size=(n, 3))
    rgb = rng.uniform(0.05, 0.95, (n, 3))
    scales = rng.uniform(0.01, 0.5, (n, 3))
    opac = rng.uniform(0.05, 0.95, n)
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    write_world(tmp_path / "g.ply", means, rgb, scales, opac, quats)

    splats = splats_for_browser(load_splats(tmp_path / "g.ply"))
    assert len(splats) == splats.total == n
    np.testing.assert_allclose(splats.centers, means, atol=1e-6)
    np.testing.assert_allclose(splats.rgbs, rgb, atol=1e-5)
    np.testing.assert_allclose(splats.opacities[:, 0], opac, atol=1e-5)
    # Independent covariance: rotation from scipy (x, y, z, w order) and R S^2 R^T.
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_quat(quats[:, [1, 2, 3, 0]]).as_matrix()
    expected = rot @ (scales[:, :, None] ** 2 * rot.transpose(0, 2, 1))
    np.testing.assert_allclose(splats.covariances, expected, rtol=1e-4, atol=1e-7)


def test_browser_budget_drops_invisible_and_keeps_most_important():
    n = 10
    g = Gaussians.from_values(
        means=torch.zeros(n, 3), rgb=torch.full((n, 3), 0.5),
        scales=torch.linspace(0.1, 1.0, n), opacities=torch.full((n,), 0.5))
    g.opacity_logits[0] = -10.0  # opacity 4.5e-5: draws nothing
    splats = splats_for_browser(g, max_gaussians=4)
    assert splats.total == n and len(splats) == 4
    # Importance = opacity x volume: the four largest (indices 6..9) survive.
    kept = np.sort(np.sqrt(np.diagonal(splats.covariances, axis1=1, axis2=2))[:, 0])
    np.testing.assert_allclose(kept, np.linspace(0.1, 1.0, n)[6:], rtol=1e-5)
    assert len(splats_for_browser(g, max_gaussians=100)) == n - 1
    with pytest.raises(InputError):
        splats_for_browser(g, max_gaussians=0)


def test_trajectories_of_chained_segments(run_dir):
    seg_a = [pose((0.08 * i * i, 0.1 * i, -1.0 + 0.5 * i)) for i in range(6)]  # same as the run's: drawn once
    seg_b = [pose((2.0, 0.5, 1.5 + 0.4 * i), yaw_deg=10.0 * i) for i in range(4)]
    write_trajectory(run_dir / "segments" / "a" / "trajectory.json", seg_a)
    write_trajectory(run_dir / "segments" / "b" / "trajectory.json", seg_b)
    (run_dir / "manifest.json").write_text(json.dumps({"segments": {"a": "segments/a", "b": "segments/b", "c": "segments/c"}}))

    paths = find_camera_paths(run_dir)
    assert [p.name for p in paths] == ["run", "segment b"]
    np.testing.assert_allclose(paths[1].c2w, np.stack(seg_b))
    np.testing.assert_allclose(paths[0].positions[-1], (2.0, 0.5, 1.5))


def test_bad_inputs_are_one_line_errors(tmp_path, run_dir, capsys):
    with pytest.raises(InputError, match="does not exist"):
        resolve_world(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no world.ply"):
        resolve_world(tmp_path / "empty")
    with pytest.raises(InputError, match="not a splat file"):
        resolve_world(run_dir / "trajectory.json")
    assert resolve_world(run_dir / "world.ply") == (run_dir / "world.ply", run_dir)
    (tmp_path / "empty" / "bad.ply").write_text("not a ply")
    assert resolve_world(tmp_path / "empty" / "bad.ply") == (tmp_path / "empty" / "bad.ply", None)
    with pytest.raises(InputError, match="not a valid PLY"):
        start_viewer(tmp_path / "empty" / "bad.ply", ViewerConfig(port=0))
    (tmp_path / "traj.json").write_text(json.dumps({"convention": "opengl_c2w", "poses": [np.eye(4).ravel().tolist()]}))
    with pytest.raises(InputError, match="opengl_c2w"):
        read_camera_path(tmp_path / "traj.json")
    # The script: one line on stderr, exit code 2.
    spec = importlib.util.spec_from_file_location("view_script", REPO / "scripts" / "view.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and err.count("\n") == 1
    for bad in (["--walk-speed", "0"], ["--walk-speed", "nan"], ["--max-frustums", "0"]):
        assert script.main([str(run_dir), *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {bad[0]}: expected") and err.count("\n") == 1, err


# --------------------------------------------------------------------------- the scene


@needs_viser
def test_scene_starts_at_first_pose_and_draws_trajectory(run_dir):
    viewer = start_viewer(run_dir, ViewerConfig(port=0, max_frustums=4))
    try:
        assert viewer.url == f"http://127.0.0.1:{viewer.port}" and viewer.port > 0
        assert len(viewer.splats) == 300
        s = viewer.scale  # scene = world x scale
        np.testing.assert_allclose(viewer.server.initial_camera.position, s * np.asarray(START))
        look = viewer.server.initial_camera.look_at - s * np.asarray(START)
        np.testing.assert_allclose(look / np.linalg.norm(look), (0.0, 0.0, 1.0), atol=1e-12)
        # 6 poses, at most 4 frusta (first and last kept), less the first: the viewer stands there
        assert len(viewer.frustum_handles) == 3
        np.testing.assert_allclose([f.position for f in viewer.frustum_handles],
                                   s * viewer.paths[0].positions[[2, 3, 5]], atol=1e-5)
        np.testing.assert_allclose(viewer.frustum_handles[-1].position, s * np.array((2.0, 0.5, 1.5)), atol=1e-5)
        points = viewer.path_handles[0].points  # [C-1, 2, 3]
        np.testing.assert_allclose(points[:, 0], s * viewer.paths[0].positions[:-1], atol=1e-5)
        np.testing.assert_allclose(points[:, 1], s * viewer.paths[0].positions[1:], atol=1e-5)
    finally:
        viewer.stop()


def splat_buffer(handle) -> tuple[np.ndarray, np.ndarray]:
    """(centers [N, 3] float32, covariance upper triangles [N, 6] float16) as viser sends them."""
    buffer = np.asarray(handle.buffer)  # [N, 8] uint32: xyz, (reserved), 6 x float16 covariance, rgba
    return buffer[:, :3].copy().view(np.float32), buffer[:, 4:7].copy().view(np.float16)


def assert_scene_finite(viewer) -> None:
    """Every position, orientation and size the viewer sent to the browser is finite."""
    for part in viewer.parts:
        if part.handle is not None:
            centers, cov = splat_buffer(part.handle)
            assert np.isfinite(centers).all() and np.isfinite(cov).all(), part.name
    for nodes in viewer.trajectories:
        if nodes.line is not None:
            assert np.isfinite(nodes.line.points).all()
        for f in nodes.frusta + nodes.all_frusta:
            assert np.isfinite(f.position).all() and np.isfinite(f.wxyz).all() and np.isfinite(f.scale).all()
    camera = viewer.server.initial_camera
    for value in (camera.position, camera.look_at, camera.near, camera.far):
        assert np.isfinite(value).all()


def write_explored(run_dir: Path) -> None:
    """Make ``run_dir`` an explored world: red = the base run, green + blue = segment 001
    (world_segments.npz in the merged world.ply's order) with its own trajectory."""
    ids = np.repeat([0, 1, 1], 100)
    np.savez(run_dir / "world_segments.npz", segment=ids.astype(np.int32), names=np.array(["base", "001"]))
    write_trajectory(run_dir / "segments" / "001" / "trajectory.json",
                     [pose((1.0, 0.2 * i, 1.0 + 0.3 * i), yaw_deg=20.0 * i) for i in range(5)])
    (run_dir / "manifest.json").write_text(json.dumps({"segments": {"001": "segments/001"}}))


@needs_viser
def test_segments_listed_with_visibility_and_camera_toggles(run_dir):
    write_explored(run_dir)
    viewer = start_viewer(run_dir, ViewerConfig(port=0, max_frustums=3))
    try:
        assert [p.name for p in viewer.parts] == ["base", "001"]
        assert [len(p.splats) for p in viewer.parts] == [100, 200]
        centers, _ = splat_buffer(viewer.parts[0].handle)  # the base part is the red cluster, scaled
        np.testing.assert_allclose(centers.mean(0) / viewer.scale, CLUSTERS["red"][0], atol=0.05)
        run, seg = viewer.trajectories
        assert (run.path.name, seg.path.name) == ("run", "segment 001")
        assert len(seg.frusta) == 3 and len(seg.all_frusta) == 5 and len(run.frusta) == 2  # run: less its first pose
        assert not any(f.visible for f in run.all_frusta + seg.all_frusta)
        # hiding a segment hides its splats and its trajectory, nothing else
        viewer.set_part_visible("001", False)
        assert not viewer.parts[1].handle.visible and viewer.parts[0].handle.visible
        assert not seg.line.visible and not any(f.visible for f in seg.frusta)
        assert run.line.visible and all(f.visible for f in run.frusta)
        # all frusta: every camera of the visible trajectories, the few hidden
        viewer.show_cameras(True, True)
        assert all(f.visible for f in run.all_frusta) and not any(f.visible for f in run.frusta)
        assert not any(f.visible for f in seg.all_frusta)  # its segment is still hidden
        viewer.set_part_visible("001", True)
        assert all(f.visible for f in seg.all_frusta) and seg.line.visible
        viewer.show_cameras(False, True)  # cameras off: the world alone
        assert not any(h.visible for t in viewer.trajectories for h in [t.line, *t.frusta, *t.all_frusta])
        assert all(p.handle.visible for p in viewer.parts)
        assert_scene_finite(viewer)
    finally:
        viewer.stop()
    # a world_segments.npz of another world: a note, and the world shown whole
    np.savez(run_dir / "world_segments.npz", segment=np.zeros(7, np.int32), names=np.array(["base"]))
    with pytest.warns(SplatNote, match="does not match world.ply"):
        viewer = start_viewer(run_dir, ViewerConfig(port=0))
    try:
        assert [p.name for p in viewer.parts] == ["world"] and len(viewer.parts[0].splats) == 300
    finally:
        viewer.stop()


@needs_viser
def test_walk_speed_scales_the_scene(run_dir):
    # default: keys (2 scene units/s in viser's client) walk a fifth of the median radius
    # (median distance of the splats from the start camera) per second
    viewer = start_viewer(run_dir, ViewerConfig(port=0))
    try:
        splats = viewer.splats
        radius = float(np.median(np.linalg.norm(splats.centers - np.asarray(START), axis=1)))
        assert viewer.walk_speed == pytest.approx(radius / 5, rel=1e-6)
        assert viewer.scale == pytest.approx(KEY_SPEED / viewer.walk_speed, rel=1e-6)
        centers, cov = splat_buffer(viewer.parts[0].handle)
        np.testing.assert_allclose(centers, viewer.scale * splats.centers, rtol=1e-5, atol=1e-5)
        expected = (viewer.scale ** 2 * splats.covariances).reshape(-1, 9)[:, [0, 1, 2, 4, 5, 8]]
        np.testing.assert_allclose(cov.astype(np.float32), expected, rtol=2e-3, atol=1e-5)  # float16 on the wire
    finally:
        viewer.stop()
    viewer = start_viewer(run_dir, ViewerConfig(port=0, walk_speed=0.5))
    try:
        assert viewer.scale == pytest.approx(4.0) and viewer.walk_speed == 0.5
        np.testing.assert_allclose(viewer.server.initial_camera.position, 4.0 * np.asarray(START))
    finally:
        viewer.stop()


@needs_viser
def test_degenerate_scenes_send_only_finite_geometry(tmp_path):
    # one pose (no path line), and a world whose Gaussians are all invisible (no splat node)
    write_world(tmp_path / "world.ply", np.zeros((4, 3)), np.full((4, 3), 0.5), np.full((4, 3), 0.1),
                np.full(4, 1e-4), np.tile([1.0, 0, 0, 0], (4, 1)))
    write_trajectory(tmp_path / "trajectory.json", [pose((0.0, 0.0, 0.0))])
    viewer = start_viewer(tmp_path, ViewerConfig(port=0))
    try:
        assert len(viewer.splats) == 0 and viewer.parts[0].handle is None
        (nodes,) = viewer.trajectories
        assert nodes.line is None and len(nodes.frusta) == 1  # a single pose keeps its frustum
        assert_scene_finite(viewer)
    finally:
        viewer.stop()


# --------------------------------------------------------------------------- a real browser


def _find_browser() -> str | None:
    names = [os.environ.get("MATRIX_WORLD_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome", "chrome"]
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


def chromium_or_skip() -> str:
    """Path of a Chromium/Chrome; installs Debian's ``chromium`` only when asked to (see module doc)."""
    found = _find_browser()
    if found:
        return found
    if os.environ.get("MATRIX_WORLD_INSTALL_BROWSER") != "1":
        pytest.skip("no chromium/chrome found: install it (Debian: apt-get install -y chromium) "
                    "or set MATRIX_WORLD_INSTALL_BROWSER=1 to let the test install it (root, apt-get)")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("MATRIX_WORLD_INSTALL_BROWSER=1 but installing chromium needs root and apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(cmd)} failed: {done.stderr.strip()[-300:]})")
    return _find_browser() or pytest.skip("apt-get installed chromium but no chromium executable is on PATH")


class HeadlessChromium:
    """Headless Chromium with software WebGL, driven over the DevTools protocol (real time,
    so the page's websocket and render loop run as in a normal browser)."""

    def __init__(self, executable: str, size=(800, 600)):
        import re
        import urllib.request

        self.size = size
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self._profile.name}", "--use-gl=angle", "--use-angle=swiftshader",
             "--enable-unsafe-swiftshader", "--hide-scrollbars", f"--window-size={size[0]},{size[1]}",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = []
        for line in self.process.stderr:  # Chromium prints its DevTools address first thing
            lines.append(line)
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if found:
                break
        else:
            self.close()
            raise AssertionError(f"chromium did not start: {''.join(lines)[-1500:]}")
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        from websockets.sync.client import connect

        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self._id = 0
        self._events: list[str | None] = []
        self.console: list[tuple[str, str, list[str]]] = []  # (level, text, function names of the stack)
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)
        self.call("Runtime.enable")
        self.call("Log.enable")

    def _note(self, message: dict) -> str | None:
        """Keep console messages; return the event's method name."""
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            stack = [f.get("functionName", "") for f in params.get("stackTrace", {}).get("callFrames", [])]
            self.console.append((params.get("type", ""), text, stack))
        elif method == "Log.entryAdded":
            self.console.append((params["entry"].get("level", ""), params["entry"].get("text", ""), []))
        elif method == "Runtime.exceptionThrown":
            self.console.append(("exception", str(params.get("exceptionDetails", ""))[:2000], []))
        return method

    def pump(self, seconds: float) -> None:
        """Read events (console messages) for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                self._events.append(self._note(json.loads(self._ws.recv(timeout=remaining))))
            except TimeoutError:
                break

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:  # keep events for wait_event until our answer comes
            message = json.loads(self._ws.recv(timeout=30))
            if message.get("id") == self._id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]
            self._events.append(self._note(message))

    def navigate(self, url: str, timeout: float = 20.0) -> None:
        """Open ``url`` and wait for its load event."""
        self._events.clear()
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while "Page.loadEventFired" not in self._events:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{url} did not load in {timeout} s"
            self._events.append(self._note(json.loads(self._ws.recv(timeout=remaining))))

    def text(self) -> str:
        return self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")["result"].get("value", "")

    def screenshot(self) -> np.ndarray:
        """The page as uint8 [H, W, 3]."""
        import base64

        import imageio.v3 as iio

        return iio.imread(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))[..., :3]

    def settled_screenshot(self, ready, timeout: float = 20.0) -> np.ndarray:
        """Poll until ``ready(text)`` holds and two screenshots 0.3 s apart are identical."""
        deadline, previous = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            image = self.screenshot()
            if previous is not None and np.array_equal(image, previous) and ready(self.text()):
                return image
            previous = image
            time.sleep(0.3)
        raise AssertionError(f"page did not settle in {timeout} s; its text: {self.text()[:300]!r}")

    def close(self) -> None:
        if getattr(self, "_ws", None) is not None:
            self._ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._profile.cleanup()


def expected_pixel(point, start, size=(800, 600), fov_deg: float = 75.0) -> tuple[int, int]:
    """Where a world point lands in the page for a camera at ``start`` looking +z with -y up
    (viser's default vertical fov is 75 degrees; the canvas fills the window)."""
    f = size[1] / 2 / math.tan(math.radians(fov_deg) / 2)
    x, y, z = np.asarray(point) - np.asarray(start)
    return round(size[0] / 2 + f * x / z), round(size[1] / 2 + f * y / z)


def colour_fraction(image: np.ndarray, centre: tuple[int, int], colour, radius: int = 6) -> float:
    """Fraction of pixels in a (2r+1)^2 window that are clearly ``colour`` (a primary)."""
    u, v = centre
    patch = image[v - radius:v + radius + 1, u - radius:u + radius + 1].astype(int)
    on = np.asarray(colour) > 0.5
    strong = (patch[..., on] > 120).all(-1) & (patch[..., ~on] < 90).all(-1)
    return float(strong.mean())


def check_clusters(with_splats: np.ndarray, without: np.ndarray | None, camera_position) -> None:
    """Each cluster is drawn in its colour where a camera at ``camera_position`` looking +z
    sees it (this checks the camera pose, the -y up direction and left/right), and that
    colour is gone there once the splats are hidden."""
    for name, (centre, colour) in CLUSTERS.items():
        u, v = expected_pixel(centre, camera_position)
        assert colour_fraction(with_splats, (u, v), colour) > 0.5, f"{name} splats not drawn at {(u, v)}"
        if without is None:
            continue
        assert colour_fraction(without, (u, v), colour) == 0.0, f"{name} colour at {(u, v)} without splats"
        diff = np.abs(with_splats[v - 6:v + 7, u - 6:u + 7].astype(int) - without[v - 6:v + 7, u - 6:u + 7])
        assert diff.mean() > 60, f"{name}: the page barely changes at {(u, v)} when the splats are hidden"


@needs_viser
def test_headless_browser_draws_splats_where_they_are(run_dir, tmp_path):
    import imageio.v3 as iio

    browser = HeadlessChromium(chromium_or_skip())
    viewer = start_viewer(run_dir, ViewerConfig(port=0))
    shots = {}
    try:
        browser.navigate(viewer.url)
        # Our panel text comes after the splats in viser's message stream: once it shows and
        # the picture stops changing, the splats have arrived and faded in.
        shots["start"] = browser.settled_screenshot(lambda text: "300 splats" in text)
        # the panel's Screenshot button: the browser renders the view (no panel) at its size
        (client,) = viewer.server.get_clients().values()
        shots["button"] = screenshot(viewer, client)
        # the Record button: one frame per pose of the trajectory, rendered by the browser
        recording = record(viewer, client, 0)
        shots["record0"], shots["record2"] = recording[0], recording[2]
        # "Go to frame": move the browser's camera to trajectory frame 2.
        viewer.move_camera(client, viewer.paths[0].c2w[2])
        time.sleep(0.5)
        shots["frame2"] = browser.settled_screenshot(lambda text: True)
        viewer.parts[0].handle.visible = False
        time.sleep(0.5)
        shots["frame2_hidden"] = browser.settled_screenshot(lambda text: True)
    finally:
        browser.close()
        viewer.stop()
        for name, image in shots.items():  # kept in tmp_path for a look when it fails
            iio.imwrite(tmp_path / f"{name}.png", image)
    assert all(image.shape == (600, 800, 3) for image in shots.values()), {k: v.shape for k, v in shots.items()}

    check_clusters(shots["start"], None, START)  # the camera starts at the first trajectory pose
    check_clusters(shots["button"], None, START)  # the screenshot shows what the page shows
    assert len(recording) == 6  # the recording: pose i's view (the page's own, checked below)
    check_clusters(shots["record0"], None, START)
    check_clusters(shots["record2"], None, viewer.paths[0].c2w[2, :3, 3])
    # Our client does not frustum-cull viser's splat mesh (its quad has a 2-component position;
    # see viewer.py): no "Computed radius is NaN" with the splats loaded, and no error at all.
    assert [m for m in browser.console if "NaN" in m[1] or m[0] in ("error", "exception")] == [], browser.console
    check_clusters(shots["frame2"], shots["frame2_hidden"], viewer.paths[0].c2w[2, :3, 3])
    # The trajectory (first trajectory colour) is drawn with and without splats.
    traj = np.asarray(TRAJECTORY_COLORS[0])
    for image in shots.values():
        assert (np.abs(image.astype(int) - traj).max(-1) < 40).sum() > 20


@needs_viser
def test_no_console_errors_from_our_geometry(run_dir):
    """The page without splats (trajectories, all frusta, the panel) logs no error of ours:
    no NaN bounding sphere."""
    browser = HeadlessChromium(chromium_or_skip())
    write_explored(run_dir)
    viewer = start_viewer(run_dir, ViewerConfig(port=0))
    try:
        for part in viewer.parts:
            part.handle.remove()
        viewer.show_cameras(True, True)
        browser.navigate(viewer.url)
        browser.settled_screenshot(lambda text: "300 splats" in text)
        browser.pump(1.0)
    finally:
        browser.close()
        viewer.stop()
    ours = [m for m in browser.console if m[0] in ("error", "exception") or "NaN" in m[1]]
    assert ours == [], ours


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def served_index(viewer_server) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{viewer_server.get_port()}/", timeout=10) as answer:
        return answer.read()


def test_shipped_client_is_the_build_of_our_patch():
    """built_from.json names the shipped index.html and the patch it was built with (a changed
    patch without a rebuild fails here: run tools/build_viser_client.sh)."""
    built_from = json.loads((VISER_CLIENT / "built_from.json").read_text())
    assert built_from["viser"] == "1.1.1"
    assert built_from["index_sha256"] == sha256((VISER_CLIENT / "index.html").read_bytes())
    assert built_from["patch_sha256"] == sha256((REPO / built_from["patch"]).read_bytes())


@needs_viser
def test_viewer_serves_our_client():
    import viser

    stock = (Path(viser.__file__).parent / "client" / "build" / "index.html").read_bytes()
    server = viser_server(ViewerConfig(port=0))
    try:
        page = served_index(server)
    finally:
        server.stop()
    assert sha256(page) == sha256((VISER_CLIENT / "index.html").read_bytes()) != sha256(stock)


@needs_viser
def test_other_viser_version_gets_viser_own_client(monkeypatch):
    import viser

    monkeypatch.setattr(viser, "__version__", "9.9.9")
    stock = (Path(viser.__file__).parent / "client" / "build" / "index.html").read_bytes()
    with pytest.warns(SplatNote, match=r"built for viser 1\.1\.1 but viser 9\.9\.9 is installed: serving viser's own"):
        server = viser_server(ViewerConfig(port=0))
    try:
        page = served_index(server)
    finally:
        server.stop()
    assert sha256(page) == sha256(stock)
