"""stabilize360: a shaky 360-degree video of a synthetic scene (ground-truth path + jitter) ->
registered keyframes, a smoothed path, the re-rendered and filled video."""

from __future__ import annotations

import json

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from script_helpers import run_script

from matrix_world.io import video_length, write_video


def test_stabilize360_smooths_a_shaky_video(tmp_path, env):
    from matrix_world.datasets.scenes import make_scene
    from matrix_world.datasets.trajectories import PathConfig, sample_trajectory

    scene = make_scene("harbour", 11)
    path = sample_trajectory(scene, 5, 21, PathConfig())
    rng = np.random.default_rng(0)
    c2w = path.c2w.clone()
    c2w[:, :3, 3] += torch.from_numpy(rng.normal(0.0, 0.08, (21, 3)))  # hand-held shake: 8 cm, 2 degrees
    c2w[:, :3, :3] = c2w[:, :3, :3] @ torch.from_numpy(Rotation.from_rotvec(rng.normal(0.0, 0.035, (21, 3))).as_matrix())
    rgb, _, _ = scene.render(c2w, 128)
    write_video(tmp_path / "shaky.mp4", (np.asarray(rgb) * 255).round().astype(np.uint8), fps=16)

    out = tmp_path / "run"
    run_script("stabilize360.py", tmp_path / "shaky.mp4", "--out", out, "--stride", "5", "--resolution", "64", env=env)
    assert video_length(out / "video.mp4") == 21
    manifest = json.loads((out / "manifest.json").read_text())
    keys = manifest["stabilize"]["keyframes"]
    assert keys == [0, 5, 10, 15, 20]
    traj = np.array(json.loads((out / "trajectory.json").read_text())["poses"]).reshape(-1, 4, 4)
    assert traj.shape == (21, 4, 4) and np.array_equal(traj[0], np.eye(4))
    # the keyframes' registered rotations against the truth (the prior depth gives the scale, so
    # only rotations are compared); then the smoothed path is less shaky than the keyframes
    poses = np.array(json.loads((out / "poses.json").read_text())["poses"]).reshape(-1, 4, 4)
    truth = np.linalg.inv(c2w[0].numpy()) @ c2w[keys].numpy()
    rot_err = [np.degrees(Rotation.from_matrix(p[:3, :3].T @ t[:3, :3]).magnitude()) for p, t in zip(poses, truth)]
    assert max(rot_err) < 2.0, rot_err
    turn = np.degrees(np.linalg.norm(Rotation.from_matrix(traj[:, :3, :3]).as_rotvec(), axis=1))
    shaky = np.degrees(np.linalg.norm(Rotation.from_matrix(truth[:, :3, :3]).as_rotvec(), axis=1))
    assert np.abs(np.diff(turn, 2)).mean() < np.abs(np.diff(shaky, 2)).mean() / 3  # smoother per frame than per keyframe
    assert manifest["stabilize"]["shake"]["smoothed"] < manifest["stabilize"]["shake"]["keyframes"]
