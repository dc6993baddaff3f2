"""The Wan VAE of the video stage, untiled against tiled: seconds and GPU memory of the scaffold
encode and of the seam-aware decode (issue 14, the lowvram peak).

The VAE is the full-size Wan2.1 ``AutoencoderKLWan()`` with random weights in float32 (the dtype
``load_video_pipeline`` loads it in), resident on the GPU as lowvram keeps it. The calls are the video
stage's own: ``PanoVideoPipeline.encode_scaffold`` (masked scaffold video -> condition) and
``PanoVideoPipeline.decode_latents`` (``seam="wrap"``: the latents padded with wrapped columns). For
each height (width 2x, 81 frames) and each tiling (none, or diffusers' ``enable_tiling`` with a tile
size and stride in pixels) it records the seconds, the rise of the peak allocated memory above what
was allocated before the call (what the call adds to a stage whose other models are offloaded), and,
tiled, the decode's difference from the untiled decode (random weights: a wiring check of the tile
blending, not a quality figure).

    python benchmarks/vae.py                       # 480p and 720p, four tilings, on CUDA
    python benchmarks/vae.py --smoke               # tiny VAE on the CPU (wiring only)
"""

from __future__ import annotations

import argparse
import time

import torch

from common import GB, sync, write_results  # benchmarks/common.py

TILINGS = ("none", "256:192", "384:320", "512:448")


def tiling_arg(text: str) -> tuple[int, int] | None:
    """'none' -> None; 'SIZE:STRIDE' -> (size, stride) in pixels, stride < size, both multiples of 8."""
    if text == "none":
        return None
    try:
        size, stride = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a tiling is 'none' or SIZE:STRIDE in pixels (e.g. 256:192), got {text!r}") from None
    if not (0 < stride < size) or size % 8 or stride % 8:
        raise argparse.ArgumentTypeError(f"a tiling needs 0 < STRIDE < SIZE, both multiples of 8, got {text!r}")
    return size, stride


def measured(device: torch.device, fn):
    """(result, seconds, GB the call raised the peak above what was allocated before it)."""
    cuda = device.type == "cuda"
    sync(device)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - t0
    rise = (torch.cuda.max_memory_allocated(device) - before) / GB if cuda else None
    return out, seconds, rise


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heights", type=int, nargs="+", default=[480, 720])
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--tilings", type=tiling_arg, nargs="+", default=[tiling_arg(t) for t in TILINGS],
                   help=f"'none' or SIZE:STRIDE in pixels (default {' '.join(TILINGS)})")
    p.add_argument("--smoke", action="store_true", help="tiny VAE, 32 px high, 9 frames, on the CPU")
    args = p.parse_args(argv)

    from diffusers import AutoencoderKLWan

    from matrix_world.generation.memory import set_vae_tiling
    from matrix_world.generation.wan_pipeline import PanoVideoPipeline

    torch.set_num_threads(min(torch.get_num_threads(), 2)) if args.smoke else None
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    heights = [32] if args.smoke else args.heights
    frames = 9 if args.smoke else args.frames
    tilings = [None, (16, 8)] if args.smoke else args.tilings

    # 1. The VAE (random, seeded, float32) on the device, in a pipeline that holds nothing else.
    torch.manual_seed(0)
    kw = {"base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1} if args.smoke else {}
    with torch.device(device):
        vae = AutoencoderKLWan(**kw).eval().requires_grad_(False)
    pipe = PanoVideoPipeline(tokenizer=None, text_encoder=None, image_encoder=None, image_processor=None,
                             transformer=None, vae=vae, scheduler=None)
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "frames": frames, "vae_dtype": str(vae.dtype),
                     "vae_weights_gb": round(sum(t.numel() * t.element_size() for t in vae.parameters()) / GB, 3), "rows": []}

    # 2. Per height: the same scaffold, mask and latents through every tiling.
    g = torch.Generator().manual_seed(0)
    for h in heights:
        w, t_lat = 2 * h, (frames - 1) // 4 + 1
        scaffold = torch.rand(1, 3, frames, h, w, generator=g).to(device)
        mask = (torch.rand(1, frames, h, w, generator=g) > 0.3).to(device)
        latents = torch.randn(1, 16, t_lat, h // 8, w // 8, generator=g).to(device)
        reference = None
        for tiling in tilings:
            set_vae_tiling(vae, tiling is not None, tile=tiling)
            _, enc_s, enc_gb = measured(device, lambda s=scaffold, m=mask: pipe.encode_scaffold(s, m, device=device))
            video, dec_s, dec_gb = measured(device, lambda z=latents: pipe.decode_latents(z, seam="wrap"))
            row = {"height": h, "width": w, "tiling": "none" if tiling is None else f"{tiling[0]}:{tiling[1]}",
                   "encode_s": round(enc_s, 3), "encode_peak_rise_gb": None if enc_gb is None else round(enc_gb, 2),
                   "decode_s": round(dec_s, 3), "decode_peak_rise_gb": None if dec_gb is None else round(dec_gb, 2)}
            if reference is None:
                reference = video
            else:
                row["decode_max_abs_diff_vs_untiled"] = round((video - reference).abs().max().item(), 4)
                row["decode_mean_abs_diff_vs_untiled"] = round((video - reference).abs().mean().item(), 5)
            del video
            results["rows"].append(row)
            print(row, flush=True)
            write_results("vae", results)
        del reference, scaffold, mask, latents

    # 3. The table.
    print(f"\nWan VAE ({results['vae_dtype']}, {results['vae_weights_gb']} GB of weights, random), {frames} frames, "
          f"{results['device']}; peak rise = GB above what was allocated before the call")
    print("| height | tiling (px size:stride) | encode s | encode peak rise GB | decode s | decode peak rise GB | decode max / mean abs diff vs untiled |")
    print("|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        diff = (f"{r['decode_max_abs_diff_vs_untiled']} / {r['decode_mean_abs_diff_vs_untiled']}"
                if "decode_max_abs_diff_vs_untiled" in r else "-")
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"| {r['height']} | {r['tiling']} | {r['encode_s']:.2f} | {fmt(r['encode_peak_rise_gb'])} | "
              f"{r['decode_s']:.2f} | {fmt(r['decode_peak_rise_gb'])} | {diff} |")
    return results


if __name__ == "__main__":
    main()
