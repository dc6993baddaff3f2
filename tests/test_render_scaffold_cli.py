"""scripts/render_scaffold.py end to end on a tiny panorama, resumption, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from matrix_world.app.cli import run_main
from matrix_world.equirect import equirect_directions
from matrix_world.errors import InputError
from matrix_world.io import read_distance

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "render_scaffold.py"
sys.path.insert(0, str(ROOT / "scripts"))
import render_scaffold
from script_helpers import box_distance  # a 6 x 2.7 x 8 box room seen from 1.5 above its floor

H = 32
LOOSE = ["--occlusion-threshold", "0.2"]  # at 32 x 64 a 5% rule marks most of a box room unknown


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    # smooth colours (the renderer resamples through cube faces, so noise would blur), + a seam-free
    # longitude pattern so that a wrong turn of the panorama shows
    d = equirect_directions(H, dtype=torch.float64).numpy()
    lon = np.arctan2(d[..., 0], d[..., 2])
    pano = np.stack([0.5 + 0.4 * np.sin(lon), 0.5 + 0.4 * np.cos(2 * lon) * d[..., 1], 0.5 + 0.3 * d[..., 1]], -1)
    pano = (pano * 255 + 0.5).astype(np.uint8)
    cv2.imwrite(str(folder / "pano.png"), pano[:, :, ::-1])
    np.save(folder / "dist.npy", box_distance(H))
    return folder, pano


def args(folder, out, *extra, trajectory="straight", frames="5"):
    argv = ["--panorama", str(folder / "pano.png"), "--distance", str(folder / "dist.npy"),
            "--trajectory", trajectory, "--height", str(H), "--out", str(out), *LOOSE]
    if frames is not None:
        argv += ["--frames", frames]
    return argv + list(extra)


def test_end_to_end_and_resume(inputs, tmp_path, capsys):
    folder, pano = inputs
    out = tmp_path / "run"
    # the exact command line other tools use
    proc = subprocess.run([sys.executable, str(SCRIPT), *args(folder, out, "--yaw", "90", "--mesh-out", "ply")],
                          check=False, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    names = {"manifest.json", "trajectory.json", "scaffold.npz", "scaffold_rgb.mp4", "scaffold_mask.mp4",
             "scaffold_mesh.ply"}
    assert {p.name for p in out.iterdir()} == names  # nothing else (no staging, no temp files)

    data = np.load(out / "scaffold.npz")
    rgb, mask = data["rgb"], data["mask"]
    assert sorted(data.files) == ["distance", "mask", "rgb"]  # the one scaffold.npz layout (issue 11)
    assert rgb.shape == (5, H, 2 * H, 3) and rgb.dtype == np.uint8
    assert mask.shape == (5, H, 2 * H) and mask.dtype == bool
    # frame 0 is the panorama turned right by 90 degrees (16 of 64 columns), fully known
    assert np.array_equal(rgb[0], np.roll(pano, -16, axis=1)) and mask[0].all()
    assert (rgb[1:][~mask[1:]] == 0).all()  # unknown pixels are black
    assert 0.0 < mask[1:].mean() < 1.0

    traj = json.loads((out / "trajectory.json").read_text())
    poses = np.array(traj["poses"]).reshape(-1, 4, 4)
    assert traj["convention"] == "opencv_c2w" and traj["yaw"] == 90.0 and traj["fps"] == 16.0
    assert np.array_equal(poses[0], np.eye(4))
    d = traj["meta"]["forward_distance"]
    assert d == pytest.approx(3.0, rel=0.05)  # the +x wall, 3 m to the right, seen just below the horizon
    assert np.allclose(poses[-1, :3, 3], [0.0, 0.0, 0.6 * d]) and np.allclose(poses[:, :3, :3], np.eye(3))
    assert (out / "scaffold_mesh.ply").read_bytes()[:3] == b"ply"

    m = json.loads((out / "manifest.json").read_text())
    assert m["backends"] == {"trajectory": "preset", "scaffold": "cpu"}
    assert set(m["timings"]) == {"trajectory", "scaffold"} and set(m["artifacts"]) == names - {"manifest.json"}
    assert m["inputs"]["panorama"]["path"] == str((folder / "pano.png").resolve())
    assert m["stages"]["scaffold"]["info"]["frames"] == 5

    # same command again: both stages are reused, the files are untouched
    mtime = (out / "scaffold.npz").stat().st_mtime_ns
    assert run_main(render_scaffold.main, args(folder, out, "--yaw", "90", "--mesh-out", "ply")) == 0
    assert "(reused)" in capsys.readouterr().out and (out / "scaffold.npz").stat().st_mtime_ns == mtime
    # a new output height reruns the scaffold only, without the mesh the run no longer asks for
    assert run_main(render_scaffold.main, args(folder, out, "--yaw", "90", "--height", "16")) == 0
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["runs"][-1]["ran"] == ["scaffold"] and m2["runs"][-1]["skipped"] == ["trajectory"]
    assert np.load(out / "scaffold.npz")["rgb"].shape == (5, 16, 32, 3)
    assert "scaffold_mesh.ply" not in m2["artifacts"] and not (out / "scaffold_mesh.ply").exists()


def test_orbit_frames_are_turned_panoramas(inputs, tmp_path):
    folder, pano = inputs
    out = tmp_path / "orbit"
    assert run_main(render_scaffold.main, args(folder, out, trajectory="orbit", frames="4")) == 0
    data = np.load(out / "scaffold.npz")
    for i in range(1, 4):  # a camera turned by 90 i degrees sees the panorama rolled by 16 i columns
        known = data["mask"][i].copy()
        known[[0, 1, -2, -1]] = False  # pole caps carry the mean colour of their edge row
        assert known.mean() > 0.2

        frame = data["rgb"][i].astype(int)
        errors = [np.abs(frame - np.roll(pano, -shift, axis=1).astype(int))[known].mean() for shift in range(2 * H)]
        assert int(np.argmin(errors)) == 16 * i and errors[16 * i] < 2.5, (i, errors[16 * i])


def test_custom_trajectory_file(inputs, tmp_path):
    folder, _ = inputs
    # a Matrix-3D list of w2c: 3 cameras turned 90 deg right, stepping 2 units along world +z
    w2c = []
    for i in range(3):
        c2w = np.eye(4)
        c2w[:3, :3] = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]  # yaw 90
        c2w[:3, 3] = [0, 0, 2 * i]
        w2c.append(np.linalg.inv(c2w).tolist())
    (tmp_path / "cam.json").write_text(json.dumps(w2c))
    spec = str(tmp_path / "cam.json")
    out = tmp_path / "custom"
    assert run_main(render_scaffold.main, args(folder, out, "--height", "8", trajectory=spec, frames=None)) == 0
    traj = json.loads((out / "trajectory.json").read_text())
    poses = np.array(traj["poses"]).reshape(-1, 4, 4)
    assert traj["yaw"] == 90.0 and len(poses) == 3 and np.array_equal(poses[0], np.eye(4))
    # world +z is the frame-0 camera's left (-x); fitted like Matrix-3D, the last camera reaches half
    # of the distance to the +z wall (4 m; 4.005 at the nearest pixel centre just below the horizon)
    assert np.allclose(poses[-1, :3, 3], [-2.0, 0.0, 0.0], rtol=0.02, atol=1e-12)
    assert np.allclose(poses[:, :3, :3], np.eye(3))
    out = tmp_path / "custom_keep"
    assert run_main(render_scaffold.main, args(folder, out, "--custom-scale", "keep", "--height", "8",
                                               trajectory=spec, frames=None)) == 0
    poses = np.array(json.loads((out / "trajectory.json").read_text())["poses"]).reshape(-1, 4, 4)
    assert np.allclose(poses[-1, :3, 3], [-4.0, 0.0, 0.0], atol=1e-12)


# --------------------------------------------------------------------------- bad input


def write_png(path, image):
    cv2.imwrite(str(path), image)
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    f = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(1)
    write_png(f / "square.png", (rng.random((H, H, 3)) * 255).astype(np.uint8))
    write_png(f / "gray.png", (rng.random((H, 2 * H)) * 255).astype(np.uint8))
    write_png(f / "rgba.png", (rng.random((H, 2 * H, 4)) * 255).astype(np.uint8))
    write_png(f / "deep.png", (rng.random((H, 2 * H, 3)) * 65535).astype(np.uint16))
    (f / "notimage.png").write_bytes(b"not a png at all")
    good = box_distance(H)
    for name, value in (("nan", np.nan), ("neg", -1.0), ("zero", 0.0), ("minf", -np.inf)):
        d = good.copy()
        d[3, 5] = value
        np.save(f / f"{name}.npy", d)
    sky = good.copy()
    sky[:4] = np.inf
    np.save(f / "sky.npy", sky)
    np.save(f / "small.npy", box_distance(8))
    np.save(f / "int.npy", good.astype(np.int32))
    np.save(f / "three.npy", good[..., None])
    np.save(f / "allsky.npy", np.full_like(good, np.inf))
    (f / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (f / "malformed.json").write_text('{"convention": "opencv_c2w", "poses": [[1, 0, 0')
    (f / "empty.json").write_text('{"convention": "opencv_c2w", "poses": []}')
    (f / "empty_list.json").write_text("[]")
    (f / "one.json").write_text(json.dumps({"convention": "opencv_c2w", "poses": [np.eye(4).ravel().tolist()]}))
    (f / "skew.json").write_text(json.dumps([np.eye(4).tolist(), (2 * np.eye(4)).tolist()]))
    (f / "afile").write_text("in the way")
    return f


CASES = [  # (panorama, distance, trajectory, extra args, words the one-line error must contain)
    ("square.png", None, "straight", [], ["32x32", "width = 2 x height"]),
    ("gray.png", None, "straight", [], ["1-channel", "expected 8-bit RGB", "--allow-convert"]),
    ("rgba.png", None, "straight", [], ["4-channel", "--allow-convert"]),
    ("deep.png", None, "straight", [], ["uint16", "expected 8-bit RGB"]),
    ("notimage.png", None, "straight", [], ["cannot decode"]),
    ("missing.png", None, "straight", [], ["does not exist"]),
    (None, "nan.npy", "straight", [], ["1 NaN", "expected distances > 0"]),
    (None, "neg.npy", "straight", [], ["<= 0", "expected distances > 0"]),
    (None, "zero.npy", "straight", [], ["<= 0"]),
    (None, "minf.npy", "straight", [], ["<= 0"]),
    (None, "small.npy", "straight", [], ["8x16", "panorama is 32x64", "same size"]),
    (None, "int.npy", "straight", [], ["dtype int32", "expected float32"]),
    (None, "three.npy", "straight", [], ["2-D [H, W]"]),
    (None, "allsky.npy", "straight", [], ["all +inf"]),
    (None, "broken.npy", "straight", [], ["cannot read"]),
    (None, "missing.npy", "straight", [], ["does not exist"]),
    (None, None, "zigzag", [], ["unknown trajectory 'zigzag'", "straight, s_curve"]),
    (None, None, "malformed.json", [], ["not valid JSON"]),
    (None, None, "empty.json", [], ["non-empty list"]),
    (None, None, "empty_list.json", [], ["non-empty list"]),
    (None, None, "one.json", [], ["1 pose(s)", "at least 2 frames"]),
    (None, None, "skew.json", [], ["pose 1 is not a rigid transform"]),
    (None, None, "missing.json", [], ["does not exist"]),
    (None, None, "one.json", ["--frames", "7"], ["1 pose(s)"]),
    (None, None, "straight", ["--frames", "1"], ["at least 2 frames"]),
    (None, None, "straight", ["--height", "2"], ["--height 2", "at least 4"]),
    (None, None, "straight", ["--decimate", "3"], ["--decimate 3", "height 32"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] or c[1] or c[2] + " ".join(c[3]) for c in CASES])
def test_bad_input_one_line_error_nothing_written(inputs, bad, tmp_path, capsys, case):
    folder, _ = inputs
    pano, dist, traj, extra, words = case
    out = tmp_path / "run"
    argv = ["--panorama", str(bad / pano if pano else folder / "pano.png"),
            "--distance", str(bad / dist if dist else folder / "dist.npy"),
            "--trajectory", str(bad / traj) if traj.endswith(".json") else traj,
            "--height", str(H), "--out", str(out), *extra]
    assert run_main(render_scaffold.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not out.exists()


def test_output_folder_that_is_a_file(inputs, bad, capsys):
    folder, _ = inputs
    before = (bad / "afile").read_text()
    assert run_main(render_scaffold.main, args(folder, bad / "afile")) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err
    assert (bad / "afile").read_text() == before


def test_allow_convert_and_sky(bad, tmp_path, capsys):
    out = tmp_path / "conv"
    argv = ["--panorama", str(bad / "gray.png"), "--distance", str(bad / "sky.npy"), "--trajectory", "straight",
            "--frames", "3", "--height", "8", "--out", str(out), "--allow-convert", *LOOSE]
    assert run_main(render_scaffold.main, argv) == 0
    err = capsys.readouterr().err
    assert "note: converted gray.png" in err
    rgb = np.load(out / "scaffold.npz")["rgb"]
    assert (rgb[0, ..., 0] == rgb[0, ..., 1]).all()  # gray replicated to RGB


@pytest.mark.cuda
def test_cuda_backend_matches_cpu(inputs, tmp_path):
    folder, pano = inputs
    runs = {}
    for backend in ("cpu", "cuda"):
        out = tmp_path / backend
        assert run_main(render_scaffold.main, args(folder, out, "--backend", backend, "--yaw", "45",
                                                   trajectory="s_curve", frames="9")) == 0
        runs[backend] = np.load(out / "scaffold.npz")
        assert json.loads((out / "manifest.json").read_text())["backends"]["scaffold"] == backend
    cpu, gpu = runs["cpu"], runs["cuda"]
    # frame 0 is the panorama turned by the trajectory's yaw (s_curve's own heading + 45 degrees),
    # rounded to whole columns
    yaw = json.loads((tmp_path / "cuda" / "trajectory.json").read_text())["yaw"]
    columns = round(yaw / 360.0 * pano.shape[1])
    assert np.array_equal(gpu["rgb"][0], np.roll(pano, -columns, axis=1)) and gpu["mask"][0].all()
    assert np.array_equal(cpu["rgb"][0], gpu["rgb"][0])
    # the renderers' own parity is tested on large meshes elsewhere; here, the job's device plumbing
    assert (gpu["mask"] == cpu["mask"]).mean() >= 0.99  # tiny frames: many pixels sit on edges
    both = gpu["mask"] & cpu["mask"]
    assert np.abs(gpu["rgb"].astype(int) - cpu["rgb"].astype(int))[both].mean() <= 1.0


def test_distance_from_a_run_depth_npz(tmp_path):
    good = box_distance(H)
    sky = np.zeros_like(good, dtype=bool)
    sky[:3] = True
    np.savez(tmp_path / "depth.npz", distance=good, sky=sky)
    d = read_distance(tmp_path / "depth.npz", (H, 2 * H))[0]
    assert np.isinf(d[:3]).all() and np.array_equal(d[3:], good[3:])
    np.savez(tmp_path / "other.npz", depth=good)
    with pytest.raises(InputError, match="no 'distance' array"):
        read_distance(tmp_path / "other.npz", (H, 2 * H))[0]


def test_bad_input_exit_code_from_the_script(bad, inputs, tmp_path):
    folder, _ = inputs
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--panorama", str(bad / "square.png"), "--distance",
                           str(folder / "dist.npy"), "--trajectory", "straight", "--out", str(out)],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: panorama") and proc.stderr.count("\n") == 1
    assert not out.exists()
