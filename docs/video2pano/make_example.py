"""How docs/video2pano/city_pan.mp4 was made: a perspective video cut from a real CC0 panorama
(/work/shared/data/panoramas/city.png, see its README) along an Argus-style simulated hand-held path
(datasets/camera_motion.py), with its true rotations and FOV beside it (city_pan_truth.json) so the
estimate can be compared.

    python docs/video2pano/make_example.py /work/shared/data/panoramas/city.png docs/video2pano
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from matrix_world.datasets.camera_motion import CameraMotionConfig, perspective_video, simulate_camera_motion
from matrix_world.io import read_image, write_video


def main(pano_path: str, out: str, frames: int = 33, width: int = 256, seed: int = 7) -> None:
    pano = torch.from_numpy(read_image(pano_path)).permute(2, 0, 1)[None].double()
    config = CameraMotionConfig(fov_range=(60.0, 70.0), drift=(0.3, 3.0))
    motion = simulate_camera_motion(frames, torch.Generator().manual_seed(seed), config)
    rot = motion.rotations()
    w, h = motion.frame_size(width)
    video = perspective_video(pano.expand(frames, -1, -1, -1), rot, motion.fov_x, w, h).clamp(0, 1)
    out_dir = Path(out)
    write_video(out_dir / "city_pan.mp4", np.round(video.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), fps=12)
    rel = rot[0].T @ rot
    truth = {"fov": motion.fov_x, "rotations_relative_to_frame0": rel.tolist(),
             "yaw": motion.yaw.tolist(), "pitch": motion.pitch.tolist(), "roll": motion.roll.tolist()}
    (out_dir / "city_pan_truth.json").write_text(json.dumps(truth) + "\n")
    print(f"{frames} frames {w}x{h}, fov {motion.fov_x:.2f}, yaw {float(motion.yaw[0]):.1f} -> {float(motion.yaw[-1]):.1f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
