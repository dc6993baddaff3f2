"""Trajectories: pose round trips, JSON, Matrix-3D import, preset geometry, validation."""

import json
import math

import numpy as np
import pytest
import torch

from matrix_world.cameras import invert_pose, make_pose, rotation_pitch, rotation_yaw
from matrix_world.errors import InputError
from matrix_world.trajectory import (
    PRESETS,
    Trajectory,
    fit_to_panorama,
    forward_distance,
    load_matrix3d_trajectory,
    load_trajectory,
    make_preset,
    snap_yaw,
    turn_equirect,
    validate_poses,
)

H, W = 32, 64


def random_c2w(n, seed=0):
    """Random rigid poses [n, 4, 4] (float64) with frame 0 = identity."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q = q * torch.sign(torch.linalg.det(q))[:, None, None]
    c2w = make_pose(q, torch.randn(n, 3, generator=g, dtype=torch.float64) * 3.0)
    c2w[0] = torch.eye(4, dtype=torch.float64)
    return c2w


def lon_deg():
    return ((np.arange(W) + 0.5) / W - 0.5) * 360.0


def heading_deg(c2w):
    f = c2w[:3, 2]
    return math.degrees(math.atan2(float(f[0]), float(f[2])))


# --------------------------------------------------------------------------- round trips


def test_c2w_w2c_round_trip():
    traj = Trajectory(random_c2w(7))
    w2c = traj.w2c
    assert torch.allclose(invert_pose(w2c), traj.c2w, atol=1e-12)
    assert torch.allclose(w2c @ traj.c2w, torch.eye(4, dtype=torch.float64).expand(7, 4, 4), atol=1e-12)
    # a world point seen from camera 3: w2c maps it to camera coordinates and back
    p = torch.tensor([0.3, -1.2, 4.0, 1.0], dtype=torch.float64)
    assert torch.allclose(traj.c2w[3] @ (w2c[3] @ p), p, atol=1e-12)


def test_json_export_import_bit_exact(tmp_path):
    c2w = random_c2w(5, seed=3)
    traj = Trajectory(c2w, fps=12.5, yaw=-33.123456789, name="x", meta={"a": 0.1})
    traj.to_json(tmp_path / "t.json")
    back = Trajectory.from_json(tmp_path / "t.json")
    assert torch.equal(back.c2w, traj.c2w)
    assert (back.fps, back.yaw, back.name, back.meta) == (12.5, -33.123456789, "x", {"a": 0.1})
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["convention"] == "opencv_c2w" and len(data["poses"]) == 5 and len(data["poses"][0]) == 16
    assert data["poses"][1] == c2w[1].reshape(16).tolist()  # row-major
    # through load_trajectory (frame 0 is identity, poses kept metric): still bit-exact
    again = load_trajectory(str(tmp_path / "t.json"))
    assert torch.equal(again.c2w, traj.c2w) and again.yaw == traj.yaw


def test_our_json_with_offset_first_frame_is_made_relative(tmp_path):
    world = random_c2w(4, seed=5)
    world[0] = make_pose(rotation_yaw(25.0), torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64))
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"convention": "opencv_c2w", "poses": [p.reshape(16).tolist() for p in world]}))
    traj = load_trajectory(str(path))
    expected = torch.linalg.inv(world[0]) @ world
    assert torch.allclose(traj.c2w, expected, atol=1e-12)
    assert torch.equal(traj.c2w[0], torch.eye(4, dtype=torch.float64))
    assert traj.yaw == pytest.approx(25.0, abs=1e-9)


def matrix3d_world_c2w():
    """World cameras (OpenCV): frame 0 at (1, 0, 2) turned 40 deg right, then moving along
    its own forward axis by 0.5 per frame while turning 5 deg per frame and pitching 2 deg."""
    c2w = []
    for i in range(6):
        rot = rotation_yaw(40.0 + 5.0 * i) @ rotation_pitch(2.0 * i)
        start = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
        pos = start + 0.5 * i * (rotation_yaw(40.0) @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        c2w.append(make_pose(rot, pos))
    return torch.stack(c2w)


def test_matrix3d_import_reproduces_relative_poses(tmp_path):
    world = matrix3d_world_c2w()
    w2c = np.linalg.inv(world.numpy())  # independent inverse
    path = tmp_path / "pano_video_cam.json"
    path.write_text(json.dumps(w2c.tolist(), indent=4))  # Matrix-3D: list of 4x4 w2c
    traj = load_matrix3d_trajectory(path)
    expected = np.linalg.inv(world[0].numpy()) @ world.numpy()
    assert np.allclose(traj.c2w.numpy(), expected, atol=1e-12)
    assert traj.yaw == pytest.approx(40.0, abs=1e-9)  # frame-0 heading
    # by construction: frame i is 0.5 i straight ahead of frame 0, turned 5 i deg, pitched 2 i deg
    assert np.allclose(traj.positions[3].numpy(), [0.0, 0.0, 1.5], atol=1e-12)
    assert heading_deg(traj.c2w[3]) == pytest.approx(15.0, abs=1e-9)
    assert torch.allclose(traj.c2w[2, :3, :3], rotation_yaw(10.0) @ rotation_pitch(4.0), atol=1e-12)


def test_matrix3d_rescale_reaches_half_the_distance(tmp_path):
    world = matrix3d_world_c2w()
    path = tmp_path / "cam.json"
    path.write_text(json.dumps(np.linalg.inv(world.numpy()).tolist()))
    # distance 4 everywhere except 8 in the 60 degrees around the motion direction (yaw 40)
    distance = np.full((H, W), 4.0, np.float32)
    distance[:, np.abs(lon_deg() - 40.0) < 30.0] = 8.0
    traj = load_trajectory(str(path), distance)  # auto: Matrix-3D lists are rescaled
    assert float(traj.positions.norm(dim=-1).max()) == pytest.approx(0.5 * 8.0, rel=1e-9)
    kept = load_trajectory(str(path), distance, rescale=False)
    assert float(kept.positions.norm(dim=-1).max()) == pytest.approx(2.5, rel=1e-9)
    # rotations are untouched by rescaling
    assert torch.allclose(traj.c2w[:, :3, :3], kept.c2w[:, :3, :3], atol=0)


# --------------------------------------------------------------------------- presets


def step_distance(yaw, near=1.0, far=5.0, width_deg=20.0):
    """Distance `far` within +-width_deg of azimuth `yaw`, `near` elsewhere."""
    d = np.full((H, W), near, np.float32)
    diff = (lon_deg() - yaw + 180.0) % 360.0 - 180.0
    d[:, np.abs(diff) < width_deg] = far
    return d


@pytest.mark.parametrize("yaw", [0.0, 90.0, -135.0])
def test_straight_moves_point_six_d_along_the_azimuth(yaw):
    traj = make_preset("straight", step_distance(yaw), 21, yaw=yaw)
    assert traj.meta["forward_distance"] == 5.0 and traj.yaw == yaw
    assert torch.equal(traj.c2w[0], torch.eye(4, dtype=torch.float64))
    assert torch.allclose(traj.positions[-1], torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(traj.positions[10], torch.tensor([0.0, 0.0, 1.5], dtype=torch.float64), atol=1e-12)
    assert torch.equal(traj.c2w[:, :3, :3], torch.eye(3, dtype=torch.float64).expand(21, 3, 3))
    # in the panorama's frame the end point is 3 along the azimuth
    end = rotation_yaw(traj.yaw) @ traj.positions[-1]
    a = math.radians(yaw)
    assert torch.allclose(end, torch.tensor([3 * math.sin(a), 0.0, 3 * math.cos(a)], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("name,sign", [("r_curve", 1.0), ("l_curve", -1.0)])
def test_curves_arc_thirty_degrees_with_tangent_heading(name, sign):
    traj = make_preset(name, step_distance(0.0), 61)
    l = 0.6 * 5.0
    radius = l / math.sin(math.radians(30.0))
    end = traj.positions[-1]
    assert float(end[2]) == pytest.approx(l, abs=1e-12)  # the chord ends l ahead
    assert float(end[0]) == pytest.approx(sign * radius * (1 - math.cos(math.radians(30))), abs=1e-12)
    assert heading_deg(traj.c2w[-1]) == pytest.approx(sign * 30.0, abs=1e-9)
    # every camera lies on the circle around (sign * R, 0, 0) and looks along the tangent
    centre = torch.tensor([sign * radius, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose((traj.positions - centre).norm(dim=-1), torch.full((61,), radius, dtype=torch.float64))
    tangent = traj.positions[2:] - traj.positions[:-2]
    forward = traj.c2w[1:-1, :3, 2]
    cos = (tangent / tangent.norm(dim=-1, keepdim=True) * forward).sum(-1)
    assert float(cos.min()) > math.cos(math.radians(0.1))
    assert torch.linalg.det(traj.c2w[:, :3, :3]).allclose(torch.ones(61, dtype=torch.float64))


def test_s_curve_lateral_sine_with_tangent_heading():
    yaw = 30.0
    traj = make_preset("s_curve", step_distance(yaw), 201, yaw=yaw)
    d, l = 5.0, 3.0
    # back into the motion frame (motion axis = +z): undo the frame-0 heading
    h0 = traj.yaw - yaw
    assert h0 == pytest.approx(math.degrees(math.atan(0.15 * d * 2 * math.pi / l)), abs=1e-9)
    pos = (rotation_yaw(h0) @ traj.positions.T).T
    s = torch.linspace(0, l, 201, dtype=torch.float64)
    assert torch.allclose(pos[:, 2], s, atol=1e-12)
    assert torch.allclose(pos[:, 0], 0.15 * d * torch.sin(2 * math.pi * s / l), atol=1e-12)
    assert float(pos[:, 0].abs().max()) == pytest.approx(0.15 * d, rel=1e-3)
    tangent = traj.positions[2:] - traj.positions[:-2]
    forward = traj.c2w[1:-1, :3, 2]
    cos = (tangent / tangent.norm(dim=-1, keepdim=True) * forward).sum(-1)
    assert float(cos.min()) > math.cos(math.radians(0.2))
    assert torch.equal(traj.c2w[0], torch.eye(4, dtype=torch.float64))


def test_orbit_keeps_position_and_sweeps_yaw():
    traj = make_preset("orbit", None, 8, yaw=10.0)
    assert torch.equal(traj.positions, torch.zeros(8, 3, dtype=torch.float64))
    yaws = [heading_deg(p) for p in traj.c2w]
    assert np.allclose(np.mod(yaws, 360.0), [45.0 * i for i in range(8)], atol=1e-9)
    assert torch.allclose(traj.c2w[:, 1, :3], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(8, 3))
    assert traj.yaw == 10.0


def test_forward_distance_is_robust():
    d = np.full((H, W), 2.0, np.float32)
    row = H // 2  # the row just below the horizon
    d[row, W // 2] = 100.0  # one outlier in the window
    assert forward_distance(d, 0.0) == 2.0
    sky = np.full((H, W), 3.0, np.float32)
    sky[H // 2 - 2: H // 2 + 3, W // 2 - 2: W // 2 + 2] = np.inf  # sky straight ahead -> 2 x max finite
    assert forward_distance(sky, 0.0) == 6.0
    assert forward_distance(step_distance(90.0), 90.0) == 5.0
    assert forward_distance(step_distance(90.0), 0.0) == 1.0


def test_turn_and_snap_yaw():
    traj = make_preset("straight", step_distance(0.0), 3, yaw=91.0)
    snapped, cols = snap_yaw(traj, W)
    assert cols == 16 and snapped.yaw == 90.0 and torch.equal(snapped.c2w, traj.c2w)
    image = np.tile(lon_deg()[None, :, None], (H, 1, 2))
    turned = turn_equirect(image, cols)
    # the turned panorama at longitude phi shows the original at phi + 90 degrees
    assert np.allclose(turned[:, :, 0], (lon_deg()[None] + 90.0 + 180.0) % 360.0 - 180.0)
    assert torch.equal(turn_equirect(torch.from_numpy(image), cols, axis=1), torch.from_numpy(turned))
    assert snap_yaw(make_preset("orbit", None, 2, yaw=-90.0), W)[0].yaw == -90.0


def test_all_presets_start_at_identity_and_are_rigid():
    for name in PRESETS:
        traj = make_preset(name, step_distance(0.0), 9)
        assert len(traj) == 9
        assert torch.equal(traj.c2w[0], torch.eye(4, dtype=torch.float64)), name
        validate_poses(traj.c2w)


# --------------------------------------------------------------------------- validation


def test_validation_errors(tmp_path):
    good = random_c2w(3)
    nan = good.clone()
    nan[1, 0, 3] = float("nan")
    with pytest.raises(InputError, match="NaN or Inf"):
        validate_poses(nan)
    inf = good.clone()
    inf[2, 1, 1] = float("inf")
    with pytest.raises(InputError, match="pose 2 contains NaN or Inf"):
        Trajectory(inf)
    scaled = good.clone()
    scaled[1, :3, :3] *= 1.1
    with pytest.raises(InputError, match="pose 1 is not a rigid transform"):
        validate_poses(scaled)
    mirrored = good.clone()
    mirrored[2, :3, 0] *= -1  # det -1
    with pytest.raises(InputError, match="not a rigid"):
        validate_poses(mirrored)
    with pytest.raises(InputError, match="at least 2 frames"):
        Trajectory(good[:1])
    with pytest.raises(InputError, match=r"expected \[F, 4, 4\]"):
        validate_poses(torch.zeros(3, 3, 4))
    with pytest.raises(InputError, match="unknown trajectory 'zigzag'"):
        load_trajectory("zigzag", step_distance(0.0))
    with pytest.raises(InputError, match="at least 2 frames"):
        make_preset("straight", step_distance(0.0), 1)

    def write(name, text):
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    with pytest.raises(InputError, match="not valid JSON"):
        load_trajectory(write("bad.json", '{"convention": "opencv_c2w", "poses": [[1, 0'))
    with pytest.raises(InputError, match="non-empty list"):
        load_trajectory(write("empty.json", '{"convention": "opencv_c2w", "poses": []}'))
    with pytest.raises(InputError, match="at least 2 frames"):
        load_trajectory(write("one.json", json.dumps({"convention": "opencv_c2w", "poses": [np.eye(4).ravel().tolist()]})))
    with pytest.raises(InputError, match="convention 'blender_c2w' is not supported"):
        load_trajectory(write("conv.json", json.dumps({"convention": "blender_c2w", "poses": []})))
    with pytest.raises(InputError, match="expected F x 16 numbers"):
        load_trajectory(write("short.json", json.dumps({"convention": "opencv_c2w", "poses": [[1.0] * 15] * 2})))
    with pytest.raises(InputError, match="must be numbers"):
        load_trajectory(write("str.json", json.dumps({"convention": "opencv_c2w", "poses": [["a"] * 16] * 2})))
    with pytest.raises(InputError, match="does not exist"):
        load_trajectory(str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="has 2 poses but 81 frames"):
        load_trajectory(write("two.json", json.dumps([np.eye(4).tolist()] * 2)), step_distance(0.0), 81)
    with pytest.raises(InputError, match="NaN"):
        load_trajectory(write("nan.json", json.dumps([np.eye(4).tolist(), [[float("nan")] * 4] * 4])))


def test_fit_keeps_pure_rotations():
    traj = make_preset("orbit", None, 4)
    assert fit_to_panorama(traj, step_distance(0.0)) is traj
