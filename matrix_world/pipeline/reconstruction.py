"""Stage 6, the 3D Gaussians: frames + poses + distances -> ``world.ply`` (+ exports: ``world.spz`` /
``.splat`` / ``.glb``, the collider mesh ``world_collider.glb``; :func:`write_exports`).

:func:`choose` is the one ``auto`` rule of this stage; :func:`reconstruction_stage` runs
:func:`matrix_world.reconstruction.stage.reconstruct` (``optimize``, ``lift``, ``lrm``). The
``lrm`` backend reads the video stage's latents (``video_latents.npz``, written when the Wan
model made the video) or encodes the frames with the Wan VAE.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from matrix_world.errors import InputError
from matrix_world.pipeline.config import WorldConfig
from matrix_world.pipeline.context import StageContext, log_stage, progress_bar
from matrix_world.pipeline.video import LATENTS
from matrix_world.reconstruction.stage import ReconConfig, reconstruct
from matrix_world.scaffold.build import resize_nearest
from matrix_world.splat_io import load_splats, save_splats
from matrix_world.trajectory import Trajectory


def lrm_checkpoint(config: WorldConfig) -> str | None:
    """A local path of the LRM checkpoint (--lrm-model, or Matrix-3D's in the hub cache), or None."""
    from matrix_world.generation.weights import WeightsNotFoundError, resolve_file
    from matrix_world.reconstruction.lrm import OFFICIAL_FILE, OFFICIAL_REPO

    if config.lrm_model is not None and Path(config.lrm_model).expanduser().exists():
        return str(Path(config.lrm_model).expanduser())
    repo, filename = (OFFICIAL_REPO, OFFICIAL_FILE) if config.lrm_model is None else (config.lrm_model, OFFICIAL_FILE)
    try:
        return resolve_file(repo, what="the panoramic LRM (--lrm-model)", filename=filename)
    except WeightsNotFoundError:
        return None


def wan_folder(config: WorldConfig) -> str | None:
    """The local Wan2.1 folder (its vae/ encodes the frames for the lrm backend), or None."""
    from matrix_world.generation.wan_pipeline import HUB_IDS
    from matrix_world.generation.weights import WeightsNotFoundError, resolve_pretrained

    try:
        return resolve_pretrained(config.wan_model or HUB_IDS["720p" if config.resolution == 720 else "480p"],
                                  what="the Wan VAE (lrm latents)")
    except WeightsNotFoundError:
        return None


def choose(config: WorldConfig, device: torch.device) -> tuple[str, str]:
    """(backend, reason) of the reconstruction stage: Matrix-3D's LRM on a GPU where its checkpoint and the
    Wan VAE (for the latents) are on this machine, else gsplat optimisation on a GPU where gsplat's kernels
    run, else one Gaussian per keyframe pixel."""
    from matrix_world.reconstruction.render import gsplat_problem

    if config.recon_backend != "auto":
        return config.recon_backend, "requested"
    if config.preset == "preview" or device.type != "cuda":
        return "lift", "preview preset or no GPU: one Gaussian per keyframe pixel (no training)"
    if lrm_checkpoint(config) is not None and wan_folder(config) is not None:
        return "lrm", "the panoramic LRM checkpoint and the Wan VAE found: feed-forward reconstruction"
    problem = gsplat_problem(device)
    if problem is not None:
        return "lift", f"gsplat cannot run on this GPU ({problem}): one Gaussian per keyframe pixel"
    return "optimize", "GPU present: gsplat optimisation"


def configure(config: WorldConfig, backend: str) -> ReconConfig:
    """The backend's configuration for this run (the preset sets the iterations)."""
    recon = ReconConfig(backend=backend)
    recon.lift.sky = "shell"  # a far shell of sky Gaussians: worlds look whole in any viewer
    # make_depth_fn already puts every keyframe's distance in the world's units (exact scaffold
    # geometry where known, the depth estimate scaled to agree elsewhere), so the keyframe-to-
    # keyframe scale + shift fit is not applied on top of it
    recon.keyframes.align_distances = False
    recon.optimize.iterations = 3000 if config.preset == "quality" else 1500
    if backend == "lrm":
        recon.lrm.model, recon.lrm.vae = lrm_checkpoint(config), wan_folder(config)
    return recon


COLLIDER = "world_collider.glb"


def export_outputs(exports) -> list[str]:
    """The files a world's exports write: ``world.ply``, ``world.<ext>`` per splat format, the collider."""
    return ["world.ply"] + [COLLIDER if ext == "collider" else f"world.{ext}" for ext in exports]


def collider_limit(depth: dict, traj: Trajectory) -> float:
    """How far from the first camera the collider reaches (:func:`~matrix_world.collider.collider_radius`
    of the panorama's non-sky distances, plus how far the camera path goes)."""
    from matrix_world.collider import collider_radius

    distance, sky = np.asarray(depth["distance"]), np.asarray(depth["sky"], bool)
    reach = float(traj.c2w[:, :3, 3].double().norm(dim=-1).max())
    return collider_radius(distance[~sky], reach)


def write_exports(st, gaussians, exports, *, spz_axes: str = "rub", collider_max_distance: float | None = None,
                  log=None) -> dict:
    """Write :func:`export_outputs` of ``gaussians`` into the stage ``st``; returns what the collider took."""
    from matrix_world.collider import ColliderConfig, collider_mesh, write_collider

    info: dict = {}
    for name in export_outputs(exports):
        if name == COLLIDER:
            t0 = time.perf_counter()
            mesh = collider_mesh(gaussians, ColliderConfig(max_distance=collider_max_distance))
            write_collider(st.path(name), mesh)
            info = {"collider_faces": len(mesh.faces), "collider_voxel": round(mesh.voxel_size, 5),
                    "collider_gaussians": mesh.gaussians_used}
            if log is not None:
                log(f"  collider: {len(mesh.faces):,} triangles (voxel {mesh.voxel_size:.3g}, "
                    f"{mesh.gaussians_used:,} Gaussians) in {time.perf_counter() - t0:.1f} s")
        else:
            save_splats(st.path(name), gaussians, spz_axes=spz_axes)
    return info


def reconstruction_stage(ctx: StageContext, config: ReconConfig, frames: np.ndarray, depth: dict,
                         traj: Trajectory, depth_fn, *, exports: tuple[str, ...] = ("spz",),
                         depth_config: dict | None = None, spz_axes: str = "rub"):
    """Frames [F, H, 2H, 3] uint8 + poses + distances -> ``world.ply`` (+ exports, :func:`write_exports`).

    depth_config: the configuration of the depth backend behind ``depth_fn`` (keyframe
    distances); it joins the stage hash with the seed, as both change the Gaussians.
    """
    from matrix_world.reconstruction.keyframes import select_keyframes

    t0 = time.perf_counter()
    outputs = export_outputs(exports)
    hashed = {**_hashed_config(config), "seed": ctx.seed, "keyframe_depth": depth_config}
    if spz_axes != "rub":  # joins the hash only when not the default (earlier runs keep their hash)
        hashed["spz_axes"] = spz_axes
    inputs = ["video.npz", "scaffold.npz", "depth.npz", "trajectory.json"]
    if config.backend == "lrm" and (ctx.run.path / LATENTS).is_file():
        inputs.append(LATENTS)
    with ctx.run.stage("reconstruction", hashed, inputs=inputs, outputs=outputs, backend=config.backend) as st:
        if not st.done and config.backend == "lrm":
            latents, source = video_latents(ctx, config, frames)
            gaussians, info = reconstruct(config, frames=None, distance0=None, c2w=traj.c2w, device=ctx.device,
                                          latents=latents, lrm_model=ctx.models.get("lrm"))
            info["latents"] = source
        elif not st.done:
            height = frames.shape[1]
            distance0 = resize_nearest(depth["distance"], height)
            sky0 = resize_nearest(depth["sky"].astype(np.float32), height) > 0.5
            count = len(select_keyframes(len(frames), config.keyframes.stride, config.keyframes.include_last)) - 1
            with progress_bar(count, "keyframe depth", "keyframe") as bar:
                def counted(indices, rgb):  # all keyframes in one call (batched by the depth backend)
                    out = depth_fn(indices, rgb)
                    bar.update(len(indices))
                    return out

                gaussians, info = reconstruct(config, frames=frames, distance0=distance0,  # uint8: keyframes converted
                                              c2w=traj.c2w, masks=None, sky0=sky0, depth_fn=counted,
                                              device=ctx.device, generator=ctx.generator(6))
        if not st.done:
            gaussians = gaussians.to("cpu")
            collider = write_exports(st, gaussians, exports, spz_axes=spz_axes, log=ctx.log,
                                     collider_max_distance=collider_limit(depth, traj) if "collider" in exports else None)
            st.backend = info.get("backend", config.backend)
            st.info.update(num_gaussians=len(gaussians), keyframes=info.get("keyframes"),
                           seconds=info.get("seconds"), **({"latents": info["latents"]} if "latents" in info else {}),
                           **({"keyframe_depth": depth_fn.info} if isinstance(getattr(depth_fn, "info", None), dict) else {}),
                           **collider)
    log_stage(ctx, st, "reconstruction", t0)
    return load_splats(ctx.run.path / "world.ply", opacity="logit")  # our own file: logits, whatever their range


def video_latents(ctx: StageContext, config: ReconConfig, frames: np.ndarray) -> tuple[torch.Tensor, str]:
    """The video's latents [T, 16, h, w]: the video stage's own (``video_latents.npz``), else the
    frames [F, H, W, 3] uint8 encoded by the Wan VAE of ``config.lrm.vae``."""
    from matrix_world.io import load_npz

    path = ctx.run.path / LATENTS
    if path.is_file():
        return torch.from_numpy(load_npz(path, keys=("latents",))["latents"]), "the video stage's (Wan)"
    from matrix_world.reconstruction.lrm_latents import make_latent_encoder

    if not config.lrm.vae:
        raise InputError("the lrm backend needs the video's Wan-VAE latents: the video was not made by the Wan "
                         "model and no Wan VAE is on this machine (--wan-model FOLDER)")
    encoder = make_latent_encoder(f"wan:{config.lrm.vae}", device=ctx.device)
    return encoder.encode(frames.astype(np.float32) / 255.0), f"encoded by the Wan VAE of {config.lrm.vae}"


def _hashed_config(config: ReconConfig) -> dict:
    out = dataclasses.asdict(config)
    out.get("optimize", {}).pop("super_resolution", None)
    return out
