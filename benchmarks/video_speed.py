"""Video speed benchmark (issue 14): the stock diffusers Wan I2V pipeline and ours with each speed
option, on the SAME full-size Wan2.1-I2V-14B transformer (random bf16 weights) in one run.

    python benchmarks/video.py --speed                                   # CUDA, 480p, the default rows
    python benchmarks/video.py --speed --heights 480 720 --rows stock sage_fp8
    python benchmarks/video.py --speed --smoke                           # CPU: tiny model, the code path

Rows (``--rows``, run in the order given, each at every ``--heights``; the irreversible options —
compiled blocks, FP8 weights — stay on the shared transformer, so rows without them must come first,
and ``stock`` must come before any of them):

* ``stock``: diffusers ``WanImageToVideoPipeline``, eager, torch SDPA (what a user of diffusers gets);
* ``eager``: ours, eager SDPA (same work: the ratio to stock is our pipeline's overhead);
* ``turbo_auto``: the turbo video call with the options ``auto`` picks for 4 passes (see below);
* ``cudnn``, ``cfg_batch`` (+ CFG as one batch of 2), ``fbc`` (+ FirstBlockCache 0.05), ``sage`` (eager
  SageAttention 2), ``sage_taylorseer`` (eager Sage + TaylorSeer);
* ``compiled`` (cuDNN + ``compile_repeated_blocks``), ``compiled_taylorseer``, ``sage_compiled``,
  ``sage_compiled_cfgstop`` (+ CFG in the first half of the steps only), ``sage_compiled_taylorseer``;
* ``fp8`` (cuDNN + compiled + FP8 row-wise, torchao), ``sage_fp8`` (Sage + compiled + FP8),
  ``sage_fp8_cfgstop`` (+ CFG in the first half of the steps only), ``sage_fp8_taylorseer`` (+ TaylorSeer);
* ``turbo``: the turbo video call (lightx2v's 4 steps, guidance 1, its sigmas) with whatever the rows
  before left on the transformer: condition encode + 4 steps + seam-aware VAE decode.

Seconds per denoising step (CFG 5 = 2 passes, 81 frames; 480p panorama latent 21 x 60 x 120 =
37,800 tokens, 720p 21 x 90 x 180 = 85,050) after ``--warmup`` steps, every step's time, peak GPU
memory, and each option's output relative error: one transformer pass on fixed inputs against the
eager SDPA bf16 pass computed before any row (random weights: the error of the arithmetic, not of a
trained model). Cache rows run ``--cache-steps`` steps (TaylorSeer: 3 full steps, then one full step
in ``cache_interval``, predicted in between; its skip pattern does not depend on the weights,
FirstBlockCache's does); they and the CFG-truncation rows also give the s/step of a 50-step video,
from the mean measured time of each kind of step (guided or not, computed or predicted) and how
many of each the 50 steps have (:func:`extrapolate`).
Writes $OUT/video_speed.json when OUT is set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from common import GB, write_results  # benchmarks/common.py (scripts run from this folder)



@dataclass(frozen=True)
class Row:
    label: str
    plan: dict = field(default_factory=dict)  # SpeedPlan fields; {} for stock
    pipeline: str = "ours"  # ours | stock | turbo | turbo_auto
    cfg_batch: bool = False
    cfg_stop: float = 1.0
    cache_steps: bool = False  # run --cache-steps steps (cache rows)
    error: bool = True
    note: str = ""


CUDNN, SAGE = {"attention": "cudnn"}, {"attention": "sage"}
TS = {"cache": "taylorseer", "cache_interval": 4}
TS2 = {"cache": "taylorseer", "cache_interval": 2}
EXTRAPOLATE_STEPS = 50  # cache / CFG-truncation rows: s/step of a 50-step video from their measured kinds of step
ROWS: dict[str, Row] = {
    "stock": Row("stock, eager SDPA", pipeline="stock", error=False, note="diffusers WanImageToVideoPipeline"),
    "eager": Row("ours, eager SDPA", {"attention": "native"}),
    "turbo_auto": Row("turbo video call, auto options", pipeline="turbo_auto", error=False),
    "cudnn": Row("ours, cuDNN attention", CUDNN),
    "cfg_batch": Row("ours, cuDNN, CFG batched", CUDNN, cfg_batch=True, error=False, note="cond + uncond as one batch of 2"),
    "fbc": Row("ours, cuDNN + FirstBlockCache 0.05", {**CUDNN, "cache": "fbc", "cache_threshold": 0.05}, cache_steps=True,
               error=False, note="random weights: the skip rate says nothing about trained weights"),
    "sage": Row("ours, SageAttention 2", SAGE),
    "sage_taylorseer": Row("ours, Sage + TaylorSeer (interval 4)", {**SAGE, **TS}, cache_steps=True, error=False),
    "compiled": Row("ours, cuDNN + compiled blocks", {**CUDNN, "compile": "blocks"}, note="first step includes the compile"),
    "sage_compiled": Row("ours, Sage + compiled blocks", {**SAGE, "compile": "blocks"}),
    "sage_compiled_cfgstop": Row("ours, Sage + compiled, CFG in the first half of the steps", {**SAGE, "compile": "blocks"},
                                 cfg_stop=0.5, cache_steps=True, error=False, note="CFG truncation: unguided steps are one pass"),
    "sage_compiled_taylorseer": Row("ours, Sage + compiled + TaylorSeer (interval 4)", {**SAGE, "compile": "blocks", **TS},
                                    cache_steps=True, error=False),
    "sage_compiled_ts2": Row("ours, Sage + compiled + TaylorSeer (interval 2)", {**SAGE, "compile": "blocks", **TS2},
                             cache_steps=True, error=False),
    "sage_compiled_ts2_cfgstop": Row("ours, Sage + compiled + TaylorSeer (interval 2), CFG in the first half",
                                     {**SAGE, "compile": "blocks", **TS2}, cfg_stop=0.5, cache_steps=True, error=False),
    "compiled_taylorseer": Row("ours, cuDNN + compiled + TaylorSeer (interval 4)", {**CUDNN, "compile": "blocks", **TS},
                               cache_steps=True, error=False),
    "fp8": Row("ours, cuDNN + compiled + FP8 row-wise", {**CUDNN, "compile": "blocks", "fp8": "rowwise"},
               note="first step includes quantise + recompile"),
    "sage_fp8": Row("ours, Sage + compiled + FP8 row-wise", {**SAGE, "compile": "blocks", "fp8": "rowwise"}),
    "sage_fp8_cfgstop": Row("ours, Sage + compiled + FP8, CFG in the first half of the steps", {**SAGE, "compile": "blocks", "fp8": "rowwise"},
                            cfg_stop=0.5, cache_steps=True, error=False, note="CFG truncation: unguided steps are one pass"),
    "sage_fp8_taylorseer": Row("ours, Sage + compiled + FP8 + TaylorSeer", {**SAGE, "compile": "blocks", "fp8": "rowwise", **TS},
                               cache_steps=True, error=False),
    "sage_fp8_ts2": Row("ours, Sage + compiled + FP8 + TaylorSeer (interval 2)", {**SAGE, "compile": "blocks", "fp8": "rowwise", **TS2},
                        cache_steps=True, error=False),
    "turbo": Row("turbo video call (4 steps, guidance 1, lightx2v sigmas)", pipeline="turbo", error=False,
                 note="with the options of the rows before it still on the transformer"),
}
DEFAULT_ROWS = ("stock", "turbo_auto", "sage", "sage_compiled", "sage_compiled_taylorseer", "sage_compiled_cfgstop",
                "sage_fp8", "sage_fp8_taylorseer", "turbo")


def step_kinds(row: Row, n: int) -> list[tuple[bool, bool]]:
    """(guided, computed) of each of ``n`` steps: guided = CFG's two passes (else one, after ``cfg_stop``);
    computed = the blocks run (else TaylorSeer predicts the output: diffusers' rule, full steps before
    step 3 and at every ``cache_interval``-th from step 4). FirstBlockCache's skips depend on the weights."""
    interval = row.plan.get("cache_interval") if row.plan.get("cache") == "taylorseer" else None
    guided = math.ceil(row.cfg_stop * n)
    return [(i < guided, interval is None or i < 3 or (i - 4) % interval == 0) for i in range(n)]


def extrapolate(row: Row, step_s: list[float], n: int = EXTRAPOLATE_STEPS) -> float | None:
    """s/step of an ``n``-step video from the measured steps of each kind (the first step, which holds the
    compile, left out); None when a kind the n-step video has was not measured (or the skips are not fixed)."""
    means = kind_means(row, step_s, n)
    return None if means is None else sum(means[k] for k in step_kinds(row, n)) / n


def remaining_s(row: Row, step_s: list[float], n: int = EXTRAPOLATE_STEPS) -> float | None:
    """Seconds of the steps an ``n``-step video has after the measured ones (steps len(step_s) .. n-1),
    each at the mean measured time of its kind (as :func:`extrapolate`); None where it returns None."""
    means = kind_means(row, step_s, n)
    return None if means is None else sum(means[k] for k in step_kinds(row, n)[len(step_s):])


def kind_means(row: Row, step_s: list[float], n: int) -> dict[tuple[bool, bool], float] | None:
    """Mean seconds of each kind of step measured (the first step left out) -> {kind: s}; None when a kind
    an ``n``-step video has was not measured, or FirstBlockCache decides the skips (not fixed)."""
    if row.plan.get("cache") == "fbc":
        return None
    measured: dict[tuple[bool, bool], list[float]] = {}
    for kind, t in list(zip(step_kinds(row, len(step_s)), step_s))[1:]:
        measured.setdefault(kind, []).append(t)
    if any(k not in measured for k in set(step_kinds(row, n))):
        return None
    return {k: sum(v) / len(v) for k, v in measured.items()}


def check_order(names: list[str]) -> None:
    """ValueError unless every row name is known and no row needs what an earlier row made permanent undone."""
    compiled = fp8 = False
    for name in names:
        if name not in ROWS:
            raise ValueError(f"unknown row {name!r}; expected one of {', '.join(ROWS)}")
        row = ROWS[name]
        wants_compile, wants_fp8 = row.plan.get("compile") == "blocks", row.plan.get("fp8") == "rowwise"
        needs_fresh = row.pipeline in ("stock", "turbo_auto") and (compiled or fp8)  # the plain transformer
        would_undo = row.pipeline == "ours" and ((compiled and not wants_compile) or (fp8 and not wants_fp8))
        if needs_fresh or would_undo:
            raise ValueError(f"row {name!r} comes after a row that compiled or quantised the shared transformer; put it earlier")
        compiled, fp8 = compiled or wants_compile, fp8 or wants_fp8


def main(args) -> int:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from PIL import Image

    from matrix_world.generation.wan_pipeline import WAN_I2V_14B_CONFIG, PanoVideoPipeline
    from matrix_world.generation.wan_speed import SpeedPlan, sage_installed, apply_speed, plan_speed, remove_speed
    from video import TINY_CONFIG, StepTimer, build_transformer, sync  # benchmarks/video.py

    names = list(args.rows or DEFAULT_ROWS)
    check_order(names)
    start = time.perf_counter()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    cuda = device.type == "cuda"
    heights = [32] if args.smoke else list(args.heights)
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

    # 2. Inputs of the real shapes per height (random embeddings, scaffold, mask) and the eager reference pass.
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 512, dim_text, generator=g).to(device, dtype)
    negative = torch.randn(1, 512, dim_text, generator=g).to(device, dtype)
    image_embeds = torch.randn(1, n_image, dim_image, generator=g).to(device, dtype)
    stock.encode_image = lambda image, device=None: image_embeds  # no CLIP built: hand stock the same tokens
    t_lat = (frames - 1) // 4 + 1
    inputs: dict[int, dict] = {}
    apply_speed(ours, SpeedPlan(attention="native"))
    for h in heights:
        scaffold = torch.rand(1, 3, frames, h, 2 * h, generator=g)
        mask = torch.rand(1, frames, h, 2 * h, generator=g) > 0.3
        mask[:, 0] = True
        condition = ours.encode_scaffold(scaffold.to(device), mask.to(device), device=device, dtype=dtype)
        noise = torch.randn(1, 16, t_lat, h // 8, h // 4, generator=torch.Generator().manual_seed(1))
        inputs[h] = {"scaffold": scaffold, "mask": mask, "condition": condition, "noise": noise,
                     "probe": torch.cat([noise.to(device, dtype), condition], dim=1)}  # one fixed transformer input

    def one_pass(h: int) -> torch.Tensor:
        with torch.no_grad(), transformer.cache_context("probe"):
            out = transformer(hidden_states=inputs[h]["probe"], timestep=torch.tensor([500.0], device=device),
                              encoder_hidden_states=text, encoder_hidden_states_image=image_embeds, return_dict=False)[0]
        return out.float()

    for h in heights:
        inputs[h]["reference"] = one_pass(h)
    rows: list[dict[str, Any]] = []
    state = {"compiled": False, "fp8": False}

    def predicted(h: int, n_steps: int) -> float:
        same = [r for r in rows if r.get("height") == h and "s_per_step" in r]
        return max([r["first_step_s"] + r["s_per_step"] * n_steps for r in same], default=0.0)

    def apply_row(row: Row) -> SpeedPlan:
        remove_speed(ours)  # cache hooks off, attention back to native; compile and FP8 stay
        plan = SpeedPlan(**row.plan)
        # compile again on every compiled row (the blocks are re-wrapped: the graph follows the row's attention
        # and hooks; its first step pays the recompile); quantise once
        todo = SpeedPlan(**{**row.plan, "fp8": "off" if state["fp8"] else plan.fp8})
        apply_speed(ours, todo)
        state["compiled"] = state["compiled"] or plan.compile == "blocks"
        state["fp8"] = state["fp8"] or plan.fp8 == "rowwise"
        return plan

    def turbo_call(h: int, note: str) -> dict:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        x = inputs[h]
        t1 = time.perf_counter()
        cond = ours.encode_scaffold(x["scaffold"].to(device), x["mask"].to(device), device=device, dtype=dtype)
        sync(device)
        encode_s = time.perf_counter() - t1
        timer = StepTimer(device)
        latents = ours(condition=cond, image_embeds=image_embeds, prompt_embeds=text, num_inference_steps=4, guidance_scale=1.0,
                       sigma_schedule="lightx2v", latents=x["noise"].clone(), output_type="latent", callback_on_step_end=timer).frames
        sync(device)
        denoise_s = time.perf_counter() - t1 - encode_s
        t2 = time.perf_counter()
        video = ours.decode_latents(latents)
        sync(device)
        decode_s = time.perf_counter() - t2
        return {"encode_s": round(encode_s, 2), "denoise_s": round(denoise_s, 2), "decode_s": round(decode_s, 2),
                "total_s": round(time.perf_counter() - t1, 2), "s_per_step": round(denoise_s / 4, 3), "first_step_s": 0.0,
                "step_s": [round(b - a, 2) for a, b in zip([t1 + encode_s, *timer.times], timer.times)],
                "frames_out": list(video.shape), "finite": bool(torch.isfinite(video).all()), "note": note}

    for name in names:
        row = ROWS[name]
        if "sage" in row.plan.get("attention", "") and not sage_installed():
            rows.append({"row": row.label, "key": name, "skipped": "SageAttention >= 2.1.1 is not installed"})
            print(f"skip {name}: no SageAttention", flush=True)
            continue
        if not cuda and (row.plan.get("attention", "native") != "native" or row.plan.get("compile") or row.plan.get("fp8")):
            rows.append({"row": row.label, "key": name, "skipped": "needs a CUDA device"})
            continue
        try:
            if row.pipeline == "turbo_auto":
                auto = plan_speed(device=device, passes=4, memory_mode="full", approximate=True)
                remove_speed(ours)
                apply_speed(ours, auto)
                plan: SpeedPlan | None = auto
            elif row.pipeline == "ours":
                plan = apply_row(row)
            else:
                plan = None
        except Exception as exc:  # noqa: BLE001 - a failing option is a row of the table, not the end of the run
            rows.append({"row": row.label, "key": name, "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            print(f"skip {name}: {rows[-1]['skipped']}", flush=True)
            continue
        for h in heights:
            n_steps = args.cache_steps if row.cache_steps else args.warmup + args.steps
            if time.perf_counter() - start + predicted(h, 4 if "turbo" in row.pipeline else n_steps) > args.budget_s:
                rows.append({"row": row.label, "key": name, "height": h, "skipped": "time budget"})
                print(f"skip {name} at {h}p: time budget", flush=True)
                continue
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            out: dict[str, Any] = {"row": row.label, "key": name, "height": h, "pipeline": row.pipeline}
            try:
                if "turbo" in row.pipeline:
                    out.update(turbo_call(h, row.note or f"auto options: {plan.to_dict() if plan else None}"))
                else:
                    x = inputs[h]
                    timer = StepTimer(device)
                    common = {"num_inference_steps": n_steps, "guidance_scale": 5.0, "prompt_embeds": text,
                              "negative_prompt_embeds": negative, "latents": x["noise"].clone(), "output_type": "latent",
                              "callback_on_step_end": timer}
                    t1 = time.perf_counter()
                    if row.pipeline == "stock":
                        stock(image=Image.new("RGB", (2 * h, h), (120, 90, 60)), height=h, width=2 * h, num_frames=frames, **common)
                    else:
                        ours(condition=x["condition"], image_embeds=image_embeds, cfg_batch=row.cfg_batch, cfg_stop=row.cfg_stop, **common)
                    sync(device)
                    steps_s = [b - a for a, b in zip([t1, *timer.times], timer.times)]
                    if row.cache_steps:
                        fifty = extrapolate(row, steps_s)
                        out["s_per_step_50"] = None if fifty is None else round(fifty, 3)
                        out["step_kinds"] = ["".join(("G" if g else "1", "" if c else "p")) for g, c in step_kinds(row, n_steps)]
                    out.update({"s_per_step": round(timer.per_step(1 if row.cache_steps else args.warmup), 3),
                                "first_step_s": round(timer.times[0] - t1, 1), "call_s": round(time.perf_counter() - t1, 1),
                                "steps": n_steps, "step_s": [round(t, 2) for t in steps_s],
                                "note": row.note})
                    if row.error:
                        y = one_pass(h)
                        ref = x["reference"]
                        out["rel_error_vs_eager_sdpa"] = float((y - ref).norm() / ref.norm())
            except Exception as exc:  # noqa: BLE001 - as above
                out["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            out["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / GB, 1) if cuda else None
            out["plan"] = None if plan is None else plan.to_dict()
            rows.append(out)
            print({k: v for k, v in out.items() if k != "plan"}, flush=True)
            write_results("video_speed", {"partial": True, "rows": rows})  # a later kill keeps the rows measured so far

    # 3. Report: the table, the ratios to stock at the same height.
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke)", "torch": torch.__version__,
              "transformer_params_b": round(sum(p.numel() for p in transformer.parameters()) / 1e9, 2),
              "frames": frames, "heights": heights, "build_s": round(build_s, 1), "rows": rows,
              "total_s": round(time.perf_counter() - start, 1), "smoke": args.smoke}
    write_results("video_speed", result)
    print(f"\n| row | height | s/step | vs stock | s/step of a {EXTRAPOLATE_STEPS}-step video (cache / CFG rows) | first step s | "
          "peak GB | rel. error vs eager SDPA |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['row']} | {r.get('height', '')} | skipped: {r['skipped']} | | | | | |")
            continue
        stock_s = next((s["s_per_step"] for s in rows if s.get("pipeline") == "stock" and s.get("height") == r["height"]
                        and "s_per_step" in s), math.nan)
        err = r.get("rel_error_vs_eager_sdpa")
        extra = f" (call {r['total_s']} s)" if "total_s" in r else ""
        fifty = r.get("s_per_step_50")
        fifty_s = "" if fifty is None else f"{fifty:.3f} ({stock_s / fifty:.2f}x)"
        print(f"| {r['row']} | {r['height']} | {r['s_per_step']:.3f}{extra} | {stock_s / r['s_per_step']:.2f}x | {fifty_s} | "
              f"{r.get('first_step_s', '')} | {r.get('peak_gb')} | {'' if err is None else f'{err:.4f}'} |")
    print(f"total {result['total_s']:.0f} s")
    return 0
