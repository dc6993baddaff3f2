"""The world scripts (text2world, image2world, explore, view) as a new user runs them: each a subprocess with its DEFAULT options (no --device,
the default preset; only sizes made small), checked by what it wrote, not only its exit code.
Offline with an empty model cache; the shared runs are fixtures in conftest.py, the helpers
in script_helpers.py."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from script_helpers import (  # helpers and constants of the script tests
    ROOT, SCRIPTS, PROMPT, FRAMES, SMALL, SHARED_PANORAMA, run_script, one_line_error, sha256, read_ply,
    check_world_ply, box_distance, assert_pipeline_run, assert_offline_backends,
)


def test_text2world_defaults(world_run):
    run, stdout = world_run
    assert re.fullmatch(r"a-quiet-harbour-town-at-sunset-\d{8}-\d{6}", run.name), run.name
    manifest = assert_pipeline_run(run, stdout, (64, 128))
    assert manifest["world_config"]["prompt"] == PROMPT
    assert_offline_backends(manifest, "procedural", "procedural")
    assert f"python scripts/view.py outputs/{run.name}" in stdout


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """photo.jpg (a perspective 96x72 crop), pano.png (128x256) and distance.npy (a box room, 128x256)."""
    folder = tmp_path_factory.mktemp("inputs")
    if SHARED_PANORAMA.is_file():
        pano = cv2.imread(str(SHARED_PANORAMA))
    else:  # a smooth synthetic panorama
        from matrix_world.equirect import equirect_directions

        d = equirect_directions(256, dtype=torch.float64).numpy()
        lon = np.arctan2(d[..., 0], d[..., 2])
        pano = (np.stack([0.5 + 0.4 * np.sin(lon), 0.5 + 0.4 * np.cos(3 * lon) * d[..., 1], 0.5 + 0.3 * d[..., 1]], -1)
                * 255 + 0.5).astype(np.uint8)
    h, w = pano.shape[:2]
    crop = pano[h // 4: 3 * h // 4, w // 2 - h // 3: w // 2 + h // 3]
    cv2.imwrite(str(folder / "photo.jpg"), cv2.resize(crop, (96, 72), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(folder / "pano.png"), cv2.resize(pano, (256, 128), interpolation=cv2.INTER_AREA))
    np.save(folder / "distance.npy", box_distance(128))
    return folder


def test_image2world_photo(inputs, env, tmp_path):
    proc = run_script("image2world.py", inputs / "photo.jpg", *SMALL, "--out", tmp_path / "run", env=env)
    manifest = assert_pipeline_run(tmp_path / "run", proc.stdout, (64, 128))
    assert_offline_backends(manifest, "photo", "prior")
    assert manifest["inputs"]["image"]["sha256"] == sha256(inputs / "photo.jpg")
    assert manifest["world_config"]["panorama"] is False


def test_image2world_panorama(inputs, env, tmp_path):
    proc = run_script("image2world.py", inputs / "pano.png", "--panorama", *SMALL, "--out", tmp_path / "run", env=env)
    # the given panorama is the run's panorama, as is (its own size: --panorama-height does not resize it)
    manifest = assert_pipeline_run(tmp_path / "run", proc.stdout, (128, 256))
    assert_offline_backends(manifest, "file", "prior")
    assert sha256(tmp_path / "run" / "panorama.png") == sha256(inputs / "pano.png")


def test_image2world_panorama_with_distance(inputs, env, tmp_path):
    proc = run_script("image2world.py", inputs / "pano.png", "--panorama", "--distance", inputs / "distance.npy",
                      *SMALL, "--out", tmp_path / "run", env=env)
    manifest = assert_pipeline_run(tmp_path / "run", proc.stdout, (128, 256))
    assert_offline_backends(manifest, "file", "file")
    assert manifest["inputs"]["distance"]["sha256"] == sha256(inputs / "distance.npy")
    depth = np.load(tmp_path / "run" / "depth.npz")
    assert np.array_equal(depth["distance"], np.load(inputs / "distance.npy"))  # the given distances, exactly
    assert not depth["sky"].any()  # a closed room has no sky


# --------------------------------------------------------------------------- explore


def yaw_pose(position, yaw_deg: float) -> np.ndarray:
    a = np.radians(yaw_deg)
    c2w = np.eye(4)
    c2w[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    c2w[:3, 3] = position
    return c2w


@pytest.fixture(scope="module")
def explored(world_run, env, tmp_path_factory) -> dict:
    """A copy of the world, then three segments: default (from the last frame), ``--start-frame 3``,
    ``--start-pose pose.json``."""
    base, _ = world_run
    run = tmp_path_factory.mktemp("explore") / "world"
    shutil.copytree(base, run)
    frames = ["--frames", str(FRAMES)]
    out = {"run": run, "stdout": []}
    out["stdout"].append(run_script("explore.py", run, *frames, env=env).stdout)
    out["stdout"].append(run_script("explore.py", run, *frames, "--start-frame", "3", env=env).stdout)
    mid = np.array(json.loads((run / "trajectory.json").read_text())["poses"][4]).reshape(4, 4)
    out["pose"] = yaw_pose(mid[:3, 3] + [0.1, 0.0, 0.0], 30.0)
    pose_file = run.parent / "pose.json"
    pose_file.write_text(json.dumps({"convention": "opencv_c2w", "poses": [out["pose"].reshape(16).tolist()]}))
    out["stdout"].append(run_script("explore.py", run, *frames, "--start-pose", pose_file, env=env).stdout)
    return out


def segment(run: Path, name: str) -> tuple[dict, np.ndarray]:
    manifest = json.loads((run / "segments" / name / "manifest.json").read_text())
    poses = np.array(json.loads((run / "segments" / name / "trajectory.json").read_text())["poses"]).reshape(-1, 4, 4)
    assert len(poses) == FRAMES
    check_world_ply(run / "segments" / name / "world.ply")
    return manifest, poses


def test_explore_continues_from_the_last_frame(explored, world_run):
    run, base = explored["run"], world_run[0]
    manifest, poses = segment(run, "001")
    base_poses = np.array(json.loads((base / "trajectory.json").read_text())["poses"]).reshape(-1, 4, 4)
    assert manifest["explore"]["from"] == "." and manifest["explore"]["start_frame"] == FRAMES - 1
    assert np.array_equal(np.array(manifest["explore"]["start_c2w"]).reshape(4, 4), base_poses[-1])
    assert np.allclose(poses[0], base_poses[-1], atol=1e-12)  # the segment starts where the world ended
    assert manifest["checks"]["start_pose_in_world_frame"] is True
    assert "segment 001 from frame 8 of world" in explored["stdout"][0]


def test_explore_start_frame(explored):
    run = explored["run"]
    manifest, poses = segment(run, "002")
    _, previous = segment(run, "001")
    assert manifest["explore"]["from"] == "segments/001" and manifest["explore"]["start_frame"] == 3
    assert np.allclose(poses[0], previous[3], atol=1e-12)


def test_explore_start_pose(explored):
    run = explored["run"]
    manifest, poses = segment(run, "003")
    assert manifest["explore"]["start_frame"] is None
    assert np.allclose(np.array(manifest["explore"]["start_c2w"]).reshape(4, 4), explored["pose"], atol=1e-12)
    assert np.allclose(poses[0], explored["pose"], atol=1e-12)
    assert "from the given pose" in explored["stdout"][2]


def test_explore_merged_world(explored, world_run):
    run = explored["run"]
    world = json.loads((run / "manifest.json").read_text())
    assert list(world["segments"]) == ["001", "002", "003"] and world["world"]["merged"] == "world.ply"
    assert sha256(run / "world_base.ply") == sha256(world_run[0] / "world.ply")  # the base world is kept as it was
    merged = check_world_ply(run / "world.ply")
    ids = np.load(run / "world_segments.npz")
    assert list(ids["names"]) == ["base", "001", "002", "003"]
    assert ids["segment"].shape == (len(merged),) and ids["segment"].dtype == np.int32
    counts = np.bincount(ids["segment"], minlength=4)
    assert counts[0] == len(read_ply(run / "world_base.ply")[1]) and (counts > 0).all()
    assert np.array_equal(merged[: counts[0]], read_ply(run / "world_base.ply")[1])  # base first, unchanged
    assert f"merged world.ply: {len(merged):,} Gaussians = base " in explored["stdout"][-1]


def test_explore_start_pose_must_be_one_pose(world_run, env, tmp_path):
    run = tmp_path / "world"
    shutil.copytree(world_run[0], run)
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"convention": "opencv_c2w", "poses": [np.eye(4).reshape(16).tolist()] * 2}))
    proc = run_script("explore.py", run, "--start-pose", two, env=env, expect=2)
    assert one_line_error(proc) == f"error: {two}: expected exactly one pose, got 2"
    assert not (run / "segments").exists() and sha256(run / "world.ply") == sha256(world_run[0] / "world.ply")


# --------------------------------------------------------------------------- view


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def viser_scene(port: int, quiet_s: float = 1.5, timeout: float = 60.0) -> tuple[list[dict], list[bytes]]:
    """Connect to a viser server's websocket like its web client does and collect the scene
    messages (and their binary buffers) until it has been quiet for ``quiet_s``."""
    import msgspec
    import viser
    import zstandard
    from websockets.sync.client import connect

    messages, buffers = [], []
    with connect(f"ws://127.0.0.1:{port}", subprotocols=[f"viser-v{viser.__version__}"], max_size=None,
                 open_timeout=timeout) as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                raw = ws.recv(timeout=quiet_s if messages else timeout)
            except TimeoutError:
                break
            # viser 1.1 wire format: [u64 msgpack size][u64 zstd size][zstd msgpack][8-aligned raw buffers]
            size, compressed = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
            inner = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(raw[16:16 + compressed],
                                                                                   max_output_size=size))
            offset, base = 16 + compressed, len(buffers)
            for length in inner["binaryBufferLengths"]:
                offset += (8 - offset % 8) % 8
                buffers.append(raw[offset:offset + length])
                offset += length
            for message in inner["messages"]:
                props = message.get("props", {})
                for value in props.values():
                    if isinstance(value, dict) and "__binary_index" in value:
                        value["__binary_index"] += base
                messages.append(message)
    return messages, buffers


def test_view_serves_the_page_and_the_splats(explored, env):
    run = explored["run"]
    port = free_port()
    # Ctrl-C must reach it: a child inherits an ignored SIGINT (pytest started in the background), a caught one
    # is reset to the default at exec
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else None
    try:
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / "view.py"), str(run), "--port", str(port)], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "view.py exited early:\n" + "".join(lines)
            lines.append(line)
            if line.startswith("viewer at "):
                break
        text = "".join(lines)
        assert f"viewer at http://127.0.0.1:{port}" in text, text
        merged = read_ply(run / "world.ply")[1]
        assert f"showing {len(merged):,} of {len(merged):,} Gaussians, 4 trajectory(ies)" in text  # base + 3 segments

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
            html = page.read().decode()
        assert "<html" in html.lower() and "<script" in html.lower()

        messages, buffers = viser_scene(port)
        splats = [m for m in messages if m["type"] == "GaussianSplatsMessage"]
        assert [m["name"] for m in splats] == [f"/world/{k}" for k in range(4)]  # base + 3 segments, one node each
        assert "segments: base (" in text and ", 003 (" in text
        packed = []
        for message in splats:
            ref = message["props"]["buffer"]
            packed.append(np.frombuffer(buffers[ref["__binary_index"]], dtype=np.dtype(ref["dtype"])).reshape(-1, 8))
        centers = np.concatenate(packed)[:, :3].copy().view(np.float32)  # antimatter15 layout: x y z as float32 first
        assert len(centers) == len(merged)
        # the world's Gaussians, shown uniformly scaled (the walk speed; see matrix_world/app/viewer.py)
        world = merged[:, :3].astype(np.float64)
        scale = np.linalg.norm(centers, axis=1).sum() / np.linalg.norm(world, axis=1).sum()
        from scipy.spatial import cKDTree

        tol = 1e-5 * float(np.abs(world).max())
        assert cKDTree(world).query(centers / scale)[0].max() < tol  # every splat sent is a world Gaussian ...
        assert cKDTree(centers / scale).query(world)[0].max() < tol  # ... and every world Gaussian is sent
        names = [m.get("name", "") for m in messages]
        paths = sorted({n for n in names if n.startswith("/cameras/") and n.endswith("/path")})
        assert paths == [f"/cameras/{k}/path" for k in range(4)]
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, rest
    assert "stopping" in rest
