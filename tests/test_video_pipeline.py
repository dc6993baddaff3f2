"""PanoVideoPipeline on a tiny random Wan2.1 I2V (CPU): conditioning layout, parity with the
stock diffusers pipeline, determinism, widened input, input checks, CUDA parity."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_wan import load_tiny_pipeline

FRAMES, H, W = 9, 32, 64  # latent 3 x 4 x 8


@pytest.fixture(scope="module")
def pipe():
    p = load_tiny_pipeline()
    p.use_flow_matching(5.0)
    return p


def _scaffold(seed=0, frames=FRAMES):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(1, 3, frames, H, W, generator=g)
    mask = torch.rand(1, frames, H, W, generator=g) > 0.4
    mask[:, 0] = True  # frame 0 = the panorama, fully known
    return video, mask


def _capture_transformer_inputs(pipe):
    calls = []

    def hook(module, args, kwargs):
        calls.append({k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    return calls, pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)


def test_condition_channels_match_hand_built_tensors(pipe):
    from matrix_world.generation.wan_pipeline import vae_latent_stats

    video, mask = _scaffold()
    noise = torch.randn(1, 16, 3, 4, 8, generator=torch.Generator().manual_seed(5))
    calls, handle = _capture_transformer_inputs(pipe)
    try:
        pipe("a room", scaffold=video, mask=mask, latents=noise, num_inference_steps=1, guidance_scale=1.0, output_type="latent")
    finally:
        handle.remove()
    x = calls[0]["hidden_states"]
    assert x.shape == (1, 36, 3, 4, 8)

    # block 1: noise
    torch.testing.assert_close(x[:, :16], noise, rtol=0, atol=0)
    # block 2: mask latent, built frame by frame: channel c of latent frame t is extended frame 4t+c,
    # extended = [frame0, frame0, frame0, frame0, frame1, ..., frame8]
    small = F.interpolate(mask.float(), size=(4, 8), mode="bilinear", align_corners=False)[0]  # [F, h, w]
    expected_mask = torch.zeros(1, 4, 3, 4, 8)
    for t in range(3):
        for c in range(4):
            extended = 4 * t + c
            expected_mask[0, c, t] = small[max(extended - 3, 0)]
    torch.testing.assert_close(x[:, 16:20], expected_mask, rtol=0, atol=0)
    # block 3: VAE latent of the masked video (unknown = -1), normalised with latents_mean / std
    masked = torch.where(mask[:, None], video * 2 - 1, torch.full_like(video, -1.0))
    mean, std = vae_latent_stats(pipe.vae, "cpu", torch.float32)
    expected_latent = (pipe.vae.encode(masked).latent_dist.mode() - mean) / std
    torch.testing.assert_close(x[:, 20:36], expected_latent, rtol=1e-5, atol=1e-5)
    # CLIP tokens from frame 0, squashed (no crop) to the CLIP size; text embeddings of length 512
    frame0 = F.interpolate(video[:, :, 0], size=(32, 32), mode="bicubic", align_corners=False)
    mean_c = torch.tensor(pipe.image_processor.image_mean).view(1, 3, 1, 1)
    std_c = torch.tensor(pipe.image_processor.image_std).view(1, 3, 1, 1)
    tokens = pipe.image_encoder(pixel_values=(frame0 - mean_c) / std_c, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(calls[0]["encoder_hidden_states_image"], tokens, rtol=1e-5, atol=1e-6)
    assert calls[0]["encoder_hidden_states"].shape == (1, 512, 32)


def test_known_pixel_latents_equal_vae_encoding_and_unknown_pixels_are_ignored(pipe):
    from matrix_world.generation.wan_pipeline import vae_latent_stats

    video, mask = _scaffold(seed=1)
    full = torch.ones_like(mask)
    cond = pipe.encode_scaffold(video, full, device="cpu")
    mean, std = vae_latent_stats(pipe.vae, "cpu", torch.float32)
    direct = (pipe.vae.encode(video * 2 - 1).latent_dist.mode() - mean) / std
    torch.testing.assert_close(cond[:, 4:], direct, rtol=1e-5, atol=1e-5)
    assert torch.all(cond[:, :4] == 1)
    # whatever sits under unknown pixels does not change the condition
    scrambled = torch.where(mask[:, None], video, torch.rand_like(video))
    torch.testing.assert_close(pipe.encode_scaffold(video, mask, device="cpu"), pipe.encode_scaffold(scrambled, mask, device="cpu"), rtol=0, atol=0)


def test_first_frame_case_matches_stock_prepare_latents(pipe):
    """With only frame 0 known, the mask channels equal the stock I2V mask; with frames 1.. known
    mid-grey (0 in [-1, 1]), the latent channels equal the stock latent of [image, zeros]."""
    from diffusers import WanImageToVideoPipeline

    image = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(2))
    _, stock_cond = WanImageToVideoPipeline.prepare_latents(
        pipe, image * 2 - 1, 1, 16, H, W, FRAMES, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    first_only = torch.zeros(1, FRAMES, H, W, dtype=torch.bool)
    first_only[:, 0] = True
    video = torch.cat([image[:, :, None], torch.full((1, 3, FRAMES - 1, H, W), 0.5)], dim=2)
    ours_mask = pipe.encode_scaffold(video, first_only, device="cpu")[:, :4]
    ours_latent = pipe.encode_scaffold(video, torch.ones_like(first_only), device="cpu")[:, 4:]
    torch.testing.assert_close(ours_mask, stock_cond[:, :4], rtol=0, atol=0)
    torch.testing.assert_close(ours_latent, stock_cond[:, 4:], rtol=1e-5, atol=1e-5)


def test_denoising_loop_matches_stock_pipeline(pipe):
    """Same condition, embeddings, noise and scheduler -> the stock loop's latents and video;
    batching the two guidance passes (cfg_batch) changes nothing beyond rounding."""
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    stock = WanImageToVideoPipeline(**pipe.components)
    stock.set_progress_bar_config(disable=True)
    image = Image.fromarray((np.random.default_rng(3).random((H, W, 3)) * 255).astype(np.uint8))
    noise = torch.randn(1, 16, 3, 4, 8, generator=torch.Generator().manual_seed(4))
    image_embeds = stock.encode_image(image, torch.device("cpu"))
    pixel = stock.video_processor.preprocess(image, height=H, width=W)
    _, condition = stock.prepare_latents(pixel, 1, 16, H, W, FRAMES, torch.float32, torch.device("cpu"), None)
    common = {"negative_prompt": "blurry", "num_inference_steps": 2, "guidance_scale": 5.0, "latents": noise}
    ref_video = stock(image=image, prompt="a hall", height=H, width=W, num_frames=FRAMES, output_type="np", **common).frames
    ours = lambda cfg_batch: pipe("a hall", condition=condition, image_embeds=image_embeds, sigma_schedule="scheduler",
                                  cfg_batch=cfg_batch, output_type="latent", **common).frames
    latents = ours(False)
    ours_video = pipe.decode_latents(latents, seam="none").permute(0, 2, 3, 4, 1).numpy()
    np.testing.assert_allclose(ours_video, ref_video, atol=2e-5)
    torch.testing.assert_close(ours(True), latents, rtol=1e-5, atol=1e-5)


def test_seed_determinism_and_seam_aware_decoding(pipe):
    from matrix_world.generation.seamless import wrap_decode

    video, mask = _scaffold(seed=6)
    run = lambda seed: pipe("a cave", scaffold=video, mask=mask, num_inference_steps=2, output_type="latent",
                            generator=torch.Generator().manual_seed(seed)).frames
    a, b, c = run(7), run(7), run(8)
    assert a.shape == (1, 16, 3, 4, 8)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    # default decoding is generation.seamless.wrap_decode on the denormalised latents
    mean, std = pipe.vae.config.latents_mean, pipe.vae.config.latents_std
    z = a * torch.tensor(std).view(1, 16, 1, 1, 1) + torch.tensor(mean).view(1, 16, 1, 1, 1)
    decode = lambda x: pipe.vae.decode(x, return_dict=False)[0]
    frames = pipe.decode_latents(a, seam="wrap", seam_pad_cols=2)
    assert frames.shape == (1, 3, FRAMES, H, W) and 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    torch.testing.assert_close(frames, ((wrap_decode(decode, z, 2) + 1) / 2).clamp(0, 1))


def test_widened_input_starts_identical_and_round_trips(pipe, tmp_path):
    from diffusers import WanTransformer3DModel
    from matrix_world.generation.wan_pipeline import widen_patch_embedding

    tr = pipe.transformer
    x = torch.randn(1, 36, 3, 4, 8)
    kw = {"timestep": torch.tensor([700.0]), "encoder_hidden_states": torch.randn(1, 512, 32),
              "encoder_hidden_states_image": torch.randn(1, 17, 8), "return_dict": False}
    base = tr(hidden_states=x, **kw)[0]
    wide = WanTransformer3DModel.from_config(tr.config).eval()
    wide.load_state_dict(tr.state_dict())
    widen_patch_embedding(wide, 6)
    assert wide.config.in_channels == 42 and wide.patch_embedding.weight.shape[1] == 42
    extra = torch.randn(1, 6, 3, 4, 8) * 10
    torch.testing.assert_close(wide(hidden_states=torch.cat([x, extra], 1), **kw)[0], base, rtol=0, atol=0)
    wide.save_pretrained(tmp_path / "wide")
    again = WanTransformer3DModel.from_pretrained(tmp_path / "wide").eval()
    assert again.config.in_channels == 42
    assert not any(p.is_meta for p in again.parameters())
    torch.testing.assert_close(again(hidden_states=torch.cat([x, extra], 1), **kw)[0], base, rtol=0, atol=0)


def test_bad_inputs_are_reported_not_rounded(pipe):
    from matrix_world.errors import InputError

    video, mask = _scaffold(frames=10)
    with pytest.raises(InputError, match=r"4k\+1.*9 or 13.*got 10 frames"):
        pipe("x", scaffold=video, mask=mask, num_inference_steps=1)
    video, mask = _scaffold()
    with pytest.raises(InputError, match="divisible by 16"):
        pipe("x", scaffold=video[..., :40], mask=mask[..., :40], num_inference_steps=1)
    with pytest.raises(InputError, match="mask must be"):
        pipe("x", scaffold=video, mask=mask[:, :5], num_inference_steps=1)
    with pytest.raises(InputError, match="extra_condition"):
        pipe("x", scaffold=video, mask=mask, extra_condition=torch.zeros(1, 2, 3, 4, 8), num_inference_steps=1)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["full", "offload", "lowvram"])
def test_cuda_memory_modes_match_cpu(mode):
    """Tiny pipeline on CUDA in each memory mode == the CPU run (same noise from a CPU generator)."""
    from matrix_world.generation.memory import apply_memory_mode

    video, mask = _scaffold(seed=9)
    run = lambda p: p("a street", scaffold=video, mask=mask, num_inference_steps=3,
                      generator=torch.Generator().manual_seed(1), seam="wrap").frames.cpu()
    cpu = load_tiny_pipeline()
    cpu.use_flow_matching(5.0)
    ref = run(cpu)
    gpu = load_tiny_pipeline()
    gpu.use_flow_matching(5.0)
    info = apply_memory_mode(gpu, mode, "cuda", vae_tiling=False)
    assert info["memory_mode"] == mode
    torch.testing.assert_close(run(gpu), ref, rtol=2e-3, atol=2e-3)


def test_wan_backend_end_to_end_with_official_lora_and_oom_message(pipe, tmp_path):
    """generate_video(backend='wan') loads the saved tiny model from its folder with an official-layout
    LoRA, is deterministic for a seed, and turns a CUDA OOM into one line naming the next mode."""
    from matrix_world.generation.memory import VideoOutOfMemoryError
    from matrix_world.generation.video import (
        VideoConfig,
        generate_video,
        load_video_pipeline,
    )
    from matrix_world.generation.wan_lora import BLOCK_MODULES
    from tiny_wan import tiny_wan_dir

    g = torch.Generator().manual_seed(11)
    lora = {}
    for i in range(2):
        for name in ("self_attn.q", "cross_attn.o", "ffn.0"):
            module = dict(pipe.transformer.named_modules())[f"blocks.{i}.{BLOCK_MODULES[name]}"]
            lora[f"diffusion_model.blocks.{i}.{name}.lora_A.weight"] = torch.randn(2, module.in_features, generator=g) * 0.1
            lora[f"diffusion_model.blocks.{i}.{name}.lora_B.weight"] = torch.randn(module.out_features, 2, generator=g) * 0.1
    torch.save(lora, tmp_path / "pano_video_gen_480p.ckpt")
    rng = np.random.default_rng(0)
    rgb = rng.random((FRAMES, H, W, 3)).astype(np.float32)
    mask = rng.random((FRAMES, H, W)) > 0.3
    mask[0] = True
    c2w = np.tile(np.eye(4), (FRAMES, 1, 1))
    cfg = VideoConfig(backend="wan", height=H, model=tiny_wan_dir(), lora=str(tmp_path / "pano_video_gen_480p.ckpt"),
                      dtype="float32", num_inference_steps=2, seed=3)
    loaded, info = load_video_pipeline(cfg, "cpu", num_frames=FRAMES)
    assert info["lora"]["modules"] == 6 and info["lora"]["fused"] and info["memory_mode"] == "full"
    run = lambda **kw: generate_video(cfg, scaffold_rgb=rgb, scaffold_mask=mask, prompt="a plaza", c2w=c2w, pipeline=loaded, **kw)
    a, b = run(), run()
    assert a.frames.shape == (FRAMES, H, W, 3) and a.info["backend"] == "wan"
    assert np.array_equal(a.frames, b.frames)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB")

    loaded.transformer.forward = out_of_memory
    with pytest.raises(VideoOutOfMemoryError, match="memory mode 'full'; rerun with memory mode 'offload'"):
        run()


@pytest.mark.cuda
def test_cuda_stage_matches_cpu():
    from matrix_world.generation.video import VideoConfig, generate_video
    from tiny_wan import tiny_wan_dir

    rng = np.random.default_rng(1)
    rgb = rng.random((FRAMES, H, W, 3)).astype(np.float32)
    mask = rng.random((FRAMES, H, W)) > 0.3
    mask[0] = True
    c2w = np.tile(np.eye(4), (FRAMES, 1, 1))
    cfg = VideoConfig(backend="wan", height=H, model=tiny_wan_dir(), lora=None, dtype="float32", num_inference_steps=3, memory="lowvram")
    run = lambda device: generate_video(cfg, scaffold_rgb=rgb, scaffold_mask=mask, prompt="a plaza", c2w=c2w, device=device)
    gpu, cpu = run("cuda"), run("cpu")
    assert gpu.info["memory_mode"] == "lowvram" and gpu.info["peak_gpu_gb"] is not None
    np.testing.assert_allclose(gpu.frames, cpu.frames, atol=3e-3)


def test_late_rolls_move_noise_and_condition_together(pipe):
    """With late_roll_fraction the transformer sees its whole 36-channel input rolled in longitude
    (noise, mask and scaffold latent together) and its output is rolled back: for a denoiser that
    acts per position (equivariant to rolls) the result equals the unrolled run."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    video, mask = _scaffold(seed=12)
    seen = []

    def pointwise(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None, return_dict=True, attention_kwargs=None):
        seen.append(hidden_states.clone())
        out = hidden_states[:, :16] * 0.3 + hidden_states[:, 20:36] * 0.1 + hidden_states[:, 16:17]
        return (out,) if not return_dict else Transformer2DModelOutput(sample=out)

    original = pipe.transformer.forward
    pipe.transformer.forward = pointwise
    try:
        run = lambda frac: pipe("x", scaffold=video, mask=mask, num_inference_steps=4, guidance_scale=1.0, late_roll_fraction=frac,
                                output_type="latent", generator=torch.Generator().manual_seed(2)).frames
        plain = run(0.0)
        plain_inputs, seen[:] = list(seen), []
        rolled = run(1.0)
    finally:
        pipe.transformer.forward = original
    torch.testing.assert_close(rolled, plain, rtol=1e-6, atol=1e-6)
    first_plain, first_rolled = plain_inputs[0], seen[0]
    shift = next(k for k in range(8) if torch.equal(torch.roll(first_plain, k, dims=-1), first_rolled))
    assert shift > 0 or torch.equal(first_plain, first_rolled)
    assert any(not torch.equal(a, b) for a, b in zip(plain_inputs, seen))  # some step was rolled
