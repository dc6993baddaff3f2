"""The world pipeline: text or image -> panorama -> depth -> trajectory -> scaffold -> video -> 3D Gaussians.

One object, :class:`WorldPipeline`, used by ``scripts/text2world.py`` and
``scripts/image2world.py`` (and, for chained segments, by :mod:`matrix_world.pipeline.explore`).
Its ``__call__`` reads as the numbered steps of the method; each step is a resumable stage
of the run directory (:mod:`matrix_world.pipeline.stages`).

Backends: every stage takes a backend name or ``auto``. ``auto`` picks the real model when
its weights are on this machine (a local folder or the Hugging Face cache) and a CUDA GPU is
present, and otherwise the backend that needs no weights; the choice and the reason are
printed at the start and stored in the manifest.

Presets:

* ``preview``: only the no-weight backends (procedural or file panorama, procedural /
  prior / file depth, ``fill`` video, ``lift`` splats), 256-pixel-high video frames unless
  ``--resolution`` says otherwise. Runs anywhere in minutes; it is a preview of the
  pipeline, not of the models.
* ``fast``: ``auto`` backends with fewer denoising steps and optimisation iterations.
* ``quality``: ``auto`` backends with the paper's settings (50 steps, 3000 iterations).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from matrix_world.errors import InputError
from matrix_world.runtime import apply_threads
from matrix_world.rundir import RunDir, jsonable, run_lock
from matrix_world.pipeline.stages import (
    StageContext,
    depth_stage,
    panorama_stage,
    reconstruction_stage,
    scaffold_stage,
    trajectory_stage,
    video_stage,
)

if TYPE_CHECKING:
    from matrix_world.generation.depth import DepthConfig
    from matrix_world.generation.panorama import PanoramaConfig
    from matrix_world.generation.video import VideoConfig
    from matrix_world.reconstruction.stage import ReconConfig

PRESET_NAMES = ("preview", "fast", "quality")
PREVIEW_HEIGHT = 256


@dataclass
class WorldConfig:
    """Options of a world run (``scripts/text2world.py --help`` lists them all)."""

    prompt: str = ""
    """Text describing the world (required for text2world; optional guidance for image2world)."""
    image: str | None = None
    """A photo (perspective) or, with --panorama, a 360-degree equirectangular image (2:1)."""
    panorama: bool = False
    """The input image is already a 360-degree panorama (skip the image->panorama model)."""
    distance: str | None = None
    """Distance map for the panorama (.npy/.npz, [H, W] float32, +inf = sky) instead of a depth model."""
    out: str | None = None
    """Run directory (default: outputs/<slug>-<timestamp>). Rerunning into it resumes."""
    preset: Literal["preview", "fast", "quality"] = "fast"
    """preview = no-weight backends only; fast / quality = real models where available."""
    panorama_backend: str = "auto"
    """auto | flux | flux-fill | file | procedural"""
    depth_backend: str = "auto"
    """auto | moge | prior | file | procedural"""
    video_backend: str = "auto"
    """auto | wan | fill | oracle"""
    recon_backend: str = "auto"
    """auto | optimize | lift"""
    trajectory: str = "straight"
    """Camera path: straight | s_curve | l_curve | r_curve | orbit, or a JSON file of poses."""
    frames: int = 81
    """Frames along the camera path (the Wan model needs 4k+1)."""
    resolution: int | None = None
    """Video frame height: 480 or 720 for the Wan model (width = 2 x height). Default: 480 with
    the Wan model, 256 with the no-weight video backends."""
    panorama_height: int | None = None
    """Panorama height in pixels (width = 2 x height). Default: 512 (1024 with --preset quality)."""
    seed: int = 0
    """Seed of every random choice (panorama noise, video noise, optimisation)."""
    device: str = "auto"
    """auto (CUDA when present) | cpu | cuda | cuda:N"""
    memory: Literal["auto", "full", "offload", "lowvram"] = "auto"
    """GPU memory mode of the diffusion models."""
    resume: bool = True
    """Skip stages whose outputs exist with the same settings (--no-resume reruns all)."""
    overwrite: bool = False
    """Write into --out even when it holds another world (other prompt, image or seed) or files that are not a
    run: that world's artifacts and explored segments are deleted first. Without it such an --out is refused."""
    threads: int | None = None
    """CPU threads for torch. Default: the cores this process may use minus the machine's current load (at
    least 1), so a busy machine is not oversubscribed (see benchmarks/RESULTS.md, 'CPU threads')."""
    flux_model: str | None = None
    """FLUX.1-dev (or -Fill-dev for photos): hub id or local folder."""
    flux_lora: str | None = None
    """Panorama LoRA for FLUX (file, folder or hub id). Default for text: "matrix3d" (Skywork/Matrix-3D
    checkpoints/text2panoimage_lora.safetensors); "none" disables it."""
    moge_model: str | None = None
    """MoGe checkpoint: hub id (Ruicheng/moge-2-vitl-normal) or local file/folder."""
    wan_model: str | None = None
    """Wan2.1-I2V-14B-480P/720P-Diffusers: hub id or local folder."""
    wan_lora: str | None = None
    """Video LoRA: "matrix3d" (official, from Skywork/Matrix-3D; the default), a converted .safetensors, or "none"."""
    exports: tuple[str, ...] = ("spz",)
    """Extra splat formats written beside world.ply (spz, splat)."""


@dataclass
class Plan:
    """The backend chosen for each stage, with the reason, and the stage configurations."""

    device: torch.device
    backends: dict[str, str]
    reasons: dict[str, str]
    height: int
    panorama: PanoramaConfig  # every plan carries all four stage configurations
    depth: DepthConfig
    video: VideoConfig
    recon: ReconConfig
    notes: list[str] = field(default_factory=list)

    @property
    def preview_only(self) -> bool:
        return all(b in NO_WEIGHTS for b in self.backends.values())


NO_WEIGHTS = {"file", "procedural", "prior", "fill", "oracle", "lift", "photo"}


def slug(text: str, limit: int = 40) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (words[:limit].rstrip("-") or "world")


def default_out(config: WorldConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = config.prompt or (Path(config.image).stem if config.image else "world")
    return Path("outputs") / f"{slug(name)}-{stamp}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    return device


MAX_FRAMES = 2000  # ~25 panoramic videos of 81 frames; longer walks are chained segments (explore.py)
MAX_RESOLUTION = 2048
MAX_PANORAMA_HEIGHT = 8192


def backend_choices() -> dict[str, tuple[str, ...]]:
    """The backend names each stage accepts, read from the stages' own registries."""
    from matrix_world.generation.depth import DEPTH_BACKENDS
    from matrix_world.generation.panorama import PANORAMA_BACKENDS
    from matrix_world.generation.video import BACKENDS as VIDEO_BACKENDS
    from matrix_world.reconstruction.stage import BACKENDS as RECON_BACKENDS

    return {"panorama": ("auto", *PANORAMA_BACKENDS), "depth": ("auto", *DEPTH_BACKENDS),
            "video": ("auto", *VIDEO_BACKENDS), "reconstruction": RECON_BACKENDS}


def check_frames(frames: int, option: str = "--frames") -> None:
    if not 2 <= frames <= MAX_FRAMES:
        raise InputError(f"{option} must be between 2 and {MAX_FRAMES}, got {frames} (longer walks: add segments "
                         "with scripts/explore.py)")


def check_seed(seed: int, option: str = "--seed") -> None:
    if not 0 <= seed < 2**63:
        raise InputError(f"{option} must be an integer in [0, 2**63), got {seed}")


def check_inputs(config: WorldConfig) -> None:
    """Everything that can be wrong with the inputs, found before anything is written."""
    from matrix_world.trajectory import check_trajectory_spec

    if config.image is None and not config.prompt.strip():
        raise InputError("an empty prompt: describe the world in words (or give an image with image2world)")
    if config.image is not None and not Path(config.image).is_file():
        raise InputError(f"image {config.image} does not exist")
    if config.distance is not None and not config.panorama:
        raise InputError("--distance needs --panorama (the distance map belongs to a 360-degree image)")
    if config.distance is not None and not Path(config.distance).is_file():
        raise InputError(f"distance file {config.distance} does not exist")
    check_frames(config.frames)
    check_trajectory_spec(config.trajectory)
    if config.resolution is not None and not (64 <= config.resolution <= MAX_RESOLUTION and config.resolution % 16 == 0):
        raise InputError(f"--resolution must be a multiple of 16 from 64 to {MAX_RESOLUTION} (480 or 720 for Wan), "
                         f"got {config.resolution}")
    if config.panorama_height is not None and not (32 <= config.panorama_height <= MAX_PANORAMA_HEIGHT
                                                   and config.panorama_height % 8 == 0):
        raise InputError(f"--panorama-height must be a multiple of 8 from 32 to {MAX_PANORAMA_HEIGHT}, "
                         f"got {config.panorama_height}")
    check_seed(config.seed)
    if config.threads is not None and config.threads < 1:
        raise InputError(f"--threads must be at least 1, got {config.threads}")
    if config.preset not in PRESET_NAMES:
        raise InputError(f"--preset must be one of {PRESET_NAMES}, got {config.preset!r}")
    choices = backend_choices()
    for stage, option in (("panorama", config.panorama_backend), ("depth", config.depth_backend),
                          ("video", config.video_backend), ("reconstruction", config.recon_backend)):
        if option not in choices[stage]:
            flag = "--recon-backend" if stage == "reconstruction" else f"--{stage}-backend"
            raise InputError(f"{flag} must be one of {', '.join(choices[stage])}, got {option!r}")
    for ext in config.exports:
        if ext not in ("spz", "splat"):
            raise InputError(f"--exports takes spz and/or splat, got {ext!r}")
    if len(set(config.exports)) != len(config.exports):
        raise InputError(f"--exports names a format twice ({' '.join(config.exports)}); give each once")
    check_input_files(config)  # the files' contents and the LoRA specs (see below)


def check_input_files(config: WorldConfig) -> None:
    """The inputs' contents, read before anything is written: a complete (not truncated) image, a
    distance map by :func:`~matrix_world.io.read_distance`'s rule and of the panorama's size, and
    --flux-lora / --wan-lora specs (pure checks: no hub, no download)."""
    from matrix_world.generation.flux_lora import validate_lora_spec as validate_flux_lora
    from matrix_world.generation.wan_lora import validate_lora_spec as validate_wan_lora
    from matrix_world.io import check_image_file, read_distance

    size = check_image_file(config.image) if config.image is not None else None
    if config.distance is not None:
        read_distance(config.distance, expected_shape=size)
    if config.flux_lora is not None:
        validate_flux_lora(config.flux_lora, what="--flux-lora")
    if config.wan_lora is not None:
        validate_wan_lora(config.wan_lora, what="--wan-lora")


def check_plan(config: WorldConfig, plan: Plan) -> None:
    """What the chosen backends need of the inputs (still before anything is written)."""
    if plan.backends["video"] == "wan" and (config.frames - 1) % 4:
        raise InputError(f"the Wan video model needs 4k+1 frames (e.g. 81, 49, 17), got --frames {config.frames}")


def make_plan(config: WorldConfig) -> Plan:
    """Resolve device, presets and ``auto`` backends into concrete stage configurations."""
    from matrix_world.generation.depth import DepthConfig
    from matrix_world.generation.depth import choose_backend as choose_depth_backend
    from matrix_world.generation.panorama import PanoramaConfig
    from matrix_world.generation.video import VideoConfig
    from matrix_world.generation.weights import weights_available
    from matrix_world.reconstruction.stage import ReconConfig

    device = resolve_device(config.device)
    preview = config.preset == "preview"
    quality = config.preset == "quality"
    backends = {"panorama": config.panorama_backend, "depth": config.depth_backend,
                "video": config.video_backend, "reconstruction": config.recon_backend}
    reasons = {k: "requested" for k, v in backends.items() if v != "auto"}

    # panorama (text -> panorama uses Matrix-3D's panorama LoRA unless another one or "none" is given)
    flux_lora = "matrix3d" if config.flux_lora is None else (None if config.flux_lora.lower() == "none" else config.flux_lora)
    if config.image:
        flux_lora = None if config.flux_lora is None or config.flux_lora.lower() == "none" else config.flux_lora
    if backends["panorama"] == "auto":
        if config.image and config.panorama:
            backends["panorama"], reasons["panorama"] = "file", "the input is a panorama"
        elif config.image:
            real = not preview and device.type == "cuda" and weights_available(config.flux_model or "black-forest-labs/FLUX.1-Fill-dev")
            backends["panorama"], reasons["panorama"] = ("flux-fill", "FLUX.1-Fill weights and a GPU found") if real else \
                ("photo", "no FLUX.1-Fill weights/GPU (or preview): photo placed on the sphere, the rest filled classically")
        else:
            lora_ok = flux_lora is None or flux_lora != "matrix3d" or weights_available("Skywork/Matrix-3D",
                                                                               "checkpoints/text2panoimage_lora.safetensors")
            real = not preview and device.type == "cuda" and lora_ok and \
                weights_available(config.flux_model or "black-forest-labs/FLUX.1-dev")
            backends["panorama"], reasons["panorama"] = ("flux", "FLUX.1-dev + panorama LoRA and a GPU found") if real else \
                ("procedural", "no FLUX.1-dev + panorama LoRA / GPU (or preview): a procedural synthetic scene from the prompt")
    pano_height = config.panorama_height or (1024 if quality else 512)
    panorama = PanoramaConfig(backend=backends["panorama"], model=config.flux_model, lora=flux_lora,
                              height=pano_height, steps=50 if quality else 28, seed=config.seed, path=config.image,
                              memory="full" if config.memory == "auto" else config.memory)

    # depth
    if backends["depth"] == "auto":
        if config.distance:
            backends["depth"], reasons["depth"] = "file", "a distance map was given"
        elif backends["panorama"] == "procedural":
            backends["depth"], reasons["depth"] = "procedural", "the procedural scene's exact distance"
        elif preview:
            backends["depth"], reasons["depth"] = "prior", "preview preset: ground-plane + far-dome heuristic"
        else:
            backends["depth"], reasons["depth"] = choose_depth_backend(DepthConfig(model=config.moge_model or DepthConfig().model))
    depth = DepthConfig(backend=backends["depth"], path=config.distance, prompt=config.prompt, seed=config.seed,
                        **({"model": config.moge_model} if config.moge_model else {}))

    # video (the Wan model works at 480p/720p; the no-weight backends default to 256 rows)
    height = config.resolution or 480
    lora = "matrix3d" if config.wan_lora is None else (None if config.wan_lora.lower() == "none" else config.wan_lora)
    video = VideoConfig(backend=backends["video"], height=height, model=config.wan_model, lora=lora,
                        num_inference_steps=50 if quality else 30, memory=config.memory, seed=config.seed)
    if backends["video"] == "auto":
        if preview:
            backends["video"], reasons["video"] = "fill", "preview preset: classical hole filling"
        else:
            from matrix_world.generation.video import resolve_backend

            backends["video"], reasons["video"] = resolve_backend(video, device)
        video = dataclasses.replace(video, backend=backends["video"])
    if config.resolution is None and backends["video"] != "wan":
        height = PREVIEW_HEIGHT
        video = dataclasses.replace(video, height=height)

    # reconstruction
    if backends["reconstruction"] == "auto":
        from matrix_world.reconstruction.render import gsplat_problem

        problem = None if preview or device.type != "cuda" else gsplat_problem(device)
        if preview or device.type != "cuda":
            backends["reconstruction"], reasons["reconstruction"] = "lift", \
                "preview preset or no GPU: one Gaussian per keyframe pixel (no training)"
        elif problem is not None:
            backends["reconstruction"], reasons["reconstruction"] = "lift", \
                f"gsplat cannot run on this GPU ({problem}): one Gaussian per keyframe pixel"
        else:
            backends["reconstruction"], reasons["reconstruction"] = "optimize", "GPU present: gsplat optimisation"
    recon = ReconConfig(backend=backends["reconstruction"])
    recon.lift.sky = "shell"  # a far shell of sky Gaussians: worlds look whole in any viewer
    # make_depth_fn already puts every keyframe's distance in the world's units (exact scaffold
    # geometry where known, the depth estimate scaled to agree elsewhere), so the keyframe-to-
    # keyframe scale + shift fit is not applied on top of it
    recon.keyframes.align_distances = False
    recon.optimize.iterations = 3000 if quality else 1500
    return Plan(device=device, backends=backends, reasons=reasons, height=height, panorama=panorama,
                depth=depth, video=video, recon=recon)


@dataclass
class WorldResult:
    """Where a run's results are, and what it took."""

    out: Path
    plan: Plan
    num_gaussians: int
    seconds: dict[str, float]


class WorldPipeline:
    """Text or image -> explorable world of 3D Gaussians in a run directory.

    ``WorldPipeline(log=print)(config)`` runs every stage (resuming finished ones) and
    returns a :class:`WorldResult`.
    """

    def __init__(self, log=print, models: dict | None = None, adjust_plan=None):
        self.log = log
        self.models = models if models is not None else {}  # loaded models to reuse (see StageContext.models)
        self.adjust_plan = adjust_plan  # optional ``adjust_plan(plan) -> plan`` applied after make_plan
        # (e.g. fewer denoising steps for a benchmark); None: the plan as make_plan resolves it

    def __call__(self, config: WorldConfig) -> WorldResult:
        # 1. check the inputs and resolve the backends (nothing is written before this passes)
        check_inputs(config)
        hashes = input_hashes(config)
        threads, why = apply_threads(config.threads)
        plan = make_plan(config)
        if self.adjust_plan is not None:
            plan = self.adjust_plan(plan)
        check_plan(config, plan)
        out = Path(config.out) if config.out else default_out(config)
        with run_lock(out):  # checked under the lock: no other run can write between the check and the stages
            check_out_folder(out, config, hashes)
            return self._run(config, plan, out, hashes, f"{threads} ({why})")

    def _run(self, config: WorldConfig, plan: Plan, out: Path, hashes: dict, threads: str) -> WorldResult:
        from matrix_world.pipeline.report import contact_sheet_stage, preview_stage, summarize

        run = RunDir(out, seed=config.seed, force=not config.resume)
        if config.overwrite and (run.manifest["stages"] or run.manifest["segments"]):
            removed = run.clear()
            run.manifest["seed"] = config.seed
            self.log(f"  --overwrite: removed the previous world in {out} ({len(removed)} artifacts)")
        elif run.manifest["segments"] and _world_changed(run.manifest, config, hashes):
            removed = run.drop_segments()
            self.log(f"  note: the world's options changed since it was explored: its segments were built on the old "
                     f"world and are removed ({', '.join(removed)})")
        self._announce(config, plan, out)
        self.log(f"  threads: {threads}")
        ctx = StageContext(run=run, device=plan.device, seed=config.seed, log=self.log, models=self.models)
        run.set_inputs(image=config.image, distance=config.distance)
        run.manifest["request"] = {"prompt": config.prompt, "preset": config.preset, "trajectory": config.trajectory,
                                   "frames": config.frames, "height": plan.height, "device": str(plan.device)}
        run.manifest["plan"] = {"backends": plan.backends, "reasons": plan.reasons, "preview_only": plan.preview_only}
        run.manifest["world_config"] = dataclasses.asdict(dataclasses.replace(config, out=str(out)))
        start = time.perf_counter()

        # 2. panorama from text or image
        rgb = panorama_stage(ctx, plan.panorama, prompt=config.prompt, image=config.image)
        # 3. panoramic distance (+ sky)
        depth = depth_stage(ctx, plan.depth, rgb)
        # 4. camera path through the panorama
        traj = trajectory_stage(ctx, config.trajectory, config.frames, depth["distance"])
        # 5. occlusion-aware scaffold video + mask along the path
        scaffold = scaffold_stage(ctx, plan.height, rgb, depth, traj)
        # 6. panoramic video: the unknown parts of the scaffold generated
        frames = video_stage(ctx, plan.video, scaffold, traj, config.prompt)
        # 7. 3D Gaussians from the video, exported as world.ply (+ .spz)
        depth_fn = make_depth_fn(plan, scaffold, traj, models=self.models)
        gaussians = reconstruction_stage(ctx, plan.recon, frames, depth, traj, depth_fn,
                                         exports=tuple(config.exports), depth_config=plan.depth.to_dict())
        # 8. what a person looks at: preview.mp4 fly-through and a contact sheet
        preview_stage(ctx, gaussians, traj, plan.height)
        contact_sheet_stage(ctx, rgb, scaffold, frames)

        seconds = {name: rec.get("seconds", 0.0) for name, rec in run.manifest["stages"].items()}
        result = WorldResult(out=out, plan=plan, num_gaussians=len(gaussians), seconds=seconds)
        summarize(result, wall=time.perf_counter() - start, log=self.log)
        return result

    def _announce(self, config: WorldConfig, plan: Plan, out: Path) -> None:
        self.log(f"matrix_world: preset {config.preset}, device {plan.device}, video {plan.height}x{2 * plan.height}, "
                 f"{config.frames} frames -> {out}")
        for stage, backend in plan.backends.items():
            self.log(f"  {stage:<15} {backend:<11} ({plan.reasons.get(stage, '')})")
        if plan.preview_only:
            self.log("  NOTE: only the preview backends run (no model weights or no GPU here). For the real models, "
                     "download FLUX.1-dev + the Matrix-3D LoRA, MoGe-2 and Wan2.1-I2V-14B (see README: 'Real weights') "
                     "and run on a CUDA GPU.")


# Options that never change an artifact: a change of any other option makes another world.
_RUN_OPTIONS = ("out", "resume", "overwrite", "threads")
_INPUT_FILES = ("image", "distance")


def input_hashes(config: WorldConfig) -> dict[str, str | None]:
    """sha256 of the input files (None where not given), as ``RunDir.set_inputs`` records them."""
    from matrix_world.rundir import file_sha256

    return {key: None if getattr(config, key) is None else file_sha256(getattr(config, key)) for key in _INPUT_FILES}


def _stored_hashes(manifest: dict) -> dict[str, str | None]:
    return {key: manifest.get("inputs", {}).get(key, {}).get("sha256") for key in _INPUT_FILES}


def same_world(manifest: dict, config: WorldConfig, hashes: dict) -> bool:
    """True when the run of ``manifest`` is this world: same prompt, seed and input contents
    (other options may differ: resuming reruns what they change)."""
    old = manifest.get("world_config") or {}
    return ((old.get("prompt"), old.get("seed"), old.get("panorama", False)) == (config.prompt, config.seed, config.panorama)
            and _stored_hashes(manifest) == hashes)


def _world_changed(manifest: dict, config: WorldConfig, hashes: dict) -> bool:
    """True when any option that changes an artifact differs from the world stored in ``manifest``."""
    stored = {k: v for k, v in (manifest.get("world_config") or {}).items() if k not in _RUN_OPTIONS}
    now = {k: v for k, v in jsonable(dataclasses.asdict(config)).items() if k not in _RUN_OPTIONS}
    return stored != now or _stored_hashes(manifest) != hashes


def check_out_folder(out: Path, config: WorldConfig, hashes: dict) -> None:
    """``--out`` must be new, empty, or this same world (to resume); anything else only with --overwrite."""
    from matrix_world.rundir import LOCK, MANIFEST

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; expected a folder (created if missing)")
    if not out.is_dir() or config.overwrite:
        return
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    if not entries:
        return
    if not (out / MANIFEST).is_file():
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise InputError(f"--out {out} holds files that are not a matrix_world run ({shown}); choose a new or empty "
                         "folder, or pass --overwrite to write the world into it")
    stored = RunDir(out).manifest
    old = stored.get("world_config")
    if old is None:
        raise InputError(f"--out {out} holds another kind of run (no world in its manifest); choose another folder "
                         "or pass --overwrite")
    if not same_world(stored, config, hashes):
        what = f"prompt {old.get('prompt')!r}, seed {old.get('seed')}"
        raise InputError(f"--out {out} holds another world ({what}); choose another folder, or pass --overwrite "
                         "to replace it (its artifacts and explored segments are deleted)")


def make_depth_fn(plan: Plan, scaffold: dict, traj, models: dict | None = None):
    """Distance of a video frame for the reconstruction's keyframes.

    Where the scaffold knows the frame (mask), its rendered distance is exact geometry; the
    rest comes from the depth backend (the procedural scene's truth, the ``prior`` heuristic
    or MoGe on the generated frame), scaled to agree with the known part (median ratio). The
    reconstruction then aligns it to the previous keyframe (scale + shift).
    """
    known_distance = scaffold["distance"].astype(np.float32)
    known = scaffold["mask"] & np.isfinite(known_distance)
    backend = plan.backends["depth"]
    models = models if models is not None else {}
    cache: dict = {}

    def depth_fn(index: int, frame: torch.Tensor):
        h, w = known.shape[1:]
        if backend == "moge" and "depth" not in models:  # load MoGe once for all keyframes
            from matrix_world.generation.moge_backend import load_moge

            models["depth"] = load_moge(plan.depth.model, device=plan.device)
        if backend == "procedural" and "scene" not in cache:  # build the synthetic scene once
            from matrix_world.datasets.procedural import scene_from_prompt

            cache["scene"] = scene_from_prompt(plan.depth.prompt or "", plan.depth.seed)
        estimate, sky = estimate_frame_distance(plan, backend, index, frame, traj, h, models.get("depth"),
                                                scene=cache.get("scene"))
        out = estimate.copy()
        k = known[index]
        if k.any():
            ratio = np.median(known_distance[index][k] / np.maximum(estimate[k], 1e-6))
            out = estimate * float(ratio)
            out[k] = known_distance[index][k]
        return torch.from_numpy(out), torch.from_numpy(sky)  # the depth backend decides what is sky

    return depth_fn


def estimate_frame_distance(plan: Plan, backend: str, index: int, frame, traj, height: int,
                            moge=None, scene=None) -> tuple[np.ndarray, np.ndarray]:
    """The depth backend's (distance [height, 2*height] float32, sky [height, 2*height] bool) for
    frame ``index`` of ``traj`` (its rgb is ``frame``): the procedural scene's truth, MoGe on the
    frame (``moge``: a LoadedMoGe), or the ``prior`` heuristic (no sky)."""
    from matrix_world.generation.depth import panorama_depth_from_model, prior_distance

    if backend == "procedural":
        from matrix_world.datasets.procedural import scene_from_prompt

        scene = scene if scene is not None else scene_from_prompt(plan.depth.prompt or "", plan.depth.seed)
        # the run's world frame is the procedural panorama's camera, at scene.camera_c2w(0, 0)
        c2w_scene = scene.camera_c2w(0.0, 0.0) @ traj.c2w[index].to(torch.float64)
        _, distance, sky = scene.render(c2w_scene[None], height)
        distance, sky = np.asarray(distance[0], dtype=np.float32), np.asarray(sky[0], dtype=bool)
        surface = np.isfinite(distance) & ~sky
        far = float(distance[surface].max()) if surface.any() else 100.0
        return np.where(surface, distance, 2.0 * far).astype(np.float32), ~surface
    if backend == "moge":
        rgb = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
        result = panorama_depth_from_model(np.ascontiguousarray(rgb, dtype=np.float32), moge, plan.depth,
                                           device=plan.device)
        return result.distance, result.sky
    return (prior_distance(height, camera_height=plan.depth.camera_height, dome_radius=plan.depth.dome_radius),
            np.zeros((height, 2 * height), bool))
