"""The stages of a world run, one function each: run-directory artifacts in, artifacts out.

Each function runs one :meth:`RunDir.stage` (skipped when its outputs exist with the same
config hash) and returns what later stages need, read back from the run directory, so a
resumed run continues exactly where it stopped. Model packages are imported inside the
functions (this module is the composition root of the pipeline; the core never imports
them at module level).

Artifacts (DESIGN.md §1): panorama.png, depth.npz, trajectory.json, scaffold.npz
(+ scaffold_rgb.mp4, scaffold_mask.mp4), video.npz (+ video.mp4), world.ply (+ world.spz),
preview.mp4, contact_sheet.png.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np
import torch

from matrix_world.io import load_npz, read_image, save_npz, to_uint8, write_image, write_video
from matrix_world.rundir import RunDir
from matrix_world.trajectory import Trajectory

Log = Callable[[str], None]
SCAFFOLD_CHUNK = 8  # frames rendered per call (progress and memory)


def progress_bar(total: int, desc: str, unit: str):
    """A tqdm progress bar with ETA on stderr, removed when done."""
    from tqdm import tqdm

    return tqdm(total=total, desc=f"  {desc}", unit=unit, leave=False, dynamic_ncols=True)


@dataclasses.dataclass
class StageContext:
    """What every stage gets: the run directory, device, seed and a log function."""

    run: RunDir
    device: torch.device
    seed: int
    log: Log = print
    models: dict = dataclasses.field(default_factory=dict)
    """Already loaded models to use instead of loading from weights: "panorama" (a FLUX
    panorama pipeline), "depth" (a LoadedMoGe), "video" (a PanoVideoPipeline). Keeps models
    in memory across runs and segments; the random-weight end-to-end benchmark injects here."""

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run's seed (offset per stage)."""
        return torch.Generator().manual_seed(self.seed + offset)


def _done(ctx: StageContext, st, name: str, started: float) -> None:
    word = "reused" if st.done else f"{time.perf_counter() - started:.1f} s"
    ctx.log(f"  {name}: {word} [{st.backend}]")


# --------------------------------------------------------------------------- 1. panorama


def panorama_stage(ctx: StageContext, config, *, prompt: str, image: str | None) -> np.ndarray:
    """Text or image -> ``panorama.png``; returns rgb [H, 2H, 3] float32."""
    from matrix_world.generation.panorama import generate_panorama

    t0 = time.perf_counter()
    files = {"image": image} if image else {}
    with ctx.run.stage("panorama", {"prompt": prompt, **config.to_dict(), "generator_seed": ctx.seed}, files=files,
                       outputs=["panorama.png"], backend=config.backend) as st:
        if not st.done:
            if "panorama" in ctx.models and config.backend == "flux":
                from matrix_world.generation.panorama import generate_with_pipeline

                rgb, info = generate_with_pipeline(ctx.models["panorama"], config, prompt=prompt, device=ctx.device,
                                                   generator=ctx.generator(1))
                info = {"backend": "flux", "model": "injected", **info}
            else:
                result = generate_panorama(config, prompt=prompt, image=image, device=ctx.device,
                                           generator=ctx.generator(1))
                rgb, info = result.rgb, result.info
            write_image(st.path("panorama.png"), rgb)
            st.backend = info.get("backend", config.backend)
            st.info.update(_small(info))
    _done(ctx, st, "panorama", t0)
    return read_image(ctx.run.path / "panorama.png")


# --------------------------------------------------------------------------- 2. depth


def depth_stage(ctx: StageContext, config, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """``panorama.png`` -> ``depth.npz`` (distance [H, W] float32, sky, valid)."""
    from matrix_world.generation.depth import estimate_depth

    t0 = time.perf_counter()
    files = {"distance": config.path} if config.path else {}
    with ctx.run.stage("depth", config.to_dict(), inputs=["panorama.png"], files=files,
                       outputs=["depth.npz"], backend=config.backend) as st:
        if not st.done:
            if "depth" in ctx.models and config.backend == "moge":
                from matrix_world.generation.depth import panorama_depth_from_model

                result = panorama_depth_from_model(rgb, ctx.models["depth"], config, device=ctx.device)
            else:
                result = estimate_depth(rgb, config, device=ctx.device)
            save_npz(st.path("depth.npz"), distance=result.distance.astype(np.float32), sky=result.sky,
                     valid=result.valid)
            st.backend = result.info.get("backend", config.backend)
            st.info.update(_small(result.info))
    _done(ctx, st, "depth", t0)
    return load_npz(ctx.run.path / "depth.npz", keys=("distance", "sky", "valid"))


# --------------------------------------------------------------------------- 3. trajectory


def trajectory_stage(ctx: StageContext, spec: str, frames: int, distance: np.ndarray, *,
                     start_c2w: torch.Tensor | None = None, fps: float = 16.0) -> Trajectory:
    """Preset name or JSON -> ``trajectory.json`` (world-frame c2w, frame 0 = ``start_c2w`` or I)."""
    from pathlib import Path

    from matrix_world.trajectory import PRESETS, load_trajectory

    t0 = time.perf_counter()
    is_file = spec not in PRESETS
    config = {"trajectory": "file" if is_file else spec, "frames": frames, "fps": fps,
              "start_c2w": None if start_c2w is None else start_c2w.reshape(-1).tolist()}
    with ctx.run.stage("trajectory", config, inputs=["depth.npz"], files={"trajectory": spec} if is_file else {},
                       outputs=["trajectory.json"], backend="file" if is_file else "preset") as st:
        if not st.done:
            traj = load_trajectory(spec, distance, None if is_file else frames, fps=None if is_file else fps)
            if start_c2w is not None:  # chained segment: poses continue from the world's pose
                traj = dataclasses.replace(traj, c2w=start_c2w.to(torch.float64) @ traj.c2w)
            traj.to_json(st.path("trajectory.json"))
            st.info.update(frames=len(traj), name=traj.name, source=Path(spec).name if is_file else spec)
    _done(ctx, st, "trajectory", t0)
    return Trajectory.from_json(ctx.run.path / "trajectory.json")


# --------------------------------------------------------------------------- 4. scaffold


def scaffold_stage(ctx: StageContext, height: int, rgb: np.ndarray, depth: dict, traj: Trajectory, *,
                   backend: str = "auto", occlusion_threshold: float = 0.05,
                   cache_meshes: list | None = None, cache_files: dict | None = None) -> dict[str, np.ndarray]:
    """Panorama + distance (+ the world's cached meshes) -> ``scaffold.npz`` along the trajectory.

    scaffold.npz: rgb [F, H, 2H, 3] uint8, mask [F, H, 2H] bool, distance [F, H, 2H] float16
    (inf where nothing was hit). Frame 0 is the panorama itself; its mask is ``depth['known']``
    when present (a chained segment's start view may have holes), else all true.
    cache_meshes: ScaffoldMesh objects already in the world frame (earlier segments),
    rendered together with this panorama's mesh (the "3D cache").
    cache_files: {key: path} of the files the cache meshes were built from (their contents
    join the stage hash).
    """

    t0 = time.perf_counter()
    mesh_config = {"occlusion_threshold": occlusion_threshold}
    config = {"height": height, "mesh": mesh_config, "cache_meshes": len(cache_meshes or [])}
    outputs = ["scaffold.npz", "scaffold_rgb.mp4", "scaffold_mask.mp4"]
    from matrix_world.scaffold.render import resolve_backend

    render_backend = resolve_backend(backend, ctx.device, log=ctx.log)
    config["rasteriser"] = render_backend  # CPU and CUDA rasterisers agree only within tolerance
    with ctx.run.stage("scaffold", config, inputs=["panorama.png", "depth.npz", "trajectory.json"],
                       files=cache_files, outputs=outputs, backend=render_backend) as st:
        if not st.done:
            device = ctx.device if render_backend == "cuda" else torch.device("cpu")
            c2w = traj.c2w.to(device)
            mesh = panorama_mesh(rgb, depth, c2w[0], occlusion_threshold=occlusion_threshold, device=device)
            meshes = [mesh] + [m.to(device) for m in (cache_meshes or [])]
            chunks = []
            with progress_bar(len(c2w), "scaffold", "frame") as bar:
                for start in range(0, len(c2w), SCAFFOLD_CHUNK):
                    chunks.append(render_union(meshes, c2w[start:start + SCAFFOLD_CHUNK], height, backend=render_backend))
                    bar.update(len(chunks[-1].mask))
            frames = dataclasses.replace(chunks[0], **{k: torch.cat([getattr(c, k) for c in chunks])
                                                       for k in ("rgb", "mask", "distance")})
            out_rgb = to_uint8(frames.rgb.cpu().numpy())
            mask = frames.mask.cpu().numpy()
            known0 = depth.get("known")
            mask[0] = True if known0 is None else resize_nearest(known0.astype(np.float32), height) > 0.5
            out_rgb[0] = to_uint8(resize_rgb(rgb, height)) * mask[0][..., None]  # frame 0: the panorama itself
            distance = frames.distance.cpu().numpy()
            save_npz(st.path("scaffold.npz"), rgb=out_rgb, mask=mask, distance=distance.astype(np.float16))
            write_video(st.path("scaffold_rgb.mp4"), out_rgb, fps=traj.fps)
            write_video(st.path("scaffold_mask.mp4"), mask.astype(np.uint8) * 255, fps=traj.fps)
            st.info.update(frames=int(mask.shape[0]), known_fraction=round(float(mask.mean()), 4),
                           mesh_faces=int(sum(int(m.faces.shape[0]) for m in meshes)))
    _done(ctx, st, "scaffold", t0)
    return load_npz(ctx.run.path / "scaffold.npz", keys=("rgb", "mask", "distance"))


def panorama_mesh(rgb: np.ndarray, depth: dict, c2w: torch.Tensor, *, occlusion_threshold: float = 0.05,
                  device: torch.device | str = "cpu", max_height: int | None = None):
    """The occlusion-aware scaffold mesh of a panorama, in the world frame (``c2w`` = its pose).

    depth: {"distance" [H, W], "sky" [H, W], optional "known" [H, W]}; pixels not known
    (holes of a re-rendered view) become invisible vertices.
    max_height: decimate the grid (integer factor) so it has at most this many rows; used for
    the meshes of the world's 3D cache, which need no more detail than the frames rendered.
    """
    from matrix_world.scaffold.mesh import ScaffoldConfig, build_scaffold_mesh

    h = np.asarray(depth["distance"]).shape[0]
    decimate = 1 if max_height is None else max(1, -(-h // max_height))
    if depth.get("known") is not None and decimate > 1:
        raise ValueError("decimation of a view with a known mask is not supported; build it at its own size")

    pano = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).to(device)
    dist = torch.from_numpy(np.ascontiguousarray(depth["distance"], dtype=np.float32)).to(device)
    sky = torch.from_numpy(np.ascontiguousarray(depth["sky"]).astype(bool)).to(device)
    config = ScaffoldConfig(occlusion_threshold=occlusion_threshold, decimate=decimate)
    mesh = build_scaffold_mesh(pano, dist, config, sky_mask=sky)
    known = depth.get("known")
    if known is not None:
        hidden = torch.from_numpy(~np.asarray(known, dtype=bool).reshape(-1)).to(device)
        visible = mesh.visible.clone()
        visible[: hidden.numel()] &= ~hidden  # one vertex per pixel, row-major, then the pole vertices
        colors = mesh.colors * visible[:, None].to(mesh.colors.dtype)
        mesh = dataclasses.replace(mesh, visible=visible, colors=colors)
    return mesh.transformed(c2w.to(device=device, dtype=torch.float64))


def render_union(meshes: list, c2w: torch.Tensor, height: int, *, backend: str = "auto", tolerance: float = 0.03):
    """Render several scaffold meshes (one world frame) as one scene, known surfaces first.

    Each mesh is rendered on its own; a pixel takes the nearest surface of any mesh, except
    that a known surface (mask true) within ``tolerance`` (relative distance) of the nearest
    one wins over an unknown one. Two meshes that see the same surface, one of them at a
    grazing angle where the occlusion rule flags it, would otherwise z-fight into rings of
    unknown pixels. Returns a ScaffoldFrames (rgb [F, H, 2H, 3], mask, distance).
    """
    from matrix_world.scaffold.render import render_scaffold

    first = render_scaffold(meshes[0], c2w, height, backend=backend)
    if len(meshes) == 1:
        return first
    rgb, mask, distance = first.rgb.clone(), first.mask.clone(), first.distance.clone()
    known_distance = torch.where(mask, distance, torch.full_like(distance, float("inf")))
    for mesh in meshes[1:]:
        f = render_scaffold(mesh, c2w, height, backend=backend)
        distance = torch.minimum(distance, f.distance)
        better = f.mask & (f.distance < known_distance)
        rgb[better], known_distance[better] = f.rgb[better], f.distance[better]
    mask = torch.isfinite(known_distance) & (known_distance <= distance * (1.0 + tolerance))
    rgb = rgb * mask[..., None]
    return dataclasses.replace(first, rgb=rgb, mask=mask, distance=distance)


def resize_rgb(rgb: np.ndarray, height: int) -> np.ndarray:
    """Resize an equirect image [H, 2H, 3] float32 to [height, 2*height, 3] (area when shrinking)."""
    from matrix_world.equirect import resize_equirect

    t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    return resize_equirect(t, height)[0].permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- 5. video


def video_stage(ctx: StageContext, config, scaffold: dict, traj: Trajectory, prompt: str) -> np.ndarray:
    """Scaffold video + mask -> ``video.npz`` (frames [F, H, 2H, 3] uint8) and ``video.mp4``."""
    from matrix_world.generation.video import generate_video

    t0 = time.perf_counter()
    with ctx.run.stage("video", {"prompt": prompt, **config.to_dict(), "generator_seed": ctx.seed},
                       inputs=["scaffold.npz", "trajectory.json"],
                       outputs=["video.npz", "video.mp4"], backend=config.backend) as st:
        if not st.done:
            result = generate_video(config, scaffold_rgb=scaffold["rgb"].astype(np.float32) / 255.0,
                                    scaffold_mask=scaffold["mask"], prompt=prompt, c2w=traj.c2w,
                                    device=ctx.device, generator=ctx.generator(5), pipeline=ctx.models.get("video"))
            frames = to_uint8(result.frames)
            save_npz(st.path("video.npz"), frames=frames)
            write_video(st.path("video.mp4"), frames, fps=traj.fps)
            st.backend = result.info.get("backend", config.backend)
            st.info.update(_small(result.info))
    _done(ctx, st, "video", t0)
    return load_npz(ctx.run.path / "video.npz", keys=("frames",))["frames"]


# --------------------------------------------------------------------------- 6. reconstruction


def reconstruction_stage(ctx: StageContext, config, frames: np.ndarray, depth: dict,
                         traj: Trajectory, depth_fn, *, exports: tuple[str, ...] = ("spz",),
                         depth_config: dict | None = None):
    """Frames + poses + distances -> ``world.ply`` (+ ``world.<ext>`` for each export).

    depth_config: the configuration of the depth backend behind ``depth_fn`` (keyframe
    distances); it joins the stage hash with the seed, as both change the Gaussians.
    """
    from matrix_world.reconstruction.stage import reconstruct
    from matrix_world.splat_io import load_splats, save_splats

    t0 = time.perf_counter()
    outputs = ["world.ply"] + [f"world.{ext}" for ext in exports]
    hashed = {**_jsonable_config(config), "seed": ctx.seed, "keyframe_depth": depth_config}
    with ctx.run.stage("reconstruction", hashed, inputs=["video.npz", "scaffold.npz", "depth.npz",
                       "trajectory.json"], outputs=outputs, backend=config.backend) as st:
        if not st.done:
            height = frames.shape[1]
            distance0 = resize_nearest(depth["distance"], height)
            sky0 = resize_nearest(depth["sky"].astype(np.float32), height) > 0.5
            from matrix_world.reconstruction.keyframes import select_keyframes

            count = len(select_keyframes(len(frames), config.keyframes.stride, config.keyframes.include_last)) - 1
            with progress_bar(count, "keyframe depth", "keyframe") as bar:
                def counted(index, frame):
                    out = depth_fn(index, frame)
                    bar.update(1)
                    return out

                gaussians, info = reconstruct(config, frames=frames.astype(np.float32) / 255.0, distance0=distance0,
                                              c2w=traj.c2w, masks=None, sky0=sky0, depth_fn=counted,
                                              device=ctx.device, generator=ctx.generator(6))
            gaussians = gaussians.to("cpu")
            for name in outputs:
                save_splats(st.path(name), gaussians)
            st.backend = info.get("backend", config.backend)
            st.info.update(num_gaussians=len(gaussians), keyframes=info.get("keyframes"),
                           seconds=info.get("seconds"))
    _done(ctx, st, "reconstruction", t0)
    return load_splats(ctx.run.path / "world.ply")


def resize_nearest(x: np.ndarray, height: int) -> np.ndarray:
    """Resize an equirect map [H, 2H] to [height, 2*height] by nearest neighbour (no blending across edges)."""
    from matrix_world.equirect import resize_equirect

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    return resize_equirect(t, height, mode="nearest")[0, 0].numpy()


def _jsonable_config(config) -> dict:
    out = dataclasses.asdict(config)
    out.get("optimize", {}).pop("super_resolution", None)
    return out


def _small(info: dict) -> dict[str, Any]:
    """The JSON-able, small entries of a backend's info dict (for the manifest)."""
    out = {}
    for key, value in info.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple, dict)) and len(str(value)) < 2000:
            out[key] = value
    return out
