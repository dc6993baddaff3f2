"""Panorama stage benchmark: full-size FLUX.1-dev transformer + FLUX VAE with random bf16 weights,
built directly on the GPU, run through OUR panorama pipeline (late-step rolls + wrap-aware decode).

    python benchmarks/panorama.py            # CUDA: the full table, ~2-3 minutes on an H100/H200
    python benchmarks/panorama.py --smoke    # CPU: same code path, tiny model, seconds

Measures
1. seconds per denoising step (median over the measured steps, after warm-up; guidance-
   distilled FLUX = one transformer pass per step) and peak GPU memory of the whole call
   (torch.cuda.max_memory_allocated, decode included) at 1024x512 and 2048x1024, memory mode
   ``full`` (everything resident) and ``lowvram`` (diffusers group offloading, block level,
   CUDA-stream prefetch; weights in CPU RAM); the decode time is reported apart;
2. the seam metric (generation.seamless.seam_score: mean |first - last column| over mean
   |interior neighbour difference|) of a full-size random-weight FLUX VAE decode of a smooth
   latent that is periodic in longitude: plain decode vs wrap decode (2/4/8 latent columns)
   vs Argus-style blended decode, next to the truly periodic reference (the middle third of
   a decode of the latent tiled three times), plus each method's mean error to that reference
   on the 16 border pixel columns.

Random weights prove wiring, memory and speed, nothing about image quality. The text encoders
are not built: random prompt embeddings of FLUX's shapes ([1, 512, 4096] T5, [1, 768] CLIP
pooled) are fed instead (in real use the T5-XXL encoder adds 9.5 GB in ``full`` mode, none
during denoising in ``offload``/``lowvram``). Writes $OUT/panorama.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch

from common import GB, write_results  # benchmarks/common.py (scripts run from this folder)

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
FLUX_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=16, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False, sample_size=1024)
TINY = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                latent_channels=4, norm_num_groups=4, scaling_factor=0.5, shift_factor=0.1,
                use_quant_conv=False, use_post_quant_conv=False)


def build_on(device, dtype, fn):
    """Construct a module with random weights directly on ``device`` in ``dtype`` (never on the CPU first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = fn()
    finally:
        torch.set_default_dtype(previous)
    return module.eval().requires_grad_(False)


def build_pipeline(smoke: bool, device, dtype):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from matrix_world.generation.panorama import flux_panorama_pipeline_class

    transformer = build_on(device, dtype, lambda: FluxTransformer2DModel(**(TINY if smoke else FLUX_DEV)))
    vae = build_on(device, dtype, lambda: AutoencoderKL(**(TINY_VAE if smoke else FLUX_VAE)))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    cls = flux_panorama_pipeline_class()
    pipe = cls(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
               transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device):
    return torch.cuda.max_memory_allocated(device) / GB if torch.device(device).type == "cuda" else None


def run_generation(pipe, height: int, steps: int, warmup: int, device, smoke: bool) -> dict:
    """One panorama call with random prompt embeddings; per-step times from callback_on_step_end."""
    t5_len, t5_dim, pooled = (16, 32, 32) if smoke else (512, 4096, 768)
    g = torch.Generator("cpu").manual_seed(0)
    dtype = pipe.transformer.dtype
    prompt_embeds = torch.randn(1, t5_len, t5_dim, generator=g).to(device, dtype)
    pooled_embeds = torch.randn(1, pooled, generator=g).to(device, dtype)
    stamps = []

    def on_step(pipeline, i, t, kwargs):
        sync(device)
        stamps.append(time.perf_counter())
        return {}

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    images, shifts = pipe.panorama(height=height, num_inference_steps=steps, roll_fraction=0.4,
                                   roll_generator=torch.Generator("cpu").manual_seed(1), decode="wrap", wrap_pad_cols=4,
                                   prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_embeds, guidance_scale=7.0,
                                   generator=g, callback_on_step_end=on_step)
    sync(device)
    end = time.perf_counter()
    deltas = [b - a for a, b in zip(stamps[:-1], stamps[1:])][warmup:]
    deltas.sort()
    step_s = deltas[len(deltas) // 2] if deltas else float("nan")
    return {"height": height, "width": 2 * height, "steps": steps, "s_per_step": round(step_s, 4),
            "decode_s": round(end - stamps[-1], 3), "total_s": round(end - start, 3), "peak_gb": _r(peak_gb(device)),
            "rolled_steps": sum(1 for s in shifts if s), "finite": bool(torch.isfinite(images).all())}


def smooth_periodic_latent(channels: int, h: int, w: int, device, dtype, seed: int = 0):
    """A smooth latent, periodic in width (low longitude frequencies) and smooth in height."""
    g = torch.Generator("cpu").manual_seed(seed)
    x = torch.arange(w) / w * 2 * math.pi
    y = torch.linspace(0, math.pi, h)[:, None]
    z = torch.zeros(1, channels, h, w)
    for k in (1, 2, 3, 4):
        a, b, c = (torch.randn(1, channels, 1, 1, generator=g) for _ in range(3))
        z += (a * torch.cos(k * x) + b * torch.sin(k * x)) * (1 + 0.5 * c * torch.cos(k * y)) / k
    return z.to(device, dtype)


def seam_study(vae, latent_h: int, device) -> dict:
    from matrix_world.generation.seamless import blended_decode, seam_score, wrap_decode

    w = 2 * latent_h
    z = smooth_periodic_latent(vae.config.latent_channels, latent_h, w, device, vae.dtype)

    def decode(t):
        return vae.decode(t, return_dict=False)[0].float()

    out: dict[str, Any] = {}
    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        plain = decode(z)
        sync(device)
        out["decode_s"] = round(time.perf_counter() - t0, 3)
        ref = decode(torch.cat((z, z, z), dim=-1))
        width = plain.shape[-1]
        ref = ref[..., width : 2 * width]
        variants = {"plain": plain, "wrap2": wrap_decode(decode, z, 2), "wrap4": wrap_decode(decode, z, 4),
                    "wrap8": wrap_decode(decode, z, 8), "blended": blended_decode(decode, z), "reference": ref}
    border = list(range(8)) + list(range(-8, 0))
    for name, img in variants.items():
        img = (img / 2 + 0.5).clamp(0, 1)
        r = (ref / 2 + 0.5).clamp(0, 1)
        out[name] = {"seam": round(seam_score(img), 4), "border_err": round(float((img - r)[..., border].abs().mean()), 5)}
    out["finite"] = bool(torch.isfinite(plain).all())
    return out


def _r(x, n=2):
    return None if x is None else round(x, n)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU, seconds")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per measured call (default 6 GPU, 3 smoke)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--skip-lowvram", action="store_true")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device: run with --smoke on CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    steps = args.steps or (6 if cuda else 3)
    heights = (512, 1024) if cuda else (32, 64)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "rows": [], "seam": {}}
    import diffusers

    results["diffusers"] = diffusers.__version__
    t0 = time.perf_counter()
    torch.manual_seed(0)
    pipe = build_pipeline(args.smoke, device, dtype)
    sync(device)
    results["build_s"] = round(time.perf_counter() - t0, 2)
    results["transformer_params_b"] = round(sum(p.numel() for p in pipe.transformer.parameters()) / 1e9, 3)
    for h in heights:
        row = run_generation(pipe, h, steps, args.warmup, device, args.smoke)
        results["rows"].append({"mode": "full", **row})
        print(json.dumps(results["rows"][-1]), flush=True)
    for h in heights:
        results["seam"][f"{2 * h}x{h}"] = seam_study(pipe.vae, h // 8, device)  # both VAEs scale by 8
        print(f"seam {2 * h}x{h}:", json.dumps(results["seam"][f"{2 * h}x{h}"]), flush=True)
    save(results)
    if not args.skip_lowvram:  # on CPU (smoke) the mode degenerates to 'everything on the CPU'
        from matrix_world.generation.memory import apply_memory_mode

        try:
            t0 = time.perf_counter()
            pipe.to("cpu")
            if cuda:
                torch.cuda.empty_cache()
            info = apply_memory_mode(pipe, "lowvram", device, vae_tiling=True)
            results["lowvram_setup_s"] = round(time.perf_counter() - t0, 2)
            for h in heights:
                row = run_generation(pipe, h, steps, args.warmup, device, args.smoke)
                results["rows"].append({"mode": "lowvram", **row, **info})
                print(json.dumps(results["rows"][-1]), flush=True)
        except (RuntimeError, ValueError, TypeError, AttributeError) as exc:  # keep the full-mode numbers
            results["lowvram_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print("lowvram failed:", results["lowvram_error"], flush=True)
    # table
    print(f"\nFLUX transformer ({results['transformer_params_b']}B params, random {str(dtype).replace('torch.', '')}) on {results['device']}")
    print(f"{'mode':8s} {'size':>10s} {'s/step':>8s} {'decode s':>9s} {'peak GB':>8s}")
    for r in results["rows"]:
        print(f"{r['mode']:8s} {r['width']:>5d}x{r['height']:<4d} {r['s_per_step']:8.3f} {r['decode_s']:9.2f} {str(r['peak_gb']):>8s}")
    print("\nseam score (1 ~ seamless; reference = periodic decode) | mean border error to the reference")
    for size, s in results["seam"].items():
        cells = "  ".join(f"{k} {v['seam']:.3f}|{v['border_err']:.4f}" for k, v in s.items() if isinstance(v, dict))
        print(f"{size:>10s}  {cells}")
    save(results)
    return 0


def save(results: dict) -> None:
    """Write $OUT/panorama.json (called after each section, so a late failure keeps the numbers)."""
    write_results("panorama", results)


if __name__ == "__main__":
    sys.exit(main())
