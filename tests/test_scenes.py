"""Synthetic scenes: determinism, closed meshes, analytic ground truth, sky, prompts, bad input."""

import math

import numpy as np
import pytest
import torch
from matrix_world.datasets.procedural import (
    match_prompt,
    procedural_panorama,
    scene_from_prompt,
)
from matrix_world.datasets.scenes import (
    INDOOR_KINDS,
    KINDS,
    OUTDOOR_KINDS,
    SKY_RADIUS,
    make_scene,
)

from matrix_world.equirect import equirect_directions, pixel_grid, pixel_to_lonlat
from matrix_world.errors import InputError


def _latitudes(h):
    px, py = pixel_grid(h, 2 * h, dtype=torch.float64)
    return pixel_to_lonlat(px, py, h, 2 * h)[1].numpy()


def test_same_seed_same_scene_and_renders():
    a, b = make_scene("forest", 7), make_scene("forest", 7)
    assert a.fingerprint() == b.fingerprint()
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces) and np.array_equal(a.colors, b.colors)
    assert make_scene("forest", 8).fingerprint() != a.fingerprint()
    c2w = torch.stack([a.camera_c2w(0.0, 0.0), a.camera_c2w(1.0, 2.0, yaw_deg=30.0)])
    ra, rb = a.render(c2w, 24), b.render(c2w, 24)
    for x, y in zip(ra, rb):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_builds_a_moderate_closed_scene(kind):
    scene = make_scene(kind, 3)
    assert 3_000 < scene.num_triangles < 60_000
    assert scene.indoor == (kind in INDOOR_KINDS)
    assert scene.sky.any() == (kind in OUTDOOR_KINDS)
    assert scene.faces.min() >= 0 and scene.faces.max() < len(scene.vertices)
    assert np.all((scene.colors >= 0) & (scene.colors <= 1))
    # the start point is walkable and every object box is sane
    assert scene.is_walkable(np.zeros((1, 2)), 0.6).all()
    assert np.all(scene.boxes[:, 0] <= scene.boxes[:, 1])


@pytest.mark.parametrize("kind", ["city", "office"])
def test_renders_are_closed_and_finite(kind):
    scene = make_scene(kind, 1)
    rgb, dist, sky = scene.render(scene.camera_c2w(0.0, 0.0, yaw_deg=20.0), 24)
    assert rgb.shape == (1, 24, 48, 3) and dist.shape == (1, 24, 48) and sky.shape == (1, 24, 48)
    assert np.isfinite(dist).all() and (dist > 0).all()  # every ray hits something
    assert rgb.dtype == np.float32 and dist.dtype == np.float32 and sky.dtype == bool


def _room_distance(scene, c2w, height):
    """Analytic distance from the camera to the inside of the room box along every pixel ray."""
    dirs = equirect_directions(height, dtype=torch.float64).reshape(-1, 3) @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    lo, hi = torch.tensor(scene.room[:3]), torch.tensor(scene.room[3:])
    t = torch.stack([(lo - origin) / dirs, (hi - origin) / dirs])
    return torch.where(t > 0, t, torch.inf).amin(dim=(0, 2)).reshape(height, 2 * height)


def test_room_distance_equals_analytic_ray_box_distance():
    scene = make_scene("room", 5, objects=0)  # an empty closed box room
    assert not scene.objects
    c2w = scene.camera_c2w(0.7, -0.4, yaw_deg=33.0, height=1.3)
    _, dist, sky = scene.render(c2w, 48)
    analytic = _room_distance(scene, c2w, 48).numpy()
    rel = np.abs(dist[0] - analytic) / analytic
    assert not sky.any()
    assert np.median(rel) < 1e-5
    assert (rel < 1e-4).mean() > 0.9
    # the rest sit on wall/floor/ceiling edges, where the renderer keeps one neighbouring
    # tap's distance (no blending across depth edges): it must be the distance of some ray
    # within one pixel, i.e. inside the range of a 4x supersampled analytic map over 3x3 pixels
    fine = _room_distance(scene, c2w, 4 * 48)
    fine = torch.cat([fine[:, -4:], fine, fine[:, :4]], 1)[None, None]
    fine = torch.nn.functional.pad(fine, (0, 0, 4, 4), mode="replicate")
    hi = torch.nn.functional.max_pool2d(fine, 12, stride=4)[0, 0].numpy()
    lo = -torch.nn.functional.max_pool2d(-fine, 12, stride=4)[0, 0].numpy()
    assert hi.shape == dist[0].shape
    assert np.all(dist[0] >= lo * (1 - 1e-4)) and np.all(dist[0] <= hi * (1 + 1e-4))


def test_ground_and_sky_match_analytic_values():
    scene = make_scene("desert", 5, objects=0)
    _, dist, sky = scene.render(scene.camera_c2w(0.0, 0.0, yaw_deg=10.0, height=1.6), 32)
    lat = _latitudes(32)
    below = lat < math.radians(-20)  # only the ground is there
    analytic = 1.6 / np.sin(-lat[below])
    assert np.abs(dist[0][below] - analytic).max() < 1e-4 * analytic.max()
    high = lat > math.radians(30)  # nothing in these scenes reaches 30 degrees of elevation
    assert sky[0][high].all() and not sky[0][lat < 0].any()
    assert np.abs(dist[0][high] / SKY_RADIUS - 1).max() < 0.02  # the tessellated dome


def test_unknown_scene_type_and_empty_input_raise():
    with pytest.raises(InputError, match="unknown scene type 'forst'"):
        make_scene("forst", 0)
    with pytest.raises(InputError, match="non-empty"):
        make_scene("  ", 0)
    with pytest.raises(InputError, match="empty"):
        scene_from_prompt("", 0)


def test_prompt_keywords_and_seeded_fallback():
    assert match_prompt("A snowy mountain village at SUNSET").kind == "snow"
    assert match_prompt("a cosy living room").kind == "room"
    assert match_prompt("the old harbour at night").modifiers == ("night",)
    fallback = match_prompt("purple elephant dreams")
    assert fallback.fallback and fallback.kind in OUTDOOR_KINDS
    assert match_prompt("purple elephant dreams") == fallback  # the prompt text picks the kind
    # a multi-word string is a prompt for make_scene too
    assert make_scene("purple elephant dreams", 2).fingerprint() == scene_from_prompt("purple elephant dreams", 2).fingerprint()
    assert make_scene("a forest at sunset", 1).fingerprint() != make_scene("forest", 1).fingerprint()  # palette changed


def test_procedural_panorama_is_deterministic():
    rgb, dist, sky, scene = procedural_panorama("a quiet forest", 16, seed=3)
    rgb2, dist2, sky2, _ = procedural_panorama("a quiet forest", 16, seed=3)
    assert rgb.shape == (16, 32, 3) and dist.shape == (16, 32) and sky.shape == (16, 32)
    assert scene.kind == "forest" and sky.any() and np.isfinite(dist).all()
    assert np.array_equal(rgb, rgb2) and np.array_equal(dist, dist2) and np.array_equal(sky, sky2)


def test_walkable_excludes_object_footprints():
    scene = make_scene("forest", 2)
    box = scene.boxes[0]
    centre = np.array([[0.5 * (box[0, 0] + box[1, 0]), 0.5 * (box[0, 2] + box[1, 2])]])
    assert not scene.is_walkable(centre).any()
    _, z0, x1, _ = scene.walkable
    assert not scene.is_walkable(np.array([[x1 + 1.0, 0.0], [0.0, z0 - 0.1]])).any()


@pytest.mark.cuda
def test_cuda_render_matches_cpu():
    scene = make_scene("town", 4)
    c2w = torch.stack([scene.camera_c2w(0.0, 0.0), scene.camera_c2w(2.0, 1.0, yaw_deg=45.0)])
    rgb_c, dist_c, sky_c = scene.render(c2w, 128, backend="cpu", device="cpu")
    rgb_g, dist_g, sky_g = scene.render(c2w, 128, backend="cuda", device="cuda")
    assert np.abs(rgb_c - rgb_g).mean() < 2e-3
    rel = np.abs(dist_c - dist_g) / dist_c
    assert np.median(rel) < 1e-5 and (rel < 1e-3).mean() > 0.99
    assert (sky_c == sky_g).mean() > 0.995
