"""Wan LoRA training (scripts/train_video_lora.py, generation/train_video_lora.py) on the tiny random Wan:
a few steps through the script on a tiny synthetic dataset, the saved LoRA in the video stage, the
training condition == the inference condition bit-exactly, resume, the objective, one-line errors,
--help, the GPU benchmark's --smoke."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from script_helpers import ROOT, capture_help, expected_arguments, help_rows, load_script, run_script, without_hint

FRAMES, H = 9, 32  # latent 3 x 4 x 8
TINY = ["--tiny", "--height", str(H), "--frames", str(FRAMES)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 synthetic clips of 9 frames at 32 x 64, and a 4th copy of clip 0 without distance.npz."""
    from matrix_world.datasets.build import build_dataset

    root = tmp_path_factory.mktemp("clips")
    build_dataset(root, 3, seed=0, frames=FRAMES, height=H, backend="cpu", progress=False)
    shutil.copytree(root / "00000", root / "00003")
    (root / "00003" / "distance.npz").unlink()
    return root


@pytest.fixture(scope="module")
def pairs(dataset):
    from matrix_world.datasets.pairs import depth_for_clips, open_training_pairs

    depth, _ = depth_for_clips("prior")
    return open_training_pairs(dataset, frames=FRAMES, height=H, depth=depth)


@pytest.fixture(scope="module")
def script_run(dataset, tmp_path_factory):
    """``train_video_lora.py --tiny`` for 4 steps (checkpoints and validation videos every 2, cache on)."""
    from script_helpers import script_env

    out = tmp_path_factory.mktemp("run") / "lora_run"
    env = script_env(tmp_path_factory)
    proc = run_script("train_video_lora.py", "--data", dataset, "--out", out, "--steps", 4, *TINY, "--validation-every", 2,
                      "--validation-steps", 2, "--checkpoint-every", 2, "--learning-rate", 1e-3, "--cache", env=env)
    return out, proc


def _config(out, **kw):
    from matrix_world.generation.train_video_lora import VideoLoraTrainConfig

    base = dict(out=str(out), steps=4, tiny=True, height=H, frames=FRAMES, rank=4, learning_rate=1e-3,
                checkpoint_every=2, validation_every=0)
    return VideoLoraTrainConfig(**{**base, **kw})


def test_script_trains_the_tiny_wan_and_writes_its_files(script_run, pairs):
    from matrix_world.io import read_image, video_length

    out, proc = script_run
    assert f"-> {out / 'lora.safetensors'}" in proc.stdout and "--wan-model" in proc.stdout
    assert "4 training window(s) of 9 frames at 32x64" in proc.stderr
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert all({"step", "loss", "lr", "seconds"} <= set(m) and np.isfinite(m["loss"]) and m["lr"] == 1e-3 for m in lines)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert {p.name for p in (out / "checkpoints" / "step-00000004").iterdir()} == {
        "lora.safetensors", "adapter.safetensors", "optimizer.pt", "rng-rank0.pt", "meta.json"}
    for step in (2, 4):
        video = out / "validation" / f"step-{step:08d}.mp4"
        assert video_length(video) == FRAMES
        sheet = read_image(video.with_suffix(".png"))
        assert sheet.shape == (3 * H, 3 * 2 * H, 3)  # rows: first / middle / last frame; scaffold | generated | truth
    config = json.loads((out / "train_config.json").read_text())
    assert config["rank"] == 16 and config["data"]["windows"] == 4 and config["data"]["frame_stride"] == 1
    assert len(list((out / "cache").rglob("*.safetensors"))) == 4  # 4 steps of batch 1 over 4 windows: each encoded once


def test_saved_lora_loads_in_the_video_stage_equals_training_and_changes_the_output(script_run, pairs):
    from safetensors.torch import load_file

    from matrix_world.generation.train_video_lora import build_training_pipeline
    from matrix_world.generation.video import VideoConfig, generate_video, load_video_pipeline
    from matrix_world.generation.wan_lora_training import MATRIX3D_LORA_TARGETS, add_lora, load_lora_parameters

    out, _ = script_run
    item = pairs[1]
    frames = {}
    for lora in (None, str(out / "lora.safetensors")):
        cfg = VideoConfig(backend="wan", height=H, model=str(out / "tiny_base"), lora=lora, dtype="float32",
                          num_inference_steps=2, seed=1)
        pipe, info = load_video_pipeline(cfg, "cpu", num_frames=FRAMES)
        if lora:
            assert info["lora"]["modules"] == 2 * len(MATRIX3D_LORA_TARGETS) and info["lora"]["rank"] == 16
            stage_transformer = pipe.transformer
        frames[lora] = generate_video(cfg, scaffold_rgb=item["scaffold"].permute(0, 2, 3, 1).numpy(),
                                      scaffold_mask=item["mask"].numpy(), prompt=item["prompt"], c2w=item["c2w"].numpy(),
                                      pipeline=pipe).frames
    assert np.abs(frames[None] - frames[str(out / "lora.safetensors")]).max() > 1e-4  # the LoRA changes the video

    # the fused file in the stage == the trained (unfused) peft model of the run's last checkpoint
    trained, _ = build_training_pipeline(_config(out), torch.device("cpu"), torch.float32)
    add_lora(trained.transformer, rank=16, alpha=None, targets=MATRIX3D_LORA_TARGETS, seed=0)
    load_lora_parameters(trained.transformer, load_file(str(out / "checkpoints" / "step-00000004" / "adapter.safetensors")))
    g = torch.Generator().manual_seed(0)
    kw = {"hidden_states": torch.randn(1, 36, 3, 4, 8, generator=g), "timestep": torch.tensor([700.0]),
          "encoder_hidden_states": torch.randn(1, 512, 32, generator=g), "encoder_hidden_states_image": torch.randn(1, 17, 8, generator=g)}
    with torch.no_grad():
        torch.testing.assert_close(stage_transformer(**kw, return_dict=False)[0], trained.transformer(**kw, return_dict=False)[0],
                                   rtol=1e-5, atol=1e-6)


def test_lora_scale_alpha_over_rank_is_folded_into_the_saved_file():
    from matrix_world.generation.wan_lora import load_lora
    from matrix_world.generation.wan_lora_training import (
        MATRIX3D_LORA_TARGETS,
        add_lora,
        inference_lora_state,
        lora_parameters,
    )
    from tiny_wan import load_tiny_pipeline

    trained, stage = load_tiny_pipeline(), load_tiny_pipeline()
    names = add_lora(trained.transformer, rank=4, alpha=10.0, targets=MATRIX3D_LORA_TARGETS, seed=0)
    assert len(names) == 20 and all(n.split(".", 2)[2] in MATRIX3D_LORA_TARGETS for n in names)
    with torch.no_grad():
        for name, p in trained.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    load_lora(stage, inference_lora_state(lora_parameters(trained.transformer), rank=4, alpha=10.0), fuse=False)
    g = torch.Generator().manual_seed(0)
    kw = {"hidden_states": torch.randn(1, 36, 2, 4, 8, generator=g), "timestep": torch.tensor([300.0]),
          "encoder_hidden_states": torch.randn(1, 512, 32, generator=g), "encoder_hidden_states_image": torch.randn(1, 17, 8, generator=g)}
    with torch.no_grad():
        torch.testing.assert_close(stage.transformer(**kw, return_dict=False)[0], trained.transformer(**kw, return_dict=False)[0],
                                   rtol=1e-5, atol=1e-6)


def test_training_condition_equals_the_inference_condition_bit_exactly(pairs):
    from matrix_world.generation.train_video_lora import encode_training_item
    from matrix_world.generation.video import VideoConfig, generate_video
    from matrix_world.generation.wan_pipeline import PROMPT_SUFFIX
    from tiny_wan import load_tiny_pipeline

    pipe = load_tiny_pipeline()
    pipe.use_flow_matching(5.0)
    item = pairs[2]
    trained = encode_training_item(pipe, item, prompt_suffix=PROMPT_SUFFIX, device="cpu", dtype=torch.float32)
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append({k: v.clone() for k, v in kw.items()
                                                                                     if isinstance(v, torch.Tensor)}), with_kwargs=True)
    scaffold_u8 = np.round(item["scaffold"].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)  # as scaffold.npz stores it
    generate_video(VideoConfig(backend="wan", height=H, lora=None, num_inference_steps=1, dtype="float32"),
                   scaffold_rgb=scaffold_u8, scaffold_mask=item["mask"].numpy(), prompt=item["prompt"],
                   c2w=item["c2w"].numpy(), pipeline=pipe)
    hook.remove()
    cond = seen[0]  # the conditional pass of the first step
    assert torch.equal(cond["hidden_states"][0, 16:], trained["condition"])
    assert torch.equal(cond["encoder_hidden_states"][0], trained["prompt_embeds"])
    assert torch.equal(cond["encoder_hidden_states_image"][0], trained["image_embeds"])
    # the target's latents and the condition's scaffold latent are the same normalised encoding
    full = dict(item, scaffold=item["video"], mask=torch.ones_like(item["mask"]))
    encoded = encode_training_item(pipe, full, prompt_suffix="", device="cpu", dtype=torch.float32)
    assert torch.equal(encoded["condition"][4:], encoded["latents"]) and torch.equal(encoded["latents"], trained["latents"])


def test_resume_continues_the_same_loss_sequence(pairs, tmp_path):
    from safetensors.torch import load_file

    from matrix_world.generation.train_video_lora import train_video_lora

    straight = train_video_lora(_config(tmp_path / "straight"), pairs, progress=False)
    first = train_video_lora(_config(tmp_path / "resumed", steps=2), pairs, progress=False)
    second = train_video_lora(_config(tmp_path / "resumed", resume=True), pairs, progress=False)
    assert first.losses + second.losses == straight.losses and len(set(straight.losses)) == 4
    assert second.info["resumed_from"].endswith("step-00000002")
    a, b = load_file(str(straight.lora)), load_file(str(second.lora))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_objective_velocity_target_and_finetrainers_sigmas():
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

    from matrix_world.generation.wan_lora_training import flow_matching_loss, loss_weights, sample_sigmas, training_sigmas

    grid = training_sigmas(5.0)
    assert torch.equal(grid, FlowMatchEulerDiscreteScheduler(shift=5.0).sigmas.float()) and len(grid) == 1000
    u = torch.rand(6, generator=torch.Generator().manual_seed(3))
    drawn = sample_sigmas(6, sigmas=grid, generator=torch.Generator().manual_seed(3))
    assert torch.equal(drawn, grid[(u * 1000).long()])  # finetrainers: sigmas[(u * num_train_timesteps).long()]
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 16, 3, 4, 8, generator=g), torch.randn(2, 16, 3, 4, 8, generator=g)
    seen = {}

    def velocity(**kw):  # a perfect model: reads x_t and sigma back from its input
        seen.update(kw)
        return (noise - latents,)

    common = dict(latents=latents, condition=torch.zeros(2, 20, 3, 4, 8), prompt_embeds=torch.zeros(2, 512, 32),
                  image_embeds=torch.zeros(2, 17, 8), sigmas=drawn[:2], noise=noise)
    assert float(flow_matching_loss(velocity, **common)) == 0.0
    s = drawn[:2].view(-1, 1, 1, 1, 1)
    assert torch.equal(seen["hidden_states"][:, :16], (1 - s) * latents + s * noise)
    assert torch.equal(seen["timestep"], drawn[:2] * 1000)
    zero = flow_matching_loss(lambda **kw: (torch.zeros_like(latents),), **common)
    torch.testing.assert_close(zero, (noise - latents).pow(2).mean())
    w = loss_weights(grid, "diffsynth", grid=grid)
    assert abs(float(w.mean()) - 1.0) < 1e-5 and float(w.min()) == 0.0


def test_depth_backend_gives_frame0_distance_to_clips_without_it(dataset, pairs):
    from matrix_world.datasets.pairs import depth_for_clips, open_training_pairs
    from matrix_world.errors import InputError

    assert depth_for_clips("auto", device="cpu")[0].backend == "prior"  # no GPU / no MoGe weights here
    without = next(i for i in range(len(pairs)) if pairs.clips.items[i][0].name == "00003")
    item = pairs[without]
    assert item["mask"][0].all() and 0 < item["mask"][1:].float().mean() < 1
    refusing = open_training_pairs(dataset, frames=FRAMES, height=H, depth=None)
    with pytest.raises(InputError, match="has no distance"):
        refusing[without]


def _errors():
    return [  # (argv after --data/--out, words of the one-line error)
        (["--steps", "2", *TINY, "--frames", "10"], ["4k+1", "10 frames"]),
        (["--steps", "2", *TINY[:3], "--frames", "81"], ["no clip", "long enough", "81 frames", "the longest has 9"]),
        (["--steps", "2", *TINY, "--lora-targets", "attn1.to_q,attn9.to_x"], ["attn9.to_x", "match no Linear", "attn1.to_q",
                                                                               "ffn.net.0.proj"]),
        (["--steps", "0", *TINY], ["--steps", "positive integer"]),
        (["--steps", "2", *TINY, "--timestep-sampling", "beta"], ["--timestep-sampling", "uniform, logit_normal, mode"]),
    ]


@pytest.mark.parametrize("argv,words", _errors(), ids=["frames-not-4k+1", "no-clip-long-enough", "lora-target-matches-nothing",
                                                        "steps-0", "unknown-timestep-sampling"])
def test_bad_inputs_are_one_line_errors(argv, words, dataset, tmp_path, capsys):
    from matrix_world.app.cli import run_main

    module = load_script(ROOT / "scripts" / "train_video_lora.py", "train_video_lora_script")
    assert run_main(module.main, ["--data", str(dataset), "--out", str(tmp_path / "out"), *argv]) == 2
    assert not (tmp_path / "out").exists()  # refused before anything is written
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "Traceback" not in err, err
    assert all(w in error[0] for w in words), error[0]


def test_bad_folders_and_reuse_are_one_line_errors(dataset, script_run, tmp_path, capsys):
    from matrix_world.app.cli import run_main

    module = load_script(ROOT / "scripts" / "train_video_lora.py", "train_video_lora_script")
    (tmp_path / "empty").mkdir()
    out, _ = script_run
    cases = [
        (["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], ["does not exist"]),
        (["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], ["is empty"]),
        (["--data", str(dataset), "--out", str(out)], ["already holds a training run", "--resume"]),
        (["--data", str(dataset), "--out", str(out), "--resume", "--rank", "8", "--learning-rate", "1e-3"],
         ["--resume", "rank differ", "rank=16"]),
        (["--data", str(dataset), "--out", str(tmp_path / "new"), "--resume"], ["--resume", "no training run"]),
        (["--data", str(dataset), "--out", str(out), "--resume", "--learning-rate", "1e-3", "--rank", "16"],
         ["--resume", "at step 4 already", "raise --steps"]),
    ]
    for argv, words in cases:
        assert run_main(module.main, [*argv, "--steps", "4", *TINY]) == 2, argv
        err = capsys.readouterr().err
        error = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(error) == 1 and all(w in error[0] for w in words), (argv, err)
    assert not (tmp_path / "o").exists() and not (tmp_path / "new").exists()


def test_out_of_memory_names_the_next_lever(pairs, tmp_path, monkeypatch):
    import matrix_world.generation.train_video_lora as training
    from matrix_world.generation.wan_lora_training import TrainingOutOfMemoryError, oom_message

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(training, "flow_matching_loss", out_of_memory)
    with pytest.raises(TrainingOutOfMemoryError, match="training step 1 .*next lever: train on fewer frames"):
        training.train_video_lora(_config(tmp_path / "oom", frames=81, height=16), pairs, progress=False)
    levers = [oom_message(what="x", gradient_checkpointing=False, batch_size=2, frames=81, fsdp=False, processes=1),
              oom_message(what="x", gradient_checkpointing=True, batch_size=2, frames=81, fsdp=False, processes=1),
              oom_message(what="x", gradient_checkpointing=True, batch_size=1, frames=33, fsdp=False, processes=1),
              oom_message(what="x", gradient_checkpointing=True, batch_size=1, frames=33, fsdp=True, processes=2)]
    for message, word in zip(levers, ["gradient checkpointing", "--batch-size", "configs/accelerate_fsdp_wan14b.yaml",
                                      "more GPUs"]):
        assert word in message and "\n" not in message


def test_help_documents_every_option(monkeypatch):
    module = load_script(ROOT / "scripts" / "train_video_lora.py", "train_video_lora_help")
    text, parsed, code = capture_help(module, monkeypatch)
    assert code in (0, None)
    rows = {inv: without_hint(desc) for _, inv, desc in help_rows(text)}
    fields = expected_arguments(parsed[0])
    assert len(fields) >= 40
    for field, (spellings, _) in fields.items():
        row = next((r for r in rows if set(spellings) & set(r.replace(",", " ").split())), None)
        assert row is not None and len(rows[row]) >= 8, f"{field} is not documented in --help:\n{text}"


def test_benchmark_smoke_runs_both_parts_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_video.py"), "--smoke"], cwd=ROOT / "benchmarks",
                          capture_output=True, text=True, timeout=240, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "train_video.json").read_text())
    a, b = results["full_size_lora_step"], results["small_from_scratch"]
    assert a["seconds_per_step"] > 0 and a["smoke"] and np.isfinite(a["losses"]).all()
    assert b["steps"] >= 2 and b["heldout_clips"] >= 1 and {"wan_small", "fill"} <= set(b["psnr_unknown_db"])
    assert (tmp_path / "train_video_loss.png").is_file() and (tmp_path / "train_video_loss.json").is_file()
    assert "PSNR" in proc.stdout


def test_clips_of_other_sizes_are_resized_to_the_training_resolution(tmp_path):
    from matrix_world.datasets.build import build_dataset
    from matrix_world.datasets.pairs import open_training_pairs

    build_dataset(tmp_path / "a", 1, seed=0, frames=FRAMES, height=H, backend="cpu", progress=False)
    build_dataset(tmp_path / "b", 1, seed=1, frames=FRAMES, height=48, backend="cpu", progress=False)
    (tmp_path / "b" / "00000").rename(tmp_path / "a" / "00001")
    data = open_training_pairs(tmp_path / "a", frames=FRAMES, height=H)
    shapes = {tuple(data[i][k].shape) for i in range(2) for k in ("video", "scaffold")}
    assert shapes == {(FRAMES, 3, H, 2 * H)} and data[1]["mask"].shape == (FRAMES, H, 2 * H)


def test_two_processes_ddp_on_cpu(dataset, tmp_path):
    """torchrun (what accelerate launch starts) with 2 CPU processes (gloo): DDP on the LoRA, one RNG state per process."""
    from script_helpers import SCRIPTS

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(SCRIPTS / "train_video_lora.py"), "--data", str(dataset), "--out", str(out), "--steps", "2",
                           *TINY, "--validation-every", "0", "--checkpoint-every", "2"],
                          capture_output=True, text=True, timeout=240, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained to step 2") == 1  # printed by the main process only
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["distributed"].endswith("MULTI_CPU") and np.isfinite(summary["losses"]).all()
    assert {p.name for p in (out / "checkpoints" / "step-00000002").glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
