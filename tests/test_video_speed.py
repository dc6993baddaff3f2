"""The video stage's speed options on the tiny Wan (CPU): the auto rule, cache hooks, CFG truncation,
the turbo sampler (lightx2v's sigmas), the lightx2v LoRA key conversion and LoRA stacking, and the
presets' plumbing. Speed itself is measured in benchmarks/video.py, never here."""

import math

import numpy as np
import pytest
import torch
from tiny_wan import load_tiny_pipeline

from matrix_world.errors import InputError

FRAMES, H, W = 9, 32, 64


@pytest.fixture(scope="module")
def pipe():
    p = load_tiny_pipeline()
    p.use_flow_matching(5.0)
    return p


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(1, 3, FRAMES, H, W, generator=g)
    mask = torch.rand(1, FRAMES, H, W, generator=g) > 0.4
    mask[:, 0] = True
    return video, mask


def _run(pipe, steps=4, **kw):
    video, mask = _inputs()
    return pipe("a harbour", scaffold=video, mask=mask, num_inference_steps=steps, generator=torch.Generator().manual_seed(1),
                output_type="latent", **kw).frames


def _count_calls(module):
    calls = []
    return calls, module.register_forward_pre_hook(lambda m, a: calls.append(1))


# --------------------------------------------------------------------------- the auto rule


def test_plan_on_the_cpu_picks_exact_options_and_refuses_gpu_only_ones():
    from matrix_world.generation.wan_speed import plan_speed

    plan = plan_speed(device=torch.device("cpu"), passes=100, memory_mode="full", approximate=True)
    assert (plan.attention, plan.compile, plan.fp8, plan.cache) == ("native", "off", "off", "off")
    assert "no CUDA" in plan.reasons["compile"] and "8.9" in plan.reasons["fp8"] and plan.approximations() == []
    with pytest.raises(InputError, match="--video-attention cudnn needs a CUDA device"):
        plan_speed(attention="cudnn", device=torch.device("cpu"), passes=10, memory_mode="full")
    with pytest.raises(InputError, match="--video-fp8 rowwise: FP8 matmuls need a GPU of compute capability >= 8.9"):
        plan_speed(fp8="rowwise", device=torch.device("cpu"), passes=10, memory_mode="full")
    with pytest.raises(InputError, match="--video-cache must be one of off, fbc, taylorseer, got 'magic'"):
        plan_speed(cache="magic", device=torch.device("cpu"), passes=10, memory_mode="full")
    # TaylorSeer's interval: the measured default (2), or the one asked for, reaches the plan the stage applies
    assert plan_speed(cache="taylorseer", device=torch.device("cpu"), passes=10, memory_mode="full").cache_interval == 2
    assert plan_speed(cache="taylorseer", cache_interval=4, device=torch.device("cpu"), passes=10,
                      memory_mode="full").cache_interval == 4


def test_plan_on_a_hopper_gpu(monkeypatch):
    """The rule with a (mocked) compute capability 9.0 and torchao installed: cuDNN attention, compile
    only when the passes repay it, FP8 only when approximations are allowed and weights are on the GPU."""
    import matrix_world.generation.wan_speed as speed

    monkeypatch.setattr(speed, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(speed, "_installed", lambda module: module == "torchao")
    cuda = torch.device("cuda")
    quality = speed.plan_speed(device=cuda, passes=100, memory_mode="full", approximate=False)
    assert (quality.attention, quality.compile, quality.fp8) == ("cudnn", "blocks", "off")
    assert "repaid after ~300 passes" in quality.reasons["fp8"]
    turbo = speed.plan_speed(device=cuda, passes=4, memory_mode="full", approximate=True)
    assert (turbo.attention, turbo.compile, turbo.fp8) == ("cudnn", "off", "off")  # no Sage installed
    assert "do not repay" in turbo.reasons["compile"] and turbo.approximations() == []
    asked = speed.plan_speed(fp8="rowwise", device=cuda, passes=4, memory_mode="full")
    assert asked.fp8 == "rowwise" and asked.approximations() == ["fp8"]
    low = speed.plan_speed(device=cuda, passes=30, memory_mode="lowvram", approximate=True)
    assert low.fp8 == "off" and "(memory mode full), not lowvram" in low.reasons["fp8"]
    assert low.compile == "off" and "group offloading" in low.reasons["compile"]  # an H200 host ran out of memory
    assert speed.plan_speed(device=cuda, passes=30, memory_mode="offload").compile == "blocks"
    with pytest.raises(InputError, match="--video-compile blocks: compiled blocks under lowvram"):
        speed.plan_speed(compile="blocks", device=cuda, passes=30, memory_mode="lowvram")
    with pytest.raises(InputError, match="memory mode full"):
        speed.plan_speed(fp8="rowwise", device=cuda, passes=4, memory_mode="offload")
    with pytest.raises(InputError, match="sageattention"):
        speed.plan_speed(attention="sage", device=cuda, passes=4, memory_mode="full")
    fp32 = speed.plan_speed(device=cuda, passes=4, memory_mode="full", dtype=torch.float32)  # no cuDNN / Sage kernel for it
    assert fp32.attention == "native" and "float32" in fp32.reasons["attention"]
    with pytest.raises(InputError, match="float16 / bfloat16 model"):
        speed.plan_speed(attention="cudnn", device=cuda, passes=4, memory_mode="full", dtype=torch.float32)


def test_fp8_takes_only_the_linear_layers_of_the_blocks(pipe):
    from matrix_world.generation.wan_speed import fp8_filter

    taken = [name for name, m in pipe.transformer.named_modules() if fp8_filter(m, name)]
    linears = [name for name, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    assert taken and all(name.startswith("blocks.") for name in taken)
    assert set(linears) - set(taken) == {n for n in linears if not n.startswith("blocks.")} != set()


def test_compiled_blocks_leave_fullgraph_under_group_offloading(monkeypatch):
    """lowvram's group offloading runs a compiler-disabled onload before every block: fullgraph=True fails on
    it (H200, 2026-12-03), so the blocks compile with graph breaks there, as under the cache hooks."""
    from matrix_world.generation.wan_speed import SpeedPlan, apply_speed, group_offloaded

    p = load_tiny_pipeline()
    seen = []
    monkeypatch.setattr(type(p.transformer), "compile_repeated_blocks", lambda self, fullgraph: seen.append(fullgraph))
    plan = SpeedPlan(compile="blocks")
    assert not group_offloaded(p.transformer)
    assert apply_speed(p, plan)["compile_fullgraph"] is True
    cpu = torch.device("cpu")
    p.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)
    assert group_offloaded(p.transformer) and not group_offloaded(p.vae)
    assert apply_speed(p, plan)["compile_fullgraph"] is False
    assert seen == [True, False]


# --------------------------------------------------------------------------- cache hooks and CFG truncation


def test_first_block_cache_is_exact_at_a_zero_threshold_and_skips_blocks_at_a_large_one(pipe):
    from matrix_world.generation.wan_speed import SpeedPlan, apply_speed, remove_speed

    reference = _run(pipe, steps=6)
    calls, handle = _count_calls(pipe.transformer.blocks[-1].attn1.to_q)  # inside the block: runs only when it is computed
    try:
        for threshold, exact in ((1e-12, True), (9.0, False)):
            calls.clear()
            info = apply_speed(pipe, SpeedPlan(cache="fbc", cache_threshold=threshold))
            out = _run(pipe, steps=6)
            remove_speed(pipe)
            assert info["approximations"] == ["fbc cache"]
            if exact:  # nothing skipped: the same latents, every block pass run (6 steps x 2 CFG passes)
                assert torch.equal(out, reference) and len(calls) == 12
            else:  # the later blocks are skipped in most steps
                assert len(calls) < 12 and bool(torch.isfinite(out).all()) and not torch.equal(out, reference)
    finally:
        handle.remove()
    assert torch.equal(_run(pipe, steps=6), reference)  # the hooks are gone


def test_taylorseer_cache_predicts_between_full_steps(pipe):
    from matrix_world.generation.wan_speed import SpeedPlan, apply_speed, remove_speed

    reference = _run(pipe, steps=8)
    calls, handle = _count_calls(pipe.transformer.blocks[-1].attn1.to_q)  # inside the block: runs only when it is computed
    try:
        apply_speed(pipe, SpeedPlan(cache="taylorseer", cache_interval=4))
        out = _run(pipe, steps=8)
    finally:
        remove_speed(pipe)
        handle.remove()
    assert len(calls) < 16 and bool(torch.isfinite(out).all()) and not torch.equal(out, reference)


def test_cfg_stop_guides_only_the_first_steps(pipe):
    calls, handle = _count_calls(pipe.transformer)
    try:
        full = _run(pipe, steps=4, guidance_scale=5.0)
        assert len(calls) == 8
        calls.clear()
        half = _run(pipe, steps=4, guidance_scale=5.0, cfg_stop=0.5)
        assert len(calls) == 4 + 2
        calls.clear()
        none = _run(pipe, steps=4, guidance_scale=5.0, cfg_stop=0.0)
        assert len(calls) == 4
    finally:
        handle.remove()
    assert torch.equal(none, _run(pipe, steps=4, guidance_scale=1.0))  # no guided step = guidance 1
    assert not torch.equal(half, full) and not torch.equal(half, none)
    batched = _run(pipe, steps=4, guidance_scale=5.0, cfg_stop=0.5, cfg_batch=True)
    torch.testing.assert_close(batched, half, rtol=1e-4, atol=1e-5)  # one batch of 2 = two passes
    with pytest.raises(InputError, match="cfg_stop must be in"):
        _run(pipe, steps=2, cfg_stop=1.5)


def test_transformer_passes_counts_guided_steps():
    from matrix_world.generation.video import VideoConfig, transformer_passes

    assert transformer_passes(VideoConfig(num_inference_steps=50)) == 100
    assert transformer_passes(VideoConfig(num_inference_steps=50, cfg_stop=0.3)) == 50 + 15
    assert transformer_passes(VideoConfig(num_inference_steps=4, guidance_scale=1.0)) == 4


# --------------------------------------------------------------------------- turbo: sampler and LoRAs


def test_lightx2v_sigmas_are_its_shifted_index_grid(pipe):
    """lightx2v: step list [1000, 750, 500, 250] = indices into a shifted 1000-point grid 1 -> 0."""
    from matrix_world.generation.wan_pipeline import lightx2v_sigmas

    grid = torch.linspace(1.0, 0.0, 1001)[:-1].double()
    grid = 5.0 * grid / (1 + 4.0 * grid)
    expected = [float(grid[1000 - t]) for t in (1000, 750, 500, 250)]  # their scheduler's sigmas
    pipe.scheduler.set_timesteps(sigmas=lightx2v_sigmas(4))
    sigmas = pipe.scheduler.sigmas.double()
    np.testing.assert_allclose(sigmas[:4].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(sigmas[:4].numpy(), [1.0, 0.9375, 0.833333, 0.625], rtol=1e-5)
    assert float(sigmas[4]) == 0.0
    np.testing.assert_allclose(pipe.scheduler.timesteps.double().numpy(), [1000.0, 937.5, 833.3333, 625.0], rtol=1e-5)
    with pytest.raises(InputError, match="has 4 steps"):
        lightx2v_sigmas(8)
    calls, handle = _count_calls(pipe.transformer)
    try:
        out = _run(pipe, steps=4, guidance_scale=1.0, sigma_schedule="lightx2v")
    finally:
        handle.remove()
    assert len(calls) == 4 and bool(torch.isfinite(out).all())


def _lightx2v_state(transformer, rank=4, alpha=2.0, seed=0):
    """A LoRA in lightx2v's layout (original Wan names, lora_down/up, .alpha, .diff_b, zero norm diffs)."""
    from matrix_world.generation.wan_lora import BLOCK_MODULES

    g = torch.Generator().manual_seed(seed)
    modules = dict(transformer.named_modules())
    state = {}
    for i in range(len(transformer.blocks)):
        for name in ("self_attn.q", "cross_attn.k_img", "ffn.2"):
            lin = modules[f"blocks.{i}.{BLOCK_MODULES[name]}"]
            key = f"diffusion_model.blocks.{i}.{name}"
            state[f"{key}.lora_down.weight"] = torch.randn(rank, lin.in_features, generator=g) * 0.1
            state[f"{key}.lora_up.weight"] = torch.randn(lin.out_features, rank, generator=g) * 0.1
            state[f"{key}.alpha"] = torch.tensor(alpha)
            state[f"{key}.diff_b"] = torch.randn(lin.out_features, generator=g) * 0.1
        state[f"diffusion_model.blocks.{i}.norm3.diff"] = torch.zeros(transformer.config.num_attention_heads
                                                                       * transformer.config.attention_head_dim)
        state[f"diffusion_model.blocks.{i}.norm3.diff_b"] = torch.zeros_like(state[f"diffusion_model.blocks.{i}.norm3.diff"])
    return state


def test_lightx2v_layout_converts_and_fuses_exactly(tmp_path):
    from safetensors.torch import save_file

    from matrix_world.generation.wan_lora import BLOCK_MODULES, load_lora, unload_lora

    pipe = load_tiny_pipeline()
    tr = pipe.transformer
    rank, alpha = 4, 2.0
    state = _lightx2v_state(tr, rank, alpha)
    save_file(state, str(tmp_path / "distill.safetensors"))
    before = {k: v.clone() for k, v in tr.state_dict().items()}
    info = load_lora(pipe, str(tmp_path / "distill.safetensors"), adapter_name="distill", alphas=True)
    assert info["modules"] == 3 * len(tr.blocks) and info["rank"] == rank and info["layout"] == "original"
    after = tr.state_dict()
    for i in range(len(tr.blocks)):
        for name in ("self_attn.q", "cross_attn.k_img", "ffn.2"):
            key, target = f"diffusion_model.blocks.{i}.{name}", f"blocks.{i}.{BLOCK_MODULES[name]}"
            delta = (alpha / rank) * state[f"{key}.lora_up.weight"] @ state[f"{key}.lora_down.weight"]
            torch.testing.assert_close(after[f"{target}.base_layer.weight"] if f"{target}.base_layer.weight" in after
                                       else after[f"{target}.weight"], before[f"{target}.weight"] + delta, rtol=1e-5, atol=1e-6)
            bias = after.get(f"{target}.base_layer.bias", after.get(f"{target}.bias"))
            torch.testing.assert_close(bias, before[f"{target}.bias"] + state[f"{key}.diff_b"], rtol=1e-5, atol=1e-6)
    unload_lora(pipe)
    for key, value in before.items():
        torch.testing.assert_close(tr.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_lightx2v_layout_is_refused_where_it_cannot_be_applied():
    from matrix_world.generation.wan_lora import convert_original_wan_lora

    tr = load_tiny_pipeline().transformer
    state = _lightx2v_state(tr)
    with pytest.raises(InputError, match=r"have no mapping.*alpha"):
        convert_original_wan_lora(state)  # alpha keys: only where the layout's convention is asked for
    bad = dict(state)
    bad["diffusion_model.blocks.0.norm3.diff"] = torch.ones_like(bad["diffusion_model.blocks.0.norm3.diff"])
    with pytest.raises(InputError, match="non-zero norm-layer delta"):
        convert_original_wan_lora(bad, alphas=True)
    lonely = {k: v for k, v in state.items() if not k.startswith("diffusion_model.blocks.0.ffn.2.lora_")
              and k != "diffusion_model.blocks.0.ffn.2.alpha"}
    with pytest.raises(InputError, match="bias delta without a lora pair"):
        convert_original_wan_lora(lonely, alphas=True)
    weight_diff = {**state, "diffusion_model.blocks.0.self_attn.q.diff": torch.zeros(4, 4)}
    with pytest.raises(InputError, match="self_attn.q.diff"):
        convert_original_wan_lora(weight_diff, alphas=True)


def test_distill_lora_stacks_on_the_panorama_lora(tmp_path):
    """Matrix-3D's LoRA (adapter pano) + the distillation LoRA (adapter distill), both fused: the sum."""
    from safetensors.torch import save_file

    from matrix_world.generation.wan_lora import load_lora

    pipe = load_tiny_pipeline()
    tr = pipe.transformer
    lin = tr.blocks[0].attn1.to_q
    w0 = lin.weight.detach().clone()
    g = torch.Generator().manual_seed(5)
    a1, b1 = torch.randn(2, lin.in_features, generator=g), torch.randn(lin.out_features, 2, generator=g)
    pano = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": a1, "diffusion_model.blocks.0.self_attn.q.lora_B.weight": b1}
    torch.save(pano, tmp_path / "pano.ckpt")
    distill = _lightx2v_state(tr, rank=4, alpha=8.0, seed=2)
    save_file(distill, str(tmp_path / "distill.safetensors"))
    load_lora(pipe, str(tmp_path / "pano.ckpt"), adapter_name="pano")
    load_lora(pipe, str(tmp_path / "distill.safetensors"), adapter_name="distill", alphas=True, strength=0.5)
    key = "diffusion_model.blocks.0.self_attn.q"
    expected = w0 + b1 @ a1 + 0.5 * (8.0 / 4) * distill[f"{key}.lora_up.weight"] @ distill[f"{key}.lora_down.weight"]
    torch.testing.assert_close(tr.blocks[0].attn1.to_q.base_layer.weight, expected, rtol=1e-5, atol=1e-5)


def test_turbo_preset_configures_the_distilled_samplers():
    from matrix_world.pipeline import panorama, video
    from matrix_world.pipeline.config import WorldConfig, check_speed_inputs

    turbo = WorldConfig(prompt="a harbour", preset="turbo")
    v = video.configure(turbo, "wan")
    assert (v.num_inference_steps, v.guidance_scale, v.sigma_schedule, v.distill_lora, v.approximate) == (
        4, 1.0, "lightx2v", "lightx2v", True)
    p = panorama.configure(turbo, "flux")
    assert (p.steps, p.guidance, p.turbo_lora) == (8, 3.5, "turbo-alpha")
    assert panorama.configure(turbo, "procedural").turbo_lora is None
    quality = video.configure(WorldConfig(prompt="x", preset="quality", video_cache="fbc", video_cfg_stop=0.5), "wan")
    assert (quality.num_inference_steps, quality.distill_lora, quality.approximate, quality.cache, quality.cfg_stop) == (
        50, None, False, "fbc", 0.5)
    ts = video.configure(WorldConfig(prompt="x", video_cache="taylorseer", video_cache_interval=3), "wan")
    assert (ts.cache, ts.cache_interval) == ("taylorseer", 3)
    assert video.configure(WorldConfig(prompt="x", preset="turbo", distill_lora="none"), "wan").num_inference_steps == 30
    for config, words in ((WorldConfig(prompt="x", distill_lora="lightx2v"), "--distill-lora belongs to --preset turbo"),
                          (WorldConfig(prompt="x", preset="turbo", resolution=720), "is for 480p"),
                          (WorldConfig(prompt="x", video_cfg_stop=2.0), "--video-cfg-stop must be in [0, 1]"),
                          (WorldConfig(prompt="x", video_fp8="yes"), "--video-fp8 must be one of auto, off, rowwise"),
                          (WorldConfig(prompt="x", video_cache_interval=3), "--video-cache-interval is TaylorSeer's"),
                          (WorldConfig(prompt="x", video_cache="taylorseer", video_cache_interval=0), "must be an integer in [1, 50]"),
                          (WorldConfig(prompt="x", video_cache="taylorseer", video_cache_threshold=0.1),
                           "--video-cache-threshold is FirstBlockCache's"),
                          (WorldConfig(prompt="x", memory="lowvram", video_compile="blocks"),
                           "--video-compile blocks: compiled blocks under lowvram"),
                          (WorldConfig(prompt="x", memory="offload", video_fp8="rowwise"),
                           "--video-fp8 rowwise: FP8 needs the weights on the GPU")):
        with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
            check_speed_inputs(config)


def test_wan_backend_runs_the_turbo_config_end_to_end(tmp_path):
    """generate_video with the turbo settings: the distillation LoRA loaded (stacked), 4 passes, the plan
    in the info."""
    from safetensors.torch import save_file

    from matrix_world.generation.video import VideoConfig, generate_video, load_video_pipeline
    from tiny_wan import tiny_wan_dir

    tr = load_tiny_pipeline().transformer
    save_file(_lightx2v_state(tr), str(tmp_path / "distill.safetensors"))
    cfg = VideoConfig(backend="wan", height=H, model=tiny_wan_dir(), lora=None, dtype="float32", num_inference_steps=4,
                      guidance_scale=1.0, sigma_schedule="lightx2v", distill_lora=str(tmp_path / "distill.safetensors"))
    loaded, info = load_video_pipeline(cfg, "cpu", num_frames=FRAMES)
    assert info["distill_lora"]["adapter"] == "distill" and info["speed"]["attention"] == "native"
    calls, handle = _count_calls(loaded.transformer)
    rng = np.random.default_rng(0)
    rgb = rng.random((FRAMES, H, W, 3)).astype(np.float32)
    mask = rng.random((FRAMES, H, W)) > 0.3
    mask[0] = True
    try:
        out = generate_video(cfg, scaffold_rgb=rgb, scaffold_mask=mask, prompt="a plaza", c2w=np.tile(np.eye(4), (FRAMES, 1, 1)),
                             pipeline=loaded)
    finally:
        handle.remove()
    assert len(calls) == 4 and out.info["sigma_schedule"] == "lightx2v" and math.isfinite(float(out.frames.mean()))


def test_sage_op_keeps_compiled_blocks_one_graph(monkeypatch):
    """diffusers' sage backend routed through the custom op traces as ONE graph (fullgraph=True) and gives
    what the kernel gives; calls that need the log-sum-exp still reach the original function. SageAttention
    itself needs CUDA: a stand-in with its signature (SDPA in the NHD layout) plays it here."""
    import sys
    import types

    import torch.nn.functional as F
    from diffusers.models import attention_dispatch

    from matrix_world.generation import wan_speed

    calls = []

    def stand_in(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, return_lse=False, **kwargs):
        calls.append(return_lse)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=is_causal,
                                             scale=sm_scale).transpose(1, 2)
        return (out, torch.zeros(q.shape[:3])) if return_lse else out

    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=stand_in))
    monkeypatch.setattr(attention_dispatch, "sageattn", stand_in)
    assert "routed" in wan_speed.install_sage_op()
    assert "already" in wan_speed.install_sage_op()  # idempotent: no wrapper around the wrapper
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 24, 2, 8, generator=g) for _ in range(3))  # [B, N, H, D]

    def attend(q, k, v):
        return attention_dispatch.sageattn(q, k, v, tensor_layout="NHD", sm_scale=0.3) * 2.0

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), stand_in(q, k, v, tensor_layout="NHD", sm_scale=0.3) * 2.0)
    out, lse = attention_dispatch.sageattn(q, k, v, tensor_layout="NHD", return_lse=True)  # the context-parallel path
    assert calls[-1] is True and lse.shape == (1, 24, 2)
