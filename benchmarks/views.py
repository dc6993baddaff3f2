"""Sparse-views benchmark (issue 16): views2world on three views of a synthetic clip, the ``wan``
video backend (full-size Wan2.1-I2V-14B, random weights) filling a ``through``-path scaffold.

    python benchmarks/views.py            # CUDA: ~3-4 minutes on an H200 (model build + 3 Wan steps at 480p)
    python benchmarks/views.py --smoke    # CPU: same code path, tiny Wan, 64-row video, 9 frames

What runs: a synthetic clip (harbour, 512 rows) is built; frames 0, 10, 20 of it are the views
A, B, C with their ground-truth distances; the library's ``WorldPipeline`` (the object behind
``scripts/views2world.py``) registers them, builds the 3D cache along the path through them and
runs the ``wan`` backend with the pipeline injected (``WorldPipeline(models={"video": ...})``,
built as ``benchmarks/e2e.py`` builds it: transformer, UMT5-XXL, CLIP ViT-H/14, Wan VAE, random
weights, no LoRA), then the ``lift`` reconstruction. Random weights prove wiring, memory and
seconds, not quality.

Reports: registration errors against the clip's poses (rotation, translation direction, scale),
the anchors (the video's frames at the views equal the input panoramas), each stage's seconds
(the manifest's), the Wan transformer's seconds per step and the video stage's peak GPU memory.
Writes ``$OUT/views.json`` when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import e2e  # benchmarks/e2e.py: build_wan  # noqa: E402
from common import GB, PassTimer, write_results  # noqa: E402



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny Wan on CPU, 64-row video, 9 frames")
    p.add_argument("--steps", type=int, default=None, help="Wan steps with CFG (default 3; smoke 1)")
    p.add_argument("--frames", type=int, default=None, help="video frames, 4k+1 (default 81; smoke 9)")
    args = p.parse_args(argv)

    from matrix_world.datasets.build import build_dataset
    from matrix_world.datasets.clips import read_clip
    from matrix_world.io import load_npz, save_npz, to_uint8, write_image
    from matrix_world.pipeline import WorldConfig, WorldPipeline
    from matrix_world.scaffold.build import resize_rgb
    from scipy.spatial.transform import Rotation

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device: run with --smoke on CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    if args.smoke:
        torch.set_num_threads(1)
    steps = args.steps or (3 if cuda else 1)
    frames = args.frames or (81 if cuda else 9)
    height = 480 if cuda else 64
    work = Path(tempfile.mkdtemp(prefix="views_bench_"))
    t0 = time.perf_counter()

    # 1. the views: three frames of a synthetic clip with ground truth
    build_dataset(work / "clips", 1, seed=1, frames=21, height=512 if cuda else 256, kinds=("harbour",),
                  backend="auto", progress=False)
    clip = read_clip(work / "clips" / "00000", [0, 10, 20])
    assert clip.distance is not None and clip.sky is not None and clip.c2w is not None  # our layout has them
    names = "ABC"
    for i, name in enumerate(names):
        write_image(work / f"{name}.png", clip.rgb[i])
        save_npz(work / f"{name}.npz", distance=clip.distance[i], sky=clip.sky[i])
    clip_s = time.perf_counter() - t0

    # 2. the Wan pipeline (random weights, on the device)
    t1 = time.perf_counter()
    pipe, sizes = e2e.build_wan(args.smoke, device)
    build_s = time.perf_counter() - t1
    timer = PassTimer(pipe.transformer, device)

    def adjust(plan):
        plan.video.num_inference_steps, plan.video.lora = steps, None
        return plan

    # 3. views2world: registration, through path, 3D cache scaffold, wan, lift
    out = work / "run"
    config = WorldConfig(image=str(work / "A.png"), panorama=True, views=(str(work / "B.png"), str(work / "C.png")),
                         distance=str(work / "A.npz"), view_distances=(str(work / "B.npz"), str(work / "C.npz")),
                         trajectory="through", frames=frames, resolution=height, video_backend="wan",
                         recon_backend="lift", device=str(device), out=str(out), exports=())
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t2 = time.perf_counter()
    result = WorldPipeline(models={"video": pipe}, adjust_plan=adjust)(config)
    run_s = time.perf_counter() - t2
    peak = round(torch.cuda.max_memory_allocated(device) / GB, 2) if cuda else None

    # 4. what came out
    manifest = json.loads((out / "manifest.json").read_text())
    poses = np.array(json.loads((out / "poses.json").read_text())["poses"]).reshape(-1, 4, 4)
    truth = np.linalg.inv(clip.c2w[0]) @ clip.c2w
    registration = []
    for i in (1, 2):
        rot = float(np.degrees(Rotation.from_matrix(poses[i][:3, :3].T @ truth[i][:3, :3]).magnitude()))
        te, tt = poses[i][:3, 3], truth[i][:3, 3]
        direction = float(np.degrees(np.arccos(np.clip(te @ tt / np.linalg.norm(te) / np.linalg.norm(tt), -1, 1))))
        registration.append({"view": names[i], "rotation_error_deg": round(rot, 3),
                             "translation_direction_error_deg": round(direction, 3),
                             "scale_error": round(float(np.linalg.norm(te) / np.linalg.norm(tt) - 1), 4)})
    anchors = json.loads((out / "trajectory.json").read_text())["meta"]["anchors"]
    video = load_npz(out / "video.npz")["frames"]
    scaffold = load_npz(out / "scaffold.npz")
    exact = [bool(np.array_equal(video[f], to_uint8(resize_rgb(clip.rgb[i], height)))) for i, f in enumerate(anchors)]
    results = {"device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke)", "torch": torch.__version__,
               "smoke": args.smoke, "frames": frames, "video_size": [2 * height, height], "wan_steps": steps,
               "params_b": sizes, "clip_s": round(clip_s, 1), "wan_build_s": round(build_s, 1),
               "pipeline_wall_s": round(run_s, 1), "peak_gpu_gb": peak,
               "stages": {k: {"backend": v.get("backend"), "seconds": v.get("seconds")} for k, v in manifest["stages"].items()},
               "wan": timer.summary(steps), "registration": registration, "anchors": anchors, "anchors_exact": exact,
               "scaffold_known_fraction": round(float(scaffold["mask"].mean()), 4),
               "num_gaussians": result.num_gaussians, "total_s": round(time.perf_counter() - t0, 1)}
    write_results("views", results)
    print(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    if not all(exact):
        print("FAILED: the video's anchor frames are not the input views", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
