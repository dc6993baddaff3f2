"""End-to-end benchmark: text2world through ``WorldPipeline`` with every real model's full-size
architecture and random weights, at 480p, on one CUDA GPU (issue 7).

    python benchmarks/e2e.py                                    # CUDA: the quality preset, steps cut, ~4-6 min
    python benchmarks/e2e.py --variants quality:full:off quality:full:auto turbo:full:auto turbo:lowvram:auto
    python benchmarks/e2e.py --smoke                            # CPU: same code path, tiny models, seconds

``--variants`` makes several worlds one after the other in ONE process on the same GPU and prints
them side by side: ``PRESET:MEMORY:SPEED``, where SPEED ``off`` is the stock diffusers path of the
video model (torch SDPA, eager, bf16; what the pipeline did before the speed options) and ``auto``
the options the preset's ``auto`` picks for its full step count, ``skip`` those + SageAttention +
TaylorSeer (step skipping: the video is cut to 8 steps and each kind of step extrapolated at its own
measured time; not for turbo). The ``turbo`` preset runs its own
steps (FLUX 8, Wan 4 without CFG), so its world time is measured, not extrapolated; the distillation
LoRAs are not loaded (no weights: the sampler settings are the same, their quality is not measured).

What runs: the library's own ``WorldPipeline`` (the object behind ``scripts/text2world.py``)
with backends forced to ``flux`` / ``moge`` / ``wan`` / ``optimize`` and the models injected
through ``WorldPipeline(models=...)`` instead of loaded from weights:

* panorama: FLUX.1-dev transformer (11.9B) + FLUX VAE + CLIP-L text encoder + T5-XXL encoder
  (4.7B), bf16, with small in-memory tokenizers (token ids only have to be < the vocab size);
* depth: MoGe-2 ViT-L (fp32 as loaded by ``load_moge``; fp16 autocast at inference), mask
  head biased to "valid" so the merge does its full work;
* video: Wan2.1-I2V-14B transformer (16.4B, bf16) + UMT5-XXL encoder (bf16) + CLIP ViT-H/14
  vision (fp32) + Wan VAE (fp32), i.e. the dtypes of ``load_video_pipeline``; no LoRA;
* reconstruction: gsplat optimisation (``optimize``) with MoGe on the keyframes.

Every model is built directly on the GPU. Models live only while needed: FLUX (+ encoders) and
MoGe are built before the run, FLUX is freed when the panorama stage ends, Wan is built after
the scaffold stage and freed after the video stage, MoGe stays for the reconstruction's
keyframe depth. Stage boundaries are read from the pipeline's own log lines
("  <stage>: <seconds> s [...]"); at each boundary the peak GPU memory of the stage
(torch.cuda.max_memory_allocated) is read and reset. Per-step seconds come from synchronised
forward hooks on the transformers (median pass x passes per step; FLUX: 1 pass, Wan with
CFG: 2). The stage seconds are the pipeline's own (manifest), model building excluded.

For ``quality`` and ``fast``, steps are cut to fit one device call (FLUX 8, Wan 3, optimisation
1500 iterations; panorama 2048x1024 for quality, 1024x512 otherwise; video 480x960 x 81 frames);
the time at the preset's own steps (quality 50 / 50 / 3000) is then EXTRAPOLATED from the
measured per-step times, and marked so. In offload / lowvram the models are placed as for the preset's
own passes (whether the weights are pinned up front: :func:`full_passes_for_pinning`).

Random weights prove wiring, memory and time per stage, nothing about output quality.
Writes ``$OUT/e2e.json`` and ``$OUT/e2e_manifest.json`` (the run's manifest) when OUT is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # the per-stage benchmarks and the tiny-model builders

import depth as bench_depth  # benchmarks/depth.py: build_moge
import panorama as bench_panorama  # benchmarks/panorama.py: FLUX configs, build_on
import video as bench_video  # benchmarks/video.py: build_transformer, build_encoders
from common import GB, CallTimer, PassTimer, PeakLog, sync, watch_host_memory, write_results  # benchmarks/common.py
from matrix_world.generation.memory import host_available_gb
from matrix_world.pipeline.context import free_memory  # gc + the GPU's cache + torch's pinned host cache

STAGE_END = re.compile(r"^  ([a-z_]+): (?:reused|\d+(?:\.\d+)? s)(?: \[.*\])?$")  # stages._done / report.preview_stage
STAGES = ("panorama", "depth", "trajectory", "scaffold", "video", "reconstruction", "preview")


def params_b(*modules) -> float:
    """Parameters in billions, 4 significant digits (tiny smoke models stay non-zero)."""
    return float(f"{sum(p.numel() for m in modules if m is not None for p in m.parameters()) / 1e9:.4g}")


# --------------------------------------------------------------------------- builders (random weights, on the device)


def build_flux(smoke: bool, device: torch.device, dtype: torch.dtype):
    """FLUX.1-dev panorama pipeline: transformer, VAE, CLIP-L, T5-XXL (full size unless smoke)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxTransformer2DModel,
    )
    from matrix_world.generation.panorama import flux_panorama_pipeline_class
    from tiny_flux import _text_encoders, _tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok, t5_tok = _tokenizers()  # in-memory tokenizers, ids < 200
    build = bench_panorama.build_on
    transformer = build(device, dtype, lambda: FluxTransformer2DModel(**(bench_panorama.TINY if smoke else bench_panorama.FLUX_DEV)))
    vae = build(device, dtype, lambda: AutoencoderKL(**(bench_panorama.TINY_VAE if smoke else bench_panorama.FLUX_VAE)))
    if smoke:
        clip, t5 = (m.to(device, dtype) for m in _text_encoders())
    else:  # openai/clip-vit-large-patch14 text tower and google/t5-v1_1-xxl encoder, as in FLUX.1-dev
        clip_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                                  hidden_act="quick_gelu", bos_token_id=clip_tok.bos_token_id,
                                  eos_token_id=clip_tok.eos_token_id)
        t5_cfg = T5Config(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64,
                          feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, dropout_rate=0.0)
        clip = build(device, dtype, lambda: CLIPTextModel(clip_cfg))
        t5 = build(device, dtype, lambda: T5EncoderModel(t5_cfg))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = flux_panorama_pipeline_class()(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
                                          text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe, {"transformer": params_b(transformer), "vae": params_b(vae), "clip_l": params_b(clip), "t5": params_b(t5)}


def build_moge(smoke: bool, device: torch.device):
    from matrix_world.generation.moge_backend import LoadedMoGe

    model = bench_depth.build_moge(2, smoke, device)
    return LoadedMoGe(model, 2, True, "random MoGe-2 (benchmarks/e2e.py)"), {"moge2": params_b(model)}


def build_lrm(smoke: bool, device: torch.device):
    """Matrix-3D's panoramic LRM (official size unless smoke), random weights, bf16 on CUDA."""
    from matrix_world.reconstruction.lrm import LRMConfig, PanoLRM

    dtype = torch.float32 if smoke else torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = PanoLRM(LRMConfig.tiny() if smoke else LRMConfig.official()).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)
    return model, {"lrm": params_b(model)}


def build_wan(smoke: bool, device: torch.device):
    """PanoVideoPipeline: Wan2.1-I2V-14B transformer, UMT5-XXL, CLIP ViT-H/14, Wan VAE (tiny when smoke)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from matrix_world.generation.wan_pipeline import (
        WAN_I2V_14B_CONFIG,
        PanoVideoPipeline,
    )

    if smoke:
        from tiny_wan import tiny_wan_components

        components = tiny_wan_components()
    else:
        from tiny_flux import _tokenizers

        text_encoder, image_encoder, image_processor = bench_video.build_encoders(True, device, smoke=False)
        with torch.device(device):
            vae = AutoencoderKLWan().eval().requires_grad_(False)  # float32, as load_video_pipeline loads it
        components = {"tokenizer": _tokenizers()[1], "text_encoder": text_encoder.requires_grad_(False), "vae": vae,
                      "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0), "image_processor": image_processor,
                      "image_encoder": image_encoder.requires_grad_(False),
                      "transformer": bench_video.build_transformer(WAN_I2V_14B_CONFIG, device, torch.bfloat16)}
    pipe = PanoVideoPipeline(**components).to(device)
    pipe.use_flow_matching(5.0)
    pipe.set_progress_bar_config(disable=True)
    sizes = {k: params_b(getattr(pipe, k)) for k in ("transformer", "text_encoder", "image_encoder", "vae")}
    return pipe, sizes


# --------------------------------------------------------------------------- measurement


class StageMonitor:
    """The pipeline's log function: prints, and at every stage end records that stage's peak
    GPU memory, then frees / builds the models of the next stages (outside any stage's time)."""

    def __init__(self, models: dict, device: torch.device, smoke: bool, results: dict, memory: str = "full"):
        self.models, self.device, self.smoke, self.results = models, device, smoke, results
        self.memory = memory  # offload / lowvram: FLUX and Wan wait on the CPU, as from_pretrained leaves them
        self.timers: dict[str, PassTimer] = {}
        self.calls: dict[str, CallTimer] = {}
        self.call_seconds: dict[str, dict] = {}  # CallTimer.summary of each freed model's stage
        self.peaks: dict[str, dict] = {}
        self.peak_logs: dict[str, PeakLog] = {}  # per built pipeline: which call raised its stage's peak

    def start(self) -> None:
        free_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        m = STAGE_END.match(line)
        if not m or m.group(1) not in STAGES or m.group(1) in self.peaks:
            return
        stage = m.group(1)
        cuda = self.device.type == "cuda"
        self.peaks[stage] = {"peak_gb": round(torch.cuda.max_memory_allocated(self.device) / GB, 2) if cuda else None,
                             "reserved_gb": round(torch.cuda.max_memory_reserved(self.device) / GB, 2) if cuda else None}
        if stage == "panorama":
            self.free("panorama")
        elif stage == "scaffold":
            self.build("video")
        elif stage == "video":
            self.free("video")
        save(self.results)
        self.start()

    def build(self, name: str) -> None:
        sync(self.device)
        t0 = time.perf_counter()
        if name == "panorama":
            dtype = torch.float32 if self.smoke else torch.bfloat16
            pipe, sizes = build_flux(self.smoke, self.device, dtype)
        elif name == "depth":
            pipe, sizes = build_moge(self.smoke, self.device)
        elif name == "lrm":
            pipe, sizes = build_lrm(self.smoke, self.device)
        else:
            pipe, sizes = build_wan(self.smoke, self.device)
        if name in ("panorama", "video") and self.memory in ("offload", "lowvram"):
            pipe.to("cpu")  # built on the GPU (fast random init), then where a loaded model starts: the stage places it
            free_memory(self.device)
        sync(self.device)
        resident = torch.cuda.memory_allocated(self.device) / GB if self.device.type == "cuda" else None
        self.results["build"][name] = {"seconds": round(time.perf_counter() - t0, 2), "params_b": sizes,
                                       "allocated_after_gb": None if resident is None else round(resident, 2)}
        print(f"[e2e] built {name}: {json.dumps(self.results['build'][name])}", flush=True)
        self.models[name] = pipe
        if name in ("panorama", "video"):
            self.peak_logs[name] = PeakLog(self.device)
            self.timers[name] = PassTimer(pipe.transformer, self.device, self.peak_logs[name])
            self.calls[name] = CallTimer(pipe, self.device, self.peak_logs[name])

    def free(self, name: str) -> None:
        if name in self.calls:  # unwrap first: the wrappers hold the components
            self.call_seconds[name] = self.calls.pop(name).summary()
        self.models.pop(name, None)
        free_memory(self.device)  # GPU cache and the pinned host memory of group offloading
        if self.device.type == "cuda":
            self.results["build"][name]["allocated_after_free_gb"] = round(torch.cuda.memory_allocated(self.device) / GB, 2)


# --------------------------------------------------------------------------- main

FULL_STEPS = {  # each preset's own steps / iterations (what a real run does; EXTRAPOLATED to when cut)
    "quality": {"panorama": 50, "video": 50, "reconstruction": 3000},
    "fast": {"panorama": 28, "video": 30, "reconstruction": 1500},
    "turbo": {"panorama": 8, "video": 4, "reconstruction": 1500},
}
SPEED_OFF = {"video_attention": "native", "video_compile": "off", "video_fp8": "off"}


_PIN_UP_FRONT = None  # generation.memory.pin_up_front while full_passes_for_pinning replaces it


def full_passes_for_pinning(cut_to_full: dict[int, int] | None) -> dict | None:
    """A run cut to a few steps places its models in lowvram as the preset's full run would: whether group
    offloading pins the weights up front depends on the transformer passes (generation.memory.pin_up_front),
    so its ``passes`` are mapped from the cut run's to the full run's ({cut: full}; None restores the original).
    The up-front pinning is then paid once in the stage's time, as in the full run."""
    global _PIN_UP_FRONT
    from matrix_world.generation import memory

    if _PIN_UP_FRONT is not None:
        memory.pin_up_front, _PIN_UP_FRONT = _PIN_UP_FRONT, None
    if cut_to_full is None:
        return None
    original = _PIN_UP_FRONT = memory.pin_up_front

    def pin_up_front(pinned_gb, available_gb, *, passes=None, **kwargs):
        up_front, reason = original(pinned_gb, available_gb, passes=cut_to_full.get(passes, passes), **kwargs)
        print(f"[e2e] placement for {cut_to_full.get(passes, passes)} passes: {reason}", flush=True)  # before a crash
        return up_front, reason

    memory.pin_up_front = pin_up_front
    return {str(k): v for k, v in cut_to_full.items()}


SKIP_STEPS = 8  # TaylorSeer 2: steps 0-2 and 4, 6 computed, 3, 5, 7 predicted -> both kinds measured after the first


def skip_video_extra(results: dict, full_steps: int) -> float:
    """Seconds of the video steps the cut run did not make, each at the measured time of its kind
    (computed / predicted, by the interval the stage applied; video_speed.remaining_s) -> s.
    RuntimeError when a kind was not measured."""
    from video_speed import Row, remaining_s  # benchmarks/video_speed.py

    row = next(r for r in results["stages"] if r["stage"] == "video")
    plan = {"cache": "taylorseer", "cache_interval": results["video_info"]["speed"]["cache_interval"]}
    extra = remaining_s(Row("e2e skip", plan), row.get("step_s") or [], full_steps)
    if extra is None:
        raise RuntimeError(f"video steps {row.get('step_s')}: not every kind of step of a {full_steps}-step "
                           f"TaylorSeer run was measured (run >= {SKIP_STEPS} steps)")
    row["per_step_s"] = round((sum(row["step_s"]) + extra) / full_steps, 4)  # the table's figure: the full run's mean
    return extra


def parse_variant(text: str) -> dict:
    """'PRESET:MEMORY:SPEED' (e.g. quality:full:off, turbo:lowvram:auto) -> dict; SPEED off = the video
    speed options off (torch SDPA, eager, bf16: the stock diffusers path), auto = what the preset's
    auto picks for its FULL step count (so a run cut to a few steps is timed with the same options),
    skip = auto + SageAttention (where installed) + TaylorSeer at its default interval: step skipping,
    an approximation (the video is cut to SKIP_STEPS steps so that every kind of step is measured)."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in FULL_STEPS or parts[1] not in ("full", "offload", "lowvram", "auto") \
            or parts[2] not in ("off", "auto", "skip") or (parts[0] == "turbo" and parts[2] == "skip"):
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected PRESET:MEMORY:SPEED with PRESET in "
                                         f"{'|'.join(FULL_STEPS)}, MEMORY full|offload|lowvram|auto, SPEED off|auto|skip "
                                         "(skip: not for turbo, whose 4 steps are all computed)")
    return {"name": text, "preset": parts[0], "memory": parts[1], "speed": parts[2]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models on CPU, 64-row video, 9 frames (seconds)")
    p.add_argument("--variants", nargs="+", type=parse_variant, default=[parse_variant("quality:full:auto")],
                   help="worlds to make, one after the other in this process: PRESET:MEMORY:SPEED (see parse_variant)")
    p.add_argument("--pano-steps", type=int, default=None, help="FLUX steps (default: 8 for quality/fast, the preset's for turbo)")
    p.add_argument("--video-steps", type=int, default=None, help="Wan steps (default: 3 for quality/fast, the preset's for turbo)")
    p.add_argument("--iterations", type=int, default=None, help="optimisation iterations (default 1500)")
    p.add_argument("--frames", type=int, default=None, help="video frames, 4k+1 (default 81; smoke 9)")
    p.add_argument("--pano-height", type=int, default=None, help="panorama rows (default 1024 = quality preset; smoke 64)")
    p.add_argument("--run-dir", default=None, help="run directory (default /tmp/matrix_world_e2e[_smoke])")
    p.add_argument("--recon", choices=("optimize", "lrm"), default="optimize",
                   help="reconstruction backend: gsplat optimisation, or the panoramic LRM on the video's latents")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip a variant that would start after this many seconds")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device: run with --smoke on CPU", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)  # tiny tensors: a second thread only spin-waits on a shared 2-core machine
    t_start = time.perf_counter()
    host = watch_host_memory() if cuda else {}  # a host OOM (quality in lowvram, 2026-12-03) left no trace
    runs: list[dict] = []
    for variant in args.variants:
        if runs and time.perf_counter() - t_start + max(r.get("wall_s", 0) + 30 for r in runs) > args.budget_s:
            runs.append({"variant": variant["name"], "skipped": "time budget"})
            print(f"[e2e] skip {variant['name']}: time budget", flush=True)
            continue
        if host:
            host["lowest_gb"] = host_available_gb()
        runs.append(run_world(args, variant, cuda))
        if host.get("lowest_gb") is not None:  # the variant's lowest, models built and freed included
            runs[-1]["host_lowest_available_gb"] = round(host["lowest_gb"], 1)
            print(f"[e2e] {variant['name']}: lowest host MemAvailable {host['lowest_gb']:.1f} GB", flush=True)
        write_results("e2e", {"partial": True, "runs": runs})
    write_results("e2e", {"runs": runs})
    for r in runs:
        if "skipped" not in r:
            report(r)
    compare(runs)
    return 0


def run_world(args, variant: dict, cuda: bool) -> dict:
    """One text2world run of ``variant`` with injected random full-size models -> its results."""
    from matrix_world.pipeline import WorldConfig, WorldPipeline
    from matrix_world.pipeline.video import configure as configure_video

    smoke = args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    preset = variant["preset"]
    full = FULL_STEPS[preset]
    turbo = preset == "turbo"  # runs its own steps (the lightx2v sigma list has exactly 4)
    steps = {"panorama": args.pano_steps or (full["panorama"] if turbo and not smoke else 2 if smoke else 8),
             "video": args.video_steps or (full["video"] if turbo else SKIP_STEPS if variant["speed"] == "skip"
                                           else 1 if smoke else 3),
             "reconstruction": args.iterations or (20 if smoke else 1500)}
    frames = args.frames or (9 if smoke else 81)
    pano_height = args.pano_height or (64 if smoke else 1024 if preset == "quality" else 512)
    run_dir = Path(args.run_dir or ("/tmp/matrix_world_e2e_smoke" if smoke else "/tmp/matrix_world_e2e")) / variant["name"].replace(":", "_")
    shutil.rmtree(run_dir, ignore_errors=True)
    import diffusers
    import transformers

    free_memory(device)  # what the previous variant left
    results = {"variant": variant["name"], **variant, "device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke)",
               "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
               "smoke": smoke, "steps": steps, "full_steps": full, "frames": frames, "panorama_size": [2 * pano_height, pano_height],
               "video_size": [960, 480] if not smoke else [128, 64], "build": {}, "stages": []}
    torch.manual_seed(0)
    speed: dict = dict(SPEED_OFF) if variant["speed"] == "off" else {}
    config = WorldConfig(prompt="a quiet harbour town at sunset", out=str(run_dir), preset=preset,
                         panorama_backend="flux", depth_backend="moge", video_backend="wan", recon_backend=args.recon,
                         resolution=64 if smoke else 480, frames=frames, device=str(device), resume=False,
                         exports=("spz",), memory=variant["memory"], **speed,
                         **({"distill_lora": "lightx2v"} if smoke and preset == "turbo" else {}))  # smoke: 64-row turbo
    if variant["speed"] in ("auto", "skip") and cuda:  # the options auto picks for the FULL step count, fixed for the cut run
        from matrix_world.generation.video import transformer_passes
        from matrix_world.generation.wan_speed import plan_speed

        video_full = dataclasses.replace(configure_video(config, "wan"), num_inference_steps=full["video"])
        plan = plan_speed(attention=config.video_attention, compile=config.video_compile, fp8=config.video_fp8,
                          device=device, passes=transformer_passes(video_full), memory_mode="full" if variant["memory"] in ("auto", "full") else variant["memory"],
                          approximate=video_full.approximate)
        config = dataclasses.replace(config, video_attention=plan.attention, video_compile=plan.compile, video_fp8=plan.fp8)
        results["speed_plan"] = plan.to_dict()
    if variant["speed"] == "skip":
        from matrix_world.generation.wan_speed import sage_installed

        config = dataclasses.replace(config, video_cache="taylorseer",
                                     video_attention="sage" if cuda and sage_installed() else config.video_attention)

    if variant["memory"] in ("offload", "lowvram") and not turbo:  # the placement chosen as for the full run
        from matrix_world.generation.video import transformer_passes

        cut_video = dataclasses.replace(configure_video(config, "wan"), num_inference_steps=steps["video"])
        full_video = dataclasses.replace(cut_video, num_inference_steps=full["video"])
        cut_to_full = {steps["panorama"]: full["panorama"], transformer_passes(cut_video): transformer_passes(full_video)}
        if len(cut_to_full) < 2 and full["panorama"] != transformer_passes(full_video):  # FLUX: one pass a step
            raise ValueError(f"FLUX and Wan cut to the same passes ({steps['panorama']}) but differ in the full run: "
                             "choose other --pano-steps / --video-steps")
        results["pin_passes"] = full_passes_for_pinning(cut_to_full)

    # 1. Build the first stages' models (FLUX, MoGe) on the device; the monitor builds Wan later.
    models: dict = {}
    monitor = StageMonitor(models, device, smoke, results, memory=variant["memory"])
    monitor.build("panorama")
    monitor.build("depth")
    if args.recon == "lrm":
        monitor.build("lrm")

    def adjust(plan):
        plan.panorama.steps, plan.panorama.height = steps["panorama"], pano_height
        plan.panorama.turbo_lora = None  # no weights here: the turbo sampler settings stay, the LoRA is not loaded
        plan.video.num_inference_steps, plan.video.lora, plan.video.distill_lora = steps["video"], None, None
        plan.recon.optimize.iterations = steps["reconstruction"]
        if args.recon == "lrm":
            plan.recon.lrm.model = "injected (random official-size network)"  # models["lrm"] is used
        if smoke:
            plan.depth.view_size = 56  # ViT-S MoGe on the CPU
        return plan

    # 2. The run: text2world with the backends forced.
    monitor.start()
    t0 = time.perf_counter()
    try:
        result = WorldPipeline(log=monitor, models=models, adjust_plan=adjust)(config)
    finally:
        full_passes_for_pinning(None)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["num_gaussians"] = result.num_gaussians
    results["moge_reused"] = models.get("depth") is not None  # keyframe depth used the injected MoGe
    results["run_dir"] = str(result.out)
    models.clear()

    # 3. Rows: stage seconds from the manifest, per-step times from the hooks, peaks from the monitor.
    manifest = json.loads((result.out / "manifest.json").read_text())
    missing = [s for s in STAGES if s not in monitor.peaks or s not in manifest["stages"]]
    if missing:
        raise RuntimeError(f"stages not seen in the log/manifest: {missing} (did the stage log format change?)")
    results["video_info"] = {k: manifest["stages"]["video"].get("info", {}).get(k) for k in ("memory_mode", "speed")}
    for stage in STAGES:
        rec = manifest["stages"][stage]
        row = {"stage": stage, "backend": rec.get("backend") or "", "seconds": rec["seconds"],
               "per_step_s": None, "steps": steps.get(stage), **monitor.peaks[stage]}
        if stage in monitor.timers:  # + the rest of the stage: text/image encoders, VAE encode/decode, file writes
            row.update(monitor.timers[stage].summary(steps[stage]))
            row["other_s"] = round(row["seconds"] - row["transformer_s"], 3)
            row["components_s"] = monitor.call_seconds.get(stage)  # inside other_s
            row["peak_set_by"] = monitor.peak_logs[stage].set_by  # the calls that raised the stage's peak (GB then)
            row.update({k: rec.get("info", {}).get(k) for k in ("placement_s", "pinning", "vae_tiling", "pinned_allocator",
                                                                  "leaf_level", "resident_leftovers_gb")})
        if stage == "reconstruction":
            secs = rec["info"].get("seconds") or {}
            train = secs.get("optimize")
            row.update(keyframes_s=round(secs.get("keyframes", 0.0), 2), optimize_s=None if train is None else round(train, 2),
                       per_step_s=None if train is None else round(train / steps[stage], 5),
                       keyframes=len(rec["info"].get("keyframes") or []))
        results["stages"].append(row)
    results["stages"].append({"stage": "contact_sheet", "backend": "cpu", "seconds": manifest["stages"]["contact_sheet"]["seconds"],
                              "per_step_s": None, "steps": None, "peak_gb": None})
    results["peak_gb"] = max((r["peak_gb"] or 0.0) for r in results["stages"])

    # 4. Extrapolation to the preset's own steps where the run was cut (marked as such).
    total = sum(r["seconds"] for r in results["stages"])
    extra = {s: (full[s] - steps[s]) * r["per_step_s"] for r in results["stages"] for s in full
             if r["stage"] == s and r["per_step_s"] is not None and steps[s] != full[s]}
    if variant["speed"] == "skip" and "video" in extra:  # predicted steps cost ~nothing: each kind at its own time
        extra["video"] = skip_video_extra(results, full["video"])
    results["measured_stage_total_s"] = round(total, 1)
    results["full_steps_total_s"] = round(total + sum(extra.values()), 1)
    results["extrapolated"] = bool(extra)
    results["extrapolated_full"] = {
        "what": ("EXTRAPOLATION, not measured: measured stage seconds + (full steps - run steps) x measured per-step seconds"
                 if extra else "measured: the run used the preset's own steps"),
        "full_steps": full, "stage_s": {s: round(r["seconds"] + extra.get(s, 0.0), 1) for r in results["stages"] for s in [r["stage"]]},
        "total_s": results["full_steps_total_s"]}
    out = os.environ.get("OUT")
    if out:
        shutil.copy(result.out / "manifest.json", Path(out) / f"e2e_manifest_{variant['name'].replace(':', '_')}.json")
    return results


def compare(runs: list[dict]) -> None:
    """Side by side: every variant's stage seconds, total at its preset's full steps and peak, and the ratio
    to the first speed-off (stock path) variant of the same preset and the same memory mode."""
    done = [r for r in runs if "skipped" not in r]
    if not done:
        return
    print("\n| variant | " + " | ".join(STAGES) + " | total s (preset's steps) | peak GB | vs speed off |")
    print("|---|" + "---|" * (len(STAGES) + 3))
    for r in done:
        base = next((b for b in done if b["preset"] == r["preset"] and b["speed"] == "off" and b["memory"] == r["memory"]), None)
        ratio = f"{base['full_steps_total_s'] / r['full_steps_total_s']:.2f}x" if base else ""
        secs = {row["stage"]: row["seconds"] for row in r["stages"]}
        mark = " (extrapolated)" if r["extrapolated"] else " (measured)"
        print(f"| {r['variant']} | " + " | ".join(f"{secs[s]:.1f}" for s in STAGES)
              + f" | {r['full_steps_total_s']:.1f}{mark} | {r['peak_gb']:.1f} | {ratio} |")
    for r in done:
        for b in done:
            if b is not r and b["preset"] == r["preset"] and b["speed"] == r["speed"] and b["memory"] == "full" and r["memory"] == "lowvram":
                print(f"{r['variant']} vs {b['variant']}: {r['full_steps_total_s'] / b['full_steps_total_s']:.2f}x the time, "
                      f"peak {r['peak_gb']:.1f} vs {b['peak_gb']:.1f} GB")


def report(r: dict) -> None:
    print(f"\n[{r['variant']}] text2world end to end, random weights, on {r['device']} (torch {r['torch']}, diffusers {r['diffusers']})")
    print(f"panorama {r['panorama_size'][0]}x{r['panorama_size'][1]}, video {r['video_size'][0]}x{r['video_size'][1]} "
          f"x {r['frames']} frames, {r['num_gaussians']:,} Gaussians, wall {r['wall_s']} s (model building excluded)")
    print(f"{'stage':15s} {'backend':10s} {'seconds':>8s} {'per-step s':>10s} {'steps':>6s} {'peak GB':>8s}")
    for row in r["stages"]:
        per = "-" if row["per_step_s"] is None else f"{row['per_step_s']:.4f}"
        steps = "-" if row["steps"] is None else str(row["steps"])
        peak = "-" if row["peak_gb"] is None else f"{row['peak_gb']:.1f}"
        print(f"{row['stage']:15s} {row['backend']:10s} {row['seconds']:8.2f} {per:>10s} {steps:>6s} {peak:>8s}")
    print(f"{'total':15s} {'':10s} {r['measured_stage_total_s']:8.1f}")
    for row in r["stages"]:  # where the time outside the transformer went
        if "other_s" in row:
            print(f"  {row['stage']}: transformer {row['transformer_s']} s, other {row['other_s']} s, of which "
                  f"{row.get('components_s')}; placement {row.get('placement_s')} s, pinning: {row.get('pinning')} "
                  f"({row.get('pinned_allocator')}); leaf level {row.get('leaf_level')}, leftovers kept {row.get('resident_leftovers_gb')} GB")
            set_by = row.get("peak_set_by") or {}
            outside = row["peak_gb"] is not None and row["peak_gb"] > max(set_by.values(), default=0.0) + 0.01
            print(f"  {row['stage']}: peak raised by (GB after the call) {set_by}; the stage's peak {row['peak_gb']} GB"
                  + (" (set outside these calls)" if outside else ""))
    print("model building (random init on the device; a real run loads weights instead):")
    for name, b in r["build"].items():
        print(f"  {name:9s} {b['seconds']:7.2f} s  params (B) {b['params_b']}  allocated after {b['allocated_after_gb']} GB")
    print(f"keyframe depth reused the injected MoGe: {r['moge_reused']}")
    e = r["extrapolated_full"]
    print(f"{r['variant']} at its preset's steps {e['full_steps']}: total {e['total_s']:.0f} s ({e['what']}); "
          + ", ".join(f"{k} {v:.0f} s" for k, v in e["stage_s"].items() if k in e["full_steps"]))


def save(results: dict) -> None:
    """Write $OUT/e2e_current.json: the variant being run, at every stage end (a late failure keeps the numbers)."""
    write_results("e2e_current", results)


if __name__ == "__main__":
    sys.exit(main())
