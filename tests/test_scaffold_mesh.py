"""Scaffold mesh: topology, occlusion rule, sky, floaters, decimation, export (values asserted)."""

import math

import numpy as np
import pytest
import torch

from matrix_world.equirect import equirect_directions
from matrix_world.errors import InputError
from matrix_world.scaffold.mesh import (
    ScaffoldConfig,
    build_scaffold_mesh,
    export_mesh,
    floater_mask,
    grid_faces,
    occlusion_mask,
    prepare_distance,
    smooth_components,
    smooth_components_torch,
)


def _smooth_scene(h):
    """Distance 2 + a gentle bump, colour a smooth function of the direction: [h, 2h]."""
    d = equirect_directions(h)
    dist = 2.0 + 0.02 * d[..., 0] * d[..., 2]
    rgb = 0.5 + 0.4 * torch.stack((d[..., 0], d[..., 1], d[..., 2] * d[..., 0]), -1)
    return rgb, dist


def test_topology_counts_wrap_poles_and_orientation():
    h, w = 6, 12
    rgb, dist = _smooth_scene(h)
    mesh = build_scaffold_mesh(rgb, dist)
    assert mesh.vertices.shape == (h * w + 2, 3) and mesh.faces.shape == (2 * h * w, 3)
    assert (mesh.grid_height, mesh.grid_width) == (h, w)
    assert mesh.faces.dtype == torch.int64 and int(mesh.faces.min()) == 0 and int(mesh.faces.max()) == h * w + 1
    # every undirected edge is shared by exactly two triangles: closed surface, no seam crack
    f = mesh.faces
    edges = torch.cat((f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]))
    edges = torch.sort(edges, dim=1).values
    _, counts = torch.unique(edges, dim=0, return_counts=True)
    assert bool((counts == 2).all())
    # seam: column w-1 joins column 0 in some triangle
    assert bool(((f == w - 1).any(1) & (f == 0).any(1)).any())
    # no zero-area triangle, all facing the centre (normal . vertex < 0)
    v = mesh.vertices.double()
    n = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)
    assert float(n.norm(dim=-1).min()) > 1e-4
    assert bool(((n * v[f[:, 0]]).sum(-1) < 0).all())
    # vertex (i, j) lies on the ray of pixel centre (i, j) at its distance
    dirs = equirect_directions(h)
    torch.testing.assert_close(mesh.vertices[: h * w], (dirs * dist[..., None]).reshape(-1, 3))
    # pole vertices: straight up / down at the median distance of the edge row, mean colour
    torch.testing.assert_close(mesh.vertices[h * w], torch.tensor([0.0, -1.0, 0.0]) * dist[0].median())
    torch.testing.assert_close(mesh.vertices[h * w + 1], torch.tensor([0.0, 1.0, 0.0]) * dist[-1].median())
    torch.testing.assert_close(mesh.colors[h * w], rgb[0].mean(0))
    assert bool(mesh.visible.all())
    torch.testing.assert_close(mesh.colors[: h * w], rgb.reshape(-1, 3))


def test_grid_faces_quad_layout():
    faces = grid_faces(3, 4)
    # first quad (0,0),(1,0),(0,1),(1,1) = vertices 0, 4, 1, 5
    assert faces[0].tolist() == [0, 4, 1] and faces[1].tolist() == [1, 4, 5]
    # wrap quad of row 0: columns 3 and 0
    assert faces[6].tolist() == [3, 7, 0] and faces[7].tolist() == [0, 7, 4]
    # caps: north pole 12 with row 0, south pole 13 with row 2
    assert faces[16].tolist() == [12, 0, 1] and faces[20].tolist() == [13, 9, 8]


def test_occlusion_rule_hand_made_map():
    d = torch.full((4, 8), 2.0)
    d[:, 3:5] = 1.0  # a near column pair: jumps at columns 2|3 and 4|5
    d[0, 0] = 2.09  # 4.5 % bump: (2.09 - 2) / 2 = 0.045 <= 0.05 stays visible
    vis = occlusion_mask(d, 0.05)
    expected = torch.ones(4, 8, dtype=torch.bool)
    expected[:, 2:6] = False  # every pixel whose 3x3 contains both 1 and 2
    assert torch.equal(vis, expected)
    # relative to the pixel's own distance: (2 - 1) / 1 vs (2 - 1) / 2, both > threshold 0.4
    assert torch.equal(occlusion_mask(d, 0.4), expected)
    # ... but a threshold of 0.6 keeps the far side (0.5) and drops the near side (1.0)
    vis6 = occlusion_mask(d, 0.6)
    assert vis6[:, 2].all() and vis6[:, 5].all() and not vis6[:, 3].any() and not vis6[:, 4].any()


def test_occlusion_rule_wraps_longitude_and_clamps_poles():
    d = torch.full((4, 8), 2.0)
    d[:, 0] = 1.0  # the jump is between column 0 and column 7 (across the seam) and column 1
    vis = occlusion_mask(d, 0.05)
    expected = torch.ones(4, 8, dtype=torch.bool)
    expected[:, [7, 0, 1]] = False
    assert torch.equal(vis, expected)
    d = torch.full((4, 8), 2.0)
    d[0, 4] = 3.0  # top row: clamped neighbourhood has rows 0..1
    expected = torch.ones(4, 8, dtype=torch.bool)
    expected[0:2, 3:6] = False
    assert torch.equal(occlusion_mask(d, 0.05), expected)


def test_prepare_distance_sky_and_invalid():
    d = torch.full((2, 4), 3.0)
    d[0, 0] = float("nan")
    d[0, 1] = float("inf")
    d[0, 2] = -1.0
    d[0, 3] = 0.0
    d[1, 0] = 5.0
    sky = torch.zeros(2, 4, dtype=torch.bool)
    sky[1, 1] = True
    filled, valid = prepare_distance(d, sky, sky_factor=2.0)
    expected_valid = torch.tensor([[False] * 4, [True, False, True, True]])
    assert torch.equal(valid, expected_valid)
    assert torch.equal(filled[~expected_valid], torch.full((5,), 10.0))  # 2 x max valid (5)
    assert torch.equal(filled[expected_valid], torch.tensor([5.0, 3.0, 3.0]))
    # numpy input works the same
    f2, v2 = prepare_distance(d.numpy(), sky.numpy(), sky_factor=3.0)
    assert float(f2[0, 0]) == 15.0 and torch.equal(v2, expected_valid)
    with pytest.raises(InputError, match="no valid"):
        prepare_distance(torch.full((2, 4), float("nan")))
    with pytest.raises(InputError, match="H x 2H"):
        prepare_distance(torch.ones(3, 4))
    with pytest.raises(InputError, match="sky_mask"):
        prepare_distance(torch.ones(2, 4), torch.zeros(2, 2, dtype=torch.bool))


def test_sky_becomes_background_in_mesh():
    h = 8
    rgb, dist = _smooth_scene(h)
    dist = dist.clone()
    dist[:2] = float("inf")  # sky in the top rows
    mesh = build_scaffold_mesh(rgb, dist, ScaffoldConfig(sky_factor=2.0))
    r = mesh.vertices[: h * 2 * h].norm(dim=-1).reshape(h, 2 * h)
    far = 2.0 * float(dist[2:].max())
    torch.testing.assert_close(r[:2], torch.full((2, 2 * h), far))
    # the sky band is smooth inside (visible), the sky/ground border is not
    vis = mesh.visible[: 2 * h * h].reshape(h, 2 * h)
    assert vis[0].all() and not vis[1].any() and not vis[2].any() and vis[4:].all()


def test_floaters_pushed_back_with_seam_merge():
    h, w = 16, 32
    d = torch.full((h, w), 10.0)
    d[4:6, 10:12] = 2.0  # 4-pixel floater
    d[9:13, 14:18] = 3.0  # 16-pixel object: kept
    d[2:4, 31] = 4.0  # 4 pixels across the seam (columns 31 and 0): one component of 4
    d[2:4, 0] = 4.0
    labels, n = smooth_components(d, 0.05)
    assert n == 4
    assert labels[2, 31] == labels[2, 0] == labels[3, 0]
    mask = floater_mask(d, 10.0, threshold=0.05, max_pixels=5, near_ratio=0.99)
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[4:6, 10:12] = True
    expected[2:4, 31] = True
    expected[2:4, 0] = True
    assert torch.equal(mask, expected)
    # max_pixels 4: components of exactly 4 are not smaller than 4
    assert not floater_mask(d, 10.0, threshold=0.05, max_pixels=4, near_ratio=0.99).any()
    # a small component at the background distance stays (not nearer than 0.99 x max)
    d2 = d.clone()
    d2[4:6, 10:12] = 9.95
    assert not floater_mask(d2, 10.0, threshold=0.001, max_pixels=5, near_ratio=0.99)[4:6, 10:12].any()
    # in the mesh: floater vertices sit at the background (2 x max valid), object stays
    rgb = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(0))
    mesh = build_scaffold_mesh(rgb, d, ScaffoldConfig(floater_max_pixels=5))
    r = mesh.vertices[: h * w].norm(dim=-1).reshape(h, w)
    assert torch.allclose(r[4:6, 10:12], torch.tensor(20.0)) and torch.allclose(r[2:4, 0], torch.tensor(20.0))
    assert torch.allclose(r[9:13, 14:18], torch.tensor(3.0))
    # default: 1600 px at 1920x960 scaled by area -> 0 at 16x32: nothing moves
    mesh = build_scaffold_mesh(rgb, d)
    assert torch.allclose(mesh.vertices[: h * w].norm(dim=-1).reshape(h, w)[4:6, 10:12], torch.tensor(2.0))


def test_decimation():
    h = 8
    rgb, dist = _smooth_scene(h)
    mesh = build_scaffold_mesh(rgb, dist, ScaffoldConfig(decimate=2))
    assert (mesh.grid_height, mesh.grid_width) == (4, 8)
    assert mesh.vertices.shape == (4 * 8 + 2, 3) and mesh.faces.shape == (2 * 4 * 8, 3)
    block_d = dist.reshape(4, 2, 8, 2).mean((1, 3))
    block_rgb = rgb.reshape(4, 2, 8, 2, 3).mean((1, 3))
    dirs = equirect_directions(4)
    torch.testing.assert_close(mesh.vertices[:32], (dirs * block_d[..., None]).reshape(-1, 3))
    torch.testing.assert_close(mesh.colors[:32], block_rgb.reshape(-1, 3))
    with pytest.raises(InputError, match="decimate"):
        build_scaffold_mesh(rgb, dist, ScaffoldConfig(decimate=3))


def test_invisible_vertices_black_and_pole_visibility():
    h = 8
    rgb, dist = _smooth_scene(h)
    dist = dist.clone()
    dist[3:5, 4:6] = 1.0
    dist[0, 3] = 5.0  # rough top row: north pole invisible
    mesh = build_scaffold_mesh(rgb, dist, ScaffoldConfig(floater_max_pixels=0))
    vis = mesh.visible
    assert not bool(vis[h * 2 * h]) and bool(vis[h * 2 * h + 1])
    assert bool((mesh.colors[~vis] == 0).all())
    assert int((~vis[: 2 * h * h]).sum()) == int((~occlusion_mask(prepare_distance(dist)[0], 0.05)).sum())


def test_bad_inputs():
    rgb, dist = _smooth_scene(4)
    with pytest.raises(InputError, match="H x 2H"):
        build_scaffold_mesh(torch.rand(4, 4, 3), torch.ones(4, 4))
    with pytest.raises(InputError, match="rgb must be"):
        build_scaffold_mesh(torch.rand(4, 6, 3), dist)
    with pytest.raises(InputError, match="2-D"):
        build_scaffold_mesh(rgb, dist[None])
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        build_scaffold_mesh(rgb * 255.0, dist)
    # uint8 colour is scaled
    mesh = build_scaffold_mesh((rgb * 255).round().to(torch.uint8), dist)
    torch.testing.assert_close(mesh.colors[:32], (rgb * 255).round().reshape(-1, 3) / 255.0)


def test_transformed():
    rgb, dist = _smooth_scene(4)
    mesh = build_scaffold_mesh(rgb, dist)
    c2w = torch.eye(4, dtype=torch.float64)
    a = math.radians(30)
    c2w[:3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    c2w[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    moved = mesh.transformed(c2w)
    expected = mesh.vertices.double() @ c2w[:3, :3].T + c2w[:3, 3]
    torch.testing.assert_close(moved.vertices, expected.float())
    assert moved.faces is mesh.faces and moved.colors is mesh.colors


@pytest.mark.parametrize("suffix", [".ply", ".glb"])
def test_export_reloads(tmp_path, suffix):
    trimesh = pytest.importorskip("trimesh")
    h = 6
    rgb, dist = _smooth_scene(h)
    dist = dist.clone()
    dist[2:4, 3:5] = 1.0
    mesh = build_scaffold_mesh(rgb, dist, ScaffoldConfig(floater_max_pixels=0))
    path = tmp_path / f"scaffold{suffix}"
    export_mesh(mesh, path)
    loaded = trimesh.load(path, process=False, force="mesh")
    assert len(loaded.vertices) == mesh.vertices.shape[0] and len(loaded.faces) == mesh.faces.shape[0]
    np.testing.assert_allclose(np.asarray(loaded.vertices), mesh.vertices.numpy(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(loaded.faces), mesh.faces.numpy())
    colors = np.asarray(loaded.visual.vertex_colors)[:, :3]
    expected = np.round(mesh.colors.numpy() * 255).astype(np.uint8)
    np.testing.assert_allclose(colors.astype(int), expected.astype(int), atol=1)
    assert (colors[~mesh.visible.numpy()] == 0).all()
    with pytest.raises(InputError, match=".ply or .glb"):
        export_mesh(mesh, tmp_path / "scaffold.obj")


def test_torch_components_match_scipy():
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        # blocky random distance: many components of all sizes, some across the seam
        coarse = 1.0 + torch.randint(0, 4, (6, 12), generator=g).float()
        d = coarse.repeat_interleave(3, 0).repeat_interleave(3, 1)
        d = d + 0.01 * torch.rand(d.shape, generator=g)
        d = torch.roll(d, 1, dims=1)
        ref, n = smooth_components(d, 0.05)
        got = smooth_components_torch(d, 0.05).numpy()
        # same partition: a bijection between the two labellings
        pairs = set(zip(ref.ravel().tolist(), got.ravel().tolist()))
        assert len(pairs) == n == len(np.unique(got))
