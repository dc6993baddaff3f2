"""Video speed benchmark (issue 14): the stock diffusers Wan I2V pipeline and ours with each speed
option, on the SAME full-size Wan2.1-I2V-14B transformer (random bf16 weights) in one run.

    python benchmarks/video.py --speed             # CUDA: < 10 minutes on an H200
    python benchmarks/video.py --speed --smoke     # CPU: tiny model, the exact options only

Rows, in an order that keeps the irreversible options (compile, FP8) last:

1. stock ``WanImageToVideoPipeline``, eager, torch SDPA (what a user of diffusers gets);
2. ours, eager SDPA (same work: the ratio to 1 is our pipeline's overhead);
3. ours, cuDNN attention; 4. + CFG as one batch of 2; 5. + FirstBlockCache (0.05) — on random
   weights the cache's skip rate says nothing about trained ones;
6. ours, cuDNN + ``compile_repeated_blocks`` (first step = compile, reported apart);
7. + FP8 row-wise (torchao) on the blocks' linears (recompiles);
8. turbo: the video stage's turbo settings (lightx2v's 4 steps, guidance 1, FP8, cuDNN) as a whole
   call: condition encode + 4 steps + seam-aware VAE decode of 81 frames at 480p.

Seconds per denoising step (CFG 5 = 2 passes, 81 frames, 480p panorama latent 21 x 60 x 120) after
``--warmup`` steps, peak GPU memory, and each option's output relative error: one transformer pass on
fixed inputs against the eager SDPA bf16 pass (random weights: the error of the arithmetic, not of a
trained model). Writes $OUT/video_speed.json when OUT is set.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from common import write_results  # benchmarks/common.py (scripts run from this folder)

GB = 1e9


def main(args) -> int:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from PIL import Image

    from matrix_world.generation.wan_pipeline import WAN_I2V_14B_CONFIG, PanoVideoPipeline
    from matrix_world.generation.wan_speed import SpeedPlan, apply_speed, plan_speed, remove_speed
    from video import TINY_CONFIG, StepTimer, build_transformer, sync  # benchmarks/video.py

    start = time.perf_counter()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    cuda = device.type == "cuda"
    h, w = (32, 64) if args.smoke else (480, 960)
    frames = 9 if args.smoke else args.frames
    cfg = TINY_CONFIG if args.smoke else WAN_I2V_14B_CONFIG
    dim_text, dim_image, n_image = (32, 8, 17) if args.smoke else (4096, 1280, 257)
    dtype = torch.bfloat16

    # 1. One transformer and VAE (random), our pipeline and the stock one around them.
    t0 = time.perf_counter()
    transformer = build_transformer(cfg, device, dtype)
    vae_kw = {"base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1} if args.smoke else {}
    with torch.device(device):
        vae = AutoencoderKLWan(**vae_kw).to(dtype).eval()
    parts = {"tokenizer": None, "text_encoder": None, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
             "image_processor": None, "image_encoder": None, "transformer": transformer}
    ours, stock = PanoVideoPipeline(**parts), WanImageToVideoPipeline(**parts)
    for p in (ours, stock):
        p.set_progress_bar_config(disable=True)
    sync(device)
    build_s = time.perf_counter() - t0

    # 2. Inputs of the real shapes: random embeddings, a random scaffold and mask.
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 512, dim_text, generator=g).to(device, dtype)
    negative = torch.randn(1, 512, dim_text, generator=g).to(device, dtype)
    image_embeds = torch.randn(1, n_image, dim_image, generator=g).to(device, dtype)
    stock.encode_image = lambda image, device=None: image_embeds  # no CLIP built: hand stock the same tokens
    scaffold = torch.rand(1, 3, frames, h, w, generator=g)
    mask = torch.rand(1, frames, h, w, generator=g) > 0.3
    mask[:, 0] = True
    condition = ours.encode_scaffold(scaffold.to(device), mask.to(device), device=device, dtype=dtype)
    t_lat = (frames - 1) // 4 + 1
    noise = torch.randn(1, 16, t_lat, h // 8, w // 8, generator=torch.Generator().manual_seed(1))
    probe = torch.cat([noise.to(device, dtype), condition], dim=1)  # one fixed transformer input [1, 36, T, h, w]

    def one_pass() -> torch.Tensor:
        with torch.no_grad(), transformer.cache_context("probe"):
            out = transformer(hidden_states=probe, timestep=torch.tensor([500.0], device=device), encoder_hidden_states=text,
                              encoder_hidden_states_image=image_embeds, return_dict=False)[0]
        return out.float()

    reference = one_pass()
    rows: list[dict[str, Any]] = []
    steps = args.warmup + args.steps

    def row(name: str, *, pipeline: str = "ours", plan: SpeedPlan | None = None, cfg_batch: bool = False,
            error: bool = True, note: str = "") -> dict | None:
        elapsed = time.perf_counter() - start
        guess = max([r.get("first_step_s", 0) + r.get("s_per_step", 0) * steps for r in rows if "s_per_step" in r], default=0)
        if elapsed + guess > args.budget_s:
            rows.append({"row": name, "skipped": "time budget"})
            print(f"skip {name}: time budget", flush=True)
            return None
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        timer = StepTimer(device)
        common = {"num_inference_steps": steps, "guidance_scale": 5.0, "prompt_embeds": text, "negative_prompt_embeds": negative,
                  "latents": noise.clone(), "output_type": "latent", "callback_on_step_end": timer}
        t1 = time.perf_counter()
        if pipeline == "stock":
            stock(image=Image.new("RGB", (w, h), (120, 90, 60)), height=h, width=w, num_frames=frames, **common)
        else:
            ours(condition=condition, image_embeds=image_embeds, cfg_batch=cfg_batch, **common)
        sync(device)
        call_s = time.perf_counter() - t1
        first = timer.times[0] - t1
        out = {"row": name, "pipeline": pipeline, "s_per_step": round(timer.per_step(args.warmup), 3),
               "first_step_s": round(first, 1), "call_s": round(call_s, 1), "steps": steps,
               "peak_gb": round(torch.cuda.max_memory_allocated(device) / GB, 1) if cuda else None,
               "plan": None if plan is None else plan.to_dict(), "note": note}
        if error:
            y = one_pass()
            out["rel_error_vs_eager_sdpa"] = float((y - reference).norm() / reference.norm())
        rows.append(out)
        print({k: v for k, v in out.items() if k != "plan"}, flush=True)
        write_results("video_speed", {"partial": True, "rows": rows})  # a later kill keeps the rows measured so far
        return out

    exact = SpeedPlan(attention="native")
    apply_speed(ours, exact)
    turbo_note = "with the options of the rows above it still on the transformer (cuDNN, compiled, FP8 on CUDA)"
    if args.speed_turbo_only:  # the turbo call with the options auto picks for it (4 passes: no compile, no FP8)
        auto = plan_speed(device=device, passes=4, memory_mode="full", approximate=True)
        apply_speed(ours, auto)
        turbo_note = f"auto options: {auto.to_dict()}"
    else:
        row("stock, eager SDPA", pipeline="stock", error=False, note="diffusers WanImageToVideoPipeline")
        row("ours, eager SDPA", plan=exact)
    if cuda and not args.speed_turbo_only:
        cudnn = SpeedPlan(attention="cudnn")
        apply_speed(ours, cudnn)
        row("ours, cuDNN attention", plan=cudnn)
        row("ours, cuDNN, CFG batched", plan=cudnn, cfg_batch=True, error=False, note="cond + uncond as one batch of 2")
        fbc = SpeedPlan(attention="cudnn", cache="fbc", cache_threshold=0.05)
        apply_speed(ours, fbc)
        row("ours, cuDNN + FirstBlockCache 0.05", plan=fbc, error=False,
            note="random weights: the skip rate says nothing about trained weights")
        remove_speed(ours)
        compiled = SpeedPlan(attention="cudnn", compile="blocks")
        apply_speed(ours, compiled)
        row("ours, cuDNN + compiled blocks", plan=compiled, note="first step includes the compile")
        fp8 = plan_speed(attention="cudnn", compile="off", fp8="rowwise", device=device, passes=100, memory_mode="full")
        try:
            apply_speed(ours, fp8)  # quantise the (already compile-marked) blocks: they recompile
        except Exception as exc:  # noqa: BLE001 - a failing option is a row of the table, not the end of the run
            rows.append({"row": "ours, + FP8", "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
        else:
            row("ours, cuDNN + compiled + FP8 row-wise", plan=fp8, note="first step includes quantise + recompile")
    # 8. Turbo: the whole 4-step call as the video stage makes it (condition encode and VAE decode included).
    elapsed = time.perf_counter() - start
    if elapsed + 60 < args.budget_s:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t1 = time.perf_counter()
        cond = ours.encode_scaffold(scaffold.to(device), mask.to(device), device=device, dtype=dtype)
        sync(device)
        encode_s = time.perf_counter() - t1
        timer = StepTimer(device)
        latents = ours(condition=cond, image_embeds=image_embeds, prompt_embeds=text, num_inference_steps=4, guidance_scale=1.0,
                       sigma_schedule="lightx2v", latents=noise.clone(), output_type="latent", callback_on_step_end=timer).frames
        sync(device)
        denoise_s = time.perf_counter() - t1 - encode_s
        t2 = time.perf_counter()
        video = ours.decode_latents(latents)
        sync(device)
        decode_s = time.perf_counter() - t2
        rows.append({"row": "turbo video call (4 steps, guidance 1, lightx2v sigmas)", "pipeline": "ours",
                     "encode_s": round(encode_s, 2), "denoise_s": round(denoise_s, 2), "decode_s": round(decode_s, 2),
                     "total_s": round(time.perf_counter() - t1, 2), "s_per_step": round(denoise_s / 4, 3),
                     "peak_gb": round(torch.cuda.max_memory_allocated(device) / GB, 1) if cuda else None,
                     "frames_out": list(video.shape), "finite": bool(torch.isfinite(video).all()),
                     "note": turbo_note})
        print(rows[-1], flush=True)
    else:
        rows.append({"row": "turbo video call", "skipped": "time budget"})

    # 3. Report: the table, the ratios to stock.
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke)", "torch": torch.__version__,
              "transformer_params_b": round(sum(p.numel() for p in transformer.parameters()) / 1e9, 2),
              "frames": frames, "height": h, "build_s": round(build_s, 1), "rows": rows,
              "total_s": round(time.perf_counter() - start, 1), "smoke": args.smoke}
    write_results("video_speed", result)
    stock_s = next((r["s_per_step"] for r in rows if r.get("pipeline") == "stock" and "s_per_step" in r), math.nan)
    print("\n| row | s/step | vs stock | first step s | peak GB | rel. error vs eager SDPA |\n|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['row']} | skipped: {r['skipped']} | | | | |")
            continue
        err = r.get("rel_error_vs_eager_sdpa")
        print(f"| {r['row']} | {r['s_per_step']:.3f} | {stock_s / r['s_per_step']:.2f}x | {r.get('first_step_s', '')} | "
              f"{r.get('peak_gb')} | {'' if err is None else f'{err:.4f}'} |")
    print(f"total {result['total_s']:.0f} s")
    return 0
