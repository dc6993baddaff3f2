"""video2pano on a GPU: the ``wan`` backend (full-size Wan2.1-I2V-14B, UMT5-XXL, CLIP ViT-H/14, Wan VAE,
random weights) filling the canvas of the committed example video (docs/video2pano/city_pan.mp4),
through the library's own ``generate_video`` (Argus' blended decoding on), in three rows:

* ``erp``: all 33 frames in one call, 480 x 960;
* ``erp_windows``: windows of 17 frames with 5 context frames (Argus' iterative sampling: 3 calls);
* ``viewpoint``: 17 frames as 672 x 672 ViewPoint maps, converted back to 480 x 960.

    python benchmarks/video2pano_wan.py           # CUDA: ~3-4 minutes on an H200 (model build included)
    python benchmarks/video2pano_wan.py --smoke   # CPU: the tiny random Wan, 32-row frames, same code path

Random weights prove wiring, memory and seconds, nothing about quality (no weights trained on
ViewPoint maps exist here; the Matrix-3D LoRA was trained on equirects). Per row: seconds of the call
(text/image encoding, VAE encode, denoising, blended decode; model build excluded), peak GPU memory
(torch.cuda.max_memory_allocated), output shape and finiteness. Orientation estimation and the canvas
run on the CPU first and are timed too. Writes $OUT/video2pano.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # e2e.build_wan and the tiny-model builders

from common import GB, write_results  # noqa: E402  (benchmarks/common.py)

EXAMPLE = HERE.parent / "docs" / "video2pano" / "city_pan.mp4"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny Wan on the CPU (checks the code path)")
    parser.add_argument("--steps", type=int, default=3, help="denoising steps per call")
    parser.add_argument("--video", default=str(EXAMPLE), help="an .mp4, or an .npz of its frames ('frames' [F, H, W, 3] uint8) "
                        "for machines without the ffmpeg plugin of imageio")
    args = parser.parse_args(argv)

    import e2e  # benchmarks/e2e.py: build_wan (full-size random Wan pipeline, or the tiny one)

    from matrix_world.generation.video import VideoConfig, generate_video
    from matrix_world.io import read_video
    from matrix_world.orientation import estimate_orientations
    from matrix_world.scaffold.canvas import paste_video

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    smoke = args.smoke or device.type == "cpu"
    height = 32 if smoke else 480
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
                     "torch": torch.__version__, "smoke": smoke, "height": height, "steps": args.steps, "rows": []}

    # 1. orientations and the canvas (CPU)
    t0 = time.perf_counter()
    if args.video.endswith(".npz"):
        frames = np.load(args.video)["frames"]  # uint8, as read_video returns
    else:
        frames = read_video(args.video)
    orient = estimate_orientations(frames, None)
    t1 = time.perf_counter()
    canvas = paste_video(frames, orient.rotations, orient.fov, height)
    results.update(frames=len(frames), fov_estimated=round(orient.fov, 3), orientation_s=round(t1 - t0, 2),
                   canvas_s=round(time.perf_counter() - t1, 2), known_fraction=round(float(canvas.mask.mean()), 4))
    print(f"{len(frames)} frames, fov {orient.fov:.2f} ({t1 - t0:.1f} s), canvas {height}x{2 * height} "
          f"({results['canvas_s']} s, {100 * results['known_fraction']:.1f} % known)", flush=True)
    write_results("video2pano", results)

    # 2. the pipeline (random weights, built on the device)
    t0 = time.perf_counter()
    pipe, sizes = e2e.build_wan(smoke, device)
    results.update(build_s=round(time.perf_counter() - t0, 1), params_b=sizes)
    print(f"built the Wan pipeline in {results['build_s']} s: {sizes}", flush=True)

    # 3. rows
    rgb = canvas.rgb.astype(np.float32) / 255.0
    c2w = np.tile(np.eye(4), (len(rgb), 1, 1))
    n = len(rgb) if (len(rgb) - 1) % 4 == 0 else 4 * ((len(rgb) - 1) // 4) + 1
    rows = [("erp", {}, n), ("erp_windows", {"window": 17, "context_frames": 5}, n),
            ("viewpoint", {"representation": "viewpoint", **({"viewpoint_size": 32} if smoke else {})}, 17)]
    for name, extra, count in rows:
        config = VideoConfig(backend="wan", height=height, lora=None, num_inference_steps=args.steps, memory="full",
                             seam="blend", seed=0, **extra)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        try:
            out = generate_video(config, scaffold_rgb=rgb[:count], scaffold_mask=canvas.mask[:count], prompt="a city street",
                                 c2w=c2w[:count], device=device, generator=torch.Generator().manual_seed(0), pipeline=pipe)
        except torch.OutOfMemoryError:
            results["rows"].append({"row": name, "skipped": "CUDA out of memory"})
            write_results("video2pano", results)
            continue
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        row = {"row": name, "frames": count, "seconds": round(seconds, 2), "shape": list(out.frames.shape),
               "finite": bool(np.isfinite(out.frames).all()),
               "peak_gb": round(torch.cuda.max_memory_allocated(device) / GB, 1) if device.type == "cuda" else None,
               "windows": out.info.get("windows"), "viewpoint_size": out.info.get("viewpoint_size")}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        write_results("video2pano", results)
    ok = all(r.get("finite") for r in results["rows"])
    print(f"video2pano wan rows: {'all finite' if ok else 'NOT all finite'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
