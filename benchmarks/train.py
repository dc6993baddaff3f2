"""LoRA training benchmarks: seconds per optimizer step and peak GPU memory, one section per model.

    python benchmarks/train.py --what flux            # CUDA: full-size FLUX.1-dev, ~2-3 minutes on an H200
    python benchmarks/train.py --what flux --smoke    # CPU: the same code path with a tiny FLUX, seconds

Sections (``--what``, a dict of named sections; ``wan`` is added with the video LoRA training):

flux   the panorama LoRA of ``generation/train_pano_lora.py``: the FLUX.1-dev transformer
       (11.9B, config ``benchmarks/panorama.py: FLUX_DEV``) and FLUX VAE with random bf16 weights
       built directly on the GPU, frozen; the library's own ``add_lora`` (rank 16, attention
       targets, float32 LoRA), ``encode_latents`` and ``flow_matching_loss`` under accelerate's bf16
       mixed precision, AdamW, gradient clipping: one step = VAE encode of a random 1024x512
       panorama (posterior sample) + loss forward + backward + optimizer step. Rows: gradient
       checkpointing on / off x batch sizes (default 1 and 4); a row that runs out of memory is
       recorded as such (with the trainer's OOM message) and the next one runs. Seconds per step
       = median of the measured steps after ``--warmup`` steps; peak = torch.cuda.max_memory_allocated
       over the row. The text encoders are not built: random prompt embeddings of FLUX's shapes
       ([B, 512, 4096] T5, [B, 768] CLIP pooled) are fed (in training, T5-XXL adds ~9.5 GB when it
       stays on the GPU, as in scripts/train_pano_lora.py).

Random weights prove wiring, memory and speed, nothing about quality. Writes ``$OUT/train_<what>.json``
(via common.write_results) after every row, so a late failure keeps the rows measured so far.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import panorama as bench_panorama  # noqa: E402  (benchmarks/panorama.py: FLUX configs, build_on)
from common import GB, write_results  # noqa: E402  (benchmarks/common.py)



def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


# --------------------------------------------------------------------------- flux


def bench_flux(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from matrix_world.generation.train_pano_lora import (
        PanoLoraTrainConfig,
        add_lora,
        avoid_cudnn_attention_backward,
        encode_latents,
        flow_matching_loss,
        oom_message,
    )

    smoke = args.smoke
    accelerator = Accelerator(cpu=smoke, mixed_precision="no" if smoke else "bf16")
    avoid_cudnn_attention_backward()  # as the trainer does
    device = accelerator.device
    dtype = torch.float32 if smoke else torch.bfloat16
    height = args.height or (32 if smoke else 512)
    t5_len, t5_dim, pooled_dim = (16, 32, 32) if smoke else (512, 4096, 768)
    results: dict[str, Any] = {"what": "flux", "device": "cpu" if smoke else torch.cuda.get_device_name(device),
                               "torch": torch.__version__, "height": height, "width": 2 * height, "rows": []}
    import diffusers

    results["diffusers"] = diffusers.__version__

    # 1. the frozen base on the device (random weights), the LoRA of the trainer
    t0 = time.perf_counter()
    torch.manual_seed(0)
    transformer = bench_panorama.build_on(device, dtype, lambda: FluxTransformer2DModel(
        **(bench_panorama.TINY if smoke else bench_panorama.FLUX_DEV)))
    vae = bench_panorama.build_on(device, dtype, lambda: AutoencoderKL(
        **(bench_panorama.TINY_VAE if smoke else bench_panorama.FLUX_VAE)))
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    config = PanoLoraTrainConfig(data="-", out="-", steps=1, rank=args.rank, lora_alpha=float(args.rank)).resolved()
    params = add_lora(transformer, config)
    transformer.train()
    sync(device)
    results.update(build_s=round(time.perf_counter() - t0, 2), rank=args.rank, targets=list(config.lora_targets),
                   transformer_params_b=float(f"{sum(p.numel() for p in transformer.parameters()) / 1e9:.4g}"),
                   lora_params_m=float(f"{sum(p.numel() for p in params) / 1e6:.4g}"),
                   image_tokens=(height // vae_scale // 2) * (2 * height // vae_scale // 2), text_tokens=t5_len)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    model = accelerator.prepare(transformer)

    # 2. rows: gradient checkpointing on/off x batch sizes, each a fresh AdamW over the LoRA
    def train_step(optimizer, pixels, prompt_embeds, pooled, text_ids, g) -> tuple[float, float]:
        """One optimizer step as scripts/train_pano_lora.py takes it -> (loss, gradient norm before clipping).
        A function, so that an out-of-memory error frees its activations with its frame."""
        latents = encode_latents(vae, pixels, g).to(dtype)
        loss = flow_matching_loss(model, latents, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled,
                                  text_ids=text_ids, scheduler=scheduler, guidance=3.5, generator=g,
                                  vae_scale_factor=vae_scale)
        accelerator.backward(loss)
        norm = accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), float(norm)

    for batch in args.batch_sizes:
        for checkpointing in (True, False):
            row: dict[str, Any] = {"gradient_checkpointing": checkpointing, "batch": batch}
            if checkpointing:
                transformer.enable_gradient_checkpointing()
            else:
                transformer.disable_gradient_checkpointing()
            optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
            g = torch.Generator("cpu").manual_seed(0)
            pixels = torch.rand(batch, 3, height, 2 * height, generator=g) * 2 - 1
            prompt_embeds = torch.randn(batch, t5_len, t5_dim, generator=g).to(device, dtype)
            pooled = torch.randn(batch, pooled_dim, generator=g).to(device, dtype)
            text_ids = torch.zeros(t5_len, 3, device=device, dtype=dtype)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            times, losses, norms = [], [], []
            try:
                for _ in range(args.warmup + args.steps):
                    sync(device)
                    start = time.perf_counter()
                    loss, norm = train_step(optimizer, pixels, prompt_embeds, pooled, text_ids, g)
                    sync(device)
                    times.append(time.perf_counter() - start)
                    losses.append(loss)
                    norms.append(norm)
                row.update(s_per_step=round(_median(times[args.warmup:]), 4), first_step_s=round(times[0], 3),
                           peak_gb=round(torch.cuda.max_memory_allocated(device) / GB, 2) if device.type == "cuda" else None,
                           loss_finite=all(math.isfinite(v) for v in losses),
                           lora_grad_norm=round(_median(norms), 5))  # > 0: the LoRA is in the graph
            except torch.OutOfMemoryError:
                row.update(oom=True, message=oom_message(config, height=height, processes=1, what="in the benchmark"))
            del optimizer
            for p in params:
                p.grad = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            write_results("train_flux", results)

    # 3. the table
    print(f"\nFLUX LoRA training, transformer {results['transformer_params_b']}B (random {str(dtype)[6:]}), LoRA rank "
          f"{args.rank} ({results['lora_params_m']}M), {2 * height}x{height} ({results['image_tokens']} image + {t5_len} "
          f"text tokens), on {results['device']}")
    print(f"{'checkpointing':>13s} {'batch':>5s} {'s/step':>8s} {'peak GB':>8s}")
    for r in results["rows"]:
        cells = "out of memory" if r.get("oom") else f"{r['s_per_step']:8.3f} {str(r['peak_gb']):>8s}"
        print(f"{('on' if r['gradient_checkpointing'] else 'off'):>13s} {r['batch']:5d} {cells}")
    return results


SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {"flux": bench_flux}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", choices=sorted(SECTIONS), required=True, help="which model's LoRA training")
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU, seconds")
    p.add_argument("--height", type=int, default=None, help="training height (width = 2x); default 512 (smoke: 32)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="batch sizes (default 1 4; smoke: 1 2)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--steps", type=int, default=None, help="measured steps per row (default 5; smoke: 2)")
    p.add_argument("--warmup", type=int, default=2, help="steps before the measured ones")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke on CPU", file=sys.stderr)
        return 2
    args.batch_sizes = args.batch_sizes or ([1, 2] if args.smoke else [1, 4])
    args.steps = args.steps or (2 if args.smoke else 5)
    if args.smoke:
        args.warmup = min(args.warmup, 1)
    results = SECTIONS[args.what](args)
    write_results(f"train_{args.what}", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
