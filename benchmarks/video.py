"""Video stage benchmark: the full-size Wan2.1-I2V-14B transformer (random bf16 weights built
directly on the GPU) inside OUR PanoVideoPipeline, per memory mode, at 480p and 720p, next to
the stock diffusers WanImageToVideoPipeline running the same transformer.

    python benchmarks/video.py                 # CUDA: the full table, < 10 minutes
    python benchmarks/video.py --smoke         # CPU: same code path, tiny model, seconds
    python benchmarks/video.py --speed         # the speed options: stock vs ours per option (video_speed.py)

Measures seconds per denoising step (81 frames, classifier-free guidance = 2 transformer
passes per step, after ``--warmup`` steps, mean of ``--steps`` steps) and the peak GPU memory
of the call (torch.cuda.max_memory_allocated; decoding excluded: output_type="latent").

Random weights prove wiring, memory and speed, nothing about quality. What runs at full size:
the transformer (16.4B), the Wan VAE (our scaffold condition is encoded once per resolution
and passed in; the stock pipeline encodes its image inside every call). The text and image
encoders are NOT built by default: random prompt / negative / CLIP embeddings of the real
shapes ([1, 512, 4096], [1, 257, 1280]) are passed instead, and the stock pipeline's CLIP call
is replaced by returning those embeddings. ``--encoders full`` builds random full-size
UMT5-XXL and CLIP ViT-H/14 too (so `full` mode holds them on the GPU, +~14 GB).

Rows whose predicted time would pass ``--budget-s`` are skipped and listed as such. Writes
$OUT/video.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from common import GB, write_results  # benchmarks/common.py (scripts run from this folder)

TINY_CONFIG = {
    "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 36, "out_channels": 16, "text_dim": 32,
    "freq_dim": 32, "ffn_dim": 32, "num_layers": 2, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "image_dim": 8,
    "added_kv_proj_dim": 24, "rope_max_seq_len": 64,
}


def build_transformer(config: dict, device: torch.device, dtype: torch.dtype):
    """WanTransformer3DModel with random weights created directly on ``device`` in ``dtype``
    (modules diffusers keeps in float32 are cast back to float32, as from_pretrained does)."""
    from diffusers import WanTransformer3DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            tr = WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    keep = set(WanTransformer3DModel._keep_in_fp32_modules)
    with torch.no_grad():
        for name, param in tr.named_parameters():
            if keep & set(name.split(".")):
                param.data = param.data.float()
        for name, module in tr.named_modules():
            if name and name.split(".")[-1] in keep:
                module.to(torch.float32)  # buffers too (rope)
    return tr.eval().requires_grad_(False)


def build_encoders(full_size: bool, device, smoke: bool):
    """(text_encoder, image_encoder, image_processor) random, or Nones."""
    if not full_size:
        return None, None, None
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    if smoke:
        t5 = UMT5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=32, num_layers=2, num_heads=2)
        clip = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    else:  # umt5-xxl encoder and open-clip ViT-H/14 as shipped with Wan2.1-I2V
        t5 = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
        clip = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                                image_size=224, patch_size=14, hidden_act="gelu")
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(device):
            text_encoder = UMT5EncoderModel(t5).eval()
        torch.set_default_dtype(torch.float32)
        with torch.device(device):
            image_encoder = CLIPVisionModel(clip).eval()
    finally:
        torch.set_default_dtype(previous)
    size = clip.image_size
    return text_encoder, image_encoder, CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})  # type: ignore[dict-item]  # transformers types image_size loosely; an int here


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """callback_on_step_end that records the (synchronised) time at the end of every step."""

    def __init__(self, device):
        self.device, self.times = device, []

    def __call__(self, pipe, i, t, kwargs):
        sync(self.device)
        self.times.append(time.perf_counter())
        return {}

    def per_step(self, warmup: int) -> float:
        ends = self.times[max(warmup - 1, 0):]
        return (ends[-1] - ends[0]) / max(len(ends) - 1, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU (checks the code path)")
    parser.add_argument("--resolutions", nargs="+", default=["480p", "720p"])
    parser.add_argument("--modes", nargs="+", default=["full", "offload", "lowvram"])
    parser.add_argument("--steps", type=int, default=2, help="measured steps per row")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--encoders", choices=["random-tensors", "full"], default="random-tensors")
    parser.add_argument("--no-stock", action="store_true")
    parser.add_argument("--cfg-batch-row", action="store_true", help="also time ours with cond+uncond batched (480p, full)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip rows predicted to end after this")
    parser.add_argument("--speed", action="store_true",
                        help="the speed options instead (benchmarks/video_speed.py): stock vs ours with each option")
    parser.add_argument("--rows", nargs="+", default=None, help="--speed: the rows, in order (default: video_speed.DEFAULT_ROWS)")
    parser.add_argument("--heights", nargs="+", type=int, default=[480], help="--speed: panorama heights (480, 720)")
    parser.add_argument("--cache-steps", type=int, default=9, help="--speed: steps of the cache / CFG-truncation rows")
    args = parser.parse_args(argv)
    if args.speed:
        from video_speed import main as speed_main  # benchmarks/video_speed.py

        return speed_main(args)

    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
    )
    from matrix_world.generation.memory import apply_memory_mode
    from matrix_world.generation.wan_pipeline import (
        WAN_I2V_14B_CONFIG,
        PanoVideoPipeline,
    )
    from PIL import Image

    start = time.perf_counter()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        print("no CUDA device: running the --smoke configuration", file=sys.stderr)
        args.smoke = True
    sizes = {"480p": (32, 64), "720p": (48, 96)} if args.smoke else {"480p": (480, 960), "720p": (720, 1440)}
    frames = 9 if args.smoke else args.frames
    cfg = TINY_CONFIG if args.smoke else WAN_I2V_14B_CONFIG
    dim_text, dim_image, n_image = (32, 8, 17) if args.smoke else (4096, 1280, 257)

    # 1. Components: transformer (random bf16, built on the device), VAE, optional encoders.
    t0 = time.perf_counter()
    transformer = build_transformer(cfg, device, torch.bfloat16)
    vae_kw = {"base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1} if args.smoke else {}
    with torch.device(device):
        vae = AutoencoderKLWan(**vae_kw).to(torch.bfloat16).eval()
    text_encoder, image_encoder, image_processor = build_encoders(args.encoders == "full", device, args.smoke)
    sync(device)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in transformer.parameters())
    components = {"tokenizer": None, "text_encoder": text_encoder, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
                      "image_processor": image_processor, "image_encoder": image_encoder, "transformer": transformer}
    ours = PanoVideoPipeline(**components)
    stock = WanImageToVideoPipeline(**components)
    for p in (ours, stock):
        p.set_progress_bar_config(disable=True)

    # 2. Conditioning of the real shapes (random); text embeddings from the random UMT5 if built.
    g = torch.Generator().manual_seed(0)
    if text_encoder is not None:
        ids = torch.randint(0, text_encoder.config.vocab_size, (2, 512), generator=g).to(device)
        with torch.no_grad():
            emb = text_encoder(ids, torch.ones_like(ids)).last_hidden_state.to(torch.bfloat16)
        prompt_embeds, negative_embeds = emb[:1], emb[1:]
    else:
        prompt_embeds = torch.randn(1, 512, dim_text, generator=g).to(device, torch.bfloat16)
        negative_embeds = torch.randn(1, 512, dim_text, generator=g).to(device, torch.bfloat16)
    image_embeds = torch.randn(1, n_image, dim_image, generator=g).to(device, torch.bfloat16)
    if image_encoder is None:  # stock insists on computing CLIP tokens from its image: hand it ours
        stock.encode_image = lambda image, device=None: image_embeds
    conditions, encode_s = {}, {}
    for res in args.resolutions:
        h, w = sizes[res]
        scaffold = torch.rand(1, 3, frames, h, w, generator=g)
        mask = torch.rand(1, frames, h, w, generator=g) > 0.3
        mask[:, 0] = True
        t0 = time.perf_counter()
        conditions[res] = ours.encode_scaffold(scaffold.to(device), mask.to(device), device=device, dtype=torch.bfloat16)
        sync(device)
        encode_s[res] = time.perf_counter() - t0
        del scaffold, mask
    images = {res: Image.new("RGB", (sizes[res][1], sizes[res][0]), (120, 90, 60)) for res in args.resolutions}

    # 3. Rows.
    rows: list[dict[str, Any]] = []
    step_guess: dict[str, float] = {}
    total_steps = args.warmup + args.steps

    def run_row(which: str, mode: str, res: str, cfg_batch: bool = False, note: str = ""):
        h, w = sizes[res]
        guess = step_guess.get(res)
        predicted = (guess or 0.0) * (total_steps + 1) * (1.1 if mode != "full" else 1.0)
        if time.perf_counter() - start + predicted > args.budget_s:
            rows.append({"pipeline": which, "mode": mode, "resolution": res, "cfg_batch": cfg_batch, "skipped": "time budget"})
            print(f"skip {which} {mode} {res}: predicted to pass the {args.budget_s:.0f}s budget", flush=True)
            return
        timer = StepTimer(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        latents = torch.randn(1, 16, (frames - 1) // 4 + 1, h // 8, w // 8, generator=torch.Generator().manual_seed(1))
        common = {"num_inference_steps": total_steps, "guidance_scale": 5.0, "prompt_embeds": prompt_embeds,
                      "negative_prompt_embeds": negative_embeds, "latents": latents, "output_type": "latent",
                      "callback_on_step_end": timer}
        t0 = time.perf_counter()
        try:
            if which == "ours":
                ours(condition=conditions[res], image_embeds=image_embeds, cfg_batch=cfg_batch, **common)
            else:
                stock(image=images[res], height=h, width=w, num_frames=frames, **common)
            sync(device)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append({"pipeline": which, "mode": mode, "resolution": res, "cfg_batch": cfg_batch, "skipped": "CUDA out of memory"})
            print(f"{which} {mode} {res}: CUDA out of memory", flush=True)
            return
        call_s = time.perf_counter() - t0
        s_step = timer.per_step(args.warmup)
        step_guess[res] = max(step_guess.get(res, 0.0), s_step)
        peak = torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None
        row = {"pipeline": which, "mode": mode, "resolution": res, "cfg_batch": cfg_batch, "s_per_step": round(s_step, 3),
                   "steps_measured": args.steps, "peak_gb": None if peak is None else round(peak, 1), "call_s": round(call_s, 1), "note": note}
        rows.append(row)
        print(json.dumps(row), flush=True)

    # Phase A: everything on the device ("full").
    if "full" in args.modes:
        apply_memory_mode(ours, "full", device, vae_tiling=False)
        for res in args.resolutions:
            if not args.no_stock:
                run_row("stock", "full", res, note="stock WanImageToVideoPipeline")
            run_row("ours", "full", res)
            if res == "480p" and args.cfg_batch_row:
                run_row("ours", "full", res, cfg_batch=True, note="cond+uncond as one batch of 2")
    # Phases B, C: weights in CPU RAM.
    if device.type == "cuda" and ({"offload", "lowvram"} & set(args.modes)):
        ours.to("cpu")
        torch.cuda.empty_cache()
    if "offload" in args.modes:
        apply_memory_mode(ours, "offload", device)
        for res in args.resolutions:
            run_row("ours", "offload", res, note="model CPU offload; VAE tiling")
        ours.remove_all_hooks()
        ours.to("cpu")
    if "lowvram" in args.modes:
        apply_memory_mode(ours, "lowvram", device)
        for res in args.resolutions:
            run_row("ours", "lowvram", res, note="group offload, block level, CUDA stream; VAE tiling")

    # 4. Report.
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
                  "torch": torch.__version__, "transformer_params_b": round(params / 1e9, 2), "frames": frames,
                  "encoders": args.encoders, "build_s": round(build_s, 1), "encode_condition_s": {k: round(v, 2) for k, v in encode_s.items()},
                  "rows": rows, "total_s": round(time.perf_counter() - start, 1), "smoke": args.smoke}
    print(f"\nWan2.1-I2V transformer {params / 1e9:.2f}B params (random bf16), {frames} frames, CFG 5 (2 passes/step), "
          f"device {result['device']}, encoders: {args.encoders}")
    print(f"{'pipeline':8} {'mode':8} {'res':5} {'cfg_batch':9} {'s/step':>8} {'peak GB':>8}  note")
    for r in rows:
        if "skipped" in r:
            print(f"{r['pipeline']:8} {r['mode']:8} {r['resolution']:5} {r['cfg_batch']!s:9} {'skipped':>8} {'':>8}  {r['skipped']}")
        else:
            peak = "-" if r["peak_gb"] is None else f"{r['peak_gb']:.1f}"
            print(f"{r['pipeline']:8} {r['mode']:8} {r['resolution']:5} {r['cfg_batch']!s:9} {r['s_per_step']:8.3f} {peak:>8}  {r['note']}")
    done = {(r["pipeline"], r["mode"], r["resolution"], r["cfg_batch"]): r for r in rows if "skipped" not in r}
    for res in args.resolutions:
        a, b = done.get(("ours", "full", res, False)), done.get(("stock", "full", res, False))
        if a and b:
            print(f"{res}: ours/stock time ratio (full) {a['s_per_step'] / b['s_per_step']:.3f}")
    lv, fu = done.get(("ours", "lowvram", "480p", False)), done.get(("ours", "full", "480p", False))
    if lv and fu and lv["peak_gb"] is not None:
        print(f"480p lowvram: peak {lv['peak_gb']:.1f} GB (target < 24), time {lv['s_per_step'] / fu['s_per_step']:.2f}x full (target <= 1.5x)")
    print(f"total {result['total_s']:.0f} s")
    write_results("video", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
