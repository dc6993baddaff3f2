"""The panorama LoRA training (generation/train_pano_lora.py, scripts/train_pano_lora.py) with the
tiny random FLUX on a CPU: the script end to end, the LoRA in the panorama stage, bit-exact
resume, the objective's wiring, the data rules, one-line errors, --help."""

import json
import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from matrix_world.app.cli import run_main
from matrix_world.errors import InputError
from matrix_world.io import read_image, to_uint8, write_image

from script_helpers import (ROOT, SCRIPTS, capture_help, expected_arguments, help_rows, load_script, run_script,
                            without_hint)

STEPS = 4


def _panorama(h: int, seed: int) -> np.ndarray:
    """A smooth, longitude-periodic 2:1 test image [h, 2h, 3] float32."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0 : 2 * h] / h
    channels = [0.5 + 0.4 * np.sin(np.pi * x * (k + 1) + rng.uniform(0, 6)) * np.cos(np.pi * y * rng.uniform(0.5, 2))
                for k in range(3)]
    return np.stack(channels, -1).astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 panoramas of 3 sizes (two buckets with --heights 32 64), one without a caption."""
    folder = tmp_path_factory.mktemp("pano_data")
    for i, (h, caption) in enumerate([(64, "a sandy beach"), (64, "a snowy forest"), (48, "a quiet harbour"), (32, None)]):
        write_image(folder / f"pano{i}.png", _panorama(h, i))
        if caption:
            (folder / f"pano{i}.txt").write_text(caption + "\n")
    return folder


TINY = ["--tiny", "--heights", "32", "64", "--rank", "4", "--lora-alpha", "8", "--learning-rate", "1e-2"]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """The script as a user runs it: a few --tiny steps, checkpoints and validations every 2."""
    from script_helpers import script_env

    out = tmp_path_factory.mktemp("lora_run") / "out"
    env = script_env(tmp_path_factory)
    proc = run_script("train_pano_lora.py", "--data", data, "--out", out, "--steps", STEPS, *TINY,
                      "--checkpoint-every", 2, "--validation-every", 2, env=env)
    return out, proc


def test_the_script_trains_and_writes_the_lora_checkpoints_metrics_and_validations(trained):
    out, proc = trained
    assert "warning: 1 of 4 panoramas have no caption" in proc.stderr  # missing captions: allowed, counted
    assert "4 panoramas (images)" in proc.stderr and "2 at 64x32, 2 at 128x64" in proc.stderr  # the bucket rule
    assert f"--flux-lora {out}" in proc.stderr
    # exactly one .safetensors at the top: the folder is a --flux-lora LoRA
    assert [p.name for p in out.glob("*.safetensors")] == ["pytorch_lora_weights.safetensors"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(set(r) == {"step", "loss", "lr", "seconds", "height"} for r in rows)
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 and r["lr"] == 1e-2 and r["seconds"] > 0 for r in rows)
    assert {r["height"] for r in rows} <= {32, 64}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    step4 = out / "checkpoints" / "step_000004"
    assert {p.name for p in step4.iterdir()} == {"pytorch_lora_weights.safetensors", "training_state.pt",
                                                 "rng_rank0.pt", "state.json"}
    assert (step4 / "pytorch_lora_weights.safetensors").read_bytes() == (out / "pytorch_lora_weights.safetensors").read_bytes()
    for step in (2, 4):  # validation panoramas at the largest bucket
        png = read_image(out / "validation" / f"step_{step:06d}.png")
        assert png.shape == (64, 128, 3) and png.std() > 0.01
    record = json.loads((out / "training_config.json").read_text())
    assert record["config"]["rank"] == 4 and record["identity"]["lora_alpha"] == 8.0


def test_the_lora_loads_in_the_panorama_stage_and_matches_the_validation(trained):
    """--flux-lora OUT: the stage's loader reads it (alpha 8 != rank 4: the header's LoraConfig
    is honoured), it changes the panorama, and it reproduces the training's own validation PNG."""
    from matrix_world.generation.panorama import PanoramaConfig, generate_with_pipeline, load_flux_pipeline, unload_lora

    out, _ = trained
    config = PanoramaConfig(model=str(out / "tiny_flux"), lora=str(out), height=64, steps=2, max_sequence_length=128)
    pipe, info = load_flux_pipeline(config, "cpu")
    assert info["lora"] == str(out / "pytorch_lora_weights.safetensors")
    with_lora, _ = generate_with_pipeline(pipe, config, prompt="a sandy beach", device="cpu")
    unload_lora(pipe)
    base, _ = generate_with_pipeline(pipe, config, prompt="a sandy beach", device="cpu")
    assert np.abs(with_lora - base).mean() > 5e-3
    validation = read_image(out / "validation" / f"step_{STEPS:06d}.png")  # prompt: the first caption
    assert np.abs(to_uint8(with_lora).astype(int) - to_uint8(validation).astype(int)).max() <= 1


def _config(data, out, **kw):
    from matrix_world.generation.train_pano_lora import PanoLoraTrainConfig

    base = dict(data=str(data), out=str(out), steps=STEPS, tiny=True, heights=(32, 64), rank=4, lora_alpha=8.0,
                learning_rate=1e-2, checkpoint_every=2, validation_every=0, device="cpu")
    return PanoLoraTrainConfig(**{**base, **kw})


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_the_same_loss_sequence_bit_exactly(data, tmp_path):
    from safetensors.torch import load_file

    from matrix_world.generation.train_pano_lora import train

    straight = train(_config(data, tmp_path / "a"), say=lambda m: None)
    assert straight.resumed_from == 0 and len(straight.losses) == STEPS
    # a run that died after step 3 (its metrics written, its checkpoint not) ...
    train(_config(data, tmp_path / "b", steps=3), say=lambda m: None)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_000003")
    assert len(_losses(tmp_path / "b")) == 3
    # ... rerun: resumes from step 2, computes steps 3 and 4 again
    notes = []
    resumed = train(_config(data, tmp_path / "b"), say=notes.append)
    assert resumed.resumed_from == 2 and any("resumed from" in n for n in notes)
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a") == straight.losses  # bit for bit
    a = load_file(str(tmp_path / "a" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # another training in the same folder is refused; done is done
    with pytest.raises(InputError, match="other options"):
        train(_config(data, tmp_path / "b", rank=8), say=lambda m: None)
    again = train(_config(data, tmp_path / "b"), say=notes.append)
    assert again.losses == [] and "already trained" in notes[-1]


def test_flow_matching_objective_is_diffusers_one():
    """The transformer sees x_t = (1 - s) x + s n packed, timestep t / 1000 = s (FLUX.1-dev's
    unshifted training sigmas), the guidance vector; the target is the velocity n - x."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from matrix_world.generation.train_pano_lora import flow_matching_loss

    seen = {}

    def transformer(**kw):
        seen.update(kw)
        return (torch.zeros_like(kw["hidden_states"]),)

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    latents = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(1))
    embeds, pooled, ids = torch.zeros(2, 3, 8), torch.zeros(2, 8), torch.zeros(3, 3)
    loss = flow_matching_loss(transformer, latents, prompt_embeds=embeds, pooled_prompt_embeds=pooled, text_ids=ids,
                              scheduler=scheduler, guidance=3.5, generator=torch.Generator().manual_seed(7),
                              vae_scale_factor=8)
    g = torch.Generator().manual_seed(7)  # the same draws in the same order: noise, then u (uniform)
    noise = torch.randn(latents.shape, generator=g)
    index = (torch.rand(2, generator=g) * 1000).long()
    sigma = 1.0 - index.float() / 1000  # timesteps 1000 ... 1, unshifted under dynamic shifting
    assert torch.allclose(seen["timestep"], sigma) and torch.equal(seen["guidance"], torch.full((2,), 3.5))
    s = sigma.reshape(2, 1, 1, 1)
    expected_in = FluxPipeline._pack_latents((1 - s) * latents + s * noise, 2, 4, 4, 6)
    assert torch.allclose(seen["hidden_states"], expected_in, atol=1e-6)
    assert seen["img_ids"].shape == (2 * 3, 3) and seen["encoder_hidden_states"] is embeds
    assert torch.allclose(loss, ((noise - latents) ** 2).mean(), atol=1e-6)  # zero prediction: |v|^2, weighting 1


def test_buckets_captions_and_circular_shifts(data, tmp_path):
    from matrix_world.generation.pano_lora_data import batch_at, load_batch, scan_dataset

    ds = scan_dataset(data, (32, 64))
    assert ds.layout == "images" and ds.missing_captions == 1
    assert [s.bucket for s in ds.samples] == [64, 64, 32, 32]  # 48 rows -> the 32 bucket (never upscaled)
    assert [s.caption for s in ds.samples] == ["a sandy beach", "a snowy forest", "a quiet harbour", ""]
    epoch = [batch_at(ds, k, 2, seed=0) for k in range(ds.batches_per_epoch(2))]
    assert sorted(i for b in epoch for i in b) == [0, 1, 2, 3] and all(len({ds.samples[i].bucket for i in b}) == 1 for b in epoch)
    assert epoch == [batch_at(ds, k, 2, seed=0) for k in range(len(epoch))]  # deterministic
    g = torch.Generator().manual_seed(3)
    rolled, shifts = load_batch(ds, [0], roll=True, generator=g)
    plain, zero = load_batch(ds, [0], roll=False, generator=g)
    assert zero == [0] and 0 < shifts[0] < 128 and rolled.shape == (1, 3, 64, 128)
    assert torch.equal(rolled, torch.roll(plain, shifts[0], dims=-1))  # a longitude shift, nothing else
    assert plain.min() >= -1 and plain.max() <= 1
    # a synthetic dataset: frame 0 of each clip, prompt.txt
    from matrix_world.datasets.clips import write_clip

    clips = tmp_path / "clips"
    for i in range(2):
        frames = (np.stack([_panorama(32, i), _panorama(32, i + 9)]) * 255).astype(np.uint8)
        write_clip(clips / f"{i:05d}", frames, None, np.stack([np.eye(4)] * 2), f"scene {i}", {"seed": i})
    ds = scan_dataset(clips, (32,))
    assert ds.layout == "clips" and [s.caption for s in ds.samples] == ["scene 0", "scene 1"]


def _error(capsys, argv) -> str:
    script = load_script(SCRIPTS / "train_pano_lora.py", "cli_train_pano_lora")
    capsys.readouterr()
    assert run_main(script.main, [str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_are_one_line_errors(data, tmp_path, capsys):
    base = ["--out", tmp_path / "out", "--steps", 2, *TINY]
    assert "does not exist" in _error(capsys, ["--data", tmp_path / "nowhere", *base])
    (tmp_path / "empty").mkdir()
    assert "holds no training images" in _error(capsys, ["--data", tmp_path / "empty", *base])
    odd = tmp_path / "odd"
    odd.mkdir()
    write_image(odd / "wide.png", np.zeros((32, 96, 3), np.float32))
    msg = _error(capsys, ["--data", odd, *base])
    assert "wide.png is 96x32, not a 2:1" in msg
    small = tmp_path / "small"
    small.mkdir()
    write_image(small / "tiny.png", np.zeros((16, 32, 3), np.float32))
    assert "tiny.png is 32x16, smaller than the smallest training size 64x32" in _error(capsys, ["--data", small, *base])
    msg = _error(capsys, ["--data", data, *base, "--lora-targets", "attn.to_q,attn.to_qq"])
    assert "attn.to_qq" in msg and "attn.to_add_out" in msg and "proj_mlp" in msg  # names what there is
    assert "--heights" in _error(capsys, ["--data", data, *base, "--heights", "30"])
    assert "--rank" in _error(capsys, ["--data", data, *base, "--rank", "0"])


def test_oom_message_names_the_next_lever():
    from matrix_world.generation.train_pano_lora import PanoLoraTrainConfig, oom_message

    config = PanoLoraTrainConfig(data="d", out="o", steps=1, gradient_checkpointing=False, batch_size=4)
    msg = oom_message(config, height=512, processes=1, what="in training step 3")
    assert msg.index("gradient checkpointing on") < msg.index("--batch-size") < msg.index("--heights 384") < msg.index("more GPUs")
    msg = oom_message(replace(config, gradient_checkpointing=True, batch_size=1), height=512, processes=1, what="x")
    assert "next: a smaller resolution bucket (--heights 384)" in msg and "\n" not in msg


def test_help_documents_every_option(monkeypatch):
    module = load_script(SCRIPTS / "train_pano_lora.py", "cli_train_pano_lora_help")
    text, parsed, code = capture_help(module, monkeypatch)
    assert code in (0, None) and text.startswith("usage: train_pano_lora.py ")
    rows = {invocation: without_hint(description) for _, invocation, description in help_rows(text)}
    assert rows.pop("-h, --help") == "show this help message and exit"
    for field, (spellings, _) in expected_arguments(parsed[0]).items():
        row = next((r for r in rows if set(spellings) & set(r.replace(",", " ").split())), None)
        assert row is not None, f"{spellings[0]} ({field}) is not in --help:\n{text}"
        description = rows.pop(row)
        assert len(description) >= 8 and any(c.isalpha() for c in description), (row, description)
    assert not rows, sorted(rows)
    for flag in ("--data", "--out", "--steps", "--tiny", "--heights", "--lora-targets", "--no-gradient-checkpointing",
                 "--no-roll", "--validation-every", "--overwrite"):
        assert flag in text, flag


def test_benchmark_smoke(monkeypatch, capsys):
    """benchmarks/train.py --what flux --smoke: the GPU benchmark's code path with a tiny FLUX."""
    monkeypatch.setattr(sys, "path", [str(ROOT / "benchmarks"), *sys.path])  # restored after: the script prepends too
    monkeypatch.delenv("OUT", raising=False)
    bench = load_script(ROOT / "benchmarks" / "train.py", "bench_train")
    assert bench.main(["--what", "flux", "--smoke", "--batch-sizes", "1", "--steps", "1"]) == 0
    text = capsys.readouterr().out
    assert "FLUX LoRA training" in text and text.count('"s_per_step"') == 2  # checkpointing on and off
