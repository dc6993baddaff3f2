"""Training the panoramic LRM (reconstruction/lrm_latents.py, lrm_objectives.py, lrm_train.py,
datasets/lrm_samples.py, scripts/train_lrm.py, benchmarks/lrm_train.py) on CPU with the tiny network.

The latent front ends (the space-to-depth stand-in's definition and frame arithmetic; a tiny random
Wan2.1 VAE saved and reloaded offline, normalised as Matrix-3D / diffusers do), the samples' ground
truth (targets rendered at the right poses, held-out frames, benchmark held-out views), the losses'
values, the branch table against autograd, stage 2's freeze, stage 1's losses falling, exact
resumption, the metrics file, the script and the benchmark's --smoke run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from matrix_world.errors import InputError
from matrix_world.reconstruction.lrm import LRMConfig, LRMOutput, PanoLRM, lrm_plucker
from matrix_world.reconstruction.lrm_latents import (
    SpaceToDepthLatents,
    cache_latents,
    load_latents,
    make_latent_encoder,
)
from matrix_world.reconstruction.lrm_objectives import (
    BRANCHES,
    LRMBatch,
    depth_targets,
    parameter_branch,
    stage1_losses,
)
from matrix_world.reconstruction.lrm_train import TrainConfig, enable_gradient_checkpointing, train
from script_helpers import ROOT, one_line_error, run_script

STAND_IN = "space_to_depth_stand_in"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """3 synthetic clips of 9 frames at 32 x 64 (datasets/build.py: scenes that render any pose)."""
    from matrix_world.datasets.build import build_dataset

    root = tmp_path_factory.mktemp("lrm_data") / "synthetic"
    build_dataset(root, 3, seed=0, frames=9, height=32, progress=False)
    return root


def _sources(dataset: Path, cache: Path, *, targets: str = "none", clip_length: int = 5, eval_views: int = 2):
    from matrix_world.datasets.lrm_samples import LRMClipSamples, SampleConfig, split_sequences

    train_seqs, eval_seqs = split_sequences(dataset, 1)
    train_src = LRMClipSamples(train_seqs, encoder_spec=STAND_IN, cache_dir=cache, config=SampleConfig(
        clip_length=clip_length, window_stride=4, targets=targets, novel_views=4))
    eval_src = LRMClipSamples(eval_seqs, encoder_spec=STAND_IN, cache_dir=cache, config=SampleConfig(
        clip_length=clip_length, targets="heldout", first_window_only=True, novel_views=eval_views))
    return train_src, eval_src


def _config(out: Path, **kw) -> TrainConfig:
    base = dict(output=out, model="tiny", steps=6, lr=3e-3, warmup_steps=2, eval_every=3, eval_crop_size=16, crop_size=16,
                crops_per_step=2, checkpoint_every=3, print_every=100, device="cpu")
    return TrainConfig(**{**base, **kw})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- latent front ends


def test_space_to_depth_stand_in_shapes_grouping_and_determinism():
    g = torch.Generator().manual_seed(0)
    enc = SpaceToDepthLatents()
    assert enc.spec == STAND_IN and make_latent_encoder(STAND_IN).spec == STAND_IN
    for frames, t in ((1, 1), (5, 2), (9, 3), (17, 5)):
        video = torch.rand(frames, 32, 64, 3, generator=g)
        latents = enc.encode(video)
        assert latents.shape == (t, 16, 4, 8) and latents.dtype == torch.float32
        assert torch.equal(latents, SpaceToDepthLatents().encode(video.clone()))  # deterministic, no parameters
        assert torch.equal(latents, enc.encode(video.permute(0, 3, 1, 2)))  # [F, 3, H, W] too
    # Wan's grouping: frame 0 alone, then frames 1-4, 5-8: changing frame 3 changes latent frame 1 only
    video = torch.rand(9, 32, 64, 3, generator=g)
    changed = video.clone()
    changed[3] = 1.0 - changed[3]
    diff = (enc.encode(changed) - enc.encode(video)).abs().amax(dim=(1, 2, 3))
    assert diff[0] == 0 and diff[1] > 0 and diff[2] == 0
    # channels 0-2: the group's block means in [-1, 1]; 3-15: luma DCT (0 on a flat block, not on an edge)
    flat = torch.full((5, 16, 32, 3), 0.25)
    flat[1:, ..., 0] = 0.75  # red in the second group
    lat = enc.encode(flat)
    assert torch.allclose(lat[0, :3], torch.tensor([-0.5, -0.5, -0.5])[:, None, None].expand(3, 2, 4))
    assert torch.allclose(lat[1, 0], torch.full((2, 4), 0.5)) and torch.allclose(lat[:, 3:], torch.zeros(2, 13, 2, 4), atol=1e-6)
    edge = torch.zeros(1, 8, 8, 3)
    edge[:, :, 4:] = 1.0  # a vertical edge through the block: only the odd horizontal frequencies (0, 1), (0, 3)
    ac = enc.encode(edge)[0, 3:, 0, 0]  # zig-zag: (0,1) (1,0) (2,0) (1,1) (0,2) (0,3) (1,2) ...
    assert 1.5 < abs(float(ac[0])) < 2.0 and 0.5 < abs(float(ac[5])) < abs(float(ac[0]))
    assert torch.allclose(ac[[1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]], torch.zeros(11), atol=1e-6)
    uint8 = (video.numpy() * 255).round().astype(np.uint8)
    assert torch.allclose(enc.encode(uint8), enc.encode(torch.from_numpy(uint8).float() / 255))
    for bad, message in ((torch.rand(4, 32, 64, 3), "4k\\+1 frames"), (torch.rand(5, 20, 40, 3), "multiples of 8")):
        with pytest.raises(InputError, match=message):
            enc.encode(bad)
    with pytest.raises(InputError, match="space_to_depth_stand_in"):
        make_latent_encoder("vae")


def test_tiny_wan_vae_latents_shape_normalisation_and_cache(tmp_path):
    from tiny_wan import tiny_wan_vae

    torch.manual_seed(0)
    vae = tiny_wan_vae().eval()
    vae.save_pretrained(str(tmp_path / "wan" / "vae"))  # a diffusers Wan folder's vae/
    video = torch.rand(5, 32, 64, 3, generator=torch.Generator().manual_seed(1))
    enc = make_latent_encoder(f"wan:{tmp_path / 'wan'}")
    latents = enc.encode(video)
    assert latents.shape == (2, 16, 4, 8) and latents.dtype == torch.float32  # T = (5 - 1) / 4 + 1
    with torch.no_grad():  # Matrix-3D / diffusers: video in [-1, 1], posterior mean, (mu - mean) / std
        mu = vae.encode((video * 2 - 1).permute(3, 0, 1, 2)[None]).latent_dist.mean[0].permute(1, 0, 2, 3)
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1)
    assert float(std.min()) > 1.1 and float(mean.abs().max()) > 0.5  # Wan2.1's statistics: a real normalisation
    assert torch.allclose(latents, (mu - mean) / std, atol=1e-5) and not torch.allclose(latents, mu, atol=0.1)
    assert torch.allclose(make_latent_encoder(f"wan:{tmp_path / 'wan' / 'vae'}").encode(video), latents, atol=1e-6)
    # the cache: one file per (content, spec), reused, read back exactly
    path = cache_latents(enc, video, tmp_path / "cache")
    stamp = path.stat().st_mtime_ns
    assert cache_latents(enc, video.clone(), tmp_path / "cache") == path and path.stat().st_mtime_ns == stamp
    assert torch.equal(load_latents(path), latents)
    other = cache_latents(SpaceToDepthLatents(), video, tmp_path / "cache")
    assert other != path and sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([path.name, other.name])
    assert cache_latents(enc, video.flip(0), tmp_path / "cache") not in (path, other)
    with pytest.raises(InputError, match="cannot load the Wan2.1 VAE .*huggingface-cli download"):
        make_latent_encoder(f"wan:{tmp_path / 'missing'}")


# --------------------------------------------------------------------------- samples and losses


def test_samples_targets_at_the_right_poses(dataset, tmp_path):
    from matrix_world.datasets.benchmark import BENCHMARK_SCENES, build_benchmark_clip
    from matrix_world.datasets.clips import read_clip
    from matrix_world.datasets.lrm_samples import LRMClipSamples, SampleConfig

    clip = dataset / "00000"
    src = LRMClipSamples([clip], encoder_spec=STAND_IN, cache_dir=tmp_path / "c1",
                         config=SampleConfig(clip_length=5, window_stride=4, targets="novel", novel_views=4))
    assert [it[2] for it in src.windows.items] == [0, 4]
    item = src.windows[1]  # the window of frames 4..8, poses relative to frame 4
    start = torch.from_numpy(read_clip(clip, [4]).c2w[0])
    again = src.render_window_poses(clip, start, item["c2w"], 32)  # the scene at the context poses = the frames
    assert (again - item["rgb"]).abs().mean() < 0.003 < (again - item["rgb"].roll(1, 0)).abs().mean()
    src.prepare(log=lambda _m: None)
    sample = src[1]
    sample.check()
    assert sample.latents.shape == (2, 16, 4, 8) and sample.rgb.shape == (5, 3, 32, 64) and sample.distance.shape == (5, 32, 64)
    assert sample.target_kind == ("interpolated", "interpolated", "interpolated", "extrapolated")
    ext = sample.target_c2w[3, :3, 3]  # 0.5 m beyond the last frame, along the motion
    last, prev = sample.c2w[-1, :3, 3], sample.c2w[-2, :3, 3]
    assert torch.allclose(ext, last + 0.5 * (last - prev) / (last - prev).norm(), atol=1e-5)
    assert torch.equal(src[1].target_rgb, sample.target_rgb)  # read from the cache

    # a clip without a scene: held-out frames of the clip (between the window's frames, and after it)
    plain = tmp_path / "plain"
    shutil.copytree(clip, plain)
    meta = json.loads((plain / "meta.json").read_text())
    (plain / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "scene_kind"}))
    held = LRMClipSamples([plain], encoder_spec=STAND_IN, cache_dir=tmp_path / "c2",
                          config=SampleConfig(clip_length=5, frame_stride=2, targets="novel", novel_views=4))
    held.prepare(log=lambda _m: None)
    s = held[0]  # window frames 0, 2, 4, 6, 8: targets the frames between them
    full = read_clip(plain)
    assert s.target_kind == ("interpolated",) * 4
    assert torch.allclose(s.target_rgb, torch.from_numpy(full.rgb[[1, 3, 5, 7]]).permute(0, 3, 1, 2), atol=1 / 255)
    assert torch.allclose(s.target_c2w, torch.from_numpy(full.c2w[[1, 3, 5, 7]]).float(), atol=1e-5)  # frame 0 = I
    after = LRMClipSamples([plain], encoder_spec=STAND_IN, cache_dir=tmp_path / "c2",
                           config=SampleConfig(clip_length=5, targets="novel", novel_views=4))
    after.prepare(log=lambda _m: None)
    s = after[0]  # window frames 0..4: the next frame is the extrapolation target
    assert s.target_kind == ("extrapolated",) and torch.allclose(s.target_c2w[0], torch.from_numpy(full.c2w[5]).float(), atol=1e-5)

    # a benchmark clip: its heldout/ views, poses in the clip frame
    build_benchmark_clip(tmp_path / "split", BENCHMARK_SCENES[0], frames=5, height=32, heldout=2, backend="cpu")
    bench = LRMClipSamples([tmp_path / "split" / "forest"], encoder_spec=STAND_IN, cache_dir=tmp_path / "c3",
                           config=SampleConfig(clip_length=5, targets="heldout", first_window_only=True))
    bench.prepare(log=lambda _m: None)
    views = read_clip(tmp_path / "split" / "forest" / "heldout")
    assert bench[0].target_kind == ("heldout", "heldout")
    assert torch.allclose(bench[0].target_c2w, torch.from_numpy(views.c2w).float(), atol=1e-5)


def test_depth_targets_and_stage1_losses_have_the_documented_values():
    d = torch.tensor([[[[2.0, 2.0, 50.0, float("inf")], [2.0, 2.0, 4.0, 4.0]]]])  # [1, 1, 2, 4]
    sky = torch.zeros_like(d, dtype=torch.bool)
    sky[..., 1, 3] = True
    inv, valid, far = depth_targets(d, sky, 30.0)
    assert inv.shape == (1, 1, 1, 2) and bool(valid.all())
    assert torch.allclose(inv[..., 0], torch.tensor(0.5)) and bool(far[..., 1]) and not bool(far[..., 0])
    # far geometry clamped to 28.5 m, sky and no-return at the far shell: mean of 1/28.5, 1/28.5, 1/4, 1/28.5
    assert torch.allclose(inv[..., 1], torch.tensor((3 / 28.5 + 1 / 4) / 4))
    _, valid_nan, _ = depth_targets(d.clone().index_fill_(-1, torch.tensor([0]), float("nan")), sky, 30.0)
    assert valid_nan.tolist() == [[[[False, True]]]]  # a NaN pixel invalidates its block

    # a prediction equal to the targets has (almost) zero loss; the loss grows with the error
    b, f, h, w = 1, 5, 16, 32
    g = torch.Generator().manual_seed(0)
    distance = 1.0 + 10 * torch.rand(b, f, h // 2, w // 2, generator=g)
    rgb = torch.rand(b, f, 3, h // 2, w // 2, generator=g)
    full_d = distance.repeat_interleave(2, -1).repeat_interleave(2, -2)
    full_rgb = rgb.repeat_interleave(2, -1).repeat_interleave(2, -2)
    raw = torch.zeros(b, f, h // 2, w // 2, 14)
    raw[..., 10:13] = ((rgb - 0.5) / 0.28209479177387814).permute(0, 1, 3, 4, 2)
    depth_raw = torch.logit(distance / 30.0)[..., None].expand(b, f, h // 2, w // 2, 3)
    batch = LRMBatch(torch.zeros(b, 2, 16, 2, 4), torch.eye(4).expand(b, f, 4, 4), full_rgb, full_d, None, [])
    exact = stage1_losses(LRMOutput(raw, depth_raw), batch)
    assert float(exact["loss_depth"]) < 1e-8 and float(exact["loss_colour"]) < 1e-5
    off = stage1_losses(LRMOutput(raw + 0.1, torch.logit(distance * 1.2 / 30.0)[..., None].expand_as(depth_raw)), batch)
    assert float(off["loss_depth"]) > 1e-3 and abs(float(off["loss_colour"]) - 0.1 * 0.28209479177387814) < 1e-5


def test_branch_table_matches_autograd_and_checkpointing_changes_nothing():
    torch.manual_seed(0)
    model = PanoLRM(LRMConfig.tiny(dropout=0.0))
    latents, c2w = torch.randn(1, 2, 16, 2, 4), torch.eye(4).repeat(5, 1, 1)
    plucker = lrm_plucker(c2w, 16, 32)
    grads = {}
    for head in ("depth_raw", "gaussians_raw"):
        model.zero_grad(set_to_none=True)
        getattr(model(latents, plucker), head).square().mean().backward()
        grads[head] = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    names = {n for n, _ in model.named_parameters()}
    branch = {n: parameter_branch(n) for n in names}
    assert grads["depth_raw"] == {n for n in names if branch[n] in ("shared", "depth")}
    assert grads["gaussians_raw"] == {n for n in names if branch[n] in ("shared", "gaussian")}
    assert "transformer" in BRANCHES["shared"] and "transformer_gs" in BRANCHES["gaussian"]
    with pytest.raises(InputError, match="belongs to no known branch"):
        parameter_branch("new_head.weight")
    # gradient checkpointing: the same loss and gradients
    def both(out: LRMOutput) -> torch.Tensor:
        return out.gaussians_raw.square().mean() + out.distance().mean()

    model.train().zero_grad(set_to_none=True)
    both(model(latents, plucker)).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    enable_gradient_checkpointing(model)
    model.zero_grad(set_to_none=True)
    both(model(latents, plucker)).backward()
    assert all(torch.allclose(p.grad, r, atol=1e-6) for p, r in zip(model.parameters(), reference))


# --------------------------------------------------------------------------- training


def test_stage1_depth_and_colour_losses_fall(dataset, tmp_path):
    train_src, _ = _sources(dataset, tmp_path / "cache")
    result = train(_config(tmp_path / "run", steps=50, lr=6e-3, warmup_steps=5, min_lr=0.3, eval_every=0,
                           checkpoint_every=1000), train_src, log=lambda _m: None)
    lines = _lines(result.metrics)
    assert [x["step"] for x in lines] == list(range(1, 51)) and result.stopped == "steps"
    for key in ("loss_depth", "loss_colour"):
        values = [x[key] for x in lines]
        assert np.mean(values[-5:]) < 0.7 * np.mean(values[:5]), (key, values[:5], values[-5:])
    assert PanoLRM.from_pretrained(result.model_dir).config == LRMConfig.tiny()


def test_time_budget_stops_and_saves(dataset, tmp_path):
    train_src, _ = _sources(dataset, tmp_path / "cache")
    result = train(_config(tmp_path / "run", steps=100_000, max_minutes=0.02, eval_every=0), train_src, log=lambda _m: None)
    assert result.stopped == "time" and 0 < result.step < 100_000
    assert len(_lines(result.metrics)) == result.step
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == f"step-{result.step:07d}"


def test_stage2_freezes_the_depth_branch_and_trains_the_gaussian_branch(dataset, tmp_path):
    torch.manual_seed(1)
    start = PanoLRM(LRMConfig.tiny())
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.05 * torch.randn_like(p))
    start.save_pretrained(tmp_path / "stage1")
    train_src, eval_src = _sources(dataset, tmp_path / "cache", targets="novel")
    logs: list[str] = []
    result = train(_config(tmp_path / "run", stage=2, init=tmp_path / "stage1", steps=4, eval_every=2), train_src, eval_src,
                   log=logs.append)
    assert any("lpips: skipped (no weights)" in m for m in logs)
    before = start.state_dict()
    after = PanoLRM.from_pretrained(result.model_dir)
    for name, value in after.state_dict().items():
        if parameter_branch(name) == "gaussian":
            assert not torch.equal(value, before[name]), f"{name} did not change"
        else:
            assert torch.equal(value, before[name]), f"{name} changed in stage 2"
    lines = _lines(result.metrics)
    assert all({"loss", "loss_mse", "loss_ssim"} <= set(x) for x in lines) and "loss_depth" not in lines[0]
    assert [x["step"] for x in lines if "heldout_psnr" in x] == [2, 4]
    sample = train_src[0]  # the predicted distances (the Gaussians' positions) are stage 1's, bit for bit
    with torch.no_grad():
        args = (sample.latents[None], lrm_plucker(sample.c2w, 32, 64))
        assert torch.equal(after.eval()(*args).distance(), start.eval()(*args).distance())


def test_resume_continues_with_identical_losses_and_metrics_fields(dataset, tmp_path):
    train_src, eval_src = _sources(dataset, tmp_path / "cache")
    full = train(_config(tmp_path / "full"), train_src, eval_src, log=lambda _m: None)
    lines = _lines(full.metrics)
    steps = [x for x in lines if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2, 3, 4, 5, 6]
    for x in steps:
        assert {"step", "stage", "loss", "loss_depth", "loss_colour", "lr", "grad_norm", "seconds", "step_seconds"} <= set(x)
        assert x["stage"] == 1 and all(np.isfinite(x[k]) for k in ("loss", "loss_depth", "loss_colour", "lr", "seconds"))
    evals = [x for x in lines if "heldout_psnr" in x]
    assert [x["step"] for x in evals] == [3, 6] and all(5 < x["heldout_psnr"] < 60 and x["heldout_views"] == 2 for x in evals)
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir()) == ["latest", "step-0000003", "step-0000006"]
    assert json.loads((tmp_path / "full" / "train_config.json").read_text())["config"]["steps"] == 6

    # a run killed after its step-3 checkpoint (with a metrics line of step 4 already written)
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-0000003", killed / "checkpoints" / "step-0000003")
    (killed / "checkpoints" / "latest").write_text("step-0000003\n")
    (killed / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines if x["step"] <= 3)
                                          + json.dumps({"step": 4, "stage": 1, "loss": -1.0}) + "\n")
    with pytest.raises(InputError, match="pass --resume"):
        train(_config(killed), train_src, eval_src, log=lambda _m: None)
    with pytest.raises(InputError, match="other settings: lr"):
        train(_config(killed, resume=True, lr=1e-3), train_src, eval_src, log=lambda _m: None)
    logs: list[str] = []
    resumed = train(_config(killed, resume=True), train_src, eval_src, log=logs.append)
    assert any("resuming" in m and "step 3" in m for m in logs) and resumed.step == 6
    again = [x for x in _lines(resumed.metrics) if "loss" in x]
    assert [x["step"] for x in again] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(steps, again):
        assert a["loss"] == b["loss"] and a["loss_depth"] == b["loss_depth"], (a, b)  # bit-identical continuation
    assert torch.equal(PanoLRM.from_pretrained(resumed.model_dir).state_dict()["linear_proj.weight"],
                       PanoLRM.from_pretrained(full.model_dir).state_dict()["linear_proj.weight"])


# --------------------------------------------------------------------------- script and benchmark


def test_train_lrm_script_help_bad_value_and_a_tiny_run(dataset, env, tmp_path):
    helptext = run_script("train_lrm.py", "--help", env=env).stdout
    for option in ("--data", "--stage", "--latent-encoder", "--max-minutes", "--resume", "--fov-range", "--mixed-precision",
                   "--gradient-checkpointing", "--eval-every", "--init", "--clip-length", "--frame-stride"):
        assert option in helptext, option
    bad = run_script("train_lrm.py", "--data", dataset, "--output", tmp_path / "bad", "--clip-length", "6", env=env, expect=2)
    assert "--clip-length" in one_line_error(bad) and "4k+1" in one_line_error(bad) and not (tmp_path / "bad").exists()
    data = tmp_path / "data"
    shutil.copytree(dataset, data, ignore=shutil.ignore_patterns(".lrm_cache"))
    out = tmp_path / "run"
    proc = run_script("train_lrm.py", "--data", data, "--output", out, "--clip-length", "5", "--steps", "4", "--eval-every", "2",
                      "--eval-crop-size", "16", "--checkpoint-every", "2", "--max-minutes", "5", env=env)
    assert f"metrics -> {out / 'metrics.jsonl'}" in proc.stdout and f"weights {out / 'model'}" in proc.stdout
    model = PanoLRM.from_pretrained(out / "model")
    assert model.config == LRMConfig.tiny()
    PanoLRM.from_pretrained(out / "checkpoints" / "step-0000004" / "model")
    assert [x["step"] for x in _lines(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert (data / ".lrm_cache").is_dir()  # the default cache, shared by later runs


def test_benchmark_smoke(env, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lrm_train.py"), "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**env, "OUT": str(tmp_path)}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "lrm_train.json").read_text())
    assert sorted({r["backend"] for r in result["rows"]}) == ["lift", "lrm", "optimize"]
    assert all(np.isfinite(r["psnr"]) for r in result["rows"]) and [s["stage"] for s in result["stages"]] == [1, 2]
    for stage in (1, 2):
        curve = _lines(tmp_path / f"lrm_train_stage{stage}_metrics.jsonl")
        assert curve and all(x["stage"] == stage for x in curve)
    assert "| clip | backend | PSNR (dB) |" in proc.stdout
