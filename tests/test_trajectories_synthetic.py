"""Matrix-Pano-style trajectories through synthetic scenes: free of collisions, inside the
walkable area, long enough, constant speed, deterministic; bad input fails fast and clearly."""

import math

import numpy as np
import pytest
import torch
from matrix_world.datasets.scenes import make_scene
from matrix_world.datasets.trajectories import (
    PathConfig,
    TrajectoryError,
    heldout_poses,
    laplacian_smooth,
    path_length,
    resample,
    sample_path,
    sample_trajectory,
    segments_hit_boxes,
)


@pytest.fixture(scope="module")
def scenes():
    return {k: make_scene(k, s) for k, s in (("forest", 11), ("city", 12), ("room", 13), ("hall", 14))}


def _dense_points_hit(points, footprints, per_segment=25):
    """Independent collision check: sample every segment densely, test points in rectangles."""
    t = np.linspace(0, 1, per_segment)[None, :, None]
    p = (points[:-1, None] + t * (points[1:, None] - points[:-1, None])).reshape(-1, 2)
    inside = ((p[:, None, 0] >= footprints[None, :, 0]) & (p[:, None, 0] <= footprints[None, :, 2])
              & (p[:, None, 1] >= footprints[None, :, 1]) & (p[:, None, 1] <= footprints[None, :, 3]))
    return inside.any()


@pytest.mark.parametrize("kind", ["forest", "city", "room", "hall"])
@pytest.mark.parametrize("seed", [0, 1])
def test_paths_never_collide_or_leave_the_walkable_area(scenes, kind, seed):
    scene = scenes[kind]
    clearance = 0.6
    traj = sample_trajectory(scene, seed, frames=81, config=PathConfig(clearance=clearance))
    c2w = traj.c2w.numpy()
    pos = c2w[:, [0, 2], 3]
    fp = scene.footprints(clearance)
    for poly in (traj.points, pos):  # the smoothed polyline and the camera positions
        assert not _dense_points_hit(poly, fp)
        assert not segments_hit_boxes(poly[:-1], poly[1:], fp).any()
        assert scene.is_walkable(poly, clearance).all()
    x0, z0, x1, z1 = scene.walkable
    assert pos[:, 0].min() >= x0 + clearance and pos[:, 0].max() <= x1 - clearance
    assert pos[:, 1].min() >= z0 + clearance and pos[:, 1].max() <= z1 - clearance
    # long enough, camera height above the ground, constant speed, upright, facing along the path
    assert traj.length >= scene.min_path_length - 1e-9
    assert np.allclose(c2w[:, 1, 3], -scene.camera_height)
    step = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    assert step.std() / step.mean() < 0.02  # chords of a smooth curve at equal arc length
    assert abs(step.sum() - traj.length) / traj.length < 0.01
    assert np.allclose(c2w[:, 1, :3], [0, 1, 0])
    motion = np.diff(pos, axis=0)
    forward = c2w[:-1][:, [0, 2], 2]  # camera +z in the ground plane
    cos = (motion * forward).sum(1) / np.linalg.norm(motion, axis=1)
    assert cos.min() > 0.9


def test_same_seed_same_path(scenes):
    a = sample_trajectory(scenes["forest"], 5, frames=21)
    b = sample_trajectory(scenes["forest"], 5, frames=21)
    c = sample_trajectory(scenes["forest"], 6, frames=21)
    assert torch.equal(a.c2w, b.c2w)
    assert not torch.equal(a.c2w, c.c2w)


def test_min_length_is_configurable_and_long_paths_are_cut(scenes):
    cfg = PathConfig(min_length=25.0, max_length=26.0)
    traj = sample_trajectory(scenes["forest"], 2, frames=9, config=cfg)
    assert 25.0 <= traj.length <= 26.0 + 1e-9


def test_look_around_yaw_adds_the_requested_swing(scenes):
    plain = sample_trajectory(scenes["forest"], 3, frames=41)
    swing = sample_trajectory(scenes["forest"], 3, frames=41, look_around_deg=30.0)
    assert torch.allclose(plain.positions, swing.positions)
    yaw = lambda c: np.degrees(np.unwrap(np.arctan2(c[:, 0, 2].numpy(), c[:, 2, 2].numpy())))
    diff = yaw(swing.c2w) - yaw(plain.c2w)
    assert abs(diff.max() - 30.0) < 0.5 and abs(diff.min() + 30.0) < 0.5


def test_segment_box_test_on_known_cases():
    box = np.array([[0.0, 0.0, 1.0, 1.0]])
    a = np.array([[-1, 0.5], [-1, 2.0], [0.2, 0.2], [1.0, -1.0], [2.0, 0.5], [-1, -1]], dtype=float)
    b = np.array([[2, 0.5], [2, 2.0], [0.8, 0.8], [1.0, 2.0], [3.0, 0.5], [-0.5, -0.5]], dtype=float)
    # crossing, parallel outside, fully inside, along the edge (touching), beyond the end, short of it
    assert segments_hit_boxes(a, b, box).tolist() == [True, False, True, True, False, False]


def test_laplacian_smoothing_keeps_endpoints_and_shortens_a_zigzag():
    zigzag = np.stack([np.arange(11.0), np.where(np.arange(11) % 2 == 0, 0.0, 1.0)], 1)
    smooth = laplacian_smooth(zigzag, 20, 0.5)
    assert np.array_equal(smooth[[0, -1]], zigzag[[0, -1]])
    assert path_length(smooth) < path_length(zigzag)
    vetoed = laplacian_smooth(zigzag, 20, 0.5, is_free=lambda p: False)
    assert np.array_equal(vetoed, zigzag)


def test_zero_length_and_too_few_frames_raise():
    with pytest.raises(TrajectoryError, match="zero-length"):
        resample(np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]), 10)
    with pytest.raises(TrajectoryError, match="zero-length"):
        resample(np.array([[1.0, 2.0]]), 10)
    with pytest.raises(TrajectoryError, match="at least 2 frames"):
        resample(np.array([[0.0, 0.0], [1.0, 0.0]]), 1)


def test_impossible_constraints_fail_after_bounded_attempts(scenes):
    with pytest.raises(TrajectoryError, match=r"no collision-free path of at least 1000 m .* after \d+ attempt"):
        sample_path(scenes["room"], 0, PathConfig(min_length=1000.0, max_length=None))
    with pytest.raises(TrajectoryError, match="no collision-free path"):  # clearance leaves no free space
        sample_path(scenes["room"], 0, PathConfig(clearance=50.0))
    with pytest.raises(TrajectoryError, match="max_length"):
        sample_path(scenes["room"], 0, PathConfig(min_length=10.0, max_length=5.0))
    with pytest.raises(TrajectoryError, match="finite number"):
        sample_path(scenes["room"], 0, PathConfig(min_length=float("nan")))


def test_heldout_poses_are_near_the_path_and_walkable(scenes):
    scene = scenes["forest"]
    traj = sample_trajectory(scene, 4, frames=33)
    held = heldout_poses(scene, traj, seed=1, count=8, offset=0.5)
    pos = held[:, [0, 2], 3].numpy()
    assert held.shape == (8, 4, 4) and scene.is_walkable(pos, 0.6).all()
    # within offset of the path, but not on a training camera
    train = traj.c2w[:, [0, 2], 3].numpy()
    d = np.linalg.norm(pos[:, None] - train[None], axis=-1).min(1)
    assert d.max() <= 0.5 + traj.length / 32 and d.min() > 1e-3
    heights = -held[:, 1, 3].numpy()
    assert np.all(np.abs(heights - scene.camera_height) <= 0.2 + 1e-9)
    assert not math.isclose(float(held[0, 0, 0]), float(traj.c2w[0, 0, 0]))  # turned
