"""End-to-end benchmark: text2world through ``WorldPipeline`` with every real model's full-size
architecture and random weights, at 480p, on one CUDA GPU (issue 7).

    python benchmarks/e2e.py            # CUDA: ~4-6 minutes on an H100/H200 (build + run)
    python benchmarks/e2e.py --smoke    # CPU: same code path, tiny models, 64-row video, seconds

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

Steps are cut to fit one device call (default FLUX 8, Wan 3, optimisation 1500 iterations,
panorama 2048x1024 and video 480x960 x 81 frames as the ``quality`` preset); the time of a
full-quality run (50 / 50 / 3000) is then EXTRAPOLATED from the measured per-step times.

Random weights prove wiring, memory and time per stage, nothing about output quality.
Writes ``$OUT/e2e.json`` and ``$OUT/e2e_manifest.json`` (the run's manifest) when OUT is set.
"""

from __future__ import annotations

import argparse
import gc
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
from common import write_results  # benchmarks/common.py

GB = 1024**3
FULL = {"panorama": 50, "video": 50, "reconstruction": 3000}  # the quality preset's steps / iterations
STAGE_END = re.compile(r"^  ([a-z_]+): (?:reused|\d+(?:\.\d+)? s)(?: \[.*\])?$")  # stages._done / report.preview_stage
STAGES = ("panorama", "depth", "trajectory", "scaffold", "video", "reconstruction", "preview")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


class PassTimer:
    """Synchronised seconds of every forward pass of a module (pre/post forward hooks)."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.device, self._t0 = device, 0.0
        self.passes: list[float] = []
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, module, args):
        sync(self.device)
        self._t0 = time.perf_counter()

    def _post(self, module, args, output):
        sync(self.device)
        self.passes.append(time.perf_counter() - self._t0)

    def summary(self, steps: int) -> dict:
        for h in self.handles:
            h.remove()
        p = sorted(self.passes)
        per_step_passes = len(p) / max(steps, 1)
        median = p[len(p) // 2] if p else float("nan")
        return {"passes": len(p), "passes_per_step": per_step_passes, "first_pass_s": round(self.passes[0], 4) if p else None,
                "transformer_s": round(sum(p), 3), "per_step_s": round(median * per_step_passes, 4)}


class StageMonitor:
    """The pipeline's log function: prints, and at every stage end records that stage's peak
    GPU memory, then frees / builds the models of the next stages (outside any stage's time)."""

    def __init__(self, models: dict, device: torch.device, smoke: bool, results: dict):
        self.models, self.device, self.smoke, self.results = models, device, smoke, results
        self.timers: dict[str, PassTimer] = {}
        self.peaks: dict[str, dict] = {}

    def start(self) -> None:
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
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
        sync(self.device)
        resident = torch.cuda.memory_allocated(self.device) / GB if self.device.type == "cuda" else None
        self.results["build"][name] = {"seconds": round(time.perf_counter() - t0, 2), "params_b": sizes,
                                       "allocated_after_gb": None if resident is None else round(resident, 2)}
        print(f"[e2e] built {name}: {json.dumps(self.results['build'][name])}", flush=True)
        self.models[name] = pipe
        if name in ("panorama", "video"):
            self.timers[name] = PassTimer(pipe.transformer, self.device)

    def free(self, name: str) -> None:
        self.models.pop(name, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            self.results["build"][name]["allocated_after_free_gb"] = round(torch.cuda.memory_allocated(self.device) / GB, 2)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models on CPU, 64-row video, 9 frames (seconds)")
    p.add_argument("--pano-steps", type=int, default=None, help="FLUX steps (default 8; smoke 2)")
    p.add_argument("--video-steps", type=int, default=None, help="Wan steps with CFG (default 3; smoke 1)")
    p.add_argument("--iterations", type=int, default=None, help="optimisation iterations (default 1500; smoke 20)")
    p.add_argument("--frames", type=int, default=None, help="video frames, 4k+1 (default 81; smoke 9)")
    p.add_argument("--pano-height", type=int, default=None, help="panorama rows (default 1024 = quality preset; smoke 64)")
    p.add_argument("--run-dir", default=None, help="run directory (default /tmp/matrix_world_e2e[_smoke])")
    p.add_argument("--recon", choices=("optimize", "lrm"), default="optimize",
                   help="reconstruction backend: gsplat optimisation, or the panoramic LRM on the video's latents")
    args = p.parse_args(argv)

    from matrix_world.pipeline import WorldConfig, WorldPipeline

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device: run with --smoke on CPU", file=sys.stderr)
        return 2
    smoke = args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    if smoke:
        torch.set_num_threads(1)  # tiny tensors: a second thread only spin-waits on a shared 2-core machine
    steps = {"panorama": args.pano_steps or (2 if smoke else 8), "video": args.video_steps or (1 if smoke else 3),
             "reconstruction": args.iterations or (20 if smoke else 1500)}
    frames = args.frames or (9 if smoke else 81)
    pano_height = args.pano_height or (64 if smoke else 1024)
    run_dir = Path(args.run_dir or ("/tmp/matrix_world_e2e_smoke" if smoke else "/tmp/matrix_world_e2e"))
    shutil.rmtree(run_dir, ignore_errors=True)
    import diffusers
    import transformers

    results = {"device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke)", "torch": torch.__version__,
               "diffusers": diffusers.__version__, "transformers": transformers.__version__, "smoke": smoke,
               "steps": steps, "frames": frames, "panorama_size": [2 * pano_height, pano_height],
               "video_size": [960, 480] if not smoke else [128, 64], "build": {}, "stages": []}
    torch.manual_seed(0)

    # 1. Build the first stages' models (FLUX, MoGe) on the device; the monitor builds Wan later.
    models: dict = {}
    monitor = StageMonitor(models, device, smoke, results)
    monitor.build("panorama")
    monitor.build("depth")
    if args.recon == "lrm":
        monitor.build("lrm")

    def adjust(plan):
        plan.panorama.steps, plan.panorama.height = steps["panorama"], pano_height
        plan.video.num_inference_steps, plan.video.lora = steps["video"], None
        plan.recon.optimize.iterations = steps["reconstruction"]
        if args.recon == "lrm":
            plan.recon.lrm.model = "injected (random official-size network)"  # models["lrm"] is used
        if smoke:
            plan.depth.view_size = 56  # ViT-S MoGe on the CPU
        return plan

    # 2. The run: text2world with the backends forced (quality preset's sizes, fewer steps).
    config = WorldConfig(prompt="a quiet harbour town at sunset", out=str(run_dir), preset="quality",
                         panorama_backend="flux", depth_backend="moge", video_backend="wan", recon_backend=args.recon,
                         resolution=64 if smoke else 480, frames=frames, device=str(device), resume=False,
                         exports=("spz",))
    monitor.start()
    t0 = time.perf_counter()
    result = WorldPipeline(log=monitor, models=models, adjust_plan=adjust)(config)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["num_gaussians"] = result.num_gaussians
    results["moge_reused"] = models.get("depth") is not None  # keyframe depth used the injected MoGe
    results["run_dir"] = str(result.out)

    # 3. Rows: stage seconds from the manifest, per-step times from the hooks, peaks from the monitor.
    manifest = json.loads((result.out / "manifest.json").read_text())
    missing = [s for s in STAGES if s not in monitor.peaks or s not in manifest["stages"]]
    if missing:
        raise RuntimeError(f"stages not seen in the log/manifest: {missing} (did the stage log format change?)")
    for stage in STAGES:
        rec = manifest["stages"][stage]
        row = {"stage": stage, "backend": rec.get("backend") or "", "seconds": rec["seconds"],
               "per_step_s": None, "steps": steps.get(stage), **monitor.peaks[stage]}
        if stage in monitor.timers:  # + the rest of the stage: text/image encoders, VAE encode/decode, file writes
            row.update(monitor.timers[stage].summary(steps[stage]))
            row["other_s"] = round(row["seconds"] - row["transformer_s"], 3)
        if stage == "reconstruction":
            secs = rec["info"].get("seconds") or {}
            train = secs.get("optimize")
            row.update(keyframes_s=round(secs.get("keyframes", 0.0), 2), optimize_s=None if train is None else round(train, 2),
                       per_step_s=None if train is None else round(train / steps[stage], 5),
                       keyframes=len(rec["info"].get("keyframes") or []))
        results["stages"].append(row)
    results["stages"].append({"stage": "contact_sheet", "backend": "cpu", "seconds": manifest["stages"]["contact_sheet"]["seconds"],
                              "per_step_s": None, "steps": None, "peak_gb": None})

    # 4. Extrapolation to a full-quality run (50 FLUX steps, 50 Wan steps, 3000 iterations).
    total = sum(r["seconds"] for r in results["stages"])
    extra = {s: (FULL[s] - steps[s]) * r["per_step_s"] for r in results["stages"] for s in FULL
             if r["stage"] == s and r["per_step_s"] is not None}
    results["measured_stage_total_s"] = round(total, 1)
    results["extrapolated_full_quality"] = {
        "what": "EXTRAPOLATION, not measured: measured stage seconds + (full steps - run steps) x measured per-step seconds",
        "full_steps": FULL, "stage_s": {s: round(r["seconds"] + extra.get(s, 0.0), 1) for r in results["stages"] for s in [r["stage"]]},
        "total_s": round(total + sum(extra.values()), 1)}
    save(results)
    out = os.environ.get("OUT")
    if out:
        shutil.copy(result.out / "manifest.json", Path(out) / "e2e_manifest.json")
    report(results)
    return 0


def report(r: dict) -> None:
    print(f"\ntext2world end to end, random weights, on {r['device']} (torch {r['torch']}, diffusers {r['diffusers']})")
    print(f"panorama {r['panorama_size'][0]}x{r['panorama_size'][1]}, video {r['video_size'][0]}x{r['video_size'][1]} "
          f"x {r['frames']} frames, {r['num_gaussians']:,} Gaussians, wall {r['wall_s']} s (model building excluded)")
    print(f"{'stage':15s} {'backend':10s} {'seconds':>8s} {'per-step s':>10s} {'steps':>6s} {'peak GB':>8s}")
    for row in r["stages"]:
        per = "-" if row["per_step_s"] is None else f"{row['per_step_s']:.4f}"
        steps = "-" if row["steps"] is None else str(row["steps"])
        peak = "-" if row["peak_gb"] is None else f"{row['peak_gb']:.1f}"
        print(f"{row['stage']:15s} {row['backend']:10s} {row['seconds']:8.2f} {per:>10s} {steps:>6s} {peak:>8s}")
    print(f"{'total':15s} {'':10s} {r['measured_stage_total_s']:8.1f}")
    print("model building (random init on the device; a real run loads weights instead):")
    for name, b in r["build"].items():
        print(f"  {name:9s} {b['seconds']:7.2f} s  params (B) {b['params_b']}  allocated after {b['allocated_after_gb']} GB")
    print(f"keyframe depth reused the injected MoGe: {r['moge_reused']}")
    e = r["extrapolated_full_quality"]
    print(f"EXTRAPOLATED (not measured) full-quality run, {e['full_steps']}: total {e['total_s']:.0f} s; "
          + ", ".join(f"{k} {v:.0f} s" for k, v in e["stage_s"].items() if k in FULL))


def save(results: dict) -> None:
    """Write $OUT/e2e.json (also at every stage end, so a late failure keeps the numbers)."""
    write_results("e2e", results)


if __name__ == "__main__":
    sys.exit(main())
