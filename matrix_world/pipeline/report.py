"""What a person looks at after a run: preview.mp4, contact_sheet.png and the final summary."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from matrix_world.io import to_uint8, write_image
from matrix_world.pipeline.context import StageContext, progress_bar
from matrix_world.scaffold.build import Scaffold

CPU_PREVIEW_BUDGET = 200_000


def preview_stage(ctx: StageContext, gaussians, traj, height: int) -> None:
    """``world.ply`` -> ``preview.mp4`` (perspective fly-through) and ``preview_panorama.png``."""
    from matrix_world.reconstruction.preview import PreviewConfig, write_preview

    t0 = time.perf_counter()
    size = 512 if ctx.device.type == "cuda" else min(256, max(128, height))
    config = PreviewConfig(width=size, height=size, panorama_height=max(128, height), fps=traj.fps)
    with ctx.run.stage("preview", config, inputs=["world.ply", "trajectory.json"],
                       outputs=["preview.mp4", "preview_panorama.png"],
                       backend="cuda" if ctx.device.type == "cuda" else "cpu") as st:
        if not st.done:
            shown = gaussians
            if ctx.device.type != "cuda" and len(gaussians) > CPU_PREVIEW_BUDGET:
                shown = gaussians.prune(CPU_PREVIEW_BUDGET)  # the CPU reference renderer slows down sharply above this
                ctx.log(f"  preview: rendering the {CPU_PREVIEW_BUDGET:,} most important of {len(gaussians):,} Gaussians (CPU)")
            with progress_bar(len(traj), "preview", "frame") as bar:
                write_preview(st.path("preview.mp4").parent, shown.to(ctx.device), traj.c2w, config, progress=bar.update)
            st.info.update(frames=len(traj), size=size, gaussians_rendered=len(shown))
    ctx.log(f"  preview: {'reused' if st.done else f'{time.perf_counter() - t0:.1f} s'}")


def contact_sheet(panorama: np.ndarray, scaffold_rgb: np.ndarray, scaffold_mask: np.ndarray, video: np.ndarray,
                  columns: int = 4, width: int = 384) -> np.ndarray:
    """A sheet of three rows: the panorama, scaffold frames (unknown pixels magenta), video frames.

    panorama: [H, 2H, 3] float or uint8; scaffold_rgb, video: [F, h, 2h, 3] uint8;
    scaffold_mask: [F, h, 2h] bool. Returns uint8 [rows * tile_h, columns * width, 3].
    """
    import cv2

    def tile(img: np.ndarray) -> np.ndarray:
        img = to_uint8(np.asarray(img))
        return cv2.resize(img, (width, width // 2), interpolation=cv2.INTER_AREA)

    f = video.shape[0]
    picks = np.linspace(0, f - 1, columns).round().astype(int)
    blank = np.zeros((width // 2, width, 3), np.uint8)
    row0 = [tile(panorama)] + [blank] * (columns - 1)
    scaffold = scaffold_rgb.copy()
    scaffold[~scaffold_mask] = (255, 0, 255)
    row1 = [tile(scaffold[i]) for i in picks]
    row2 = [tile(video[i]) for i in picks]
    return np.concatenate([np.concatenate(r, axis=1) for r in (row0, row1, row2)], axis=0)


def contact_sheet_stage(ctx: StageContext, panorama: np.ndarray, scaffold: Scaffold, video: np.ndarray) -> None:
    with ctx.run.stage("contact_sheet", {"columns": 4}, inputs=["panorama.png", "scaffold.npz", "video.npz"],
                       outputs=["contact_sheet.png"], backend="cpu") as st:
        if not st.done:
            write_image(st.path("contact_sheet.png"), contact_sheet(panorama, scaffold.rgb, scaffold.mask, video))


def _size(path: Path) -> str:
    n = path.stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)


def summarize(result, *, wall: float, log=print) -> None:
    """The final summary: time per stage, Gaussians, file sizes, where things are."""
    log("")
    log(f"done in {wall:.1f} s  ->  {result.out}")
    for stage, seconds in result.seconds.items():
        log(f"  {stage:<15} {seconds:8.1f} s")
    log(f"  Gaussians: {result.num_gaussians:,}")
    for name in ("world.ply", "world.spz", "world.splat", "world.glb", "world_collider.glb", "preview.mp4", "video.mp4", "contact_sheet.png", "manifest.json"):
        path = result.out / name
        if path.is_file():
            log(f"  {name:<18} {_size(path):>10}  {path}")
    log(f"  view it:  python scripts/view.py {result.out}")
    log(f"  continue: python scripts/explore.py {result.out} --trajectory straight")
    if result.plan.preview_only:
        log("  This was a PREVIEW run (no-weight backends). Real models: see README 'Real weights', then rerun on a GPU.")
    if torch.cuda.is_available():
        log(f"  peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
