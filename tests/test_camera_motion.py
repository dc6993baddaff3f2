"""Argus' camera-motion simulation (datasets/camera_motion.py) and the perspective-video training pairs
of the video LoRA trainer (datasets/pairs.PerspectivePairDataset, --pairs perspective)."""

import numpy as np
import pytest
import torch

from matrix_world.datasets.camera_motion import CameraMotionConfig, simulate_camera_motion, simulated_pair
from matrix_world.equirect import equirect_directions


def _world(f=9, h=32):
    """A smooth 360° clip [F, 3, H, 2H]: colour = direction, slowly changing over time."""
    d = equirect_directions(h, dtype=torch.float64)
    base = torch.stack([0.5 + 0.5 * d[..., 0], 0.5 + 0.5 * d[..., 1], 0.5 + 0.5 * d[..., 2]])
    return torch.stack([(base * (0.9 + 0.01 * i)).clamp(0, 1) for i in range(f)]).float()


def test_simulated_paths_follow_the_argus_model():
    config = CameraMotionConfig()
    a = simulate_camera_motion(200, torch.Generator().manual_seed(1), config)
    b = simulate_camera_motion(200, torch.Generator().manual_seed(1), config)
    assert torch.equal(a.yaw, b.yaw) and a.fov_x == b.fov_x  # seeded: the same path
    assert 30.0 <= a.fov_x <= 120.0
    k = torch.arange(200, dtype=torch.float64)
    slope = float(torch.linalg.lstsq(torch.stack([k, torch.ones_like(k)], 1), a.yaw[:, None]).solution[0])
    assert abs(slope) <= config.drift[1] + 0.05  # the linear drift term
    assert float(a.roll.abs().max()) <= config.amplitude[0] + 4 * config.noise[0]  # no drift in roll
    rot = a.rotations()
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(200, 3, 3), atol=1e-12)
    draws = [simulate_camera_motion(10, torch.Generator().manual_seed(s)) for s in range(40)]
    assert np.std([float(m.yaw[0]) for m in draws]) > 60  # phi_0: random heading (Argus' circular shift)


def test_pair_condition_is_the_canvas_of_the_perspective_video_and_target_is_in_frame0s_camera():
    video = _world()
    pair = simulated_pair(video, torch.Generator().manual_seed(3), width=48)
    target, canvas, mask = pair["target"], pair["scaffold"], pair["mask"]
    assert target.shape == video.shape and canvas.shape == video.shape and mask.shape == (9, 32, 64)
    assert torch.allclose(pair["rotations"][0], torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert mask[0, 15:17, 31:33].all()  # frame 0 at lon 0, lat 0
    err = (canvas - target).abs().permute(0, 2, 3, 1)[mask].mean()
    assert float(err) < 0.03  # the canvas shows the target where it is known (cut + paste resampling)


def test_perspective_pairs_dataset_is_deterministic_and_trains(tmp_path):
    from matrix_world.datasets.pairs import PerspectivePairDataset
    from matrix_world.generation.train_video_lora import VideoLoraTrainConfig, train_video_lora

    clips = [{"rgb": _world(5), "prompt": "a room", "source": f"clip{i}"} for i in range(2)]
    data = PerspectivePairDataset(clips, width=32, seed=4)
    a, b = data[1], data[1]
    assert torch.equal(a["scaffold"], b["scaffold"]) and data.key(1) == data.key(1) and data.key(0) != data.key(1)
    assert a["video"].shape == (5, 3, 32, 64) and a["mask"].dtype == torch.bool and a["mask"].any()
    assert torch.equal(a["c2w"][:, :3, :3], torch.eye(3, dtype=torch.float64).expand(5, 3, 3))
    config = VideoLoraTrainConfig(out=str(tmp_path / "run"), steps=2, tiny=True, height=32, frames=5, rank=2,
                                  validation_every=0, checkpoint_every=2, representation="viewpoint")
    result = train_video_lora(config, data, progress=False)
    assert result.step == 2 and len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert (tmp_path / "run" / "lora.safetensors").is_file()


def test_trainer_script_documents_the_new_options(monkeypatch):
    from script_helpers import ROOT, capture_help, load_script

    text, _, code = capture_help(load_script(ROOT / "scripts" / "train_video_lora.py", "tvl_help"), monkeypatch)
    assert code == 0 and "--pairs" in text and "--representation" in text and "perspective" in text


@pytest.mark.parametrize("bad", [["--pairs", "cube"], ["--representation", "cube"], ["--perspective-width", "0"]])
def test_trainer_script_rejects_bad_new_options(bad, tmp_path, capsys):
    from script_helpers import ROOT, load_script

    from matrix_world.app.cli import run_main

    script = load_script(ROOT / "scripts" / "train_video_lora.py", "tvl_bad")
    code = run_main(script.main, ["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "1", "--tiny",
                                  "--height", "32", "--frames", "5", *bad])
    assert code == 2 and "error:" in capsys.readouterr().err
