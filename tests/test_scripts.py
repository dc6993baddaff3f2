"""Every script in scripts/ run as a subprocess with its DEFAULT options (no --device, so the
``auto`` device resolution runs; the default preset), only sizes made small where an option
exists. Each test checks what the script wrote (shapes, dtypes, values, round trips, the
manifest), not only its exit code.

The subprocesses never reach real weights: HF_HUB_OFFLINE=1 and an empty HF_HOME/HF_HUB_CACHE.
Expensive runs (one text2world world, one chain of explore segments) are module fixtures
shared by the tests that read them.
"""

from __future__ import annotations

import hashlib
import json
import os
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

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
PROMPT = "a quiet harbour town at sunset"
FRAMES = 9
SMALL = ["--frames", str(FRAMES), "--resolution", "64", "--panorama-height", "64"]
PLY_FIELDS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
CUDA = torch.cuda.is_available()
SHARED_PANORAMA = Path("/work/shared/data/panoramas/city.png")


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Subprocess environment: offline hub with an empty cache, one thread, not under torchrun."""
    hf = tmp_path_factory.mktemp("hf_home_empty")
    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                              "MASTER_PORT", "HF_TOKEN")}
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(hf), HF_HUB_CACHE=str(hf / "hub"), PYTHONUNBUFFERED="1")
    return out


def run_script(name: str, *args, env: dict, cwd: Path = ROOT, expect: int = 0, timeout: float = 300,
               extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """``python scripts/NAME args`` with ``sys.executable``; asserts the exit code."""
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**env, **(extra_env or {})}, check=False)
    assert proc.returncode == expect, (f"{name} exited {proc.returncode} (expected {expect})\n"
                                       f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The ``error: ...`` line of a failed run; there is no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_ply(path: Path) -> tuple[list[str], np.ndarray]:
    """A binary little-endian float .ply read independently of matrix_world: (field names, [N, F] float32)."""
    blob = path.read_bytes()
    end = blob.index(b"end_header\n") + len(b"end_header\n")
    header = blob[:end].decode("ascii").splitlines()
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0", header[:2]
    count = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    props = [line.split() for line in header if line.startswith("property")]
    assert all(p[1] == "float" for p in props), props
    names = [p[2] for p in props]
    data = np.frombuffer(blob, dtype="<f4", offset=end)
    assert data.size == count * len(names), (data.size, count, names)
    return names, data.reshape(count, len(names))


def check_world_ply(path: Path) -> np.ndarray:
    """A standard 3DGS .ply with > 0 finite Gaussians; returns its [N, F] values."""
    names, values = read_ply(path)
    rest = [n for n in names if n.startswith("f_rest_")]
    assert [n for n in names if not n.startswith("f_rest_")] == PLY_FIELDS, names
    assert rest == [f"f_rest_{i}" for i in range(len(rest))] and len(rest) % 3 == 0
    assert len(values) > 0 and np.isfinite(values).all()
    quats = values[:, [names.index(f"rot_{i}") for i in range(4)]]
    assert (np.linalg.norm(quats, axis=1) > 1e-6).all()
    return values


def gaussians_printed(text: str) -> int:
    match = re.search(r"Gaussians: ([\d,]+)", text)
    assert match, text
    return int(match.group(1).replace(",", ""))


def box_distance(h: int) -> np.ndarray:
    """Distance from inside a 6 x 2.7 x 8 box room, [h, 2h] float32."""
    from matrix_world.equirect import equirect_directions

    d = equirect_directions(h, dtype=torch.float64).numpy()
    lo, hi = np.array([-3.0, -1.2, -4.0]), np.array([3.0, 1.5, 4.0])
    with np.errstate(divide="ignore"):
        t = np.where(d > 0, hi / d, np.where(d < 0, lo / d, np.inf))
    return t.min(-1).astype(np.float32)


def assert_pipeline_run(run: Path, stdout: str, pano_shape: tuple[int, int]) -> dict:
    """The files of a world run, their shapes/dtypes/values, and the manifest's record of them."""
    for name in ("manifest.json", "panorama.png", "depth.npz", "trajectory.json", "scaffold.npz", "scaffold_rgb.mp4",
                 "scaffold_mask.mp4", "video.npz", "video.mp4", "world.ply", "world.spz", "preview.mp4",
                 "preview_panorama.png", "contact_sheet.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["format"] == "matrix_world.run/1"
    assert manifest["world_config"]["device"] == "auto" and manifest["world_config"]["preset"] == "fast"
    assert manifest["request"]["device"] == ("cuda" if CUDA else "cpu")  # 'auto' resolved
    for name, record in manifest["artifacts"].items():  # every artifact's hash is the file's
        assert record["sha256"] == sha256(run / name), name

    pano = cv2.imread(str(run / "panorama.png"), cv2.IMREAD_UNCHANGED)
    assert pano.shape == (*pano_shape, 3) and pano.dtype == np.uint8 and pano.std() > 1
    depth = np.load(run / "depth.npz")
    assert depth["distance"].shape == pano_shape and depth["distance"].dtype == np.float32
    assert np.isfinite(depth["distance"]).all() and (depth["distance"] > 0).all()
    assert depth["sky"].dtype == bool and depth["valid"].dtype == bool

    traj = json.loads((run / "trajectory.json").read_text())
    poses = np.array(traj["poses"]).reshape(-1, 4, 4)
    assert traj["convention"] == "opencv_c2w" and len(poses) == FRAMES and traj["fps"] > 0
    assert np.allclose(poses[0], np.eye(4)) and np.isfinite(poses).all()
    assert np.linalg.norm(poses[-1, :3, 3]) > 0  # the camera moved

    scaffold = np.load(run / "scaffold.npz")
    rgb, mask = scaffold["rgb"], scaffold["mask"]
    assert rgb.shape == (FRAMES, 64, 128, 3) and rgb.dtype == np.uint8
    assert mask.shape == (FRAMES, 64, 128) and mask.dtype == bool
    assert mask[0].all() and 0 < mask[1:].mean() < 1  # frame 0 is the panorama; later frames have holes
    frames = np.load(run / "video.npz")["frames"]
    assert frames.shape == (FRAMES, 64, 128, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[mask], rgb[mask]) or manifest["plan"]["backends"]["video"] != "fill"  # fill keeps known pixels

    ply = check_world_ply(run / "world.ply")
    assert len(ply) == gaussians_printed(stdout) == manifest["stages"]["reconstruction"]["info"]["num_gaussians"]
    from matrix_world.splat_io import load_splats

    spz = load_splats(run / "world.spz")
    assert len(spz) == len(ply)
    extent = float(np.abs(ply[:, :3]).max())
    assert np.abs(spz.means.numpy() - ply[:, :3]).max() <= 1e-3 * max(extent, 1.0)  # 24-bit fixed point
    return manifest


def assert_offline_backends(manifest: dict, panorama: str, depth: str) -> None:
    backends = manifest["plan"]["backends"]
    assert backends["panorama"] == panorama and backends["depth"] == depth
    assert backends["video"] == "fill"  # no Wan weights in the empty cache
    assert backends["reconstruction"] == ("optimize" if CUDA else "lift")


# --------------------------------------------------------------------------- text2world / image2world


@pytest.fixture(scope="module")
def world_run(tmp_path_factory, env) -> tuple[Path, str]:
    """``text2world.py PROMPT`` with small sizes and the default run directory (under the cwd)."""
    cwd = tmp_path_factory.mktemp("text2world")
    proc = run_script("text2world.py", PROMPT, *SMALL, env=env, cwd=cwd)
    runs = list((cwd / "outputs").iterdir())
    assert len(runs) == 1, runs
    return runs[0], proc.stdout


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
    assert f"{len(merged):,} in the merged world" in explored["stdout"][-1]


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
        assert len(splats) == 1 and splats[0]["name"] == "/world"
        ref = splats[0]["props"]["buffer"]
        packed = np.frombuffer(buffers[ref["__binary_index"]], dtype=np.dtype(ref["dtype"])).reshape(-1, 8)
        centers = packed[:, :3].copy().view(np.float32)  # antimatter15 layout: x y z as float32 first
        assert len(centers) == len(merged)
        order = lambda a: a[np.lexsort(a.T[::-1])]
        assert np.array_equal(order(centers), order(merged[:, :3].astype(np.float32)))  # the world's Gaussians
        names = [m.get("name", "") for m in messages]
        paths = sorted({n for n in names if n.startswith("/trajectories/") and n.endswith("/path")})
        assert paths == [f"/trajectories/{k}/path" for k in range(4)]
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, rest
    assert "stopping" in rest


# --------------------------------------------------------------------------- render_scaffold


def test_render_scaffold_on_a_run(world_run, env, tmp_path):
    run, _ = world_run
    out = tmp_path / "scaffold"
    proc = run_script("render_scaffold.py", "--panorama", run / "panorama.png", "--distance", run / "depth.npz",
                      "--trajectory", "straight", "--frames", FRAMES, "--height", 32, "--out", out, env=env)
    assert f"wrote {out}" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"manifest.json", "trajectory.json", "scaffold.npz", "scaffold_rgb.mp4",
                                               "scaffold_mask.mp4"}
    data = np.load(out / "scaffold.npz")
    rgb, mask = data["rgb"], data["mask"]
    assert rgb.shape == (FRAMES, 32, 64, 3) and rgb.dtype == np.uint8
    assert mask.shape == (FRAMES, 32, 64) and mask.dtype == bool
    assert mask[0].all() and 0 < mask[1:].mean() < 1 and (rgb[~mask] == 0).all()  # unknown pixels are black
    poses = np.array(json.loads((out / "trajectory.json").read_text())["poses"]).reshape(-1, 4, 4)
    assert len(poses) == FRAMES and np.allclose(poses[0], np.eye(4))
    z = poses[:, 2, 3]
    assert (np.diff(z) > 0).all() and np.abs(poses[:, :2, 3]).max() < 1e-9  # straight ahead (+z), level


# --------------------------------------------------------------------------- convert_splats

# our (OpenCV) frame -> the preset's, rows = target axes in ours (written out here, not taken from axes.py)
AXES = {
    "opencv": np.eye(3),
    "opengl": np.diag([1.0, -1.0, -1.0]),
    "threejs": np.diag([1.0, -1.0, -1.0]),
    "blender": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    "unity": np.diag([1.0, -1.0, 1.0]),
    "unreal": 100.0 * np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]]),
}


@pytest.mark.parametrize("preset,ext", [("opencv", ".ply"), ("opengl", ".splat"), ("threejs", ".ply"),
                                        ("blender", ".ply"), ("unity", ".ply"), ("unreal", ".splat")])
def test_convert_splats_axes_and_back(world_run, env, tmp_path, preset, ext):
    from matrix_world.splat_io import load_splats

    src = world_run[0] / "world.ply"
    ref = load_splats(src)
    out, back = tmp_path / f"world_{preset}{ext}", tmp_path / "back.ply"
    proc = run_script("convert_splats.py", src, out, "--axes", preset, env=env)
    assert f"{len(ref)} Gaussians (of {len(ref)} read)" in proc.stdout
    m = AXES[preset]
    stored = load_splats(out)  # as stored: the preset's frame
    means = ref.means.double().numpy()
    extent = float(np.abs(means).max())
    assert np.allclose(stored.means.double().numpy(), means @ m.T, atol=1e-5 * extent * np.abs(m).max())
    if ext == ".ply":  # exact covariances (.splat quantises rotations to 8 bits)
        cov = ref.covariances().double().numpy()
        expected = m @ cov @ m.T
        assert np.allclose(stored.covariances().double().numpy(), expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())
    if ext == ".ply" and preset == "opencv":
        assert np.array_equal(read_ply(out)[1], read_ply(src)[1])  # standard in, identical out

    run_script("convert_splats.py", out, back, "--in-axes", preset, env=env)
    again = load_splats(back)
    assert len(again) == len(ref)
    assert np.allclose(again.means.double().numpy(), means, atol=1e-5 * extent)
    tol = 1e-5 if ext == ".ply" else 1.0 / 255 + 1e-6  # .splat stores colour and opacity in 8 bits
    assert np.allclose(again.opacities.numpy(), ref.opacities.numpy(), atol=tol)
    assert np.allclose(again.rgb.clamp(0, 1).numpy(), ref.rgb.clamp(0, 1).numpy(), atol=tol)


def test_convert_splats_spz_round_trip_and_axes_refused(world_run, env, tmp_path):
    from matrix_world.splat_io import load_splats

    src = world_run[0] / "world.ply"
    ref = load_splats(src)
    run_script("convert_splats.py", src, tmp_path / "w.spz", env=env)
    run_script("convert_splats.py", tmp_path / "w.spz", tmp_path / "back.ply", env=env)
    back = check_world_ply(tmp_path / "back.ply")
    extent = float(ref.means.abs().max())
    assert len(back) == len(ref) and np.abs(back[:, :3] - ref.means.numpy()).max() <= 1e-3 * extent
    proc = run_script("convert_splats.py", src, tmp_path / "bad.spz", "--axes", "unity", env=env, expect=2)
    assert "spz defines its own axes" in one_line_error(proc) and not (tmp_path / "bad.spz").exists()


# --------------------------------------------------------------------------- convert_matrix3d_lora


def test_convert_matrix3d_lora(env, tmp_path):
    from safetensors import safe_open

    rank, dim, ffn = 4, 24, 40
    shapes = {"self_attn.q": (dim, dim), "self_attn.k": (dim, dim), "self_attn.v": (dim, dim), "self_attn.o": (dim, dim),
              "cross_attn.q": (dim, dim), "cross_attn.k": (dim, dim), "cross_attn.v": (dim, dim),
              "cross_attn.o": (dim, dim), "cross_attn.k_img": (dim, dim), "cross_attn.v_img": (dim, dim),
              "ffn.0": (ffn, dim), "ffn.2": (dim, ffn)}
    expected_names = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
                      "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
                      "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0",
                      "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
                      "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}
    g = torch.Generator().manual_seed(0)
    official, expected = {}, {}
    for block in range(2):  # the official checkpoint's layout: diffusion_model.blocks.N.<wan module>.lora_{A,B}.weight
        for module, (out_f, in_f) in shapes.items():
            a, b = torch.randn(rank, in_f, generator=g), torch.randn(out_f, rank, generator=g)
            official[f"diffusion_model.blocks.{block}.{module}.lora_A.weight"] = a
            official[f"diffusion_model.blocks.{block}.{module}.lora_B.weight"] = b
            expected[f"transformer.blocks.{block}.{expected_names[module]}.lora_A.weight"] = a
            expected[f"transformer.blocks.{block}.{expected_names[module]}.lora_B.weight"] = b
    a, b = torch.randn(rank, dim, generator=g), torch.randn(16, rank, generator=g)
    official.update({"diffusion_model.head.head.lora_A.weight": a, "diffusion_model.head.head.lora_B.weight": b})
    expected.update({"transformer.proj_out.lora_A.weight": a, "transformer.proj_out.lora_B.weight": b})
    ckpt = tmp_path / "pano_video_gen_480p.ckpt"
    torch.save(official, ckpt)

    out = tmp_path / "pano_480p.safetensors"
    proc = run_script("convert_matrix3d_lora.py", ckpt, out, env=env)
    assert f"wrote {out}: {len(expected) // 2} LoRA modules, rank {rank}" in proc.stdout
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == set(expected)
        for key, value in expected.items():
            assert torch.equal(f.get_tensor(key), value), key
        assert f.metadata()["format"] == "pt"

    again = run_script("convert_matrix3d_lora.py", out, tmp_path / "again.safetensors", env=env, expect=2)
    assert "already in the diffusers layout" in one_line_error(again)
    wrong = run_script("convert_matrix3d_lora.py", ckpt, tmp_path / "out.pt", env=env, expect=2)
    assert "must end with .safetensors" in one_line_error(wrong) and not (tmp_path / "out.pt").exists()


# --------------------------------------------------------------------------- synthetic data


def test_build_synthetic_dataset(env, tmp_path):
    from matrix_world.datasets.clips import read_clip

    out = tmp_path / "dataset"
    proc = run_script("build_synthetic_dataset.py", "--out", out, "--clips", 2, "--frames", FRAMES, "--height", 32, env=env)
    assert "2 clip(s) built, 0 already complete" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001"]
    for index in range(2):
        folder = out / f"{index:05d}"
        assert sorted(p.name for p in (folder / "rgb").iterdir()) == [f"{i:05d}.png" for i in range(FRAMES)]
        clip = read_clip(folder)
        assert clip.rgb.shape == (FRAMES, 32, 64, 3) and clip.rgb.dtype == np.float32
        assert 0 <= clip.rgb.min() and clip.rgb.max() <= 1 and clip.rgb.std() > 0
        assert clip.distance.shape == (FRAMES, 32, 64) and clip.sky.shape == (FRAMES, 32, 64)
        assert np.isfinite(clip.distance).all() and (clip.distance > 0).all()
        assert clip.c2w.shape == (FRAMES, 4, 4) and np.allclose(clip.c2w[0], np.eye(4))
        assert clip.prompt and clip.meta["index"] == index and clip.meta["frames"] == FRAMES
        assert clip.meta["height"] == 32 and clip.meta["width"] == 64
    stamp = (out / "00000" / "meta.json").stat().st_mtime_ns
    again = run_script("build_synthetic_dataset.py", "--out", out, "--clips", 2, "--frames", FRAMES, "--height", 32, env=env)
    assert "0 clip(s) built, 2 already complete" in again.stdout  # resumable: complete clips are kept
    assert (out / "00000" / "meta.json").stat().st_mtime_ns == stamp


def test_synthetic_contact_sheet_default_out(env, tmp_path):
    from PIL import Image

    proc = run_script("synthetic_contact_sheet.py", "--height", 32, env=env, cwd=tmp_path)
    sheet = tmp_path / "docs" / "synthetic_scenes.png"  # the default --out, relative to the cwd
    with Image.open(sheet) as im:
        assert im.mode == "P" and im.size == (5 * 32, 7 * 32)  # rows: 7 kinds; tiles: 2h RGB + 2h distance + h top view
        rows = np.asarray(im.convert("RGB")).reshape(7, 32, 160, 3)
    assert (rows.reshape(7, -1).std(axis=1) > 0).all()
    kinds = [line.split()[0] for line in proc.stdout.splitlines() if " tris " in line]
    assert kinds == ["forest", "city", "beach", "snow", "harbour", "room", "hall"]
    assert "wrote docs/synthetic_scenes.png" in proc.stdout


# --------------------------------------------------------------------------- video_multigpu


def test_video_multigpu_help_and_missing_weights(world_run, env, tmp_path):
    helptext = run_script("video_multigpu.py", "--help", env=env).stdout
    for option in ("--prompt", "--resolution", "--model", "--lora", "--height", "--cpu"):
        assert option in helptext
    run = tmp_path / "world"
    shutil.copytree(world_run[0], run)
    video = sha256(run / "video.npz")
    # default model, one process without torchrun: the missing weights are a one-line error
    proc = run_script("video_multigpu.py", run, "--prompt", PROMPT, "--cpu", env=env, expect=2)
    assert "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers" in one_line_error(proc)
    assert sha256(run / "video.npz") == video
    several = run_script("video_multigpu.py", run, "--prompt", PROMPT, "--cpu", env=env, expect=2,
                         extra_env={"WORLD_SIZE": "2", "RANK": "0"})
    assert "--cpu runs one process" in one_line_error(several)


def test_video_multigpu_tiny_model_one_cpu_process(world_run, env, tmp_path):
    from tiny_wan import tiny_wan_dir

    run = tmp_path / "world"
    shutil.copytree(world_run[0], run)
    proc = run_script("video_multigpu.py", run, "--prompt", PROMPT, "--cpu", "--model", tiny_wan_dir(), "--lora", "none",
                      "--steps", 2, "--dtype", "float32", "--height", 32, env=env)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["backend"] == "wan" and (info["height"], info["width"], info["frames"]) == (32, 64, FRAMES)
    assert info["context_parallel"]["world_size"] == 1 and info["steps"] == 2
    frames = np.load(run / "video.npz")["frames"]
    assert frames.shape == (FRAMES, 32, 64, 3) and frames.dtype == np.uint8 and frames.std() > 0
    assert (run / "video.mp4").stat().st_size > 0
