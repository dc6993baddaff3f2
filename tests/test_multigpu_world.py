"""One world on several GPUs (issue 17), checked on the CPU: the context-parallel rule, the speed
options' order and refusals, and whole text2world runs on 2 gloo processes with the tiny Wan
(``MATRIX_WORLD_TEST_GLOO=1``): the same video and world as one process, written by rank 0 only,
and an error before the video stage ending every rank with one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from matrix_world.errors import InputError
from matrix_world.generation.video_parallel import (
    CP_ATTENTION,
    RING_ATTENTION,
    check_parallel_speed,
    context_parallel_config,
    parallel_layout,
    video_tokens,
)
from script_helpers import ROOT, SCRIPTS, TINY_PROMPT, one_line_error, read_ply, tiny_args, tiny_config

WAN_HEADS = 40


def test_context_parallel_rule_for_wan_14b():
    t480, t720 = video_tokens(81, 480, 960), video_tokens(81, 720, 1440)
    assert (t480, t720) == (21 * 30 * 60, 21 * 45 * 90) == (37_800, 85_050)
    kinds = {(n, t): context_parallel_config(n, num_tokens=t, num_heads=WAN_HEADS, attention="cudnn").kind
             for n in (1, 2, 3, 4, 8) for t in (t480, t720)}
    assert kinds == {(1, t480): "none", (1, t720): "none", (2, t480): "ulysses", (2, t720): "ulysses",
                     (4, t480): "ulysses", (4, t720): "ulysses_anything",  # 85,050 tokens are odd
                     (8, t480): "ulysses", (8, t720): "ulysses_anything",
                     (3, t480): "ring", (3, t720): "ring"}  # 40 heads do not divide by 3; the tokens do
    # without a log-sum-exp (torch SDPA) ring is impossible: uneven heads go to Ulysses-anything
    native = context_parallel_config(3, num_tokens=t480, num_heads=WAN_HEADS, attention="native")
    assert native.kind == "ulysses_anything" and "no log-sum-exp" in native.reason
    assert context_parallel_config(16, num_tokens=t720, num_heads=WAN_HEADS, attention="sage").kind == "ring_anything"
    forced = context_parallel_config(2, num_tokens=t480, num_heads=WAN_HEADS, mode="ulysses_anything")
    assert forced.kind == "ulysses_anything" and "requested" in forced.reason
    with pytest.raises(InputError, match="ring attention needs the log-sum-exp"):
        context_parallel_config(2, num_tokens=t480, num_heads=WAN_HEADS, attention="native", mode="ring")
    with pytest.raises(InputError, match="plain Ulysses needs"):
        context_parallel_config(4, num_tokens=t720, num_heads=WAN_HEADS, mode="ulysses")
    cp = context_parallel_config(4, num_tokens=t720, num_heads=WAN_HEADS).diffusers_config()
    assert (cp.ulysses_degree, cp.ring_degree, cp.ulysses_anything) == (4, 1, True)
    ring = context_parallel_config(3, num_tokens=t720, num_heads=WAN_HEADS, attention="flash").diffusers_config()
    assert (ring.ulysses_degree, ring.ring_degree, ring.ring_anything) == (1, 3, False)


def test_attention_tables_match_diffusers_registry():
    """Our names of the context-parallel (and ring-capable) backends against diffusers 0.42.1 itself."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from matrix_world.generation.wan_speed import ATTENTION_BACKENDS

    supported = {name for name, backend in ATTENTION_BACKENDS.items()
                 if _AttentionBackendRegistry._is_context_parallel_available(AttentionBackendName(backend))}
    assert supported == set(CP_ATTENTION) and "flash3" not in supported
    assert set(RING_ATTENTION) == set(CP_ATTENTION) - {"native"}  # native's forward op refuses return_lse
    q = torch.zeros(1, 4, 2, 8)
    from diffusers.models.attention_dispatch import _native_attention_forward_op

    with pytest.raises(ValueError, match="return_lse"):
        _native_attention_forward_op(None, q, q, q, return_lse=True, _save_ctx=False)


def test_speed_options_that_cannot_run_under_context_parallelism_are_refused():
    check_parallel_speed("flash3", "fbc", 1)  # one rank per call: anything goes
    check_parallel_speed("cudnn", "taylorseer", 4)
    with pytest.raises(InputError, match="--video-attention flash3 has no context-parallel support"):
        check_parallel_speed("flash3", "off", 2)
    with pytest.raises(InputError, match="--video-cache fbc decides from each rank's share"):
        check_parallel_speed("auto", "fbc", 2)
    from matrix_world.pipeline.config import check_inputs

    for kw, message in [(dict(gpus=2, video_cache="fbc"), "--video-cache fbc"),
                        (dict(gpus=3, cfg_parallel=True), "expected an even --gpus, got 3"),
                        (dict(gpus=2, memory="offload"), "expected --memory auto or full"),
                        (dict(gpus=0), "--gpus must be at least 1")]:
        with pytest.raises(InputError, match=message):
            check_inputs(tiny_config("/nonexistent", **kw))
    check_inputs(tiny_config("/nonexistent", gpus=2, cfg_parallel=True, video_cache="fbc"))  # 2 halves of 1: no CP
    assert parallel_layout(4, cfg_parallel=True, guidance_scale=5.0).degree == 2
    with pytest.raises(InputError, match="needs classifier-free guidance"):
        parallel_layout(2, cfg_parallel=True, guidance_scale=1.0)


def test_apply_speed_parallelizes_after_the_attention_backend_and_before_cache_and_compile():
    from matrix_world.generation.wan_speed import SpeedPlan, apply_speed

    calls: list[str] = []

    class Transformer:
        def set_attention_backend(self, name):
            calls.append(f"attention {name}")

        def enable_cache(self, config):
            calls.append(f"cache {type(config).__name__}")

        def compile_repeated_blocks(self, fullgraph):
            calls.append("compile")

    class Pipe:
        transformer = Transformer()

    plan = SpeedPlan(attention="cudnn", compile="blocks", cache="taylorseer", cache_interval=4)
    info = apply_speed(Pipe(), plan, parallelize=lambda tr, p: calls.append(f"parallel {p.attention}") or {"kind": "x"})
    assert calls == ["attention _native_cudnn", "parallel cudnn", "cache TaylorSeerCacheConfig", "compile"]
    assert info["parallel"] == {"kind": "x"}


def test_gpus_without_gpus_is_one_line_error(tmp_path, capsys):
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has 2 GPUs")
    from matrix_world.app.cli import run_main
    from matrix_world.app.world_cli import text2world_main

    out = tmp_path / "run"
    assert run_main(text2world_main, [TINY_PROMPT, *tiny_args(out)[:-2], "--gpus", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gpus 2 needs 2 CUDA GPUs, this machine has" in err[0], err
    assert not out.exists()


# --------------------------------------------------------------------------- 2 gloo processes


@pytest.fixture(scope="module")
def gloo_env(tmp_path_factory):
    from script_helpers import script_env

    return {**script_env(tmp_path_factory), "MATRIX_WORLD_TEST_GLOO": "1"}


def _wan_args(out) -> list[str]:
    from tiny_wan import tiny_wan_dir

    return [TINY_PROMPT, *tiny_args(out), "--video-backend", "wan", "--wan-model", tiny_wan_dir(), "--wan-lora", "none",
            "--exports"]


def _text2world(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / "text2world.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240, check=False)


def test_two_gloo_processes_make_the_same_world_as_one(tmp_path, gloo_env):
    from matrix_world.app.cli import run_main
    from matrix_world.app.world_cli import text2world_main

    one, two = tmp_path / "one", tmp_path / "two"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _text2world([*_wan_args(two), "--gpus", "2"], gloo_env, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_main(text2world_main, _wan_args(one)) == 0  # the reference: one process, in this one
    # the same video and world (diffusers' Ulysses split: the same arithmetic per head)
    a, b = (np.load(run / "video.npz")["frames"] for run in (one, two))
    assert a.shape == b.shape == (9, 64, 128, 3) and a.std() > 1
    assert np.abs(a.astype(int) - b).max() <= 1 and (a != b).mean() < 1e-3
    _, pa = read_ply(one / "world.ply")
    _, pb = read_ply(two / "world.ply")
    assert pa.shape == pb.shape and np.allclose(pa, pb, atol=1e-3)
    # rank 0 wrote the run directory, the same files as one process; nothing anywhere else
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    assert list(cwd.iterdir()) == []
    manifest = json.loads((two / "manifest.json").read_text())
    parallel = manifest["stages"]["video"]["info"]["parallel"]
    assert parallel["world_size"] == 2 and parallel["kind"] == "ulysses" and parallel["reason"].startswith("Ulysses")
    assert parallel["tokens"] == 3 * 4 * 8 and parallel["tokens_seen"] == 48  # each rank attended over half the tokens
    assert manifest["world_config"]["gpus"] == 2
    assert proc.stdout.count("done in") == 1 and "video on 2 ranks: Ulysses over 2 ranks" in proc.stdout


def test_an_error_before_the_video_stage_ends_every_rank_with_one_line(tmp_path, gloo_env):
    out = tmp_path / "not_a_run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # refused on rank 0 (check_out_folder, under the run lock)
    proc = _text2world([*_wan_args(out), "--gpus", "2"], gloo_env, ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "holds files that are not a matrix_world run" in one_line_error(proc)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_cfg_across_two_gloo_processes_matches_one_device():
    """tests/multigpu_video_check.py --cfg-parallel: the conditional pass on rank 0, the unconditional on
    rank 1, exchanged every guided step: the frames of one device's sequential CFG."""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "multigpu_video_check.py"), "--cpu", "--cfg-parallel"],
                          capture_output=True, text=True, timeout=240, env=env, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("height 32"))
    assert "'cfg_groups': 2" in line and line.endswith("PASS")
