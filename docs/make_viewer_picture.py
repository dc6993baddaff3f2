"""docs/viewer.png: the viewer (scripts/view.py) on a run directory, as headless Chromium shows it:
at its start (the first camera, looking forward) and from above behind it (the trajectories).

    python docs/make_viewer_picture.py RUN_DIR docs/viewer.png [--width 1280 --height 720]

Uses the test suite's headless-browser driver (tests/test_viewer.py: Chromium with software
WebGL over the DevTools protocol); needs chromium and viser. The picture is taken once the
panel has arrived and two screenshots 0.3 s apart agree. The browser console's messages are
printed (three.js's "Computed radius is NaN" comes from viser's own splat mesh, see
matrix_world/app/viewer.py).
"""

import argparse
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_viewer import HeadlessChromium, chromium_or_skip  # noqa: E402

from matrix_world.app.viewer import ViewerConfig, start_viewer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    args = parser.parse_args()
    browser = HeadlessChromium(chromium_or_skip(), size=(args.width, args.height))
    viewer = start_viewer(args.run_dir, ViewerConfig(port=0))
    shots = []
    try:
        browser.navigate(viewer.url)
        browser.settled_screenshot(lambda text: "splats" in text, timeout=120.0)
        # viser's "Software WebGL rendering detected" notice: closed, as a person would
        browser.call("Runtime.evaluate", expression="document.querySelectorAll("
                     "'.mantine-Notification-closeButton, .mantine-Notification-root button').forEach(b => b.click())")
        time.sleep(1.0)
        shots.append(browser.settled_screenshot(lambda text: True, timeout=120.0))
        # from above and behind the start, looking at the middle of all camera paths
        (client,) = viewer.server.get_clients().values()
        positions = np.concatenate([p.positions for p in viewer.paths])
        middle = positions.mean(0)
        extent = max(float(np.ptp(positions, axis=0).max()), 1e-3)
        eye = middle + np.array([0.0, -1.2, -1.0]) * extent  # -y is up
        with client.atomic():
            client.camera.position = viewer.scale * eye
            client.camera.look_at = viewer.scale * middle
        time.sleep(1.0)
        shots.append(browser.settled_screenshot(lambda text: True, timeout=120.0))
        browser.pump(0.5)
    finally:
        browser.close()
        viewer.stop()
    image = np.concatenate(shots, axis=0)
    iio.imwrite(args.out, image)
    for level, text, _ in browser.console:
        print(f"console {level}: {text[:160]}")
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
