"""Per-step output error of each video speed approximation (issue 14, item 5a) on the full-size
Wan2.1-I2V-14B transformer with random bf16 weights: 480p panorama, 81 frames, CFG 5.

    python benchmarks/video_error.py                      # CUDA: the default variants, 6 steps
    python benchmarks/video_error.py --variants cudnn ts2 --steps 8
    python benchmarks/video_error.py --smoke              # CPU: tiny model, the code path

One exact run (torch SDPA, eager, bf16; the stock diffusers arithmetic) of ``--steps`` steps from fixed
noise records the latents after every step, ``x_ref[0..n]``. Each variant then runs the same steps
**teacher-forced**: after every step its latents are put back to the exact run's, so step k starts from
the exact ``x_ref[k]`` and its error is local to that step. Per step k:

* ``update``: ``|x_{k+1} - x_ref[k+1]| / |x_ref[k+1] - x_ref[k]|``, the relative error of the step's
  update, i.e. of the guided velocity the transformer passes produced (the error one step adds);
* ``latent``: ``|x_{k+1} - x_ref[k+1]| / |x_ref[k+1]|`` (how much of the state that is).

Cache hooks keep their state across the steps (TaylorSeer extrapolates from the outputs of the computed
steps, which started from exact inputs), so a predicted step's ``update`` error is its prediction's error.
Random weights: this measures the arithmetic of each option (attention kernels, FP8 matmuls) and the
schedule of the skipping ones on an untrained network, not what they do to a trained model's video — that
is the small trained model's part (``benchmarks/train_video.py --parts b``). FirstBlockCache decides its
skips from the weights: on random weights it may skip nothing (then its error is that of no skip).

``--wait-sage S``: wait up to S seconds for SageAttention to be installed (gpu_run.sh builds it beside
this run) before the ``sage`` variant, which runs after every variant that does not need it.
Writes $OUT/video_error.json when OUT is set.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402  (benchmarks/common.py)

VARIANTS = {  # name: (label, SpeedPlan fields, pipeline call options); exact arithmetic first, irreversible FP8 last
    "repeat": ("exact again, teacher-forced (run-to-run noise)", {}, {}),
    "cudnn": ("cuDNN attention", {"attention": "cudnn"}, {}),
    "fbc": ("FirstBlockCache 0.05", {"cache": "fbc", "cache_threshold": 0.05}, {}),
    "ts2": ("TaylorSeer, interval 2 (lite)", {"cache": "taylorseer", "cache_interval": 2}, {}),
    "ts4": ("TaylorSeer, interval 4 (lite)", {"cache": "taylorseer", "cache_interval": 4}, {}),
    "cfgstop": ("CFG in the first half of the steps only", {}, {"cfg_stop": 0.5}),
    "sage": ("SageAttention 2", {"attention": "sage"}, {}),
    "fp8": ("FP8 row-wise linears (torchao)", {"fp8": "rowwise"}, {}),
}
DEFAULT_VARIANTS = ("cudnn", "ts2", "cfgstop", "repeat", "sage", "fp8")  # fbc: skipped nothing on random weights (RESULTS.md)
NEEDS_CUDA = ("cudnn", "sage", "fp8")


def step_errors(latents: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, list[float]]:
    """Relative errors of a teacher-forced run, per step -> {"update": [...], "latent": [...]}.

    latents[k]: the variant's latents after step k, computed from reference[k] (reference[0] = the noise);
    reference: the exact run's latents, n + 1 of them for n steps."""
    if len(reference) != len(latents) + 1:
        raise ValueError(f"{len(latents)} steps need {len(latents) + 1} reference latents, got {len(reference)}")
    update, latent = [], []
    for k, x in enumerate(latents):
        diff = (x.float() - reference[k + 1].float()).norm()
        update.append(float(diff / (reference[k + 1].float() - reference[k].float()).norm()))
        latent.append(float(diff / reference[k + 1].float().norm()))
    return {"update": update, "latent": latent}


def wait_for_sage(seconds: float) -> bool:
    """Whether SageAttention (>= 2.1.1) is importable, polling up to ``seconds`` for an install beside us."""
    from matrix_world.generation.wan_speed import sage_installed

    deadline = time.perf_counter() + seconds
    while True:
        importlib.invalidate_caches()  # a package installed after this process started
        if sage_installed():
            return True
        if time.perf_counter() >= deadline:
            return False
        time.sleep(5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU (the code path)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=6, help="denoising steps (TaylorSeer 2 predicts steps 3 and 5 of 6)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--wait-sage", type=float, default=0.0, help="seconds to wait for a SageAttention install")
    parser.add_argument("--budget-s", type=float, default=1e9, help="skip a variant predicted to end after this")
    args = parser.parse_args(argv)
    if "fp8" in args.variants and args.variants[-1] != "fp8":
        parser.error("fp8 quantises the shared transformer for good: it must be the last variant")

    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler

    from matrix_world.generation.wan_pipeline import WAN_I2V_14B_CONFIG, PanoVideoPipeline
    from matrix_world.generation.wan_speed import SpeedPlan, apply_speed, remove_speed
    from video import TINY_CONFIG, build_transformer, sync  # benchmarks/video.py

    start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device: the full-size Wan needs one; run with --smoke on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    if args.smoke:
        torch.set_num_threads(1)
    h = 32 if args.smoke else args.height
    frames = 9 if args.smoke else args.frames
    dim_text, dim_image, n_image = (32, 8, 17) if args.smoke else (4096, 1280, 257)
    dtype = torch.bfloat16

    # 1. The transformer (random, full size) and a VAE for the scaffold's condition latents.
    transformer = build_transformer(TINY_CONFIG if args.smoke else WAN_I2V_14B_CONFIG, device, dtype)
    with torch.device(device):
        vae = AutoencoderKLWan(**({"base_dim": 8, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1} if args.smoke else {}))
    vae = vae.to(dtype).eval()
    pipe = PanoVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
                             image_processor=None, image_encoder=None, transformer=transformer)
    pipe.use_flow_matching(5.0)
    pipe.set_progress_bar_config(disable=True)

    # 2. Fixed inputs of the real shapes.
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 512, dim_text, generator=g).to(device, dtype)
    negative = torch.randn(1, 512, dim_text, generator=g).to(device, dtype)
    image_embeds = torch.randn(1, n_image, dim_image, generator=g).to(device, dtype)
    scaffold = torch.rand(1, 3, frames, h, 2 * h, generator=g)
    mask = torch.rand(1, frames, h, 2 * h, generator=g) > 0.3
    mask[:, 0] = True
    with torch.no_grad():
        condition = pipe.encode_scaffold(scaffold.to(device), mask.to(device), device=device, dtype=dtype)
    noise = torch.randn(1, 16, (frames - 1) // 4 + 1, h // 8, h // 4, generator=torch.Generator().manual_seed(1))

    def run(reference: list[torch.Tensor] | None, **call) -> tuple[list[torch.Tensor], float]:
        """n steps -> (latents after each step on the CPU, seconds); teacher-forced to ``reference`` when given."""
        seen: list[torch.Tensor] = []

        def callback(_pipe, i, _t, kw):
            seen.append(kw["latents"].detach().float().cpu())
            return {"latents": reference[i + 1].to(device, kw["latents"].dtype)} if reference is not None else {}

        sync(device)
        t0 = time.perf_counter()
        pipe(condition=condition, image_embeds=image_embeds, prompt_embeds=text, negative_prompt_embeds=negative,
             guidance_scale=5.0, num_inference_steps=args.steps, latents=noise.clone(), output_type="latent",
             callback_on_step_end=callback, **call)
        sync(device)
        return seen, time.perf_counter() - t0

    # 3. The exact run, then every variant teacher-forced to it.
    apply_speed(pipe, SpeedPlan(attention="native"))
    exact, exact_s = run(None)
    reference = [noise.float(), *exact]
    rows: list[dict] = [{"variant": "exact", "label": "exact: torch SDPA, eager, bf16", "seconds": round(exact_s, 1),
                         "update": [0.0] * args.steps, "latent": [0.0] * args.steps}]
    for name in args.variants:
        label, plan_fields, call = VARIANTS[name]
        row: dict = {"variant": name, "label": label}
        if name in NEEDS_CUDA and not cuda:
            rows.append({**row, "skipped": "needs a CUDA device"})
            continue
        if name == "sage" and not wait_for_sage(max(0.0, args.wait_sage - (time.perf_counter() - start))):
            rows.append({**row, "skipped": "SageAttention >= 2.1.1 is not installed"})
            print(f"skip {name}: no SageAttention", flush=True)
            continue
        if time.perf_counter() - start + exact_s * (3 if name == "fp8" else 1.2) > args.budget_s:
            rows.append({**row, "skipped": "time budget"})
            print(f"skip {name}: time budget", flush=True)
            continue
        remove_speed(pipe)
        try:
            info = apply_speed(pipe, SpeedPlan(**plan_fields))
            latents, seconds = run(reference, **call)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a row of the table, not the end
            rows.append({**row, "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            print(f"skip {name}: {rows[-1]['skipped']}", flush=True)
            continue
        rows.append({**row, **step_errors(latents, reference), "seconds": round(seconds, 1),
                     **({"fp8_layers": info["fp8_layers"]} if "fp8_layers" in info else {})})
        print({k: v for k, v in rows[-1].items()}, flush=True)
        write_results("video_error", {"partial": True, "rows": rows})

    # 4. The table.
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke)", "torch": torch.__version__,
              "transformer_params_b": round(sum(p.numel() for p in transformer.parameters()) / 1e9, 2), "height": h,
              "frames": frames, "steps": args.steps, "rows": rows, "total_s": round(time.perf_counter() - start, 1),
              "smoke": args.smoke}
    write_results("video_error", result)
    steps = " | ".join(f"step {k}" for k in range(args.steps))
    print(f"\nrelative error of each step's update, teacher-forced (latents' rel. error after the last step)\n"
          f"| variant | {steps} | last latents | s |\n|---|{'---|' * args.steps}---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['label']} | skipped: {r['skipped']} |{' |' * (args.steps + 1)}")
            continue
        print(f"| {r['label']} | " + " | ".join(f"{e:.4f}" for e in r["update"]) + f" | {r['latent'][-1]:.4f} | {r.get('seconds', '')} |")
    print(f"total {result['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
