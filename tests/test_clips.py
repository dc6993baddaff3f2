"""Clip datasets: write -> read round trips, foreign layouts, fixed-length windows, the
dataset builder (resumable, CLI), the benchmark split loader and training pairs."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matrix_world.datasets.benchmark import (
    BENCHMARK_SCENES,
    build_benchmark_split,
    load_benchmark_split,
)
from matrix_world.datasets.build import build_dataset
from matrix_world.datasets.clips import (
    ClipDataset,
    detect_layout,
    find_sequences,
    is_complete_clip,
    read_clip,
    write_clip,
    write_clip_atomic,
)
from matrix_world.datasets.pairs import (
    masked_agreement,
    pair_from_clip,
    read_scaffold,
    write_pair,
)
from matrix_world.datasets.scenes import make_scene

from matrix_world.cameras import invert_pose, make_pose, rotation_pitch, rotation_yaw
from matrix_world.errors import InputError
from matrix_world.io import read_video, save_npz, video_length, write_image, write_video

ROOT = Path(__file__).resolve().parent.parent


def _poses(f, seed=0):
    rng = np.random.default_rng(seed)
    return torch.stack([make_pose(rotation_yaw(float(rng.uniform(-180, 180))) @ rotation_pitch(float(rng.uniform(-20, 20))),
                                  torch.tensor(rng.normal(size=3))) for _ in range(f)]).numpy()


def _clip_arrays(f=6, h=8, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (f, h, 2 * h, 3)).astype(np.float32) / 255.0  # exact in 8-bit PNG
    dist = rng.uniform(0.5, 100.0, (f, h, 2 * h)).astype(np.float32)
    sky = rng.random((f, h, 2 * h)) > 0.7
    return rgb, dist, sky, _poses(f, seed)


def test_write_read_round_trip(tmp_path):
    rgb, dist, sky, c2w = _clip_arrays()
    write_clip(tmp_path / "c", rgb, dist, c2w, "a test clip", {"seed": 3, "scene_kind": "forest"}, fps=12.0, sky=sky)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["distance.npz", "meta.json", "poses.json", "prompt.txt", "rgb"]
    assert sorted(p.name for p in (tmp_path / "c" / "rgb").iterdir()) == [f"{i:05d}.png" for i in range(6)]
    assert json.loads((tmp_path / "c" / "poses.json").read_text())["convention"] == "opencv_c2w"
    clip = read_clip(tmp_path / "c")
    assert clip.layout == "matrix_world" and clip.prompt == "a test clip" and clip.fps == 12.0
    assert np.array_equal(clip.rgb, rgb) and np.array_equal(clip.distance, dist) and np.array_equal(clip.sky, sky)
    assert clip.meta["seed"] == 3 and clip.meta["units"] == "metres"
    # poses relative to frame 0; world_from_clip restores the originals
    assert np.allclose(clip.c2w[0], np.eye(4), atol=1e-12)
    world = np.asarray(clip.meta["world_from_clip"]).reshape(4, 4)
    assert np.allclose(world @ clip.c2w, c2w, atol=1e-12)
    # a frame subset, and float16 storage
    write_clip(tmp_path / "h", rgb, dist, c2w, "x", distance_dtype="float16")
    sub = read_clip(tmp_path / "h", [1, 4])
    assert sub.rgb.shape[0] == 2 and np.array_equal(sub.rgb, rgb[[1, 4]])
    assert np.allclose(sub.distance, dist[[1, 4]], rtol=1e-3) and sub.distance.dtype == np.float32


def test_atomic_write_and_completeness(tmp_path):
    rgb, dist, _, c2w = _clip_arrays(f=3)
    folder = write_clip_atomic(tmp_path / "00000", rgb, dist, c2w, "p")
    assert is_complete_clip(folder) and not list(tmp_path.glob(".tmp-*"))
    (folder / "rgb" / "00002.png").unlink()
    assert not is_complete_clip(folder)
    with pytest.raises(InputError, match="expected \\[3, 4, 4\\]"):
        write_clip(tmp_path / "bad", rgb, dist, c2w[:2], "p")
    assert not is_complete_clip(tmp_path / "missing")


def test_fixed_length_windows(tmp_path):
    rgb, dist, sky, c2w = _clip_arrays(f=10)
    write_clip(tmp_path / "a", rgb, dist, c2w, "p", sky=sky)
    ds = ClipDataset(tmp_path, clip_length=4, frame_stride=2)  # span 7 -> one window
    assert len(ds) == 1
    item = ds[0]
    assert item["rgb"].shape == (4, 3, 8, 16) and item["distance"].shape == (4, 8, 16) and item["sky"].dtype == torch.bool
    assert torch.equal(item["rgb"], torch.from_numpy(rgb[[0, 2, 4, 6]]).permute(0, 3, 1, 2))
    dense = ClipDataset(tmp_path, clip_length=4, frame_stride=2, window_stride=1, height=4)
    assert len(dense) == 4 and dense[3]["start"] == 3 and dense[3]["rgb"].shape == (4, 3, 4, 8)
    c = dense[2]["c2w"]
    assert torch.allclose(c[0], torch.eye(4, dtype=torch.float64), atol=1e-12)  # relative to the window's first frame
    expected = invert_pose(torch.from_numpy(c2w[2])) @ torch.from_numpy(c2w[4])
    assert torch.allclose(c[1], expected, atol=1e-12)
    with pytest.raises(InputError, match="no sequence of at least 81 frames"):
        ClipDataset(tmp_path)


def test_matrix_pano_and_plain_video_layouts(tmp_path):
    _, dist, _, c2w = _clip_arrays(f=5, h=16)
    y, x = np.mgrid[0:16, 0:32] / 16.0
    rgb = np.stack([np.stack([0.5 + 0.3 * np.sin(x + k), 0.5 + 0.3 * np.cos(y * 2 - k), 0.4 + 0.2 * np.sin(x + y)], -1)
                    for k in range(5)]).astype(np.float32)  # smooth frames: H.264 keeps them well
    pano = tmp_path / "pano"
    pano.mkdir()
    write_video(pano / "panorama.mp4", rgb, fps=8)
    save_npz(pano / "depth.npz", depth=dist)
    w2c = invert_pose(torch.from_numpy(c2w)).numpy()
    (pano / "camera.json").write_text(json.dumps(w2c.tolist()))  # Matrix-3D: a list of 4x4 w2c
    (pano / "prompt.txt").write_text("a pano clip\n")
    assert detect_layout(pano) == "matrix_pano"
    clip = read_clip(pano)
    assert clip.rgb.shape == rgb.shape and clip.prompt == "a pano clip"
    assert np.abs(clip.rgb - rgb).mean() < 0.03  # lossy video
    assert np.allclose(clip.c2w, c2w, atol=1e-12) and np.array_equal(clip.distance, dist)
    # plain videos (no poses, no depth) and a folder of frames
    videos = tmp_path / "videos"
    videos.mkdir()
    for k in range(2):
        write_video(videos / f"v{k}.mp4", rgb, fps=8)
    frames = tmp_path / "frames"
    for i, frame in enumerate(rgb):
        write_image(frames / f"{i:04d}.png", frame)
    assert detect_layout(videos) == "video" and detect_layout(frames) == "frames"
    seqs = find_sequences(tmp_path)
    assert [(p.name, layout) for p, layout in seqs] == [("frames", "frames"), ("pano", "matrix_pano"),
                                                       ("v0.mp4", "video"), ("v1.mp4", "video")]
    ds = ClipDataset(tmp_path, clip_length=3, window_stride=2)
    assert len(ds) == 4 * 2
    kinds = {ds.items[i][1]: ds[i] for i in range(len(ds))}
    assert "c2w" not in kinds["video"] and "distance" not in kinds["frames"] and "c2w" in kinds["matrix_pano"]
    with pytest.raises(InputError, match="requires"):
        ClipDataset(videos, clip_length=3, require=("c2w",))[0]
    with pytest.raises(InputError, match="not a clip"):
        read_clip(tmp_path / "nothing-here")
    # the one distance rule (matrix_world.io.check_distance, as for a user's distance map): NaN is
    # refused, not passed on as "unknown"; a 16-bit PNG depth's 0 (no return) reads as sky (+inf)
    bad = dist.copy()
    bad[2, 3, 4] = np.nan
    save_npz(pano / "depth.npz", depth=bad)
    with pytest.raises(InputError, match="1 NaN value"):
        read_clip(pano)
    (pano / "depth.npz").unlink()
    import cv2

    (pano / "depth").mkdir()
    near = np.minimum(dist, 60.0)  # 16-bit millimetres reach 65.5 m
    for i, d in enumerate(near):
        mm = np.round(d * 1000).astype(np.uint16)
        mm[0, 0] = 0
        cv2.imwrite(str(pano / "depth" / f"{i:04d}.png"), mm)
    png = read_clip(pano).distance
    assert np.isposinf(png[:, 0, 0]).all() and np.allclose(png[:, 1:, 1:], near[:, 1:, 1:], atol=6e-4)


def test_read_video_chosen_frames_stop_after_the_last_one(tmp_path, monkeypatch):
    import imageio.v2 as imageio

    rgb = np.stack([np.full((16, 32, 3), 40 * k, np.uint8) for k in range(5)])  # frame k is grey 40 k
    path = tmp_path / "v.mp4"
    write_video(path, rgb, fps=8)
    full = read_video(path)
    assert full.dtype == np.uint8 and full.shape == (5, 16, 32, 3) and video_length(path) == 5
    assert np.abs(full.astype(int) - rgb).max() <= 3  # lossy, but each frame keeps its grey level
    decoded = []
    get_reader = imageio.get_reader

    def counting_reader(*args, **kwargs):
        reader = get_reader(*args, **kwargs)

        class Counting:
            def __iter__(self):
                for frame in reader:
                    decoded.append(1)
                    yield frame

            def close(self):
                reader.close()

        return Counting()

    monkeypatch.setattr(imageio, "get_reader", counting_reader)
    picked = read_video(path, [2, 0, 2])
    assert np.array_equal(picked, full[[2, 0, 2]]) and len(decoded) == 3  # frames 0..2 decoded, not 5
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"has 5 readable frames; frame 7 was requested"):
        read_video(path, [1, 7])
    with pytest.raises(InputError, match="expected one or more indices >= 0"):
        read_video(path, [-1])
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    for fn in (read_video, video_length):
        with pytest.raises(InputError, match="cannot read .*junk.mp4 as a video"):
            fn(tmp_path / "junk.mp4")


def test_build_dataset_is_resumable_and_reproducible(tmp_path):
    kw = {"frames": 3, "height": 16, "kinds": ("desert", "bedroom"), "progress": False}
    res = build_dataset(tmp_path / "ds", 2, seed=5, **kw)
    assert [r["skipped"] for r in res] == [False, False]
    again = build_dataset(tmp_path / "ds", 3, seed=5, **kw)
    assert [r["skipped"] for r in again] == [True, True, False]
    clip = read_clip(tmp_path / "ds" / "00001")
    meta = clip.meta
    assert clip.rgb.shape == (3, 16, 32, 3) and clip.prompt.startswith("a panoramic view")
    assert np.load(tmp_path / "ds" / "00001" / "distance.npz")["distance"].dtype == np.float16
    # the clip is reproducible from its metadata: same scene, same first frame
    scene = make_scene(meta["scene_kind"], meta["scene_seed"])
    assert scene.fingerprint() == meta["scene_fingerprint"]
    world = torch.tensor(meta["world_from_clip"], dtype=torch.float64).reshape(4, 4)
    rgb, dist, _ = scene.render(world @ torch.from_numpy(clip.c2w), 16)
    assert np.abs(rgb - clip.rgb).max() <= 1 / 255 + 1e-6
    assert np.allclose(dist, clip.distance, rtol=2e-3)
    with pytest.raises(InputError, match="unknown scene kind"):
        build_dataset(tmp_path / "x", 1, kinds=("moon",), progress=False)


def _load_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_cli(tmp_path, capsys):
    from matrix_world.app.cli import run_main

    script = _load_script(ROOT / "scripts" / "build_synthetic_dataset.py")
    argv = ["--out", str(tmp_path / "d"), "--clips", "1", "--frames", "2", "--height", "8", "--kinds", "beach"]
    assert run_main(script.main, argv) == 0
    assert is_complete_clip(tmp_path / "d" / "00000")
    assert run_main(script.main, argv) == 0 and "1 already complete" in capsys.readouterr().out
    assert run_main(script.main, argv[:-1] + ["moon"]) == 2
    assert "error: unknown scene kind" in capsys.readouterr().err


def test_benchmark_split_build_and_load(tmp_path):
    scenes = (BENCHMARK_SCENES[1], BENCHMARK_SCENES[9])  # city, office
    split = build_benchmark_split(tmp_path, frames=3, height=16, heldout=2, scenes=scenes, log=lambda m: None)
    assert [c["name"] for c in split["clips"]] == ["city", "office"]
    clips = load_benchmark_split(tmp_path)
    c = clips[0]
    assert c.frames.shape == (3, 16, 32, 3) and c.distances.shape == (3, 16, 32) and c.c2w.shape == (3, 4, 4)
    assert c.heldout_c2w.shape == (2, 4, 4) and c.heldout_rgb.shape == (2, 16, 32, 3)
    assert np.allclose(c.c2w[0], np.eye(4), atol=1e-12)
    # held-out poses live in the clip frame: re-rendering them reproduces the stored views
    rgb, dist, _ = c.render(c.heldout_c2w)
    assert np.abs(rgb - c.heldout_rgb).max() <= 1 / 255 + 1e-6 and np.allclose(dist, c.heldout_distance, rtol=1e-5)
    assert build_benchmark_split(tmp_path, frames=3, height=16, heldout=2, scenes=scenes, log=lambda m: None)["clips"][0]["skipped"]
    with pytest.raises(InputError, match="unknown benchmark clip"):
        load_benchmark_split(tmp_path, names=["moon"])


def test_training_pair_frame0_is_the_panorama_and_known_pixels_agree(tmp_path):
    build_dataset(tmp_path, 1, seed=2, frames=4, height=48, kinds=("town",), progress=False)
    clip = read_clip(tmp_path / "00000")
    pair = pair_from_clip(clip, backend="cpu")
    assert pair.scaffold.shape == clip.rgb.shape and pair.mask.shape == clip.rgb.shape[:3]
    assert np.array_equal(pair.scaffold[0], pair.video[0]) and pair.mask[0].all()
    assert np.allclose(pair.c2w[0], np.eye(4))
    # later frames: the scaffold sees part of the scene and agrees with the ground truth there
    coverage = pair.mask[1:].mean(axis=(1, 2))
    assert np.all(coverage > 0.2) and np.all(coverage < 1.0)
    agreement = masked_agreement(pair)
    assert torch.all(agreement[1:] > 20.0), agreement
    write_pair(tmp_path / "00000", pair)
    rgb, mask = read_scaffold(tmp_path / "00000")
    assert np.array_equal(mask, pair.mask) and np.abs(rgb - pair.scaffold).max() <= 0.5 / 255 + 1e-6
