"""Sparse 360-degree views -> poses + one 3D cache (Pantheon360's input; ``scripts/views2world.py``).

The input adapter in front of the world pipeline (DESIGN §1): view A is the run's panorama
(``--image``, stages 1-2 as for image2world); the other views B, C, ... go through the
**views stage** (:func:`views_stage`):

1. each view is read (a view of another size than A is resized to A's, with a note);
2. its distance: the given map (``--distance``, one per view), else the run's depth backend;
3. the poses, in view A's frame (c2w, world = view A, A = identity): read from ``--poses``,
   or registered (:func:`matrix_world.registration.register_views`: SIFT on perspective cuts
   with the rig constraint, essential matrix on bearing vectors, scale from the distances);
4. every view's distance is expressed in A's units (the registration's distance scale).

Writes ``poses.json`` (our trajectory JSON: one c2w per view, A first; ``meta`` holds the
source, each view's distance scale and the registration's matches, inliers and errors),
``view_NN.png`` and ``view_NN_depth.npz`` (NN = 01 for B, ...: the view at A's size and its
distance in A's units, sky, valid).

The 3D cache (:func:`view_cache`): the occlusion-aware scaffold mesh of every view at its
pose, as the scaffold stage builds them (:func:`~matrix_world.scaffold.build.panorama_mesh`),
with the sky's triangles removed (Pantheon360's sky filter; each view's sky dome would hide
the others' far geometry); ``render_union``'s 0.03 relative-depth tolerance is Pantheon360's
depth-edge tolerance. On a ``through`` path every view's anchor frame is that view, all known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from matrix_world.io import load_npz, read_distance, read_image, save_npz, write_image
from matrix_world.pipeline.context import StageContext, log_stage
from matrix_world.scaffold.build import panorama_mesh, resize_nearest, resize_rgb
from matrix_world.scaffold.mesh import ScaffoldConfig
from matrix_world.trajectory import Trajectory


@dataclass
class ViewSet:
    """All views in view A's frame: poses, colours and distances in A's units (A first)."""

    c2w: torch.Tensor  # [N, 4, 4] float64, c2w[0] = I
    rgb: list[np.ndarray]  # N x [H, 2H, 3] float32
    distance: list[np.ndarray]  # N x [H, 2H] float32 (+inf / 2 x max where sky)
    sky: list[np.ndarray]  # N x [H, 2H] bool
    files: dict[str, Path]  # the run's files of views B.. (their contents join later stages' hashes)

    def __len__(self) -> int:
        return len(self.rgb)


def view_names(count: int) -> list[str]:
    return [chr(ord("A") + i) if i < 26 else f"view {i}" for i in range(count)]


def _view_distance(ctx: StageContext, depth_config, rgb: np.ndarray, path: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(distance, sky) of a view: its file, else the run's depth backend."""
    if path is not None:
        return read_distance(path, expected_shape=None)
    from matrix_world.generation.depth import estimate_depth, panorama_depth_from_model

    if depth_config.backend == "moge" and "depth" in ctx.models:
        result = panorama_depth_from_model(rgb, ctx.models["depth"], depth_config, device=ctx.device)
    else:
        result = estimate_depth(rgb, depth_config, device=ctx.device)
    return result.distance.astype(np.float32), np.asarray(result.sky, bool) | ~np.asarray(result.valid, bool)


def views_stage(ctx: StageContext, config, depth_config, rgb_a: np.ndarray, depth_a: dict, *,
                window: int | None = None) -> ViewSet:
    """Views B, C, ... + view A (``panorama.png``, ``depth.npz``) -> ``poses.json`` + ``view_NN*`` (module docstring).

    config: the run's WorldConfig (``views``, ``view_distances``, ``poses``); depth_config: the
    plan's depth configuration (the backend that estimates views without a distance map).
    window: register each view only against the ``window`` views placed just before it
    (a video's keyframes; None: against all earlier views).
    """
    from matrix_world.registration import RegistrationConfig, register_views

    t0 = time.perf_counter()
    n = 1 + len(config.views)
    names = view_names(n)
    outputs = ["poses.json"] + [f"view_{i:02d}{suffix}" for i in range(1, n) for suffix in (".png", "_depth.npz")]
    files = {f"view_{i:02d}": Path(p) for i, p in enumerate(config.views, 1)}
    files.update({f"view_{i:02d}_distance": Path(p) for i, p in enumerate(config.view_distances, 1)})
    if config.poses is not None:
        files["poses"] = Path(config.poses)
    registration = RegistrationConfig(seed=ctx.seed)
    stage_config = {"views": len(config.views), "depth": None if config.view_distances else depth_config.to_dict(),
                    "registration": None if config.poses else {**registration.__dict__, "window": window}}
    with ctx.run.stage("views", stage_config, inputs=["panorama.png", "depth.npz"], files=files, outputs=outputs,
                       backend="file" if config.poses else "registration") as st:
        if not st.done:
            h = rgb_a.shape[0]
            rgbs, distances, skies = [rgb_a], [np.where(depth_a["sky"], np.inf, depth_a["distance"])], [depth_a["sky"]]
            for i, view in enumerate(config.views, 1):
                rgb = read_image(view)
                given = config.view_distances[i - 1] if config.view_distances else None
                distance, sky = _view_distance(ctx, depth_config, rgb, given)
                if rgb.shape[0] != h:
                    ctx.log(f"  note: view {names[i]} ({view}) is {rgb.shape[1]}x{rgb.shape[0]}, view A is {2 * h}x{h}: "
                            "resized to A's size")
                    rgb = resize_rgb(rgb, h)
                    distance = resize_nearest(np.where(sky, np.inf, distance), h)
                    sky = resize_nearest(sky.astype(np.float32), h) > 0.5
                rgbs.append(rgb)
                distances.append(np.where(sky, np.inf, distance).astype(np.float32))
                skies.append(sky)
            if config.poses is not None:
                c2w = Trajectory.from_json(config.poses).c2w.numpy()
                c2w = np.linalg.inv(c2w[0]) @ c2w  # world = view A
                scales = np.ones(n)
                meta: dict = {"source": "file", "file": str(config.poses)}
            else:
                reg = register_views(rgbs, distances, registration, names=names, window=window)
                c2w, scales = reg.c2w, reg.distance_scale
                meta = {"source": "registered", "pairs": reg.pairs, "parent": reg.parent}
                for pair in reg.pairs:
                    ctx.log(f"  views: {pair['view']} -> {pair['to']}: {pair['inliers']}/{pair['matches']} matches agree, "
                            f"median error {pair['median_error_deg']:.3f} deg, baseline {pair['baseline']:.3f}, "
                            f"distance scale {pair['distance_scale']:.4f}")
            meta.update(views=[str(config.image), *map(str, config.views)], distance_scale=[float(s) for s in scales],
                        convention="c2w of each view, world = view A; lengths in view A's distance units")
            Trajectory(torch.from_numpy(c2w), name="views", meta=meta).to_json(st.path("poses.json"))
            for i in range(1, n):
                distance = (distances[i] * scales[i]).astype(np.float32)
                write_image(st.path(f"view_{i:02d}.png"), rgbs[i])
                save_npz(st.path(f"view_{i:02d}_depth.npz"), distance=distance, sky=skies[i], valid=~skies[i])
            st.info.update(source=meta["source"], distance_scale=meta["distance_scale"])
    log_stage(ctx, st, "views", t0)
    return load_views(ctx.run.path, rgb_a, depth_a)


def load_views(run_path: Path, rgb_a: np.ndarray, depth_a: dict) -> ViewSet:
    """The views stage's outputs read back (view A from the run's panorama and depth)."""
    c2w = Trajectory.from_json(run_path / "poses.json").c2w
    rgbs, distances, skies = [rgb_a], [depth_a["distance"]], [depth_a["sky"]]
    files = {"poses": run_path / "poses.json"}
    for i in range(1, len(c2w)):
        depth = load_npz(run_path / f"view_{i:02d}_depth.npz", keys=("distance", "sky"))
        rgbs.append(read_image(run_path / f"view_{i:02d}.png"))
        distances.append(depth["distance"])
        skies.append(depth["sky"])
        files[f"view_{i:02d}"] = run_path / f"view_{i:02d}.png"
        files[f"view_{i:02d}_depth"] = run_path / f"view_{i:02d}_depth.npz"
    return ViewSet(c2w, rgbs, distances, skies, files)


def view_anchors(views: ViewSet, traj: Trajectory) -> dict[int, int]:
    """{frame: view index} of the views a path passes through: view A at frame 0 (every path
    starts there), and on a ``through`` path every view at its ``meta["anchors"]`` frame."""
    anchors = traj.meta.get("anchors") if traj.meta.get("preset") == "through" else None
    return {int(frame): i for i, frame in enumerate(anchors or [0])}


def view_cache(views: ViewSet, traj: Trajectory, occlusion_threshold: float) -> dict:
    """The scaffold stage's keyword arguments for the views' 3D cache (module docstring):
    ``cache_meshes`` (views B.. at their poses, sky removed), ``cache_files``, ``anchors``."""
    config = ScaffoldConfig(occlusion_threshold=occlusion_threshold)
    meshes = [panorama_mesh(views.rgb[i], views.distance[i], views.c2w[i], sky=views.sky[i], config=config,
                            drop_sky=True) for i in range(1, len(views))]  # at full size, like view A's own mesh
    anchors = {frame: (views.rgb[i], views.distance[i]) for frame, i in view_anchors(views, traj).items() if i > 0}
    return {"cache_meshes": meshes, "cache_files": views.files, "anchors": anchors, "drop_sky": True}


def video_anchors(views: ViewSet, traj: Trajectory) -> dict[int, np.ndarray]:
    """{frame: rgb} the video's frames that are input views (``video_stage(anchors=...)``)."""
    return {frame: views.rgb[i] for frame, i in view_anchors(views, traj).items()}
