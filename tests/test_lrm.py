"""The panoramic LRM (reconstruction/lrm.py, lrm_dpt.py, lrm_gaussians.py) and its converter script.

Tiny random instances of the real network on CPU: shapes for several T and grids (the 720p
grid too), the official checkpoint layout (a fake ``{'module': {'gs_decoder1.' + k: v, ...}}``
file with the official aliases and unused tensors) and our folder round trip bit-identically,
strict loading, bad inputs, the ray / distance / raw-channel conventions, and the official
network's size from the config on the meta device. The numbers were also checked once against
Matrix-3D's own code (not vendored): equal to float rounding (~3e-6) at the full 480p shapes.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from matrix_world.cameras import invert_pose, make_pose, rotation_from_yaw_pitch
from matrix_world.equirect import direction_to_pixel, equirect_directions, pixel_grid
from matrix_world.errors import InputError
from matrix_world.gaussians import quat_to_rotmat
from matrix_world.reconstruction.lrm import (
    OFFICIAL_PREFIX,
    LRMConfig,
    LRMLoadNote,
    LRMOutput,
    PanoLRM,
    c2w_ours_to_lrm,
    lrm_plucker,
    official_layout,
    official_tensor_count,
    plucker_rays,
)
from matrix_world.reconstruction.lrm_gaussians import lrm_to_gaussians
from matrix_world.reconstruction.lrm_transformer import EncoderLayer
from script_helpers import one_line_error, read_ply, run_script

TINY = LRMConfig.tiny()


def _model(config: LRMConfig = TINY, seed: int = 0) -> PanoLRM:
    torch.manual_seed(seed)
    model = PanoLRM(config).eval()
    with torch.no_grad():  # LayerNorms and biases away from their init, so every tensor matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def model() -> PanoLRM:
    return _model()


def _trajectory(frames: int) -> torch.Tensor:
    """c2w [F, 4, 4]: turning and moving, the first pose NOT the identity."""
    poses = []
    for i in range(frames):
        rot = rotation_from_yaw_pitch(20.0 + 7.0 * i, 10.0 - 3.0 * i)
        poses.append(make_pose(rot, torch.tensor([0.5 + 0.2 * i, -0.1 * i, 1.0 - 0.3 * i], dtype=torch.float64)))
    return torch.stack(poses).float()


def _inputs(config: LRMConfig, t: int, h: int, w: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c2w = _trajectory(config.frames_for(t))
    latents = torch.randn(1, t, config.latent_channels, h, w, generator=g)
    return latents, lrm_plucker(c2w, h * config.video_scale, w * config.video_scale), c2w


def _official_file(model: PanoLRM, path: Path, *, drop: str | None = None, reshape: str | None = None,
                   extra: dict | None = None) -> Path:
    """``model`` saved as Matrix-3D saves it: {'module': {'gs_decoder1.' + name: tensor}} with the
    official aliases (the same tensor under scratch.layerN_rn), the tensors the official forward
    never reads, and keys of other modules; optionally one key dropped or misshaped."""
    ours = model.state_dict()
    state = {}
    for name, shape in official_layout(model.config).items():
        head, _, rest = name.partition(".dpt.scratch.layer")
        if name in ours:
            value = ours[name]
        elif rest[1:] == "_rn.weight":  # scratch.layerN_rn: the same tensor as scratch.layer_rn.N-1
            value = ours[f"{head}.dpt.scratch.layer_rn.{int(rest[0]) - 1}.weight"]
        else:  # encoder_layer.*, camera_layer_norm.*, refinenet4.resConfUnit1.*: never read
            value = torch.randn(shape)
        state[OFFICIAL_PREFIX + name] = value
    if drop:
        del state[OFFICIAL_PREFIX + drop]
    if reshape:
        state[OFFICIAL_PREFIX + reshape] = torch.zeros(3, 5)
    state.update({"renderer.background_color": torch.ones(3), "pipe.vae.model.conv1.weight": torch.zeros(4, 4),
                  "up_sampler.sh_mask": torch.ones(1)}, **(extra or {}))
    torch.save({"module": state, "global_steps": 500, "dp_world_size": 8}, path)
    return path


def _same(a: LRMOutput, b: LRMOutput) -> bool:
    return torch.equal(a.gaussians_raw, b.gaussians_raw) and torch.equal(a.depth_raw, b.depth_raw)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("t,h,w", [(1, 2, 4), (2, 4, 8), (3, 6, 12), (2, 6, 6), (4, 2, 2)])
def test_output_shapes_for_several_t_and_grids(model, t, h, w):
    latents, plucker, _ = _inputs(TINY, t, h, w)
    assert plucker.shape == (1, 4 * (t - 1) + 1, 8 * h, 8 * w, 6)
    with torch.no_grad():
        out = model(latents, plucker)
    frames = 4 * (t - 1) + 1
    assert out.gaussians_raw.shape == (1, frames, 4 * h, 4 * w, 14)
    assert out.depth_raw.shape == (1, frames, 4 * h, 4 * w, 3)
    assert out.distance().shape == (1, frames, 4 * h, 4 * w) and bool(((out.distance() > 0) & (out.distance() < 30)).all())
    assert torch.isfinite(out.gaussians_raw).all()


def test_720p_grid_on_a_tiny_network_and_batches(model):
    latents, plucker, _ = _inputs(TINY, 2, 90, 180)  # the 720p latent grid: 45 x 90 tokens (odd rows)
    with torch.no_grad():
        out = model(latents, plucker)
    assert out.gaussians_raw.shape == (1, 5, 360, 720, 14) and out.depth_raw.shape == (1, 5, 360, 720, 3)
    small, plucker_small, _ = _inputs(TINY, 2, 4, 8)
    with torch.no_grad():  # a batch of two gives each item's own result (the official forward takes one)
        both = model(torch.cat((small, 2 * small)), torch.cat((plucker_small, plucker_small.flip(1))))
        first = model(small, plucker_small)
        chunked = model(small, plucker_small, dpt_frames_per_chunk=1)
    assert torch.allclose(both.gaussians_raw[:1], first.gaussians_raw, atol=1e-5)
    assert torch.allclose(chunked.gaussians_raw, first.gaussians_raw, atol=1e-6)
    assert torch.allclose(chunked.depth_raw, first.depth_raw, atol=1e-6)


def test_official_network_size_and_shapes_on_meta():
    official = LRMConfig.official()
    with torch.device("meta"):
        net = PanoLRM(official)
        for h, w, rows, cols in ((60, 120, 240, 480), (90, 180, 360, 720)):  # 480p and 720p
            out = net(torch.empty(1, 21, 16, h, w), torch.empty(1, 81, 8 * h, 8 * w, 6))
            assert out.gaussians_raw.shape == (1, 81, rows, cols, 14) and out.depth_raw.shape == (1, 81, rows, cols, 3)
    ours = sum(p.numel() for p in net.parameters())
    assert ours == 403_470_976  # the tensors the official forward reads
    in_file = official_tensor_count(official)  # + the aliases and never-read tensors of the official state dict
    assert in_file == 476_167_808 and abs(in_file - 476e6) / 476e6 < 0.01
    assert len(official_layout(official)) == 257


def test_train_mode_is_differentiable(model):
    net = _model(seed=3).train()
    latents, plucker, _ = _inputs(TINY, 2, 2, 4)
    out = net(latents.requires_grad_(), plucker)
    (out.gaussians_raw.square().mean() + out.distance().mean()).backward()
    assert net.video_conv.weight.grad is not None and latents.grad is not None
    assert all(p.grad is not None for p in net.parameters())  # every tensor we keep is used


def test_encoder_layer_is_torchs_with_the_same_names():
    config = LRMConfig.tiny(dropout=0.0)
    torch.manual_seed(0)
    ref = torch.nn.TransformerEncoderLayer(config.dim, config.heads, config.ffn_dim, dropout=0.0, activation="gelu",
                                           batch_first=True)
    ours = EncoderLayer(config.dim, config.heads, config.ffn_dim, config.dropout, config.layer_norm_eps)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 37, config.dim)
    for mode in (True, False):  # train (SDPA in torch too) and eval (torch's fused fast path)
        ref.train(mode)
        ours.train(mode)
        with torch.no_grad():
            assert torch.allclose(ours(x), ref(x), atol=1e-5)


# --------------------------------------------------------------------------- loading


def test_official_layout_and_our_folder_round_trip_bit_identically(model, tmp_path):
    latents, plucker, _ = _inputs(TINY, 2, 4, 8)
    with torch.no_grad():
        expected = model(latents, plucker)
    path = _official_file(model, tmp_path / "pano_lrm_480p.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PanoLRM.from_pretrained(path, config=TINY)
    notes = [str(w.message) for w in caught if issubclass(w.category, LRMLoadNote)]
    assert len(notes) == 1 and "\n" not in notes[0] and notes[0] == loaded.load_note
    assert "ignored 3 keys outside the network (pipe.*: 1, renderer.*: 1, up_sampler.*: 1)" in notes[0]
    assert "22 official tensors the official forward never reads" in notes[0] and "folded 8 duplicates" in notes[0]
    assert not loaded.training and loaded.video_conv.weight.dtype == torch.float32
    with torch.no_grad():
        assert _same(loaded(latents, plucker), expected)
    loaded.save_pretrained(tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert meta["format"] == "matrix_world.pano_lrm/1" and LRMConfig.from_dict(meta["config"]) == TINY
    again = PanoLRM.from_pretrained(tmp_path / "ours")
    assert again.config == TINY and again.load_note == ""
    with torch.no_grad():
        assert _same(again(latents, plucker), expected)
    legacy = tmp_path / "legacy.pt"  # torch's pre-zip format (no mmap) loads too
    torch.save(torch.load(path, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LRMLoadNote)
        with torch.no_grad():
            assert _same(PanoLRM.from_pretrained(legacy, config=TINY)(latents, plucker), expected)
    half = PanoLRM.from_pretrained(tmp_path / "ours", dtype=torch.bfloat16)
    assert half.linear_proj.weight.dtype == torch.bfloat16
    with pytest.raises(InputError, match="another network"):
        PanoLRM.from_pretrained(tmp_path / "ours", config=LRMConfig.tiny(heads=4))


@pytest.mark.filterwarnings("ignore::matrix_world.reconstruction.lrm.LRMLoadNote")
def test_strict_loading_names_missing_misshaped_and_foreign_tensors(model, tmp_path):
    missing = "transformer_gs.layers.2.linear1.weight"
    with pytest.raises(InputError, match=rf"1 missing \({missing}\)") as err:
        PanoLRM.from_pretrained(_official_file(model, tmp_path / "a.pt", drop=missing), config=TINY)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"dpt_head\.dpt\.head\.0\.weight \(3, 5\) \(expected \(6, 12, 3, 3\)\)"):
        PanoLRM.from_pretrained(_official_file(model, tmp_path / "b.pt", reshape="dpt_head.dpt.head.0.weight"), config=TINY)
    with pytest.raises(InputError, match=r"unexpected \(gs_decoder1\.transformer\.layers\.4\.linear1\.weight\)"):
        PanoLRM.from_pretrained(_official_file(model, tmp_path / "c.pt", extra={
            "gs_decoder1.transformer.layers.4.linear1.weight": torch.zeros(2)}), config=TINY)
    with pytest.raises(InputError) as err:  # a checkpoint of another architecture: the official sizes
        PanoLRM.from_pretrained(tmp_path / "c.pt")
    assert "227 misshaped" in str(err.value) and "camera_conv.weight (16, 6, 4, 16, 16) (expected (1024, 6, 4, 16, 16))" in str(err.value)
    alias = "dpt_head_gs.dpt.scratch.layer_rn.2.weight"
    with pytest.raises(InputError, match="differs from its alias"):
        PanoLRM.from_pretrained(_official_file(model, tmp_path / "d.pt", extra={
            "gs_decoder1.dpt_head_gs.dpt.scratch.layer3_rn.weight": model.state_dict()[alias] + 1}), config=TINY)
    only_alias = _official_file(model, tmp_path / "e.pt", drop=alias)  # the alias alone still places it
    assert torch.equal(PanoLRM.from_pretrained(only_alias, config=TINY).state_dict()[alias], model.state_dict()[alias])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read LRM checkpoint"):
        PanoLRM.from_pretrained(tmp_path / "bad.pt")
    torch.save({"module": {"other.x": torch.zeros(1)}}, tmp_path / "f.pt")
    with pytest.raises(InputError, match="holds no PanoLRM network"):
        PanoLRM.from_pretrained(tmp_path / "f.pt")
    model.save_pretrained(tmp_path / "folder")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "folder" / "model.safetensors"))
    weights.pop("linear_proj.bias")
    save_file(weights, str(tmp_path / "folder" / "model.safetensors"))
    with pytest.raises(InputError, match=r"1 missing \(linear_proj\.bias\)"):
        PanoLRM.from_pretrained(tmp_path / "folder")


def test_bad_inputs_are_one_line_input_errors(model):
    latents, plucker, _ = _inputs(TINY, 2, 4, 8)
    cases = [
        (latents, plucker[:, :4], r"\[1, 5, 32, 64, 6\].*F = 4\(T-1\)\+1 = 5 frames"),  # T / F mismatch
        (latents[:, :, :8], plucker, "latents have 8 channels; the LRM takes 16"),
        (latents[..., :7], plucker[..., :56, :], "h, w positive multiples of 2"),
        (latents, plucker[:, :, :16], r"\[1, 5, 32, 64, 6\]"),  # H is not 8h
        (latents[0], plucker, r"latents must be a float tensor \[B, T, 16, h, w\]"),
        (latents.long(), plucker, "latents must be a float tensor"),
        (latents.clone().index_fill_(3, torch.tensor([1]), float("nan")), plucker, "latents hold 256 NaN/Inf values"),
        (latents, plucker.clone().fill_(float("inf")), "plucker rays hold .* NaN/Inf values"),
    ]
    for lat, pl, message in cases:
        with pytest.raises(InputError, match=message) as err:
            model(lat, pl)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="latent_frames|frames"):
        LRMConfig.tiny(temporal_padding=0)
    with pytest.raises(InputError, match="dim 15 must divide by heads 2"):
        LRMConfig.tiny(dim=15)


# --------------------------------------------------------------------------- conventions


def test_plucker_rays_in_our_convention_and_the_official_ray_frame():
    c2w = _trajectory(5)
    rays = plucker_rays(c2w[None], 8, 16)  # [1, F, H, W, 6] (m, d)
    dirs = torch.einsum("fij,hwj->fhwi", c2w[:, :3, :3], equirect_directions(8, 16))
    assert torch.allclose(rays[0, ..., 3:], dirs, atol=1e-6)
    assert torch.allclose(rays[0, ..., :3], torch.cross(c2w[:, None, None, :3, 3].expand_as(dirs), dirs, dim=-1), atol=1e-5)
    # the official spherical_ray_condition, restated: theta = lon, phi = -lat from the pixel centres,
    # d = (cos phi cos theta, cos phi sin theta, sin phi) rotated by the pose relative to frame 0
    px, py = pixel_grid(8, 16, dtype=torch.float64)
    theta, phi = (2 * px / 16 - 1) * math.pi, (2 * py / 8 - 1) * (math.pi / 2)
    d = torch.stack((phi.cos() * theta.cos(), phi.cos() * theta.sin(), phi.sin()), dim=-1)
    rel = invert_pose(c2w[:1].double()) @ c2w.double()
    d_world = torch.einsum("fij,hwj->fhwi", rel[:, :3, :3], d)
    o = rel[:, None, None, :3, 3].expand_as(d_world)
    official = torch.cat((torch.cross(o, d_world, dim=-1), d_world), dim=-1).float()
    assert torch.allclose(lrm_plucker(c2w, 8, 16)[0], official, atol=1e-5)
    first = c2w_ours_to_lrm(c2w[None])[0, 0]
    assert torch.allclose(first[:3, :3], torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]), atol=1e-6) and torch.allclose(first[:3, 3], torch.zeros(3), atol=1e-6)


def _raw_output(frames: int, h: int, w: int, distance: torch.Tensor, seed: int = 0) -> LRMOutput:
    """Raw outputs whose distance is ``distance`` [F, h, w] exactly (3 equal depth channels)."""
    g = torch.Generator().manual_seed(seed)
    depth = torch.logit(distance / 30.0, eps=None)[..., None].expand(frames, h, w, 3)
    return LRMOutput(gaussians_raw=torch.randn(1, frames, h, w, 14, generator=g), depth_raw=depth[None].clone())


def test_a_distance_lands_on_its_ray_in_the_world(tmp_path):
    frames, h, w = 6, 8, 16
    c2w = _trajectory(frames)  # rotations and translations
    distance = torch.rand(frames, h, w, generator=torch.Generator().manual_seed(2)) * 20 + 0.5
    out = _raw_output(frames, h, w, distance)
    g = lrm_to_gaussians(out, c2w, frame_stride=1)
    assert len(g) == frames * h * w and g.means.dtype == torch.float32
    means = g.means.reshape(frames, h, w, 3)
    w2c = invert_pose(c2w)
    cam = torch.einsum("fij,fhwj->fhwi", w2c[:, :3, :3], means) + w2c[:, None, None, :3, 3]
    assert torch.allclose(cam.norm(dim=-1), distance, rtol=1e-5)  # at d along the ray ...
    px, py = direction_to_pixel(cam.double(), h, w)
    cx, cy = pixel_grid(h, w, dtype=torch.float64)
    assert torch.allclose(px, cx.expand_as(px), atol=1e-4) and torch.allclose(py, cy.expand_as(py), atol=1e-4)  # ... of its pixel
    # every k-th frame, in order: frames 0, 3 of 6
    sub = lrm_to_gaussians(out, c2w[None], frame_stride=3)
    assert len(sub) == 2 * h * w and torch.equal(sub.means.reshape(2, h, w, 3), means[::3])
    with pytest.raises(InputError, match=r"c2w must be \[6, 4, 4\]"):
        lrm_to_gaussians(out, c2w[:5])
    with pytest.raises(InputError, match="rigid"):
        lrm_to_gaussians(out, c2w * 2)


def test_raw_channels_become_our_fields_and_never_a_linear_opacity(tmp_path):
    frames, h, w = 3, 4, 8
    c2w = _trajectory(frames)
    distance = torch.full((frames, h, w), 4.0)
    out = _raw_output(frames, h, w, distance, seed=5)
    raw = out.gaussians_raw[0]
    g = lrm_to_gaussians(out, c2w, frame_stride=1)
    flat = raw.reshape(-1, 14)
    assert torch.equal(g.opacity_logits, flat[:, 13])  # the raw value is the logit: opacity = sigmoid(raw)
    assert torch.equal(g.sh_dc[:, 0], flat[:, 10:13])
    sigma = (0.5 + 24.5 * torch.sigmoid(flat[:, 3:6])) * 4.0 * 0.04 * (1 / w + 1 / h)
    assert torch.allclose(g.log_scales, sigma.log(), atol=1e-5)
    xyzw = flat[:, 6:10] / flat[:, 6:10].norm(dim=-1, keepdim=True)
    cam_rot = quat_to_rotmat(torch.cat((xyzw[:, 3:], xyzw[:, :3]), dim=-1))  # (x, y, z, w) -> ours (w, x, y, z)
    world = c2w[:, None, :3, :3].expand(frames, h * w, 3, 3).reshape(-1, 3, 3) @ cam_rot
    assert torch.allclose(quat_to_rotmat(g.quats), world, atol=1e-5)
    # opacity pruning keeps exactly those at or above the threshold
    kept = lrm_to_gaussians(out, c2w, frame_stride=1, min_opacity=0.5)
    assert len(kept) == int((flat[:, 13] >= 0).sum()) and bool((kept.opacities >= 0.5).all())
    # the .ply stores the logits, not Matrix-3D's sigmoid values
    from matrix_world.splat_io import save_splats

    save_splats(tmp_path / "lrm.ply", g)
    names, values = read_ply(tmp_path / "lrm.ply")
    opacity = torch.from_numpy(values[:, names.index("opacity")].copy())
    assert torch.allclose(opacity, flat[:, 13], atol=1e-6) and bool((opacity < 0).any())


# --------------------------------------------------------------------------- the converter script


def test_convert_matrix3d_lrm_script(env, model, tmp_path):
    ckpt = _official_file(model, tmp_path / "pano_lrm_480p.pt")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({k: v for k, v in TINY.to_dict().items() if v != LRMConfig.official().to_dict()[k]}))
    proc = run_script("convert_matrix3d_lrm.py", ckpt, tmp_path / "out", "--config", config, "--dtype", "float32", env=env)
    assert "wrote" in proc.stdout and "note: " in proc.stderr and "ignored 3 keys outside the network" in proc.stderr
    converted = PanoLRM.from_pretrained(tmp_path / "out")
    latents, plucker, _ = _inputs(TINY, 2, 2, 4)
    with torch.no_grad():
        assert _same(converted(latents, plucker), model(latents, plucker))
    # incomplete checkpoint: one line, exit 2, nothing written
    bad = _official_file(model, tmp_path / "bad.pt", drop="deconv3d_sh.weight")
    proc = run_script("convert_matrix3d_lrm.py", bad, tmp_path / "never", "--config", config, env=env, expect=2)
    assert "deconv3d_sh.weight" in one_line_error(proc) and not (tmp_path / "never").exists()
    help_text = run_script("convert_matrix3d_lrm.py", "--help", env=env).stdout
    assert all(option in help_text for option in ("--dtype", "--config", "--overwrite", "CHECKPOINT", "OUT_DIR"))


def test_convert_matrix3d_lrm_refusals(model, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import convert_matrix3d_lrm as script
    ckpt = _official_file(model, tmp_path / "tiny.pt")
    # the official network by default: a tiny checkpoint is another architecture
    assert script.main([str(ckpt), str(tmp_path / "o1")]) == 2 and not (tmp_path / "o1").exists()
    assert "misshaped" in capsys.readouterr().err
    (tmp_path / "trunc.pt").write_bytes(ckpt.read_bytes()[:1000])
    assert script.main([str(tmp_path / "trunc.pt"), str(tmp_path / "o2")]) == 2 and not (tmp_path / "o2").exists()
    model.save_pretrained(tmp_path / "o3")
    assert script.main([str(ckpt), str(tmp_path / "o3")]) == 2
    assert "already holds a converted checkpoint" in capsys.readouterr().err
    (tmp_path / "c.json").write_text('{"dim": "x"}')
    assert script.main([str(ckpt), str(tmp_path / "o4"), "--config", str(tmp_path / "c.json")]) == 2
