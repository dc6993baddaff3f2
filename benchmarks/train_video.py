"""Video LoRA training benchmark (GPU), two parts in one call of < 10 minutes on an H200:

(a) the full-size Wan2.1-I2V-14B transformer (16.4B, random bf16 weights built on the GPU) with the
    trainer's peft LoRA on the Matrix-3D layers (r=16), gradient checkpointing, AdamW: seconds per
    training step and peak GPU memory at 480p x 81 frames (latent 21 x 60 x 120), through the
    library's objective (generation.wan_lora_training.flow_matching_loss) on random latents and
    conditions of the real shapes (what a cached run feeds it). If 81 frames do not fit, 49 and 33
    are measured and the verdict says what a run needs, from the measured numbers.
(b) a SMALL Wan-architecture transformer (WanTransformer3DModel with few layers and a small width,
    random init) trained FROM SCRATCH (all of its weights) for ``--minutes`` on a small synthetic split
    (datasets.build), conditioned by the video stage's own condition function, then its videos on
    held-out clips against the ``fill`` backend: PSNR on the mask-unknown pixels. The VAE is a
    STAND-IN, not the Wan VAE: a fixed linear patch autoencoder (PatchPCAVAE: Wan's latent geometry,
    8x8 pixels x the 1 + 4k causal frame grouping -> 16 channels, the top-16 principal components
    of the training frames' patches); its own reconstruction PSNR on the same pixels is reported as
    the ceiling. The text and image encoders are the tiny random ones of generation.tiny_models
    (fixed random features, not language understanding).

    python benchmarks/train_video.py                 # CUDA: both parts, ~8-9 minutes
    python benchmarks/train_video.py --smoke         # CPU: same code paths, tiny sizes, seconds

Random weights in (a) prove wiring, memory and speed, nothing about quality. Writes
$OUT/train_video.json (after each part), $OUT/train_video_loss.png and $OUT/train_video_loss.json
(the loss curve of (b)) and $OUT/train_video_heldout.png (last frame of held-out clips: scaffold with the
unknown in magenta | fill | small Wan | ground truth) when OUT is set, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import write_results  # benchmarks/common.py (scripts run from this folder)
from video import TINY_CONFIG, build_transformer, sync  # benchmarks/video.py

GIB = 2**30
EXACT = {"attention": "native", "compile": "off", "fp8": "off"}  # the video stage's speed options, exact: the
# small model is scored as trained; the speed variants of part (b) then set their own on the same pipeline

SMALL_CONFIG = {  # (b): 6 blocks of width 512 (8 heads x 64), text/image dims of the tiny encoders
    "patch_size": (1, 2, 2), "num_attention_heads": 8, "attention_head_dim": 64, "in_channels": 36, "out_channels": 16,
    "text_dim": 32, "freq_dim": 256, "ffn_dim": 2048, "num_layers": 6, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "image_dim": 8, "added_kv_proj_dim": 512, "rope_max_seq_len": 1024,
}
SMOKE_SMALL = {**TINY_CONFIG}
# Frozen encoders a real (uncached-capable) run keeps on the GPU beside the transformer (weights only):
# UMT5-XXL encoder 5.7B bf16, CLIP ViT-H/14 0.63B float32, Wan VAE 0.13B float32.
ENCODERS_GB = 11.4 + 2.5 + 0.5


# --------------------------------------------------------------------------- (a) full-size LoRA step


def lora_step_rows(args, device) -> dict:
    """Seconds per step and peak memory of LoRA training steps of the 14B (or tiny, --smoke)."""
    from matrix_world.generation.wan_lora_training import (
        MATRIX3D_LORA_TARGETS,
        add_lora,
        flow_matching_loss,
        sample_sigmas,
        training_sigmas,
    )
    from matrix_world.generation.wan_pipeline import WAN_I2V_14B_CONFIG

    cuda = device.type == "cuda"
    cfg = TINY_CONFIG if args.smoke else WAN_I2V_14B_CONFIG
    height = 32 if args.smoke else 480
    t0 = time.perf_counter()
    tr = build_transformer(cfg, device, torch.bfloat16 if cuda else torch.float32)
    names = add_lora(tr, rank=16, alpha=None, targets=MATRIX3D_LORA_TARGETS, seed=0)
    tr.enable_gradient_checkpointing()
    tr.train()
    sync(device)
    build_s = time.perf_counter() - t0
    lora = [p for p in tr.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora, lr=1e-4)
    grid, g = training_sigmas(5.0), torch.Generator().manual_seed(0)
    text_dim, image_dim, image_tokens = (32, 8, 17) if args.smoke else (4096, 1280, 257)
    out = {"model": "tiny Wan (smoke)" if args.smoke else "Wan2.1-I2V-14B, random bf16", "smoke": args.smoke,
           "parameters": sum(p.numel() for p in tr.parameters()), "trainable": sum(p.numel() for p in lora),
           "lora_layers": len(names), "rank": 16, "height": height, "width": 2 * height, "build_s": round(build_s, 1),
           "gpu_total_gib": torch.cuda.get_device_properties(device).total_memory / GIB if cuda else None, "rows": []}
    for frames in ([9] if args.smoke else args.frames):
        t, h, w = (frames - 1) // 4 + 1, height // 8, height // 4
        row: dict = {"frames": frames, "latent": [t, h, w], "tokens": t * h * w // 4}
        try:
            latents = torch.randn(1, 16, t, h, w, generator=g).to(device)
            dtype = torch.bfloat16 if cuda else torch.float32
            cond = torch.randn(1, 20, t, h, w, generator=g).to(device, dtype)
            text = torch.randn(1, 512, text_dim, generator=g).to(device, dtype)
            image = torch.randn(1, image_tokens, image_dim, generator=g).to(device, dtype)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            times, losses = [], []
            for _ in range(args.warmup + args.steps):
                sync(device)
                start = time.perf_counter()
                sigmas = sample_sigmas(1, sigmas=grid, generator=g)
                noise = torch.randn(latents.shape, generator=g).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    loss = flow_matching_loss(tr, latents=latents, condition=cond, prompt_embeds=text, image_embeds=image,
                                              sigmas=sigmas, noise=noise)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(lora, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sync(device)
                times.append(time.perf_counter() - start)
                losses.append(float(loss.detach()))
            measured = times[args.warmup:] or times
            row.update(seconds_per_step=float(np.mean(measured)), first_step_s=times[0], losses=losses, fits=True,
                       peak_gib=torch.cuda.max_memory_allocated(device) / GIB if cuda else None)
        except torch.OutOfMemoryError as exc:
            row.update(fits=False, error=str(exc).splitlines()[0][:200],
                       peak_gib=torch.cuda.max_memory_allocated(device) / GIB if cuda else None)
            optimizer.zero_grad(set_to_none=True)
        finally:
            latents = cond = text = image = None
            if cuda:
                torch.cuda.empty_cache()
        out["rows"].append(row)
        print(f"(a) {frames} frames: {row}", flush=True)
        if row["fits"] and not args.smoke and frames == args.frames[0]:
            break  # the first (largest) frame count fits: the smaller ones are not needed
    first = out["rows"][0]
    out.update({k: first[k] for k in ("seconds_per_step", "peak_gib", "losses") if k in first})
    out["verdict"] = lora_verdict(out)
    del tr, optimizer
    return out


def lora_verdict(result: dict) -> str:
    """What one GPU does with the measured numbers, and what a run needs where it does not fit."""
    rows, total = result["rows"], result["gpu_total_gib"]
    first = rows[0]
    if total is None:
        return f"CPU smoke run: {first.get('seconds_per_step', float('nan')):.3f} s/step (no GPU numbers)"
    weights_gib = result["parameters"] * 2 / GIB
    if first["fits"]:
        free = total - first["peak_gib"]
        encoders = "fits" if free > ENCODERS_GB / 1.074 + 2 else "does NOT fit"
        return (f"{first['frames']} frames at {result['height']}p fit on one GPU: {first['seconds_per_step']:.1f} s/step, "
                f"peak {first['peak_gib']:.1f} of {total:.1f} GiB ({free:.1f} GiB left; the frozen encoders, "
                f"~{ENCODERS_GB / 1.074:.1f} GiB, {encoders} beside it, or --cache them)")
    ok = [r for r in rows if r["fits"]]
    fsdp = math.ceil(weights_gib / max(total - (first["peak_gib"] - weights_gib) - 4.0, 1.0)) if first["peak_gib"] else None
    fewer = (f"{ok[0]['frames']} frames fit ({ok[0]['seconds_per_step']:.1f} s/step, {ok[0]['peak_gib']:.1f} GiB)"
             if ok else "no measured frame count fits")
    return (f"{first['frames']} frames do not fit on one GPU ({total:.0f} GiB); {fewer}; FSDP over >= {fsdp} GPUs "
            f"shards the {weights_gib:.0f} GiB of bf16 weights (configs/accelerate_fsdp_wan14b.yaml)")


# --------------------------------------------------------------------------- (b) small model from scratch


class PatchPCAVAE(torch.nn.Module):
    """A fixed linear stand-in for the Wan VAE (NOT the Wan VAE): Wan's latent geometry (8 x 8 pixels,
    frame 0 alone then groups of 4 frames -> one latent frame of 16 channels), each patch projected
    on the top-16 principal components of the training patches (frame 0: 192-dim, others: 768-dim)
    and reconstructed by the transpose. Looks like AutoencoderKLWan to the pipeline."""

    class _Config(dict):
        __getattr__ = dict.get

    class _Posterior:
        def __init__(self, z):
            self.latent_dist = self
            self._z = z

        def mode(self):
            return self._z

    def __init__(self, basis0, mean0, basis, mean, latents_mean, latents_std):
        super().__init__()
        self.basis0 = torch.nn.Parameter(basis0, requires_grad=False)  # [192, 16]
        self.mean0 = torch.nn.Parameter(mean0, requires_grad=False)
        self.basis = torch.nn.Parameter(basis, requires_grad=False)  # [768, 16]
        self.mean = torch.nn.Parameter(mean, requires_grad=False)
        self.config = self._Config(z_dim=16, scale_factor_spatial=8, scale_factor_temporal=4,
                                   latents_mean=list(map(float, latents_mean)), latents_std=list(map(float, latents_std)))

    @property
    def dtype(self):
        return self.basis.dtype

    @property
    def device(self):
        return self.basis.device

    @staticmethod
    def patches(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, 1 + 4(T-1), H, W] -> ([B, 1, h, w, 192], [B, T-1, h, w, 768])."""
        b, c, f, hh, ww = x.shape
        h, w, t = hh // 8, ww // 8, (f - 1) // 4
        p0 = x[:, :, :1].reshape(b, c, 1, h, 8, w, 8).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, 1, h, w, c * 64)
        p = x[:, :, 1:].reshape(b, c, t, 4, h, 8, w, 8).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t, h, w, c * 256)
        return p0, p

    def encode(self, x: torch.Tensor):
        p0, p = self.patches(x.to(self.dtype))
        z = torch.cat([(p0 - self.mean0) @ self.basis0, (p - self.mean) @ self.basis], dim=1)  # [B, T, h, w, 16]
        return self._Posterior(z.permute(0, 4, 1, 2, 3))

    def decode(self, z: torch.Tensor, return_dict: bool = False):
        z = z.to(self.dtype).permute(0, 2, 3, 4, 1)  # [B, T, h, w, 16]
        b, t1, h, w, _ = z.shape
        p0 = z[:, :1] @ self.basis0.T + self.mean0
        p = z[:, 1:] @ self.basis.T + self.mean
        x0 = p0.reshape(b, 1, h, w, 3, 8, 8).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, 3, 1, h * 8, w * 8)
        x = p.reshape(b, t1 - 1, h, w, 3, 4, 8, 8).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, 3, 4 * (t1 - 1), h * 8, w * 8)
        return (torch.cat([x0, x], dim=2).clamp(-1.0, 1.0),)

    def enable_tiling(self):
        pass

    def disable_tiling(self):
        pass

    @classmethod
    def fit(cls, videos: list[torch.Tensor]) -> PatchPCAVAE:
        """Principal components of the patches of ``videos`` ([3, F, H, W] each, in [-1, 1])."""
        def pca(rows: torch.Tensor):
            rows = rows.double()
            mean = rows.mean(0)
            values, vectors = torch.linalg.eigh(torch.cov((rows - mean).T))
            return vectors[:, -16:].flip(-1).float(), mean.float()

        p0s, ps = zip(*(cls.patches(v[None].float()) for v in videos))
        basis0, mean0 = pca(torch.cat([p.reshape(-1, p.shape[-1]) for p in p0s]))
        basis, mean = pca(torch.cat([p.reshape(-1, p.shape[-1]) for p in ps]))
        vae = cls(basis0, mean0, basis, mean, [0.0] * 16, [1.0] * 16)
        z = torch.cat([vae.encode(v[None]).latent_dist.mode().flatten(2) for v in videos], dim=2)[0]  # [16, N]
        vae.config["latents_mean"], vae.config["latents_std"] = z.mean(1).tolist(), z.std(1).clamp_min(1e-4).tolist()
        return vae


def _pairs(root: Path, n: int, seed: int, *, frames: int, height: int, workers: int) -> list[dict]:
    from matrix_world.datasets.build import build_dataset
    from matrix_world.datasets.pairs import open_training_pairs

    build_dataset(root, n, seed=seed, frames=frames, height=height, backend="cpu", workers=workers, progress=False)
    data = open_training_pairs(root, frames=frames, height=height)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=min(workers, len(data)))
    return list(loader)


def _loss_curve_png(path: Path, losses: list[float]) -> None:
    import cv2

    from matrix_world.io import write_image

    img = np.full((300, 600, 3), 255, np.uint8)
    if len(losses) > 1:
        k = max(1, len(losses) // 200)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        lo, hi = float(np.min(smooth)), float(np.max(smooth))
        xs = np.linspace(40, 590, len(smooth))
        ys = 280 - (smooth - lo) / max(hi - lo, 1e-9) * 260
        cv2.polylines(img, [np.stack([xs, ys], 1).astype(np.int32)], False, (200, 40, 40), 1, cv2.LINE_AA)
        cv2.putText(img, f"loss {hi:.3f}", (2, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"{lo:.3f}  ({len(losses)} steps)", (2, 295), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    write_image(path, img.astype(np.float32) / 255.0)


def small_from_scratch(args, device, deadline: float) -> dict:
    """Train the small Wan from scratch on a synthetic split; held-out PSNR vs ``fill`` on unknown pixels."""
    from matrix_world.generation.tiny_models import tiny_wan_components
    from matrix_world.generation.train_video_lora import encode_training_item
    from matrix_world.generation.video import VideoConfig, generate_video
    from matrix_world.generation.wan_lora_training import flow_matching_loss, sample_sigmas, training_sigmas
    from matrix_world.generation.wan_pipeline import PROMPT_SUFFIX, PanoVideoPipeline
    from matrix_world.metrics import psnr

    cuda = device.type == "cuda"
    frames, height = (9, 32) if args.smoke else (args.small_frames, args.small_height)
    n_train, n_held = (4, 2) if args.smoke else (args.train_clips, args.heldout_clips)
    t0 = time.perf_counter()

    # 1. A small synthetic split: training and held-out clips (different seeds), their training pairs.
    root = Path(tempfile.mkdtemp(prefix="train_video_bench_"))
    train = _pairs(root / "train", n_train, 0, frames=frames, height=height, workers=args.workers)
    held = _pairs(root / "heldout", n_held, 10_000, frames=frames, height=height, workers=args.workers)
    data_s = time.perf_counter() - t0

    # 2. Components: the VAE stand-in fitted on the training frames, tiny random text/image encoders,
    #    the small transformer (random init), the video stage's pipeline class around them.
    vae = PatchPCAVAE.fit([p["video"].permute(1, 0, 2, 3) * 2 - 1 for p in train])
    parts = tiny_wan_components(seed=0)
    torch.manual_seed(0)
    from diffusers import WanTransformer3DModel

    transformer = WanTransformer3DModel(**(SMOKE_SMALL if args.smoke else SMALL_CONFIG))
    pipe = PanoVideoPipeline(**{**parts, "vae": vae, "transformer": transformer}).to(device)
    pipe.use_flow_matching(5.0)
    pipe.set_progress_bar_config(disable=True)

    # 3. Encode every training pair once (the shared condition function; what --cache stores).
    encoded = [encode_training_item(pipe, p, prompt_suffix=PROMPT_SUFFIX, device=device, dtype=torch.float32) for p in train]
    stacked = {k: torch.stack([e[k] for e in encoded]) for k in encoded[0]}

    # 4. Train all the transformer's weights from scratch until the time budget.
    transformer.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.0)
    grid, g = training_sigmas(5.0), torch.Generator().manual_seed(0)
    stop = min(time.perf_counter() + args.minutes * 60.0, deadline)
    losses: list[float] = []
    train_start = time.perf_counter()
    while time.perf_counter() < stop or len(losses) < 2:
        idx = torch.randint(len(train), (min(args.batch, len(train)),), generator=g)
        batch = {k: v[idx].to(device) for k, v in stacked.items()}
        sigmas = sample_sigmas(len(idx), sigmas=grid, generator=g)
        noise = torch.randn(batch["latents"].shape, generator=g).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = flow_matching_loss(transformer, latents=batch["latents"], condition=batch["condition"],
                                      prompt_embeds=batch["prompt_embeds"], image_embeds=batch["image_embeds"],
                                      sigmas=sigmas, noise=noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    train_s = time.perf_counter() - train_start
    transformer.eval().requires_grad_(False)

    # 5. Held-out clips: the trained model through the video stage vs the fill backend, PSNR on unknown pixels.
    scores: dict[str, list[float]] = {"wan_small": [], "fill": [], "vae_standin_ceiling": []}
    strips: list[np.ndarray] = []
    for k, p in enumerate(held):
        scaffold, mask = p["scaffold"].permute(0, 2, 3, 1).numpy(), p["mask"].numpy()
        truth = p["video"].permute(0, 2, 3, 1)
        unknown = ~p["mask"]
        if not bool(unknown.any()):
            continue
        common = dict(scaffold_rgb=scaffold, scaffold_mask=mask, prompt=p["prompt"], c2w=p["c2w"].numpy(), device=device)
        wan = generate_video(VideoConfig(backend="wan", height=height, lora=None, num_inference_steps=args.eval_steps,
                                         guidance_scale=1.0, shift=5.0, memory="full", seed=k, **EXACT),
                             pipeline=pipe, generator=torch.Generator().manual_seed(k), **common)
        fill = generate_video(VideoConfig(backend="fill", height=height), **common)
        with torch.no_grad():
            recon = pipe.decode_latents(pipe.encode_latents(p["video"].permute(1, 0, 2, 3)[None].to(device) * 2 - 1))
        recon_frames = recon[0].permute(1, 2, 3, 0).cpu()
        for name, pred in (("wan_small", torch.from_numpy(wan.frames)), ("fill", torch.from_numpy(fill.frames)),
                           ("vae_standin_ceiling", recon_frames)):
            scores[name].append(float(psnr(pred, truth, unknown[..., None])))
        if len(strips) < 3:  # rows of the comparison picture: scaffold (unknown magenta), fill, small Wan, truth
            f = len(truth) - 1
            shown = np.where(mask[f][..., None], scaffold[f], np.array([1.0, 0.0, 1.0], np.float32))
            strips.append(np.concatenate([shown, fill.frames[f], wan.frames[f], truth[f].numpy()], axis=1))

    # 5b. The speed options' quality cost on this trained model (issue 14): the same held-out clips with each option.
    variants = speed_variants(pipe, held, args, device, height) if args.variants else None

    # 6. The loss curve.
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "train_video_loss.json").write_text(json.dumps({"step": list(range(1, len(losses) + 1)),
                                                                           "loss": losses}) + "\n")
        _loss_curve_png(Path(out_dir) / "train_video_loss.png", losses)
        if strips:  # last frame of held-out clips: scaffold | fill | small Wan | ground truth
            from matrix_world.io import write_image

            write_image(Path(out_dir) / "train_video_heldout.png", np.clip(np.concatenate(strips, axis=0), 0.0, 1.0))
    tail = losses[-max(1, len(losses) // 10):]
    return {"model": f"WanTransformer3DModel {'(tiny, smoke)' if args.smoke else SMALL_CONFIG}, from scratch",
            "parameters": sum(p.numel() for p in transformer.parameters()),
            "vae": "PatchPCAVAE stand-in (fixed linear 8x8 x 1+4k patches -> 16 PCA channels), not the Wan VAE",
            "encoders": "tiny random UMT5 / CLIP of generation.tiny_models",
            "frames": frames, "height": height, "width": 2 * height, "train_clips": len(train), "heldout_clips": len(held),
            "batch": args.batch, "lr": args.lr, "steps": len(losses), "train_s": round(train_s, 1), "data_s": round(data_s, 1),
            "steps_per_s": len(losses) / max(train_s, 1e-9), "loss_first": losses[0], "loss_last_10pct": float(np.mean(tail)),
            "eval_steps": args.eval_steps, "guidance": 1.0,
            "psnr_unknown_db": {k: float(np.mean(v)) if v else None for k, v in scores.items()},
            "psnr_unknown_db_per_clip": scores, "speed_variants": variants}


def speed_variants(pipe, held: list[dict], args, device, height: int) -> list[dict]:
    """PSNR on the unknown pixels of the held-out clips with each speed option of the video stage on the
    trained small model, and its output's mean absolute difference from the exact run (same seeds)."""
    from matrix_world.generation.video import VideoConfig
    from matrix_world.generation.wan_speed import SpeedPlan, sage_installed, apply_speed, remove_speed

    cuda = device.type == "cuda"
    # the attention kernels (cuDNN, Sage) and FP8 need bf16 activations: the variants run the trained
    # model in bf16, against its own exact bf16 run (the video stage's dtype); the fp32 score is the row above
    if cuda:
        pipe.transformer.to(torch.bfloat16)
    plans = [("exact (SDPA)" + (", bf16" if cuda else ""), SpeedPlan(attention="native"))]
    if cuda:
        plans += [("cuDNN attention", SpeedPlan(attention="cudnn"))]
        if sage_installed():
            plans += [("SageAttention 2", SpeedPlan(attention="sage"))]
    plans += [("FirstBlockCache 0.05", SpeedPlan(attention="native", cache="fbc", cache_threshold=0.05)),
              ("FirstBlockCache 0.10", SpeedPlan(attention="native", cache="fbc", cache_threshold=0.10)),
              ("TaylorSeer, interval 4", SpeedPlan(attention="native", cache="taylorseer", cache_interval=4)),
              ("TaylorSeer, interval 2", SpeedPlan(attention="native", cache="taylorseer", cache_interval=2))]
    if cuda and sage_installed():  # the fast path of the speed benchmark (Sage + TaylorSeer 2), compile aside
        plans += [("SageAttention 2 + TaylorSeer, interval 2", SpeedPlan(attention="sage", cache="taylorseer", cache_interval=2))]
    if cuda and torch.cuda.get_device_capability(device) >= (8, 9):
        plans += [("FP8 row-wise (torchao)", SpeedPlan(attention="native", fp8="rowwise"))]  # irreversible: last
    config = VideoConfig(backend="wan", height=height, lora=None, num_inference_steps=args.eval_steps, guidance_scale=1.0,
                         shift=5.0, memory="full", **EXACT)
    exact: list[np.ndarray] = []
    rows: list[dict] = []
    for name, plan in plans:
        remove_speed(pipe)
        try:
            apply_speed(pipe, plan)
        except Exception as exc:  # noqa: BLE001 - an option that cannot run here is a row of the table
            rows.append({"variant": name, "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
            continue
        values: list[float] = []
        diffs: list[float] = []
        t0 = time.perf_counter()
        try:
            scored = score_variant(name, pipe, held, config, device, exact, values, diffs)
        except Exception as exc:  # noqa: BLE001 - an option that cannot run on this model is a row of the table
            rows.append({"variant": name, "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
            print(f"(b) variant {rows[-1]}", flush=True)
            continue
        rows.append({"variant": name, "psnr_unknown_db": float(np.mean(values)) if values else None,
                     "mean_abs_diff_vs_exact": float(np.mean(diffs)) if diffs else 0.0, "clips": scored,
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"(b) variant {rows[-1]}", flush=True)
    remove_speed(pipe)
    return rows


def score_variant(name: str, pipe, held: list[dict], config, device, exact: list, values: list, diffs: list) -> int:
    """Sample every held-out clip with the options now on ``pipe``; append PSNRs and differences -> clips scored."""
    from matrix_world.generation.video import generate_video
    from matrix_world.metrics import psnr

    scored = 0
    for k, p in enumerate(held):
        unknown = ~p["mask"]
        if not bool(unknown.any()):
            continue
        out = generate_video(config, scaffold_rgb=p["scaffold"].permute(0, 2, 3, 1).numpy(), scaffold_mask=p["mask"].numpy(),
                             prompt=p["prompt"], c2w=p["c2w"].numpy(), device=device, pipeline=pipe,
                             generator=torch.Generator().manual_seed(k)).frames
        values.append(float(psnr(torch.from_numpy(out), p["video"].permute(0, 2, 3, 1), unknown[..., None])))
        if name.startswith("exact"):
            exact.append(out)
        else:
            diffs.append(float(np.abs(out - exact[len(diffs)]).mean()))
        scored += 1
    return scored


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the code paths)")
    parser.add_argument("--parts", nargs="+", default=["a", "b"], choices=["a", "b"])
    parser.add_argument("--frames", type=int, nargs="+", default=[81, 49, 33], help="(a) frame counts, largest first")
    parser.add_argument("--steps", type=int, default=2, help="(a) measured steps per row")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=6.0, help="(b) training time budget")
    parser.add_argument("--budget-s", type=float, default=560.0, help="(b) training stops so that the whole run ends before this")
    parser.add_argument("--small-height", type=int, default=128)
    parser.add_argument("--small-frames", type=int, default=17)
    parser.add_argument("--train-clips", type=int, default=128)
    parser.add_argument("--heldout-clips", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--no-variants", dest="variants", action="store_false",
                        help="(b) skip the speed options' quality cost on the trained model")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        print("no CUDA device: running the --smoke configuration", file=sys.stderr)
        args.smoke = True
    if args.smoke:
        args.minutes, args.eval_steps, args.batch, args.workers, args.steps, args.warmup = 0.05, 2, 2, 1, 2, 0
        torch.set_num_threads(1)
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__}
    if "a" in args.parts:
        results["full_size_lora_step"] = lora_step_rows(args, device)
        write_results("train_video", results)
    if "b" in args.parts:
        reserve = 15.0 if args.smoke else 75.0  # held-out generation + writing
        results["small_from_scratch"] = small_from_scratch(args, device, deadline=start + args.budget_s - reserve)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_results("train_video", results)

    a, b = results.get("full_size_lora_step"), results.get("small_from_scratch")
    print("\n| part | what | number |\n|---|---|---|")
    if a:
        for row in a["rows"]:
            if row["fits"]:
                peak = "n/a" if row["peak_gib"] is None else f"{row['peak_gib']:.1f} GiB"
                print(f"| (a) | {a['model']}, LoRA r=16, {row['frames']} frames, {a['height']}p | "
                      f"{row['seconds_per_step']:.2f} s/step, peak {peak} |")
            else:
                print(f"| (a) | {row['frames']} frames, {a['height']}p | out of memory ({row['peak_gib']:.1f} GiB at the failure) |")
        print(f"| (a) | verdict | {a['verdict']} |")
    if b and b.get("speed_variants"):
        for v in b["speed_variants"]:
            if "skipped" in v:
                print(f"| (b) | speed option {v['variant']} | skipped: {v['skipped']} |")
            else:
                print(f"| (b) | speed option {v['variant']}: PSNR on unknown pixels | {v['psnr_unknown_db']:.2f} dB "
                      f"(mean abs. diff. vs exact {v['mean_abs_diff_vs_exact']:.4f}) |")
    if b:
        for name, value in b["psnr_unknown_db"].items():
            print(f"| (b) | PSNR on unknown pixels, {name} ({b['heldout_clips']} held-out clips) | "
                  f"{'n/a' if value is None else f'{value:.2f} dB'} |")
        print(f"| (b) | from-scratch training | {b['steps']} steps in {b['train_s']} s, loss {b['loss_first']:.3f} -> "
              f"{b['loss_last_10pct']:.3f} |")
    print(f"total {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
