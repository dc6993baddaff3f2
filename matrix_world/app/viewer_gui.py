"""The viewer's panel (viser GUI): navigation help, mouse mode, cameras, segments, capture.

Capture goes through viser's ``ClientHandle.get_render`` (the browser renders the frame at
the size asked, with the splats and the visible nodes) and ``send_file_download`` (the file
is saved by the browser, nothing is written on the server):

* **Screenshot**: the current view as ``matrix_world_view.png``;
* **Record**: one frame per pose of the chosen trajectory (at most ``RECORD_MAX_FRAMES``,
  evenly spaced), at the trajectory's fps, as ``matrix_world_<trajectory>.mp4``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from matrix_world.gaussians import rotmat_to_quat

WorldViewer = Any  # matrix_world.app.viewer.WorldViewer (which imports this module)

RECORD_MAX_FRAMES = 240
CAPTURE_HEIGHT = 720  # pixels; capped by the browser window's own height


def wxyz(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] -> quaternion (w, x, y, z) [4]."""
    return rotmat_to_quat(torch.as_tensor(rotation, dtype=torch.float64)).numpy()


def evenly(count: int, limit: int) -> np.ndarray:
    """At most ``limit`` indices spread over range(count), first and last included."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, max(limit, 2))).astype(int))


def controls_help(viewer: WorldViewer) -> str:
    """The navigation help shown in the panel (the key speed in world units)."""
    return ("**Mouse**: drag to look around (first person) or orbit (orbit mode); right-drag pans; wheel zooms.\n\n"
            "**Keys** (click the 3D view first): **W/S** forward/back, **A/D** left/right, **Q/E** down/up, "
            f"**arrows** turn. Keys move {viewer.walk_speed:.3g} world units per second "
            "(a fifth of the world's median radius, unless `--walk-speed` says otherwise).\n")


def _capture_size(client) -> tuple[int, int]:
    """(height, width) of a capture: the browser's aspect ratio, at most CAPTURE_HEIGHT rows."""
    h, w = int(client.camera.image_height), int(client.camera.image_width)
    if h > CAPTURE_HEIGHT:
        h, w = CAPTURE_HEIGHT, round(w * CAPTURE_HEIGHT / h)
    return max(h, 1), max(w, 1)


def screenshot(viewer: WorldViewer, client, timeout: float = 30.0) -> np.ndarray:
    """The client's current view as uint8 [H, W, 3], rendered by its browser."""
    del viewer
    h, w = _capture_size(client)
    image = client.get_render(h, w, transport_format="png", timeout=timeout)
    return _opaque(image)


def _opaque(image: np.ndarray) -> np.ndarray:
    """RGBA over white (viser's light background) -> RGB uint8; RGB is returned as is."""
    if image.shape[-1] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255.0
        image = (image[..., :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return image[..., :3]


def record(viewer: WorldViewer, client, path_index: int, timeout: float = 30.0) -> np.ndarray:
    """Frames along trajectory ``path_index`` (each pose's position and orientation, the
    browser's vertical FOV): uint8 [F, H, W, 3]."""
    path = viewer.paths[path_index]
    h, w = _capture_size(client)
    frames = []
    for i in evenly(len(path.c2w), RECORD_MAX_FRAMES):
        c2w = path.c2w[i]
        frames.append(_opaque(client.get_render(h, w, wxyz=wxyz(c2w[:3, :3]), position=viewer.scale * c2w[:3, 3],
                                                fov=float(client.camera.fov), transport_format="png",
                                                timeout=timeout)))
    return np.stack(frames)


def _png_bytes(image: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", image, extension=".png")


def _mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    import tempfile
    from pathlib import Path

    from matrix_world.io import write_video

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "record.mp4"
        write_video(path, frames, fps=fps)
        return path.read_bytes()


def add_gui(server, viewer: WorldViewer) -> None:
    """The panel: help, mouse mode, cameras (toggles, go to a frame), segments, capture."""
    s = viewer.splats
    shown = f"{len(s):,} splats" + (f" of {s.total:,} (the rest: invisible or over the budget)" if len(s) < s.total else "")
    server.gui.add_markdown(f"{shown}; {len(viewer.paths)} trajectory(ies).\n\n" + controls_help(viewer))
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

    if len(viewer.parts) > 1:
        with server.gui.add_folder("Segments"):
            for part in viewer.parts:
                box = server.gui.add_checkbox(f"{part.name} ({len(part.splats):,} splats)", initial_value=True)
                box.on_update(lambda event, name=part.name, box=box: viewer.set_part_visible(name, box.value))

    names = [p.name for p in viewer.paths]
    which = None
    if viewer.paths:
        with server.gui.add_folder("Cameras", expand_by_default=False):
            cameras = server.gui.add_checkbox("trajectories", initial_value=True)
            every = server.gui.add_checkbox("all camera frusta", initial_value=False)
            toggle = lambda _event: viewer.show_cameras(cameras.value, every.value)  # noqa: E731
            cameras.on_update(toggle)
            every.on_update(toggle)
            which = server.gui.add_dropdown("Trajectory", options=names)
            frame = server.gui.add_slider("Frame", min=0, max=max(1, max(len(p.c2w) for p in viewer.paths) - 1),
                                          step=1, initial_value=0)
            go = server.gui.add_button("Go to frame")

            @go.on_click
            def _(event) -> None:
                if event.client is None:
                    return
                path = viewer.paths[names.index(which.value)]
                viewer.move_camera(event.client, path.c2w[min(int(frame.value), len(path.c2w) - 1)])

    with server.gui.add_folder("Capture", expand_by_default=False):
        shot = server.gui.add_button("Screenshot (PNG)")

        @shot.on_click
        def _(event) -> None:
            if event.client is not None:
                event.client.send_file_download("matrix_world_view.png", _png_bytes(screenshot(viewer, event.client)))

        if which is not None:
            rec = server.gui.add_button("Record the trajectory (MP4)")

            @rec.on_click
            def _(event) -> None:
                if event.client is None:
                    return
                k = names.index(which.value)
                frames = record(viewer, event.client, k)
                label = "".join(c if c.isalnum() else "_" for c in names[k])
                event.client.send_file_download(f"matrix_world_{label}.mp4", _mp4_bytes(frames, viewer.paths[k].fps))
