"""What a person looks at after a run: preview.mp4, contact_sheet.png and the final summary."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from matrix_world.io import load_npz, to_uint8, write_image
from matrix_world.pipeline.context import StageContext, progress_bar
from matrix_world.scaffold.build import Scaffold

CPU_PREVIEW_BUDGET = 200_000
EXPLORED_PREVIEW_FRAMES = 161  # most poses of an explored world's fly-through (base path + every segment's)


def preview_stage(ctx: StageContext, gaussians, traj, height: int, key: dict | None = None) -> None:
    """``world.ply`` -> ``preview.mp4`` (perspective fly-through along ``traj``) and
    ``preview_panorama.png``. ``key``: more JSON that joins the stage's hash (e.g. the parts
    of an explored world whose paths make ``traj``)."""
    from matrix_world.reconstruction.preview import PreviewConfig, write_preview

    t0 = time.perf_counter()
    size = 512 if ctx.device.type == "cuda" else min(256, max(128, height))
    config = PreviewConfig(width=size, height=size, panorama_height=max(128, height), fps=traj.fps)
    stage_config = config if key is None else {"preview": dataclasses.asdict(config), **key}
    with ctx.run.stage("preview", stage_config, inputs=["world.ply", "trajectory.json"],
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


SHEET_ROWS = ("panorama", "scaffold (unknown = magenta)", "video (generated)", "fly-through of the splats (preview.mp4)")
LABEL_HEIGHT = 22  # pixels of the label band above each row
MAGENTA = (255, 0, 255)


def pick(count: int, columns: int) -> np.ndarray:
    """``columns`` frame indices spread evenly over range(count), first and last included."""
    return np.linspace(0, count - 1, columns).round().astype(int)


def magenta_unknown(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scaffold frame(s) rgb [..., H, W, 3] uint8 with the unknown pixels (mask [..., H, W] False) magenta."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    out[~np.asarray(mask, bool)] = MAGENTA
    return out


def _label(text: str, width: int) -> np.ndarray:
    """A white band [LABEL_HEIGHT, width, 3] uint8 with ``text`` in black."""
    import cv2

    band = np.full((LABEL_HEIGHT, width, 3), 255, np.uint8)
    cv2.putText(band, text, (6, LABEL_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def contact_sheet(panoramas: list[np.ndarray], scaffold: list[np.ndarray], video: list[np.ndarray],
                  flythrough: list[np.ndarray], columns: int = 4, width: int = 384) -> np.ndarray:
    """A sheet of four labelled rows (``SHEET_ROWS``), each a label band over its tiles:

    1. panorama: the world's panoramas (a run's one, or an explored world's base and each
       segment's start view), at most ``columns``, each [H, 2H, 3];
    2. scaffold frames with the unknown pixels magenta (:func:`magenta_unknown`), [h, 2h, 3];
    3. generated video frames, [h, 2h, 3];
    4. fly-through frames rendered from the splats (``preview.mp4``), [s, s, 3], twice as many
       tiles of half the width (square).

    Tiles are uint8 or float [0, 1]; missing tiles are white (the background). Returns uint8
    [4 * (LABEL_HEIGHT + width // 2), columns * width, 3].
    """
    import cv2

    def tiles(images: list[np.ndarray], count: int, size: tuple[int, int]) -> np.ndarray:
        out = [cv2.resize(to_uint8(np.asarray(im)), size, interpolation=cv2.INTER_AREA) for im in images[:count]]
        out += [np.full((size[1], size[0], 3), 255, np.uint8)] * (count - len(out))
        return np.concatenate(out, axis=1)

    half = width // 2
    rows = [tiles(panoramas, columns, (width, half)), tiles(scaffold, columns, (width, half)),
            tiles(video, columns, (width, half)), tiles(flythrough, 2 * columns, (half, half))]
    sheet_w = columns * width
    parts = []
    for name, row in zip(SHEET_ROWS, rows):
        row = np.pad(row, ((0, 0), (0, sheet_w - row.shape[1]), (0, 0)), constant_values=255)  # odd widths
        parts += [_label(name, sheet_w), row]
    return np.concatenate(parts, axis=0)


def contact_sheet_stage(ctx: StageContext, panorama: np.ndarray, scaffold: Scaffold, video: np.ndarray,
                        columns: int = 4) -> None:
    """``contact_sheet.png`` of a run: its panorama, scaffold and video frames, and frames of its
    ``preview.mp4`` (written by :func:`preview_stage` before)."""
    from matrix_world.io import read_video, video_length

    with ctx.run.stage("contact_sheet", {"columns": columns, "rows": list(SHEET_ROWS)},
                       inputs=["panorama.png", "scaffold.npz", "video.npz", "preview.mp4"],
                       outputs=["contact_sheet.png"], backend="cpu") as st:
        if not st.done:
            preview = ctx.run.path / "preview.mp4"
            picks = pick(len(video), columns)
            fly = read_video(preview, pick(video_length(preview), 2 * columns))
            sheet = contact_sheet([panorama], list(magenta_unknown(scaffold.rgb[picks], scaffold.mask[picks])),
                                  list(video[picks]), list(fly), columns=columns)
            write_image(st.path("contact_sheet.png"), sheet)


def explored_world_report(ctx: StageContext, gaussians, parts: list[Path], height: int, columns: int = 4) -> None:
    """An explored world's own ``preview.mp4`` and ``contact_sheet.png``, refreshed after a merge.

    ``gaussians``: the merged world; ``parts``: the base run's folder then each segment's, in
    order (each with trajectory.json, panorama.png, scaffold.npz, video.npz). The fly-through
    follows the base path, then every segment's (at most ``EXPLORED_PREVIEW_FRAMES`` poses,
    evenly spaced); the sheet's panorama row shows the base
    panorama and the segments' start views, its scaffold and video rows frames spread over all
    parts.
    """
    from matrix_world.io import read_image, read_video, video_length
    from matrix_world.scaffold.build import load_scaffold
    from matrix_world.trajectory import Trajectory

    trajs = [Trajectory.from_json(p / "trajectory.json") for p in parts]
    c2w = torch.cat([t.c2w for t in trajs])
    if len(c2w) > EXPLORED_PREVIEW_FRAMES:  # evenly spaced poses: the fly-through stays affordable
        c2w = c2w[np.unique(np.linspace(0, len(c2w) - 1, EXPLORED_PREVIEW_FRAMES).round().astype(int))]
    path = Trajectory(c2w, fps=trajs[0].fps, name="explored world")
    rel = [str(p.relative_to(ctx.run.path)) if p != ctx.run.path else "." for p in parts]
    preview_stage(ctx, gaussians, path, height, key={"parts": rel})
    files = {f"{r}/{name}": p / name for r, p in zip(rel, parts)
             for name in ("panorama.png", "scaffold.npz", "video.npz")}
    with ctx.run.stage("contact_sheet", {"columns": columns, "rows": list(SHEET_ROWS), "parts": rel},
                       inputs=["preview.mp4"], files=files, outputs=["contact_sheet.png"], backend="cpu") as st:
        if not st.done:
            counts = [len(t) for t in trajs]
            offsets = np.cumsum([0] + counts)
            scaffold, video = [], []
            for k in pick(int(offsets[-1]), columns):  # frame k of the whole path -> (part, frame)
                i = int(np.searchsorted(offsets, k, side="right") - 1)
                f = int(k - offsets[i])
                sc = load_scaffold(parts[i] / "scaffold.npz")
                scaffold.append(magenta_unknown(sc.rgb[f], sc.mask[f]))
                video.append(load_npz(parts[i] / "video.npz", keys=("frames",))["frames"][f])
            preview = ctx.run.path / "preview.mp4"
            fly = read_video(preview, pick(video_length(preview), 2 * columns))
            sheet = contact_sheet([read_image(p / "panorama.png") for p in parts[:columns]], scaffold, video,
                                  list(fly), columns=columns)
            write_image(st.path("contact_sheet.png"), sheet)


def _size(path: Path) -> str:
    n = path.stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)


def gaussians_line(out: Path, count: int) -> str:
    """The summary's Gaussian count, with where it comes from (backend, keyframes)."""
    import json

    try:
        info = json.loads((out / "manifest.json").read_text())["stages"]["reconstruction"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"  Gaussians: {count:,} in world.ply"
    keyframes = (info.get("info") or {}).get("keyframes") or []
    made = f", made by {info.get('backend')}" + (f" from {len(keyframes)} keyframes" if keyframes else "")
    return (f"  Gaussians: {count:,} in world.ply{made} (the viewer shows the visible ones; "
            "explore.py reports per segment how many it made and how many the merge kept)")


def summarize(result, *, wall: float, log=print) -> None:
    """The final summary: time per stage, Gaussians, file sizes, where things are."""
    log("")
    log(f"done in {wall:.1f} s  ->  {result.out}")
    for stage, seconds in result.seconds.items():
        log(f"  {stage:<15} {seconds:8.1f} s")
    log(gaussians_line(result.out, result.num_gaussians))
    for name in ("world.ply", "world.spz", "world.splat", "world.glb", "world_collider.glb", "preview.mp4", "video.mp4", "contact_sheet.png", "manifest.json"):
        path = result.out / name
        if path.is_file():
            log(f"  {name:<18} {_size(path):>10}  {path}")
    log(f"  view it:  python scripts/view.py {result.out}")
    log(f"  continue: python scripts/explore.py {result.out} --trajectory straight")
    if result.plan.preview_only:
        log("  This was a PREVIEW run (no-weight backends). Real models: see README 'Real weights', then rerun on a GPU.")
    for stage, gb in result.peak_gpu_gb.items():  # the stages that measure their own (the video stage)
        log(f"  peak GPU memory of the {stage} stage: {gb:.1f} GB")
