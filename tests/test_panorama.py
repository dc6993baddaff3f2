"""Panorama stage (generation/panorama.py) with a tiny random FLUX saved and reloaded offline."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from matrix_world.errors import InputError
from matrix_world.generation.panorama import (
    PanoramaConfig,
    WeightsNotFoundError,
    decode_packed_latents,
    format_prompt,
    generate_panorama,
    generate_with_pipeline,
    load_flux_pipeline,
    load_lora,
    packed_grid_fns,
    unload_lora,
)
from matrix_world.generation.seamless import blended_decode, seam_score, wrap_decode

from tiny_flux import build_tiny_flux, save_tiny_flux_lora


H = 32  # tiny panoramas: 64 x 32


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("tiny_flux"))


@pytest.fixture(scope="module")
def config(flux_folder):
    return PanoramaConfig(backend="flux", model=str(flux_folder), height=H, steps=2, roll_fraction=0.5, max_sequence_length=16)


@pytest.fixture(scope="module")
def pipe(config):
    pipe, info = load_flux_pipeline(config, "cpu")
    assert info["model_folder"] == config.model and info["lora"] is None
    # --memory auto reaches FLUX (issue 11): on a CPU device it resolves to full, and says why
    assert config.memory == "auto" and info["memory_mode"] == "full"
    assert info["memory_reason"] == "not a CUDA device: everything stays on it"
    return pipe


def test_flux_auto_memory_picks_the_fastest_mode_that_fits(pipe):
    from matrix_world.generation.memory import choose_memory_mode, estimate_flux_memory_gb, module_bytes

    est = estimate_flux_memory_gb(pipe, height=H)
    weights = sum(module_bytes(getattr(pipe, n)) for n in ("transformer", "text_encoder", "text_encoder_2", "vae")) / 1e9
    assert est["full"] >= weights and all(v > 0 for v in est.values())
    assert choose_memory_mode("auto", estimate_gb=est, free_gb=est["full"] + 2.5)[0] == "full"
    assert choose_memory_mode("auto", estimate_gb=est, free_gb=0.0)[0] == "lowvram"


@pytest.fixture(scope="module")
def base_rgb(pipe, config):
    return run(pipe, config)[0]


@pytest.fixture(scope="module")
def lora_file(pipe, tmp_path_factory):
    return save_tiny_flux_lora(pipe, tmp_path_factory.mktemp("lora") / "pano_lora.safetensors")


def run(pipe, config, **kw):
    rgb, info = generate_with_pipeline(pipe, replace(config, **kw), prompt="a quiet harbour at dusk", device="cpu")
    return rgb, info


def test_generate_panorama_from_saved_folder(config, base_rgb):
    result = generate_panorama(config, prompt="a quiet harbour at dusk", device="cpu")
    rgb = result.rgb
    assert np.array_equal(rgb, base_rgb)  # the public entry point = the loaded pipeline, seeded
    assert rgb.shape == (H, 2 * H, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0 and rgb.std() > 0.01
    info = result.info
    assert info["backend"] == "flux" and info["steps"] == 2 and info["guidance"] == 7.0
    # 2 steps, last 50% rolled -> 1 rolled step, its shift within the packed grid width (2H / 4 / 2)
    assert len(info["roll_shifts"]) == 2 and info["roll_shifts"][0] == 0 and 0 <= info["roll_shifts"][1] < 2 * H // 4 // 2


def test_seeded_and_reproducible(pipe, config, base_rgb):
    a, _ = run(pipe, config)
    c, _ = run(pipe, config, seed=1)
    assert np.array_equal(a, base_rgb)
    assert np.abs(a - c).mean() > 1e-3


def test_negative_prompt_uses_true_cfg(pipe, config, base_rgb):
    neg, info = run(pipe, config, negative_prompt="blurry, distorted", true_cfg_scale=3.0)
    assert neg.shape == base_rgb.shape and np.abs(neg - base_rgb).mean() > 1e-3
    assert len(info["roll_shifts"]) == 2  # two transformer passes per step, counted as one step


def test_lora_changes_output_and_unload_restores_base(pipe, config, lora_file, base_rgb):
    base = base_rgb
    path = load_lora(pipe, str(lora_file), scale=1.0)
    assert path == str(lora_file)
    with_lora, _ = run(pipe, config)
    pipe.set_adapters(["panorama"], adapter_weights=[0.0])  # strength 0 == base
    zero, _ = run(pipe, config)
    unload_lora(pipe)
    after, _ = run(pipe, config)
    assert np.abs(with_lora - base).mean() > 1e-3
    assert np.allclose(zero, base, atol=1e-6)
    assert np.array_equal(after, base)
    # a folder holding one .safetensors is accepted as well
    load_lora(pipe, str(lora_file.parent), scale=0.5)
    half, _ = run(pipe, config)
    unload_lora(pipe)
    assert np.abs(half - base).mean() > 1e-4 and not np.allclose(half, with_lora)


def test_lora_through_the_config(config, lora_file, base_rgb):
    lora = generate_panorama(replace(config, lora=str(lora_file), lora_scale=0.8), prompt="a quiet harbour at dusk", device="cpu")
    assert lora.info["lora"] == str(lora_file) and lora.info["lora_scale"] == 0.8
    assert np.abs(lora.rgb - base_rgb).mean() > 1e-3


def test_fused_lora_equals_the_adapter(config, lora_file):
    """lowvram mode fuses the LoRA before group offloading: same output as the live adapter."""
    from matrix_world.generation.panorama import fuse_lora_for_offload

    pipe, _ = load_flux_pipeline(config, "cpu")  # a private copy: fusing changes its weights
    load_lora(pipe, str(lora_file), scale=0.7)
    live, _ = run(pipe, config)
    fuse_lora_for_offload(pipe)
    assert not any(pipe.get_list_adapters().values())
    fused, _ = run(pipe, config)
    assert np.abs(fused - live).max() < 1e-4


def test_wrong_lora_files_give_clear_errors(pipe, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_text("this is not a safetensors file")
    with pytest.raises(InputError, match="cannot read panorama LoRA .* as .safetensors .*expected a complete .safetensors file"):
        load_lora(pipe, str(junk))
    from safetensors.torch import save_file

    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(4, 4)}, str(unrelated))
    with pytest.raises(InputError, match="LoRA"):
        load_lora(pipe, str(unrelated))
    wrong_shape = tmp_path / "wrong_shape.safetensors"
    key = "transformer.single_transformer_blocks.0.attn.to_q.lora_{}.weight"
    save_file({key.format("A"): torch.zeros(4, 77), key.format("B"): torch.zeros(32, 4)}, str(wrong_shape))
    with pytest.raises(InputError, match="does not fit|holds no LoRA"):
        load_lora(pipe, str(wrong_shape))
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_lora(pipe, str(tmp_path / "missing.safetensors"))
    # the failed loads left no adapter behind
    assert not any(pipe.get_list_adapters().values())


def test_missing_weights_message(config):
    with pytest.raises(WeightsNotFoundError) as err:
        generate_panorama(replace(config, model="black-forest-labs/FLUX.1-dev"), prompt="a room", device="cpu")
    msg = str(err.value)
    assert "black-forest-labs/FLUX.1-dev" in msg and "huggingface-cli download" in msg and "\n" not in msg
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        generate_panorama(replace(config, model="/no/such/flux/folder"), prompt="a room", device="cpu")
    with pytest.raises(WeightsNotFoundError, match="Skywork/Matrix-3D"):
        generate_panorama(replace(config, lora="matrix3d"), prompt="a room", device="cpu")


def test_bad_prompts_and_sizes(config):
    for prompt in ("", "   ", None):
        with pytest.raises(InputError, match="empty"):
            generate_panorama(config, prompt=prompt, device="cpu")
    with pytest.raises(InputError, match="text"):
        generate_panorama(config, prompt=42, device="cpu")
    with pytest.raises(InputError, match="above the limit"):
        generate_panorama(replace(config, height=2048), prompt="a room", device="cpu")
    with pytest.raises(InputError, match="multiple of 16"):
        generate_panorama(replace(config, height=500), prompt="a room", device="cpu")
    with pytest.raises(InputError, match="unknown panorama backend"):
        generate_panorama(replace(config, backend="dalle"), prompt="a room", device="cpu")
    assert format_prompt("a bay", "A 360 panorama of {prompt}, HDR", allow_empty=False) == "A 360 panorama of a bay, HDR"
    with pytest.raises(InputError, match="template"):
        format_prompt("a bay", "no placeholder", allow_empty=False)


def test_packed_roll_equals_latent_roll():
    from diffusers import FluxPipeline

    b, c, h, w = 1, 4, 6, 10
    z = torch.randn(b, c, h, w)
    packed = FluxPipeline._pack_latents(z, b, c, h, w)
    to_grid, from_grid = packed_grid_fns(b, h, w)
    assert torch.equal(from_grid(to_grid(packed)), packed)
    rolled = from_grid(torch.roll(to_grid(packed), 2, dims=-1))
    assert torch.equal(rolled, FluxPipeline._pack_latents(torch.roll(z, 4, dims=-1), b, c, h, w))


def test_seam_metric_on_the_tiny_flux_vae(pipe):
    """A smooth periodic latent: plain decode shows the border, wrap/blended match the periodic reference."""
    vae = pipe.vae
    w = 16
    x = torch.arange(w) / w * 2 * math.pi
    g = torch.Generator().manual_seed(0)
    z = sum(torch.randn(1, 4, 8, 1, generator=g) * torch.cos(k * x) + torch.randn(1, 4, 8, 1, generator=g) * torch.sin(k * x) for k in (1, 2, 3))

    def decode(t):
        return vae.decode(t).sample

    with torch.no_grad():
        plain = decode(z)
        ref = decode(torch.cat((z, z, z), dim=-1))[..., 4 * w : 8 * w]  # periodic reference
        wrapped = wrap_decode(decode, z, 4)
        blended = blended_decode(decode, z)
    border = lambda img: (img - ref)[..., list(range(6)) + list(range(-6, 0))].abs().mean().item()  # noqa: E731
    assert border(wrapped) < 0.3 * border(plain) and border(blended) < 0.3 * border(plain)
    s_ref = seam_score(ref)
    assert abs(seam_score(wrapped) - s_ref) < abs(seam_score(plain) - s_ref)


def test_decode_methods_share_the_interior(pipe, config, base_rgb):
    """Decode methods nearly agree away from the seam (the VAE's global attention sees the pad);
    they differ most at the border columns, where plain decoding lacks the wrap-around context."""
    out = {"wrap": base_rgb}
    for method in ("plain", "blended"):
        out[method], info = run(pipe, config, decode=method)
        assert info["decode"] == method
    mid = slice(H - 8, H + 8)
    interior = np.abs(out["wrap"][:, mid] - out["plain"][:, mid]).mean()
    border = np.abs(out["wrap"][:, [0, 1, -2, -1]] - out["plain"][:, [0, 1, -2, -1]]).mean()
    assert interior < 0.01 and border > 2 * interior, (interior, border)


def test_decode_packed_latents_rejects_unknown_method(pipe):
    with pytest.raises(InputError, match="decode"):
        decode_packed_latents(pipe, torch.zeros(1, 32, 16), H, 2 * H, method="tiled")


def test_file_backend(tmp_path):
    from matrix_world.io import write_image

    pano = np.random.default_rng(0).random((16, 32, 3)).astype(np.float32)
    path = tmp_path / "pano.png"
    write_image(path, pano)
    result = generate_panorama(PanoramaConfig(backend="file"), image=str(path))
    assert result.rgb.shape == (16, 32, 3) and np.abs(result.rgb - pano).max() <= 0.5 / 255 + 1e-6
    assert result.info["backend"] == "file"
    same = generate_panorama(PanoramaConfig(backend="file", path=str(path)))
    assert np.array_equal(same.rgb, result.rgb)
    write_image(tmp_path / "wide.png", np.zeros((16, 40, 3), np.float32))
    with pytest.raises(InputError, match="2:1"):
        generate_panorama(PanoramaConfig(backend="file"), image=str(tmp_path / "wide.png"))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InputError, match="decode"):
        generate_panorama(PanoramaConfig(backend="file"), image=str(tmp_path / "notes.png"))
    with pytest.raises(InputError, match="RGB image"):
        generate_panorama(PanoramaConfig(backend="file"), image=np.zeros((16, 32)))


def test_procedural_backend_comes_from_the_datasets_and_auto_from_the_pipeline():
    import matrix_world.datasets.synthetic_backends  # noqa: F401  (registers procedural)

    result = generate_panorama(PanoramaConfig(backend="procedural", height=16), prompt="a forest clearing")
    assert result.info["backend"] == "procedural"
    assert result.rgb.shape == (16, 32, 3) and 0 <= result.rgb.min() and result.rgb.max() <= 1
    with pytest.raises(InputError, match="pipeline.panorama.choose"):
        generate_panorama(PanoramaConfig(backend="auto", height=16), prompt="a forest clearing")


@pytest.mark.cuda
def test_tiny_flux_on_cuda_matches_cpu_and_lora_unloads(config, base_rgb, lora_file):
    pipe_gpu, info = load_flux_pipeline(replace(config, dtype="float32"), "cuda")
    assert info["dtype"] == "float32"
    gpu, _ = generate_with_pipeline(pipe_gpu, config, prompt="a quiet harbour at dusk", device="cuda")
    assert gpu.shape == base_rgb.shape and np.abs(gpu - base_rgb).mean() < 2e-2  # same seed, CPU noise generator
    load_lora(pipe_gpu, str(lora_file))
    with_lora, _ = generate_with_pipeline(pipe_gpu, config, prompt="a quiet harbour at dusk", device="cuda")
    unload_lora(pipe_gpu)
    again, _ = generate_with_pipeline(pipe_gpu, config, prompt="a quiet harbour at dusk", device="cuda")
    assert np.abs(with_lora - gpu).mean() > 1e-3 and np.array_equal(again, gpu)
