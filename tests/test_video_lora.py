"""Wan LoRA: official Matrix-3D key conversion (14B names and shapes), strictness, round trips
on the tiny pipeline (official layout, our peft LoRA, the converter command)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from tiny_wan import load_tiny_pipeline


class _NotATensor:
    pass


def _load_script(name: str):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def original_wan_i2v_linears(cfg: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of every Linear of the ORIGINAL Wan2.1 I2V model (Wan's own module names),
    written from the Wan architecture, independently of the mapping table under test."""
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ffn, text, freq, img = cfg["ffn_dim"], cfg["text_dim"], cfg["freq_dim"], cfg["image_dim"]
    out = {}
    for i in range(cfg["num_layers"]):
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                out[f"blocks.{i}.{attn}.{proj}"] = (dim, dim)
        out[f"blocks.{i}.cross_attn.k_img"] = (dim, dim)
        out[f"blocks.{i}.cross_attn.v_img"] = (dim, dim)
        out[f"blocks.{i}.ffn.0"] = (dim, ffn)
        out[f"blocks.{i}.ffn.2"] = (ffn, dim)
    out.update({
        "text_embedding.0": (text, dim), "text_embedding.2": (dim, dim),
        "time_embedding.0": (freq, dim), "time_embedding.2": (dim, dim),
        "time_projection.1": (dim, 6 * dim),
        "head.head": (dim, cfg["out_channels"] * math.prod(cfg["patch_size"])),
        "img_emb.proj.1": (img, img), "img_emb.proj.3": (img, dim),
    })
    return out


def synthetic_lora(linears: dict, rank: int, *, prefix: str = "", value=None, generator=None) -> dict:
    sd = {}
    for name, (fan_in, fan_out) in linears.items():
        make = (lambda *s: torch.zeros(*s)) if value is None else (lambda *s: torch.randn(*s, generator=generator) * value)
        sd[f"{prefix}{name}.lora_A.weight"] = make(rank, fan_in)
        sd[f"{prefix}{name}.lora_B.weight"] = make(fan_out, rank)
    return sd


def test_official_keys_of_the_14b_model_all_map_onto_diffusers_modules():
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_wan_lora_to_diffusers,
    )
    from matrix_world.generation.wan_lora import (
        check_against_transformer,
        convert_original_wan_lora,
    )
    from matrix_world.generation.wan_pipeline import WAN_I2V_14B_CONFIG

    cfg = WAN_I2V_14B_CONFIG
    linears = original_wan_i2v_linears(cfg)
    assert len(linears) == 40 * 12 + 8
    sd = synthetic_lora(linears, rank=1, prefix="diffusion_model.")
    converted = convert_original_wan_lora(sd)
    assert len(converted) == len(sd)  # no leftovers, nothing dropped or duplicated
    with torch.device("meta"):
        model = WanTransformer3DModel(**cfg)
    check_against_transformer(converted, model)  # names exist, in/out sizes match the 14B dims
    model_linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in converted} == model_linears
    # cross-check the Matrix-3D subset (q, k, v, o, ffn.0, ffn.2 of both attentions) against diffusers' own converter
    subset = {k: v for k, v in sd.items() if "_img" not in k and ".blocks." in f".{k.removeprefix('diffusion_model.')}"}
    theirs = _convert_non_diffusers_wan_lora_to_diffusers(dict(subset))
    ours = convert_original_wan_lora(subset)
    assert set(ours) == set(theirs)


def test_conversion_is_strict():
    from matrix_world.generation.wan_lora import (
        convert_original_wan_lora,
        to_diffusers_lora,
    )

    from matrix_world.errors import InputError

    good = {"blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 8), "blocks.0.self_attn.q.lora_B.weight": torch.zeros(8, 2)}
    assert set(convert_original_wan_lora(good)) == {"transformer.blocks.0.attn1.to_q.lora_A.weight", "transformer.blocks.0.attn1.to_q.lora_B.weight"}
    adapter = {k.replace(".weight", ".default.weight"): v for k, v in good.items()}  # peft adapter segment
    assert set(convert_original_wan_lora(adapter)) == set(convert_original_wan_lora(good))
    for bad_key in ("blocks.0.self_attn.q.alpha", "blocks.0.self_attn.norm_q.lora_A.weight", "blocks.0.modulation.lora_A.weight"):
        with pytest.raises(InputError, match="no mapping") as err:
            to_diffusers_lora({**good, bad_key: torch.zeros(1)})
        assert bad_key in str(err.value)
    with pytest.raises(InputError, match="only one of"):
        convert_original_wan_lora({"blocks.0.ffn.0.lora_A.weight": torch.zeros(2, 8)})


@pytest.fixture(scope="module")
def pipe():
    return load_tiny_pipeline()


def _forward(tr):
    g = torch.Generator().manual_seed(0)
    kw = {"hidden_states": torch.randn(1, 36, 2, 4, 8, generator=g), "timestep": torch.tensor([600.0]),
              "encoder_hidden_states": torch.randn(1, 512, 32, generator=g), "encoder_hidden_states_image": torch.randn(1, 17, 8, generator=g)}
    with torch.no_grad():
        return tr(**kw, return_dict=False)[0]


def _tiny_official(pipe, rank=4, seed=1):
    from matrix_world.generation.wan_lora import BLOCK_MODULES

    modules = dict(pipe.transformer.named_modules())
    matrix3d = [m for m in BLOCK_MODULES if "_img" not in m]  # Matrix-3D's target modules
    linears = {f"blocks.{i}.{m}": (modules[f"blocks.{i}.{BLOCK_MODULES[m]}"].in_features,
                                   modules[f"blocks.{i}.{BLOCK_MODULES[m]}"].out_features) for i in range(2) for m in matrix3d}
    return synthetic_lora(linears, rank, prefix="diffusion_model.", value=0.2, generator=torch.Generator().manual_seed(seed))


def test_official_lora_round_trip_matches_manual_merge(pipe, tmp_path):
    from matrix_world.generation.wan_lora import BLOCK_MODULES, load_lora, unload_lora

    official = _tiny_official(pipe)
    path = tmp_path / "pano_video_gen_480p.ckpt"
    torch.save(official, path)
    base = _forward(pipe.transformer)
    # reference: DiffSynth's merge W += strength * B @ A on a copy of the weights
    ref = load_tiny_pipeline().transformer
    with torch.no_grad():
        params = dict(ref.named_parameters())
        for key in official:
            if ".lora_A." in key:
                module = key.removeprefix("diffusion_model.").split(".lora_A.")[0]
                i, name = module.split(".", 2)[1], module.split(".", 2)[2]
                a, b = official[key], official[key.replace("lora_A", "lora_B")]
                params[f"blocks.{i}.{BLOCK_MODULES[name]}.weight"] += 0.5 * b @ a
    expected = _forward(ref)
    assert (expected - base).abs().max() > 1e-2  # the LoRA does something

    info = load_lora(pipe, str(path), strength=0.5, fuse=False)
    assert info["layout"] == "original" and info["modules"] == 20 and info["rank"] == 4
    torch.testing.assert_close(_forward(pipe.transformer), expected, rtol=1e-4, atol=1e-5)
    unload_lora(pipe)
    torch.testing.assert_close(_forward(pipe.transformer), base, rtol=0, atol=0)
    load_lora(pipe, str(path), strength=0.5, fuse=True)
    torch.testing.assert_close(_forward(pipe.transformer), expected, rtol=1e-4, atol=1e-5)
    unload_lora(pipe)
    torch.testing.assert_close(_forward(pipe.transformer), base, rtol=1e-5, atol=1e-6)


def test_own_peft_lora_and_converter_round_trip(pipe, tmp_path):
    from matrix_world.generation.wan_lora import load_lora, unload_lora
    from matrix_world.generation.wan_pipeline import PanoVideoPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    convert_main = _load_script("convert_matrix3d_lora").main

    # our own LoRA: trained with peft, saved with diffusers' save_lora_weights
    tr = pipe.transformer
    base = _forward(tr)
    torch.manual_seed(3)
    tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False), adapter_name="mine")
    trained = _forward(tr)
    PanoVideoPipeline.save_lora_weights(tmp_path / "ours", transformer_lora_layers=get_peft_model_state_dict(tr, adapter_name="mine"))
    tr.delete_adapters("mine")
    torch.testing.assert_close(_forward(tr), base, rtol=0, atol=0)
    info = load_lora(pipe, str(tmp_path / "ours" / "pytorch_lora_weights.safetensors"), fuse=False)
    assert info["layout"] == "diffusers"
    torch.testing.assert_close(_forward(tr), trained, rtol=1e-5, atol=1e-6)
    unload_lora(pipe)

    # the converter command writes a file plain diffusers loads, same result as our loader
    torch.save(_tiny_official(pipe, seed=5), tmp_path / "official.bin")
    assert convert_main([str(tmp_path / "official.bin"), str(tmp_path / "converted.safetensors")]) == 0
    load_lora(pipe, str(tmp_path / "official.bin"), fuse=False)
    ours = _forward(tr)
    unload_lora(pipe)
    pipe.load_lora_weights(str(tmp_path / "converted.safetensors"))
    torch.testing.assert_close(_forward(tr), ours, rtol=0, atol=0)
    pipe.unload_lora_weights()
    assert convert_main([str(tmp_path / "converted.safetensors"), str(tmp_path / "again.safetensors")]) == 2


def test_lora_errors(pipe, tmp_path):
    from matrix_world.generation.wan_lora import load_lora, read_lora_file
    from matrix_world.generation.weights import WeightsNotFoundError

    from matrix_world.errors import InputError

    with pytest.raises(WeightsNotFoundError, match=r"Skywork/Matrix-3D.*huggingface-cli download Skywork/Matrix-3D checkpoints/pano_video_gen_480p.ckpt"):
        load_lora(pipe, "matrix3d-480p")
    too_deep = synthetic_lora({"blocks.7.self_attn.q": (24, 24)}, 2)
    with pytest.raises(InputError, match="does not fit"):
        load_lora(pipe, too_deep)

    torch.save({"x": _NotATensor()}, tmp_path / "evil.ckpt")  # an arbitrary object: weights_only refuses it
    with pytest.raises(InputError, match="weights_only=True"):
        read_lora_file(tmp_path / "evil.ckpt")
