#!/usr/bin/env python
"""Contact sheet of synthetic scenes: panorama, distance and a top view with the camera path.

    python scripts/synthetic_contact_sheet.py --out docs/synthetic_scenes.png

Each row: the equirect RGB from the path's first camera, its distance (log scale, near =
dark) and a top view of the scene (objects' footprints grey, walkable area outlined, the
sampled Matrix-Pano-style path in red). Saved as a palette PNG to stay small.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matrix_world.datasets.scenes import make_scene
from matrix_world.datasets.trajectories import sample_trajectory

from matrix_world.app.cli import parse_options, require_positive, require_seed, run_main

KINDS = ("forest", "city", "beach", "snow", "harbour", "room", "hall")


@dataclass
class SheetOptions:
    """Options of scripts/synthetic_contact_sheet.py."""

    out: Path = Path("docs/synthetic_scenes.png")
    """Output PNG (relative to the current folder; its folder is created)."""
    height: int = 112
    """Panorama height of each tile in pixels (a row is 5 x height wide)."""
    seed: int = 1
    """Seed of the first scene; row k uses seed + k."""

    def check(self) -> None:
        require_positive(self, "height")
        require_seed(self, "seed")


def top_view(scene, path_xz: np.ndarray, size: int) -> np.ndarray:
    """Top view [size, size, 3] of the walkable area (+ margin): footprints, border, path."""
    import cv2

    x0, z0, x1, z1 = scene.walkable
    margin = 0.15 * max(x1 - x0, z1 - z0)
    lo, span = np.array([x0 - margin, z0 - margin]), max(x1 - x0, z1 - z0) + 2 * margin
    to_px = lambda p: np.round((np.asarray(p) - lo) / span * (size - 1)).astype(np.int32)
    img = np.full((size, size, 3), 235, np.uint8)
    for fp in scene.footprints():
        a, b = to_px(fp[:2]), to_px(fp[2:])
        cv2.rectangle(img, (int(a[0]), size - 1 - int(a[1])), (int(b[0]), size - 1 - int(b[1])), (120, 120, 120), -1)
    a, b = to_px([x0, z0]), to_px([x1, z1])
    cv2.rectangle(img, (int(a[0]), size - 1 - int(a[1])), (int(b[0]), size - 1 - int(b[1])), (40, 120, 40), 1)
    pts = to_px(path_xz)
    pts[:, 1] = size - 1 - pts[:, 1]
    cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, (200, 30, 30), 2)
    cv2.circle(img, (int(pts[0, 0]), int(pts[0, 1])), 4, (200, 30, 30), -1)
    return img


def main(argv=None) -> int:
    import cv2
    from PIL import Image

    options = parse_options(SheetOptions, argv, prog="synthetic_contact_sheet.py", doc=__doc__)
    h = options.height
    rows = []
    for k, kind in enumerate(KINDS):
        scene = make_scene(kind, options.seed + k)
        traj = sample_trajectory(scene, options.seed + k, frames=41)
        rgb, dist, sky = scene.render(traj.c2w[:1], h)
        d = np.where(np.isfinite(dist[0]), dist[0], 0.0)
        d = np.clip(np.log1p(d) / np.log1p(160.0), 0, 1)
        d = np.where(sky[0], 1.0, d)
        tile = np.concatenate([(rgb[0] * 255).round().astype(np.uint8),
                               np.repeat((d[..., None] * 255).round().astype(np.uint8), 3, 2),
                               top_view(scene, traj.points, h)], 1)
        label = f"{kind}  seed {scene.seed}  {scene.num_triangles} tris  path {traj.length:.1f} m"
        cv2.putText(tile, label, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(tile, label, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(tile)
        print(label, flush=True)
    sheet = np.concatenate(rows, 0)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(options.out, optimize=True)
    print(f"wrote {options.out} ({options.out.stat().st_size / 1024:.0f} KB, {sheet.shape[1]}x{sheet.shape[0]})")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(run_main(main))
