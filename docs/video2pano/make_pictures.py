"""The pictures of docs/video2pano from a run of scripts/video2pano.py on city_pan.mp4, and the
orientation / FOV error of that run against city_pan_truth.json:

    python scripts/video2pano.py docs/video2pano/city_pan.mp4 --out /tmp/v2p_city --stabilize --look 180,0
    python docs/video2pano/make_pictures.py /tmp/v2p_city docs/video2pano /work/shared/data/panoramas/city.png
"""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from matrix_world.io import load_npz, read_image, read_video, to_uint8, write_image
from matrix_world.orientation import rotation_angle_deg
from matrix_world.scaffold.build import load_scaffold
from matrix_world.trajectory import Trajectory
from matrix_world.viewpoint import QUADRANT_CELLS, QUADRANT_NAMES, erp_to_viewpoint


def tile(image: np.ndarray, width: int) -> np.ndarray:  # to a width, keeping the aspect
    h, w = image.shape[:2]
    return cv2.resize(image, (width, max(2, round(h * width / w))), interpolation=cv2.INTER_AREA)


def label(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main(run: str, out: str) -> None:
    run_dir, out_dir = Path(run), Path(out)
    traj = Trajectory.from_json(run_dir / "trajectory.json")
    truth = json.loads((out_dir / "city_pan_truth.json").read_text())
    err = rotation_angle_deg(traj.c2w[:, :3, :3], torch.tensor(truth["rotations_relative_to_frame0"]))
    print(f"fov {traj.meta['fov']:.3f} (true {truth['fov']:.3f}); orientation error mean {float(err.mean()):.3f} "
          f"max {float(err.max()):.3f} deg")
    canvas = load_scaffold(run_dir / "scaffold.npz")
    video = load_npz(run_dir / "video.npz", keys=("frames",))["frames"]
    src = read_video(Path(json.loads((run_dir / "manifest.json").read_text())["inputs"]["video"]["path"]))
    stab, look = read_video(run_dir / "stabilized.mp4"), read_video(run_dir / "look.mp4")
    picks = np.linspace(0, len(video) - 1, 3).round().astype(int)
    shown = canvas.rgb.copy()
    shown[~canvas.mask] = (255, 0, 255)

    def fit(image: np.ndarray, height: int = 160) -> np.ndarray:
        h, w = image.shape[:2]
        return cv2.resize(image, (round(w * height / h), height), interpolation=cv2.INTER_AREA)

    gap = np.full((160, 4, 3), 255, np.uint8)
    rows = []
    for i in picks:
        tiles = [label(fit(src[i]), f"input {i}"), label(fit(stab[i]), "stabilized"), label(fit(look[i]), "look 180,0"),
                 label(fit(shown[i]), f"canvas {i}"), label(fit(video[i]), f"360 frame {i} (fill)")]
        rows.append(np.concatenate([t for tile_ in tiles for t in (tile_, gap)][:-1], axis=1))
    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    write_image(out_dir / "example.png", np.concatenate([r for row in rows for r in (row, sep)][:-1], axis=0))
    # the ViewPoint map of the source panorama (argument 3) or of the first 360 frame
    pano = read_image(sys.argv[3]) if len(sys.argv) > 3 else video[0].astype(np.float32) / 255.0
    frame = torch.from_numpy(np.ascontiguousarray(pano, dtype=np.float32)).permute(2, 0, 1)[None]
    vp = (erp_to_viewpoint(frame, 320)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    for (col, row), name in zip(QUADRANT_CELLS, QUADRANT_NAMES):
        vp[row * 160:(row + 1) * 160, col * 160:(col + 1) * 160] = label(vp[row * 160:(row + 1) * 160,
                                                                          col * 160:(col + 1) * 160], name)
    sheet = np.concatenate([tile(to_uint8(pano), 640), np.pad(tile(vp, 320), ((0, 0), (160, 160), (0, 0)),
                                                        constant_values=255)], axis=0)
    write_image(out_dir / "viewpoint_map.png", sheet)


if __name__ == "__main__":
    main(*sys.argv[1:3])
