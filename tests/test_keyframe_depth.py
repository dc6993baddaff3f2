"""Keyframe depth for the reconstruction (issue 14, item 3): views matched to the frame, all keyframes
batched through MoGe and the merge, keyframes the scaffold knows filled without MoGe."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from matrix_world.cameras import icosahedron_views
from matrix_world.errors import InputError
from matrix_world.generation.depth import (DepthConfig, fill_unknown, panorama_depth_from_model,
                                           panorama_depths_from_model, prior_distance, view_footprints, views_touching)
from matrix_world.generation.depth_merge import MergeConfig, merge_log_distances
from matrix_world.generation.moge_backend import load_moge
from matrix_world.pipeline.depth import make_depth_fn
from matrix_world.reconstruction.keyframes import KeyframeConfig, prepare_keyframes

from test_depth import view_log_distances
from tiny_moge import build_tiny_moge


# --------------------------------------------------------------------------- the view-size rule


def test_keyframe_view_rule_values():
    config = DepthConfig()  # 100 degree views, panorama stage at 768 px
    assert config.keyframe_views(480) == (406, 29 ** 2)  # 1.5 x 2.67 px/deg x 100 deg = 400 -> 29 patches
    assert config.keyframe_views(720) == (602, 43 ** 2)  # 600 -> 43 patches
    assert config.keyframe_views(32) == (28, 4)  # at least 2 patches
    assert config.keyframe_views(8) == (28, 4)
    assert config.keyframe_views(4096) == (756, 54 ** 2)  # at most the panorama stage's view size (768 -> 54 patches)
    assert DepthConfig(view_fov=90.0).keyframe_views(480) == (364, 26 ** 2)  # 360 -> 25.7 patches
    assert DepthConfig(keyframe_view_size=200).keyframe_views(480) == (200, 14 ** 2)  # explicit size, tokens follow
    assert DepthConfig(keyframe_num_tokens=1200).keyframe_views(480) == (406, 1200)


# --------------------------------------------------------------------------- batched merge


@pytest.mark.parametrize("direct_max_pixels", [2000, 300])  # direct coarse levels + CG / CG nearly everywhere
def test_batched_merge_equals_single_merges(direct_max_pixels):
    height, views = 48, icosahedron_views(48, 100.0)
    g = torch.Generator().manual_seed(1)
    log_d = torch.stack([view_log_distances(views, torch.randn(12, generator=g, dtype=torch.float64)) + 0.3 * k
                         for k in range(3)])  # [3, 12, 48, 48]: three panoramas, each with its own view scales
    log_d[1] = log_d[1] + 0.05 * torch.randn(log_d[1].shape, generator=g, dtype=torch.float64)  # noisy: more CG steps
    valid = torch.ones_like(log_d, dtype=torch.bool)
    up = torch.stack([v.directions(dtype=torch.float64)[..., 1] < -0.6 for v in views])
    valid[2] &= ~up  # one panorama with a hole ("sky")
    config = MergeConfig(direct_max_pixels=direct_max_pixels)
    x, seen, info = merge_log_distances(log_d, valid, views, height, config)
    assert x.shape == (3, height, 2 * height) and seen.shape == x.shape
    for k in range(3):
        xk, seen_k, info_k = merge_log_distances(log_d[k], valid[k], views, height, config)
        torch.testing.assert_close(x[k], xk, rtol=0, atol=1e-6)
        assert torch.equal(seen[k], seen_k) and info["cg_iterations"][k] == info_k["cg_iterations"]
    assert not seen[2].all() and seen[0].all()
    its = [sum(i) for i in info["cg_iterations"]]
    assert its[0] > 0 and len(set(its)) > 1  # the items converged at their own step counts


def test_batched_merge_rejects_mismatched_shapes():
    views = icosahedron_views(16, 100.0)
    with pytest.raises(ValueError, match="K, V, h, w"):
        merge_log_distances(torch.zeros(2, 11, 16, 16), torch.ones(2, 11, 16, 16, dtype=torch.bool), views, 16)


# --------------------------------------------------------------------------- batched MoGe depth


@pytest.fixture(scope="module")
def tiny_moge(tmp_path_factory):
    return load_moge(str(build_tiny_moge(tmp_path_factory.mktemp("moge") / "model.pt", version=2)))


def test_batched_model_depth_equals_per_panorama(tiny_moge):
    rgb = np.random.default_rng(2).random((3, 16, 32, 3)).astype(np.float32)
    config = DepthConfig(backend="moge", view_size=28, num_tokens=4, batch_size=20)  # batches across panoramas
    batched = panorama_depths_from_model(rgb, tiny_moge, config, device="cpu")
    assert len(batched) == 3
    for k in range(3):
        alone = panorama_depth_from_model(rgb[k], tiny_moge, config, device="cpu")
        np.testing.assert_allclose(batched[k].distance, alone.distance, rtol=1e-4, atol=1e-6)
        assert np.array_equal(batched[k].valid, alone.valid)
    assert not np.allclose(batched[0].distance, batched[1].distance)  # different frames, different depth


class Scaffold(SimpleNamespace):
    pass


def _clip(frames: int = 7, h: int = 16):
    g = np.random.default_rng(3)
    dirs = torch.from_numpy(np.stack(np.meshgrid(np.linspace(-1, 1, 2 * h), np.linspace(-1, 1, h)), -1))
    rgb = g.random((frames, h, 2 * h, 3)).astype(np.float32)
    true = np.stack([(2.0 + 0.5 * np.cos(3 * dirs[..., 0].numpy() + f) + dirs[..., 1].numpy()) for f in range(frames)])
    mask = np.zeros((frames, h, 2 * h), bool)
    mask[:, : h // 2] = True  # the scaffold knows the top half of every frame ...
    mask[3] = True
    mask[3, 0, :2] = False  # ... and all but 2 of 512 pixels of frame 3 (> 0.995)
    distance = np.where(mask, true, np.inf).astype(np.float16)
    c2w = torch.eye(4, dtype=torch.float64).repeat(frames, 1, 1)
    c2w[:, 0, 3] = torch.linspace(0, 0.3, frames, dtype=torch.float64)
    return Scaffold(rgb=rgb, mask=mask, distance=distance), SimpleNamespace(c2w=c2w), rgb


def _context(moge, calls: list):
    def model(name, load):
        calls.append(name)
        return moge
    return SimpleNamespace(model=model)


def test_keyframe_depth_batched_equals_per_keyframe_and_fills_known_keyframes(tiny_moge, monkeypatch):
    scaffold, traj, rgb = _clip()
    inferred: list[int] = []  # views per MoGe forward
    real_infer = tiny_moge.model.infer
    monkeypatch.setattr(tiny_moge.model, "infer", lambda images, **kw: inferred.append(len(images)) or real_infer(images, **kw))
    config = DepthConfig(backend="moge", keyframe_batch_size=30)  # 16-row frames: 28 px views, 4 tokens
    fn = make_depth_fn(config, torch.device("cpu"), scaffold, traj, _context(tiny_moge, []))
    indices = [1, 3, 5, 6]
    dist, sky = fn(indices, torch.from_numpy(rgb[indices]))
    assert dist.shape == (4, 16, 32) and sky.dtype == torch.bool
    assert fn.info["estimated"] == 3 and fn.info["filled_from_scaffold"] == 1 and fn.info["view_size"] == 28
    need, _ = views_touching(~known_of(scaffold, [1, 5, 6]), replace(config, view_size=28))
    assert 0 < need.sum() < 36 and fn.info["views_run"] == need.sum() == sum(inferred)  # the top half is known
    assert inferred == [30] * (int(need.sum()) // 30) + ([int(need.sum()) % 30] if need.sum() % 30 else [])  # frame 3 never reached MoGe
    known = known_of(scaffold, indices)
    exact = scaffold.distance[indices].astype(np.float32)
    assert np.array_equal(dist.numpy()[known], exact[known])  # the scaffold's distance where known, exactly
    assert torch.isfinite(dist).all() and (dist > 0).all()
    filled = dist[1].numpy()[~scaffold.mask[3]]
    assert (filled >= exact[1][known[1]].min()).all() and (filled <= exact[1][known[1]].max()).all()
    for j, i in enumerate(indices):  # one keyframe at a time: the same distances
        one, one_sky = fn([i], torch.from_numpy(rgb[[i]]))
        torch.testing.assert_close(one[0], dist[j], rtol=1e-4, atol=1e-5)
        assert torch.equal(one_sky[0], sky[j])


def known_of(scaffold, indices):
    return scaffold.mask[indices] & np.isfinite(scaffold.distance[indices].astype(np.float32))


def test_views_touching_covers_every_unknown_pixel():
    config = DepthConfig(view_size=28)
    feet = view_footprints(config, 16)
    assert feet.shape == (12, 16, 32) and feet.any(0).all()  # the 12 views tile the sphere
    unknown = np.zeros((3, 16, 32), bool)
    unknown[0] = True
    unknown[1, 12:, 5:9] = True  # a patch below the horizon
    unknown[2, 0, 0] = True  # one pixel
    need, covered = views_touching(unknown, config)
    assert need.shape == (3, 12) and need[0].all() and 0 < need[1].sum() < 12 and 0 < need[2].sum() < 12
    assert (covered | ~unknown).all()  # every unknown pixel is seen by a view that runs
    for k in range(3):  # a view runs exactly when it sees an unknown pixel
        assert np.array_equal(need[k], (feet.numpy() & unknown[k]).reshape(12, -1).any(1))


class ConstantMoGe:
    """A stand-in with MoGe's ``infer``: every pixel at distance 1 along its ray (a unit sphere)."""

    device = torch.device("cpu")

    def __init__(self):
        self.views = 0

    def to(self, device):
        return self

    def infer(self, images, *, fov_x, num_tokens=None, use_fp16=False):
        b, _, h, w = images.shape
        f = 0.5 * w / np.tan(np.radians(fov_x) / 2)
        v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        rays = torch.stack([(u - w / 2) / f, (v - h / 2) / f, torch.ones_like(u)], -1)
        self.views += b
        return {"points": (rays / rays.norm(dim=-1, keepdim=True)).expand(b, h, w, 3), "mask": torch.ones(b, h, w, dtype=torch.bool)}


@pytest.mark.parametrize("skip_views", [True, False])
def test_keyframe_depth_scales_the_estimate_to_the_known_pixels_its_views_cover(skip_views):
    from matrix_world.generation.moge_backend import LoadedMoGe

    h = 16
    model = ConstantMoGe()
    mask = np.ones((2, h, 2 * h), bool)
    mask[0, 11:, 4:10] = False  # unknown: a patch below the horizon ...
    mask[1, :, 20:] = False  # ... and a third of the other frame
    distance = np.where(mask, 5.0, np.inf).astype(np.float16)  # the scaffold: a sphere of radius 5
    scaffold = Scaffold(rgb=None, mask=mask, distance=distance)
    traj = SimpleNamespace(c2w=torch.eye(4, dtype=torch.float64).repeat(2, 1, 1))
    config = DepthConfig(backend="moge", keyframe_skip_known_views=skip_views, keyframe_known_fraction=None)
    fn = make_depth_fn(config, torch.device("cpu"), scaffold, traj, _context(LoadedMoGe(model, 2, True, "constant"), []))
    dist, sky = fn([0, 1], torch.rand(2, h, 2 * h, 3, generator=torch.Generator().manual_seed(0)))
    np.testing.assert_allclose(dist.numpy(), 5.0, rtol=2e-3)  # MoGe's unit sphere scaled to the known radius
    assert not sky.any()
    assert model.views == (fn.info["views_run"] if skip_views else 24) and (model.views < 24) == skip_views


@pytest.mark.parametrize("backend", ["prior", "procedural"])
def test_keyframe_depth_of_the_weightless_backends(backend):
    pytest.importorskip("matrix_world.datasets.procedural")
    scaffold, traj, rgb = _clip()
    config = DepthConfig(backend=backend, prompt="a park", seed=3)
    fn = make_depth_fn(config, torch.device("cpu"), scaffold, traj, SimpleNamespace())
    indices = [2, 3, 6]
    dist, sky = fn(indices, torch.from_numpy(rgb[indices]))
    assert fn.info["filled_from_scaffold"] == 0  # only MoGe keyframes are ever skipped
    for j, i in enumerate(indices):
        one, one_sky = fn([i], torch.from_numpy(rgb[[i]]))
        assert torch.equal(one[0], dist[j]) and torch.equal(one_sky[0], sky[j])
    if backend == "prior":  # the old per-frame rule: the prior scaled by the median ratio, exact where known
        exact = scaffold.distance[2].astype(np.float32)
        k = scaffold.mask[2] & np.isfinite(exact)
        prior = prior_distance(16, camera_height=config.camera_height, dome_radius=config.dome_radius)
        expected = prior * float(np.median(exact[k] / prior[k]))
        expected[k] = exact[k]
        np.testing.assert_allclose(dist[0].numpy(), expected, rtol=1e-6)
        assert not sky.any()


def test_prepare_keyframes_asks_for_all_keyframes_in_one_call():
    scaffold, traj, rgb = _clip(frames=11)
    truth = torch.from_numpy(np.where(scaffold.mask, scaffold.distance, 3.0).astype(np.float32))
    calls = []

    def depth_fn(indices, frames):
        calls.append((list(indices), tuple(frames.shape)))
        return truth[indices]

    kf = prepare_keyframes(rgb, traj.c2w, truth[0], depth_fn=depth_fn, config=KeyframeConfig(stride=4, align_distances=False))
    assert calls == [([4, 8, 10], (3, 16, 32, 3))]
    assert torch.equal(kf.distance, truth[[0, 4, 8, 10]])
    with pytest.raises(InputError, match="expected"):
        prepare_keyframes(rgb, traj.c2w, truth[0], depth_fn=lambda i, _: truth[0], config=KeyframeConfig(stride=4))


# --------------------------------------------------------------------------- fill


def test_fill_unknown_keeps_known_values_and_fills_between_them():
    g = np.random.default_rng(4)
    distance = np.exp(g.normal(size=(16, 32))).astype(np.float32)
    known = g.random((16, 32)) > 0.3
    known[4:12, 8:20] = False  # a large hole
    out = fill_unknown(np.where(known, distance, np.nan), known)
    assert np.array_equal(out[known], distance[known]) and np.isfinite(out).all()
    assert out[~known].min() >= distance[known].min() and out[~known].max() <= distance[known].max()
    const = fill_unknown(np.where(known, 2.5, np.inf), known)
    np.testing.assert_allclose(const, 2.5, rtol=1e-6)  # a constant field is filled with the constant
    one = np.zeros((16, 32), bool)
    one[3, 5] = True
    np.testing.assert_allclose(fill_unknown(np.full((16, 32), 4.0), one), 4.0, rtol=1e-6)
    with pytest.raises(InputError, match="known pixel"):
        fill_unknown(distance, np.zeros((16, 32), bool))


def test_lowvram_runs_moge_in_smaller_batches_with_the_same_depth(tiny_moge):
    """--memory lowvram lowers the depth stage's peak by its batch of views, not its result."""
    from matrix_world.pipeline import depth as depth_stage
    from matrix_world.pipeline.config import WorldConfig

    low = depth_stage.configure(WorldConfig(prompt="x", memory="lowvram"), "moge")
    default = depth_stage.configure(WorldConfig(prompt="x"), "moge")
    assert (low.batch_size, low.keyframe_batch_size) == (4, 16) and (default.batch_size, default.keyframe_batch_size) == (12, 48)
    rgb = np.random.default_rng(4).random((16, 32, 3)).astype(np.float32)
    small = panorama_depth_from_model(rgb, tiny_moge, DepthConfig(backend="moge", view_size=28, num_tokens=4, batch_size=low.batch_size), device="cpu")
    whole = panorama_depth_from_model(rgb, tiny_moge, DepthConfig(backend="moge", view_size=28, num_tokens=4, batch_size=12), device="cpu")
    np.testing.assert_allclose(small.distance, whole.distance, rtol=1e-4, atol=1e-6)
