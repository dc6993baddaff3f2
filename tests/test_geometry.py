"""Geometry core: equirect conventions, crops and pastes, crop sets, depth/distance, Plücker rays."""

import math

import numpy as np
import pytest
import torch

from matrix_world.cameras import (
    PerspectiveView,
    c2w_to_w2c,
    camera_rays,
    crop_perspective,
    crops_12,
    cube_faces,
    depth_to_distance,
    distance_to_depth,
    icosahedron_directions,
    icosahedron_views,
    intrinsics_from_fov,
    make_pose,
    paste_perspective,
    project_to_view,
    rigidity_error,
    rotation_from_yaw_pitch,
    w2c_to_c2w,
)
from matrix_world.equirect import (
    direction_to_lonlat,
    direction_to_pixel,
    equirect_directions,
    lonlat_to_direction,
    pixel_grid,
    pixel_to_direction,
    resize_equirect,
    sample_equirect,
    spherical_plucker,
)


def random_rotation(gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# ----------------------------------------------------------------- equirect conventions


def test_equirect_landmarks_follow_design_section_3():
    h, w = 8, 16
    px = torch.tensor([w * 0.5, w * 0.75, w * 0.25, 0.0], dtype=torch.float64)
    py = torch.tensor([h * 0.5] * 4, dtype=torch.float64)
    d = pixel_to_direction(px, py, h, w)
    torch.testing.assert_close(d[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))  # centre: forward
    torch.testing.assert_close(d[1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))  # u=0.75: right
    torch.testing.assert_close(d[2], torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64))  # u=0.25: left
    torch.testing.assert_close(d[3], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))  # u=0: back
    top = pixel_to_direction(torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64), h, w)
    torch.testing.assert_close(top, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)  # up is -y
    dirs = equirect_directions(h, dtype=torch.float64)
    assert dirs.shape == (h, w, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(h, w, dtype=torch.float64))
    assert (dirs[: h // 2, :, 1] < 0).all()  # the upper half looks up (-y)


def test_pixel_direction_pixel_round_trip_under_1e5_px():
    for h in (7, 64, 1024):
        w = 2 * h
        px, py = pixel_grid(h, w, dtype=torch.float64)
        jitter = torch.rand(2, h, w, generator=torch.Generator().manual_seed(h), dtype=torch.float64) - 0.5
        px, py = px + jitter[0], py + 0.98 * jitter[1]
        x2, y2 = direction_to_pixel(pixel_to_direction(px, py, h, w), h, w)
        dx = torch.remainder(x2 - px + w / 2, w) - w / 2
        assert dx.abs().max() < 1e-5 and (y2 - py).abs().max() < 1e-5


def test_lonlat_direction_round_trip_and_scale_invariance():
    g = torch.Generator().manual_seed(0)
    lon = (torch.rand(1000, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi * 0.999
    lat = (torch.rand(1000, generator=g, dtype=torch.float64) - 0.5) * math.pi * 0.999
    d = lonlat_to_direction(lon, lat) * 3.7
    lon2, lat2 = direction_to_lonlat(d)
    torch.testing.assert_close(lon2, lon)
    torch.testing.assert_close(lat2, lat)


def test_bilinear_sampling_wraps_in_longitude():
    h, w = 4, 8
    pano = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
    # Halfway between the last column centre (w - 0.5) and the first (0.5 + w): the seam.
    v = sample_equirect(pano, torch.tensor([float(w)], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64))
    assert v.item() == pytest.approx(0.5 * (pano[0, 0, 1, 0] + pano[0, 0, 1, w - 1]).item())
    # Sampling one full turn away gives the same value everywhere.
    px, py = pixel_grid(h, w, dtype=torch.float64)
    torch.testing.assert_close(sample_equirect(pano, px + w, py), sample_equirect(pano, px, py))
    torch.testing.assert_close(sample_equirect(pano, px, py), pano)  # pixel centres are exact
    near = sample_equirect(pano, px - w, py, mode="nearest")
    torch.testing.assert_close(near, pano)


def test_resize_equirect_area_and_nearest():
    pano = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(1))
    small = resize_equirect(pano, 8)
    torch.testing.assert_close(small, pano.reshape(1, 3, 8, 2, 16, 2).mean(dim=(3, 5)))
    big = resize_equirect(pano, 32, mode="nearest")
    torch.testing.assert_close(big[..., ::2, ::2], pano)


# ----------------------------------------------------------------- crops and pastes


def test_rotation_yaw_pitch_directions():
    fwd = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(rotation_from_yaw_pitch(90, 0) @ fwd, torch.tensor([1.0, 0, 0], dtype=torch.float64))  # yaw right
    torch.testing.assert_close(rotation_from_yaw_pitch(0, 90) @ fwd, torch.tensor([0.0, -1, 0], dtype=torch.float64))  # pitch up
    r = rotation_from_yaw_pitch(37, -21)
    assert rigidity_error(make_pose(r, torch.zeros(3, dtype=torch.float64))) < 1e-12


def test_crop_centre_pixel_looks_along_yaw_pitch():
    h = 64
    pano = equirect_directions(h, dtype=torch.float64).permute(2, 0, 1)  # the panorama stores its own directions
    for yaw, pitch in [(0, 0), (90, 0), (-135, 30), (60, -45)]:
        view = PerspectiveView(yaw, pitch, 90.0, 33, 33)
        img, K, R = crop_perspective(pano, view)
        centre = img[:, 16, 16]
        expected = R @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        assert torch.dot(centre / centre.norm(), expected) > math.cos(math.radians(1.5))


def test_crop_matches_py360convert_reference():
    py360 = pytest.importorskip("py360convert")
    rng = np.random.default_rng(0)
    # A smooth panorama so that both bilinear samplers agree closely.
    h, w = 128, 256
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    pano = np.stack([np.sin(2 * np.pi * xx) * 0.4 + 0.5, yy, np.cos(4 * np.pi * xx) * yy * 0.4 + 0.5], axis=-1)
    pano = (pano + 0.01 * rng.standard_normal(pano.shape)).astype(np.float64)
    for yaw, pitch in [(0.0, 0.0), (45.0, 20.0), (-100.0, -30.0)]:
        ref = py360.e2p(pano, fov_deg=(90.0, 90.0), u_deg=yaw, v_deg=pitch, out_hw=(48, 48), in_rot_deg=0, mode="bilinear")
        ours, _, _ = crop_perspective(torch.from_numpy(pano).permute(2, 0, 1), PerspectiveView(yaw, pitch, 90.0, 48, 48))
        ours = ours.permute(1, 2, 0).numpy()
        # py360convert samples pixel corners slightly differently: compare away from the border.
        assert np.abs(ours[4:-4, 4:-4] - ref[4:-4, 4:-4]).mean() < 0.01


def test_crop_then_paste_round_trip():
    h = 64
    g = torch.Generator().manual_seed(3)
    lowres = torch.rand(1, 3, 8, 16, generator=g, dtype=torch.float64)
    pano = resize_equirect(lowres, h, mode="bilinear")  # smooth content
    view = PerspectiveView(30.0, 10.0, 80.0, 96, 96)  # finer than the panorama: paste is near-exact
    crop, _, _ = crop_perspective(pano, view)
    back, coverage = paste_perspective(crop, view, h)
    inner = coverage.clone()
    # Stay a couple of pixels away from the coverage border (bilinear footprint).
    for _ in range(2):
        inner = inner & torch.roll(inner, 1, 0) & torch.roll(inner, -1, 0) & torch.roll(inner, 1, 1) & torch.roll(inner, -1, 1)
    assert inner.sum() > 150
    err = (back - pano).abs()[..., inner]
    assert err.max() < 0.02
    assert (back[..., ~coverage] == 0).all()


def test_paste_coverage_matches_view_geometry():
    view = PerspectiveView(0.0, 0.0, 90.0, 32, 32)
    _, coverage = paste_perspective(torch.zeros(3, 32, 32), view, 64)
    dirs = equirect_directions(64, dtype=torch.float64)
    expected = (dirs[..., 2] > 0) & (dirs[..., 0].abs() <= dirs[..., 2]) & (dirs[..., 1].abs() <= dirs[..., 2])
    assert (coverage == expected).float().mean() > 0.995


# ----------------------------------------------------------------- crop sets


def test_standard_crop_sets():
    twelve = crops_12(64)
    assert len(twelve) == 12 and {v.fov for v in twelve} == {90.0}
    assert {(v.yaw, v.pitch) for v in twelve} == {(y, p) for y in (0.0, 90.0, 180.0, 270.0) for p in (0.0, 45.0, -45.0)}
    faces = cube_faces(16)
    axes = torch.stack([v.rotation() @ torch.tensor([0.0, 0, 1], dtype=torch.float64) for v in faces])
    expected = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 0, -1], [-1, 0, 0], [0, -1, 0], [0, 1, 0]], dtype=torch.float64)
    torch.testing.assert_close(axes, expected, atol=1e-12, rtol=0)
    # The six faces tile the sphere: every direction lands in exactly one face (ties on edges aside).
    dirs = equirect_directions(32, dtype=torch.float64)
    hits = torch.zeros(32, 64, dtype=torch.int64)
    for v in faces:
        px, py, front = project_to_view(dirs, v)
        hits += (front & (px > 0) & (px < 16) & (py > 0) & (py < 16)).long()
    assert (hits == 1).float().mean() > 0.97 and (hits >= 1).all()


def test_icosahedron_views_cover_the_sphere_at_fov_100():
    dirs = icosahedron_directions()
    assert dirs.shape == (12, 3)
    dots = dirs @ dirs.T
    # A regular icosahedron: every vertex has 5 neighbours at the same angle (63.43 degrees).
    neighbours = ((dots - 1 / math.sqrt(5)).abs() < 1e-9).sum(1)
    assert (neighbours == 5).all()
    views = icosahedron_views(size=24, fov=100.0)
    sphere = equirect_directions(48, dtype=torch.float64)
    covered = torch.zeros(48, 96, dtype=torch.bool)
    for v in views:
        axis = v.rotation() @ torch.tensor([0.0, 0, 1], dtype=torch.float64)
        torch.testing.assert_close(axis, dirs[views.index(v)])
        px, py, front = project_to_view(sphere, v)
        covered |= front & (px >= 0) & (px <= 24) & (py >= 0) & (py <= 24)
    assert covered.all()


# ----------------------------------------------------------------- depth, distance, poses, rays


def test_depth_distance_round_trip_and_known_values():
    K = intrinsics_from_fov(90.0, 4, 4)
    depth = torch.full((4, 4), 2.0, dtype=torch.float64)
    dist = depth_to_distance(depth, K)
    rays = camera_rays(K, 4, 4)
    torch.testing.assert_close(dist, 2.0 * rays.norm(dim=-1))
    corner = math.sqrt(0.75**2 * 2 + 1)  # pixel (0, 0) centre is at x = y = -0.75 for a 90 degree 4x4 image
    assert dist[0, 0].item() == pytest.approx(2.0 * corner)
    torch.testing.assert_close(distance_to_depth(dist, K), depth)


def test_c2w_w2c_round_trip_and_rigidity():
    g = torch.Generator().manual_seed(7)
    c2w = make_pose(torch.stack([random_rotation(g) for _ in range(5)]), torch.randn(5, 3, generator=g, dtype=torch.float64))
    w2c = c2w_to_w2c(c2w)
    torch.testing.assert_close(w2c @ c2w, torch.eye(4, dtype=torch.float64).expand(5, 4, 4))
    torch.testing.assert_close(w2c_to_c2w(w2c), c2w)
    assert (rigidity_error(c2w) < 1e-12).all()
    bad = c2w.clone()
    bad[0, :3, :3] *= 1.1
    bad[1, :3, 0] *= -1  # a reflection
    err = rigidity_error(bad)
    assert err[0] > 0.1 and err[1] > 1.0 and (err[2:] < 1e-12).all()


def test_spherical_plucker_rays():
    g = torch.Generator().manual_seed(5)
    c2w = make_pose(torch.stack([random_rotation(g) for _ in range(2)]), torch.randn(2, 3, generator=g, dtype=torch.float64))
    rays = spherical_plucker(c2w, 8)
    assert rays.shape == (2, 8, 16, 6)
    d, m = rays[..., :3], rays[..., 3:]
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2, 8, 16, dtype=torch.float64))
    # Moment is orthogonal to the direction, and any point on the ray (o + t d) gives the same moment.
    assert (d * m).sum(-1).abs().max() < 1e-12
    o = c2w[:, None, None, :3, 3]
    torch.testing.assert_close(torch.cross(o + 2.5 * d, d, dim=-1), m)
    # Directions are the per-pixel equirect directions rotated into the world.
    local = equirect_directions(8, dtype=torch.float64)
    torch.testing.assert_close(d[1], local @ c2w[1, :3, :3].T)
