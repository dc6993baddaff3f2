"""Depth stage (generation/depth.py, depth_merge.py, moge_backend.py)."""

import numpy as np
import pytest
import torch

from matrix_world.cameras import icosahedron_views
from matrix_world.equirect import equirect_directions
from matrix_world.errors import InputError
from matrix_world.generation.depth import DepthConfig, estimate_depth, panorama_depth_from_model, prior_distance
from matrix_world.generation.depth_merge import MergeConfig, merge_log_distances
from matrix_world.generation.moge_backend import LoadedMoGe, infer_views, load_moge
from matrix_world.generation.weights import WeightsNotFoundError

from tiny_moge import build_tiny_moge


ROOM_LO = (-3.0, -1.2, -2.5)
ROOM_HI = (4.0, 1.6, 3.5)
SPHERE = ((1.0, 0.3, 2.0), 0.6)


def room_distance(dirs: torch.Tensor) -> torch.Tensor:
    """Exact distance along unit rays [..., 3] from the origin: an off-centre box room with a ball in it."""
    lo = torch.tensor(ROOM_LO, dtype=dirs.dtype)
    hi = torch.tensor(ROOM_HI, dtype=dirs.dtype)
    t = torch.where(dirs > 0, hi / dirs.clamp_min(1e-12), lo / dirs.clamp_max(-1e-12)).min(-1).values
    c = torch.tensor(SPHERE[0], dtype=dirs.dtype)
    b = (dirs * c).sum(-1)
    disc = b * b - (c * c).sum() + SPHERE[1] ** 2
    ts = b - disc.clamp_min(0).sqrt()
    return torch.where((disc > 0) & (ts > 0), torch.minimum(t, ts), t)


def view_log_distances(views, scales):
    return torch.stack([room_distance(v.directions(dtype=torch.float64)).log() + s for v, s in zip(views, scales)])


@pytest.mark.parametrize("direct_max_pixels", [1 << 17, 600])  # direct sparse solve / conjugate gradients
def test_merge_reproduces_a_known_distance_field(direct_max_pixels):
    """12 views, each with its own unknown scale, merge into the true field (error < 1%), seamless."""
    height = 48
    views = icosahedron_views(64, 100.0)
    scales = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # log offsets
    log_d = view_log_distances(views, scales)
    valid = torch.ones_like(log_d, dtype=torch.bool)
    x, seen, info = merge_log_distances(log_d, valid, views, height, MergeConfig(direct_max_pixels=direct_max_pixels))
    assert seen.all() and x.shape == (height, 2 * height)
    if direct_max_pixels < 1000:
        assert all(i > 0 for i in info["cg_iterations"][1:])
    gt = room_distance(equirect_directions(height, dtype=torch.float64))
    d = x.double().exp()
    d = d * (gt / d).median()  # the views' scales are arbitrary: compare shapes
    rel = ((d - gt).abs() / gt).flatten()
    assert rel.mean() < 0.005 and rel.quantile(0.95) < 0.01, (rel.mean(), rel.quantile(0.95))
    # continuous across longitude ±180: the wrap-around step is like the true one
    seam_err = ((d[:, 0] - d[:, -1]) - (gt[:, 0] - gt[:, -1])).abs() / gt[:, 0]
    assert seam_err.mean() < 0.01
    # the two solvers agree
    if direct_max_pixels < 1000:
        ref, _, _ = merge_log_distances(log_d, valid, views, height)
        assert (x - ref).abs().max() < 2e-3


def test_merge_fills_holes_smoothly_and_reports_unseen():
    height = 32
    views = icosahedron_views(48, 100.0)
    log_d = view_log_distances(views, torch.zeros(12, dtype=torch.float64))
    valid = torch.ones_like(log_d, dtype=torch.bool)
    dirs = [v.directions(dtype=torch.float64) for v in views]
    up = torch.stack([d[..., 1] < -0.7 for d in dirs])  # "sky": everything looking steeply up
    x, seen, _ = merge_log_distances(log_d, valid & ~up, views, height)
    pano_up = equirect_directions(height, dtype=torch.float64)[..., 1] < -0.75
    assert not seen[pano_up].any() and seen[~pano_up].float().mean() > 0.95
    assert torch.isfinite(x).all()
    gt = room_distance(equirect_directions(height, dtype=torch.float64))
    rel = ((x.double().exp() - gt).abs() / gt)[seen]
    assert rel.mean() < 0.01


class OracleMoGe(torch.nn.Module):
    """A MoGe stand-in with MoGe's ``infer`` signature: exact points of the room for each icosahedron
    view (in order), scaled per view like MoGe-1's arbitrary scale (or exact: metric)."""

    device = torch.device("cpu")

    def __init__(self, size: int, metric: bool):
        super().__init__()
        self.views = icosahedron_views(size, 100.0)
        self.metric = metric
        self.calls = 0

    def infer(self, images, fov_x=None, num_tokens=None, use_fp16=False):
        assert fov_x == 100.0 and images.shape[1:] == (3, self.views[0].height, self.views[0].width)
        points = []
        for _ in range(images.shape[0]):
            i = self.calls % 12
            self.calls += 1
            cam_dirs = torch.nn.functional.normalize(
                self.views[i].directions(dtype=torch.float64) @ self.views[i].rotation(), dim=-1)  # crop camera frame
            d = room_distance(self.views[i].directions(dtype=torch.float64))
            scale = 1.0 if self.metric else 0.5 + 0.25 * i
            points.append((cam_dirs * (d * scale)[..., None]).float())
        points = torch.stack(points)
        return {"points": points, "mask": torch.ones(points.shape[:3], dtype=torch.bool)}


@pytest.mark.parametrize("metric", [False, True])
def test_moge_procedure_with_an_oracle_model(metric):
    height = 48
    rgb = np.random.default_rng(0).random((height, 2 * height, 3)).astype(np.float32)
    oracle = OracleMoGe(64, metric)
    result = panorama_depth_from_model(rgb, LoadedMoGe(oracle, 2 if metric else 1, metric, "oracle"),
                                       DepthConfig(view_size=64, batch_size=5), device="cpu")
    assert oracle.calls == 12
    gt = room_distance(equirect_directions(height, dtype=torch.float64)).numpy()
    d = result.distance
    assert result.valid.all() and not result.sky.any()
    if metric:
        assert result.info["units"] == "metres"
        rel = np.abs(d - gt) / gt  # absolute scale kept
    else:
        assert result.info["units"].startswith("normalised")
        assert np.exp(np.log(d).mean()) == pytest.approx(1.0, rel=1e-4)
        rel = np.abs(d * np.median(gt / d) - gt) / gt
    assert rel.mean() < 0.01 and np.quantile(rel, 0.95) < 0.01


@pytest.fixture(scope="module")
def tiny_moge_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("moge")
    return {v: build_tiny_moge(root / f"v{v}" / "model.pt", version=v) for v in (1, 2)}


@pytest.mark.parametrize("version", [1, 2])
def test_tiny_moge_loads_through_from_pretrained_and_runs(tiny_moge_files, version):
    path = tiny_moge_files[version]
    moge = load_moge(str(path.parent))  # a folder holding model.pt
    assert moge.version == version and moge.metric == (version == 2)
    rgb = np.random.default_rng(1).random((32, 64, 3)).astype(np.float32)
    config = DepthConfig(backend="moge", model=str(path), view_size=42, num_tokens=48)
    a = estimate_depth(rgb, config)
    assert a.distance.shape == (32, 64) and a.distance.dtype == np.float32
    assert np.isfinite(a.distance).all() and (a.distance > 0).all() and a.valid.all()
    images = torch.rand(3, 3, 42, 42, generator=torch.Generator().manual_seed(0))
    one, _ = infer_views(moge, images, fov=100.0, num_tokens=48, batch_size=3)
    split, _ = infer_views(moge, images, fov=100.0, num_tokens=48, batch_size=2)
    assert torch.allclose(one, split, rtol=1e-4, atol=1e-5)  # batching does not change the result
    assert a.info["moge_version"] == version and a.info["units"] == ("metres" if version == 2 else "normalised (geometric-mean distance = 1)")


def test_moge_loading_errors(tiny_moge_files, tmp_path):
    ckpt = torch.load(tiny_moge_files[2], weights_only=True)
    ckpt["model"].pop(next(iter(ckpt["model"])))
    torch.save(ckpt, tmp_path / "partial.pt")
    with pytest.raises(InputError, match="does not match"):
        load_moge(str(tmp_path / "partial.pt"))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a MoGe checkpoint"):
        load_moge(str(tmp_path / "other.pt"))
    (tmp_path / "text.pt").write_text("nope")
    with pytest.raises(InputError, match="cannot be read"):
        load_moge(str(tmp_path / "text.pt"))
    with pytest.raises(WeightsNotFoundError) as err:
        estimate_depth(np.zeros((16, 32, 3), np.float32), DepthConfig(backend="moge", model="Ruicheng/moge-vitl"))
    assert "Ruicheng/moge-vitl" in str(err.value) and "huggingface-cli download" in str(err.value)


def test_prior_is_a_ground_plane_under_a_dome():
    h = 64
    d = prior_distance(h, camera_height=1.6, dome_radius=30.0)
    lat = (0.5 - (np.arange(h) + 0.5) / h) * np.pi
    # straight down: the ground at 1.6 m; far below the horizon: the plane's 1.6 / sin(-lat)
    assert d[-1].mean() == pytest.approx(1.6 / np.sin(-lat[-1]), rel=1e-3)
    below = lat < -np.radians(30)
    assert np.allclose(d[below, 0], 1.6 / np.sin(-lat[below]), rtol=0.01)
    # above the horizon: the dome; continuous and monotonic from the nadir to the horizon
    assert np.allclose(d[lat > 0], 30.0)
    col = d[::-1, 0]  # from the nadir up
    assert np.all(np.diff(col[: h // 2]) > 0) and np.all(np.diff(col) >= 0)
    ground = np.where(lat < 0, 1.6 / np.sin(np.maximum(-lat, 1e-9)), np.inf)
    assert np.all(d[:, 0] <= np.minimum(ground, 30.0) + 1e-4)  # a smooth minimum of the two surfaces
    result = estimate_depth(np.zeros((h, 2 * h, 3), np.float32), DepthConfig(backend="prior"))
    assert np.array_equal(result.distance, d) and "heuristic" in result.info["units"]


def test_auto_is_the_pipelines_to_resolve():
    # one auto rule per stage: matrix_world.pipeline.depth.choose (tests/test_choosers.py)
    with pytest.raises(InputError, match="pipeline.depth.choose"):
        estimate_depth(np.zeros((16, 32, 3), np.float32), DepthConfig(backend="auto"))


def test_file_backend(tmp_path):
    from matrix_world.io import save_npz

    h = 16
    dist = (1.0 + np.random.default_rng(0).random((h, 2 * h))).astype(np.float32)
    sky = np.zeros((h, 2 * h), bool)
    sky[:3] = True
    save_npz(tmp_path / "depth.npz", distance=dist, sky=sky)
    rgb = np.zeros((h, 2 * h, 3), np.float32)
    result = estimate_depth(rgb, DepthConfig(backend="file", path=str(tmp_path / "depth.npz")))
    assert np.array_equal(result.distance[~sky], dist[~sky]) and np.array_equal(result.sky, sky)
    assert np.allclose(result.distance[sky], 2.0 * dist[~sky].max())
    np.save(tmp_path / "depth.npy", dist)
    up = estimate_depth(np.zeros((2 * h, 4 * h, 3), np.float32), DepthConfig(backend="file", path=str(tmp_path / "depth.npy")))
    assert up.distance.shape == (2 * h, 4 * h) and np.array_equal(up.distance[::2, ::2], dist)
    np.save(tmp_path / "bad.npy", dist[:, :20])
    with pytest.raises(InputError, match="2:1"):
        estimate_depth(rgb, DepthConfig(backend="file", path=str(tmp_path / "bad.npy")))
    with pytest.raises(InputError, match="needs config.path"):
        estimate_depth(rgb, DepthConfig(backend="file"))


def test_procedural_backend_matches_the_scene():
    try:
        from matrix_world.datasets.procedural import procedural_panorama
    except ImportError:
        with pytest.raises(InputError, match="procedural"):
            estimate_depth(np.zeros((16, 32, 3), np.float32), DepthConfig(backend="procedural", prompt="a park"))
        return
    rgb, dist, sky, _ = procedural_panorama("a park", 16, 3)
    result = estimate_depth(rgb, DepthConfig(backend="procedural", prompt="a park", seed=3))
    assert np.array_equal(result.sky, sky) and np.allclose(result.distance[~sky], dist[~sky])
    with pytest.raises(InputError, match="not the procedural one"):
        estimate_depth(rgb, DepthConfig(backend="procedural", prompt="a park", seed=4))


def test_bad_panoramas():
    with pytest.raises(InputError, match="2:1"):
        estimate_depth(np.zeros((16, 40, 3), np.float32), DepthConfig(backend="prior"))
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (4104, 8208, 3))
    with pytest.raises(InputError, match="4096"):
        estimate_depth(huge, DepthConfig(backend="prior"))
    with pytest.raises(InputError, match="unknown depth backend"):
        estimate_depth(np.zeros((16, 32, 3), np.float32), DepthConfig(backend="zoedepth"))
    with pytest.raises(InputError):
        estimate_depth("/no/such/panorama.png", DepthConfig(backend="prior"))


@pytest.mark.cuda
def test_merge_on_cuda_matches_cpu():
    """The GPU path (float32 warps + conjugate gradients on the device) matches the CPU float64 path."""
    height = 64
    views = icosahedron_views(96, 100.0)
    log_d = view_log_distances(views, torch.linspace(-1, 1, 12, dtype=torch.float64))
    valid = torch.ones_like(log_d, dtype=torch.bool)
    config = MergeConfig(direct_max_pixels=2048)  # exercise CG on the finer levels
    cpu, seen_cpu, _ = merge_log_distances(log_d, valid, views, height, config)
    gpu, seen_gpu, _ = merge_log_distances(log_d.float().cuda(), valid.cuda(), views, height, config)
    assert torch.equal(seen_cpu, seen_gpu.cpu())
    assert (gpu.cpu() - cpu).abs().max() < 2e-3
