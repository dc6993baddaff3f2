"""The options of a world run and every check of them made before anything is written.

:class:`WorldConfig` is what ``scripts/text2world.py`` and ``scripts/image2world.py`` parse
(``--help`` lists every field); :func:`check_inputs` finds everything that can be wrong
with it, the input files' contents included, before the run directory is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from matrix_world.errors import InputError

PRESET_NAMES = ("preview", "fast", "quality", "turbo")


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
    views: tuple[str, ...] = ()
    """Sparse 360-degree views (views2world.py): the panoramas B, C, ... taken at other places; view A is --image
    (a panorama). Their relative poses are registered (or read from --poses) and all views make the 3D cache."""
    view_distances: tuple[str, ...] = ()
    """Distance maps of --views, one per view in order (views2world.py takes all of them after --distance, A first)."""
    poses: str | None = None
    """views2world: the views' poses, A first ({"convention": "opencv_c2w", "poses": [[16 floats], ...]}, world =
    view A, lengths in the distances' units) instead of registering them."""
    out: str | None = None
    """Run directory (default: outputs/<slug>-<timestamp>). Rerunning into it resumes."""
    preset: Literal["preview", "fast", "quality", "turbo"] = "fast"
    """preview = no-weight backends only; fast / quality / turbo = real models where available. quality: 50
    exact video steps; fast: 30 steps, Sage attention where it is installed (an approximation);
    turbo: few-step distillation LoRAs (Wan: lightx2v, 4 steps, no CFG; FLUX: Turbo-Alpha, 8 steps), 480p.
    A distilled model's quality cannot be measured here (no weights): turbo's speed is measured, not its quality."""
    panorama_backend: str = "auto"
    """auto | flux (text) | flux-fill (photo) | file (--image --panorama) | photo (photo on the sphere, the rest
    filled classically; no weights) | procedural (a synthetic scene picked by the prompt's keywords; no weights)"""
    depth_backend: str = "auto"
    """auto | moge | prior (no weights) | file (--distance) | procedural (the synthetic scene's exact distance)"""
    video_backend: str = "auto"
    """auto | wan | fill (no weights) | oracle (the synthetic scene's true frames; benchmarks)"""
    recon_backend: str = "auto"
    """auto | optimize | lift (no training) | lrm"""
    scaffold_backend: str = "auto"
    """The scaffold's rasteriser: auto | cpu | cuda (nvdiffrast; auto takes it on a GPU where it works)."""
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
    """GPU memory mode of the diffusion models (auto: by their estimates and the free GPU memory);
    lowvram also runs MoGe on fewer views at a time (pipeline.depth.LOWVRAM_DEPTH_BATCH)."""
    gpus: int = 1
    """GPUs of this machine for the run (one process each; or start the script with torchrun --nproc_per_node N).
    Rank 0 runs every stage and writes the run directory; the video stage is split over all GPUs (context
    parallelism: every GPU holds the whole Wan model)."""
    cfg_parallel: bool = False
    """With an even --gpus: the video's conditional and unconditional passes on two halves of the GPUs (each half
    context-parallel) instead of one after the other on all of them."""
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
    video_attention: str = "auto"
    """Attention kernel of the video model: auto (cuDNN on Hopper, else torch SDPA; Sage in fast/turbo where
    installed) | native | cudnn | flash | flash3 | sage."""
    video_compile: str = "auto"
    """Regional compilation of the video transformer's blocks: auto (on a GPU when the run has enough
    transformer passes to repay the compile) | off | blocks."""
    video_fp8: str = "auto"
    """FP8 linears (torchao, row-wise; Ada/Hopper, weights on the GPU): auto (= off: its first call costs
    ~3 minutes of quantise + recompile on an H200) | off | rowwise (1.18x per compiled step, half the memory)."""
    video_cache: str = "off"
    """diffusers cache hook on the video transformer: off | fbc (FirstBlockCache) | taylorseer. An
    approximation whose cost depends on the trained weights."""
    video_cache_threshold: float | None = None
    """FirstBlockCache threshold (default 0.05): larger skips more steps."""
    video_cache_interval: int | None = None
    """TaylorSeer: full transformer passes every this many steps after the first three (default 2: with Sage and
    compiled blocks 3.32 s per 480p step over 50 steps on an H200, stock 8.01); the others are predicted."""
    video_cfg_stop: float = 1.0
    """Classifier-free guidance in the first this fraction of the video steps only (1 = all; an approximation below)."""
    distill_lora: str | None = None
    """Few-step video LoRA of --preset turbo: "lightx2v" (the default: lightx2v/Wan2.1-I2V-14B-480P-StepDistill-
    CfgDistill-Lightx2v, 4 steps, guidance 1), a file in the same layout, or "none"."""
    flux_turbo_lora: str | None = None
    """Few-step panorama LoRA of --preset turbo: "turbo-alpha" (the default: alimama-creative/FLUX.1-Turbo-Alpha,
    8 steps), a file, or "none"."""
    lrm_model: str | None = None
    """Panoramic LRM for --recon-backend lrm: Matrix-3D's pano_lrm_480p.pt (the default, from the hub cache:
    Skywork/Matrix-3D checkpoints/pano_lrm_480p.pt) or a folder written by scripts/convert_matrix3d_lrm.py."""
    exports: tuple[str, ...] = ("spz",)
    """Extra files written beside world.ply: spz, splat, glb (glTF 2.0 KHR_gaussian_splatting) and/or
    collider (world_collider.glb, a closed decimated mesh of the world for game-engine physics)."""
    spz_axes: Literal["rub", "rdf"] = "rub"
    """Axes of world.spz: rub (the SPZ spec; Niantic's library, splat-transform 2.1+ and SuperSplat convert
    it) or rdf (our frame raw, like world.ply: for readers that take .spz raw, e.g. Spark, the Unity plug-in)."""


EXPORT_CHOICES = ("spz", "splat", "glb", "collider")  # --exports: world.<ext>, and world_collider.glb
MAX_FRAMES = 2000  # ~25 panoramic videos of 81 frames; longer walks are chained segments (explore.py)
MAX_RESOLUTION = 2048
MAX_PANORAMA_HEIGHT = 8192
MIN_IMAGE_SIDE = 16  # smaller inputs have no seam to match, no horizon to find


# The backend option of each stage, as the CLI spells it.
BACKEND_OPTIONS = {"panorama": "panorama_backend", "depth": "depth_backend", "scaffold": "scaffold_backend",
                   "video": "video_backend", "reconstruction": "recon_backend"}


def backend_choices() -> dict[str, tuple[str, ...]]:
    """The backend names each stage accepts (``auto`` first), read from the stages' own registries."""
    from matrix_world.generation.depth import DEPTH_BACKENDS
    from matrix_world.generation.panorama import PANORAMA_BACKENDS
    from matrix_world.generation.video import VIDEO_BACKENDS
    from matrix_world.reconstruction.stage import RECON_BACKENDS
    from matrix_world.runtime import RASTERISER_CHOICES

    return {"panorama": ("auto", *PANORAMA_BACKENDS), "depth": ("auto", *DEPTH_BACKENDS),
            "scaffold": RASTERISER_CHOICES, "video": ("auto", *VIDEO_BACKENDS),
            "reconstruction": ("auto", *RECON_BACKENDS)}


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
    check_views(config)
    if not (config.views and config.trajectory == "through"):
        check_trajectory_spec(config.trajectory)
    if config.resolution is not None and not (64 <= config.resolution <= MAX_RESOLUTION and config.resolution % 16 == 0):
        raise InputError(f"--resolution must be a multiple of 16 from 64 to {MAX_RESOLUTION} (480 or 720 for Wan), "
                         f"got {config.resolution}")
    if config.panorama_height is not None and not (32 <= config.panorama_height <= MAX_PANORAMA_HEIGHT
                                                   and config.panorama_height % 8 == 0):
        raise InputError(f"--panorama-height must be a multiple of 8 from 32 to {MAX_PANORAMA_HEIGHT}, "
                         f"got {config.panorama_height}")
    check_seed(config.seed)
    check_gpus_options(config)
    if config.threads is not None and config.threads < 1:
        raise InputError(f"--threads must be at least 1, got {config.threads}")
    if config.preset not in PRESET_NAMES:
        raise InputError(f"--preset must be one of {PRESET_NAMES}, got {config.preset!r}")
    check_speed_inputs(config)
    choices = backend_choices()
    for stage, field_name in BACKEND_OPTIONS.items():
        option = getattr(config, field_name)
        if option not in choices[stage]:
            flag = "--" + field_name.replace("_", "-")
            raise InputError(f"{flag} must be one of {', '.join(choices[stage])}, got {option!r}")
    for ext in config.exports:
        if ext not in EXPORT_CHOICES:
            raise InputError(f"--exports takes {', '.join(EXPORT_CHOICES)}, got {ext!r}")
    if config.spz_axes not in ("rub", "rdf"):
        raise InputError(f"--spz-axes must be rub or rdf, got {config.spz_axes!r}")
    if len(set(config.exports)) != len(config.exports):
        raise InputError(f"--exports names a format twice ({' '.join(config.exports)}); give each once")
    check_input_files(config)  # the files' contents and the LoRA specs (see below)


def check_gpus_options(config: WorldConfig) -> None:
    """--gpus / --cfg-parallel and what they exclude (the machine's GPUs: pipeline.distributed.check_gpus)."""
    from matrix_world.generation.video_parallel import check_parallel_speed

    if config.gpus < 1:
        raise InputError(f"--gpus must be at least 1, got {config.gpus}")
    if config.cfg_parallel and (config.gpus < 2 or config.gpus % 2):
        raise InputError(f"--cfg-parallel splits the GPUs into two halves; expected an even --gpus, got {config.gpus}")
    if config.gpus > 1 and config.memory not in ("auto", "full"):
        raise InputError(f"--gpus {config.gpus}: every GPU holds the whole video model (memory mode full); expected "
                         f"--memory auto or full, got {config.memory}")
    check_parallel_speed(config.video_attention, config.video_cache, config.gpus // (2 if config.cfg_parallel else 1))


def check_speed_inputs(config: WorldConfig) -> None:
    """The video speed options and the turbo preset's LoRAs."""
    from matrix_world.generation.wan_speed import check_memory_speed, check_speed_options

    check_speed_options(config.video_attention, config.video_compile, config.video_fp8, config.video_cache,
                        config.video_cache_threshold, config.video_cache_interval)
    check_memory_speed(config.memory, compile=config.video_compile, fp8=config.video_fp8)  # before any stage runs
    if not 0.0 <= config.video_cfg_stop <= 1.0:
        raise InputError(f"--video-cfg-stop must be in [0, 1], got {config.video_cfg_stop}")
    turbo = config.preset == "turbo"
    for option, value in (("--distill-lora", config.distill_lora), ("--flux-turbo-lora", config.flux_turbo_lora)):
        if value is not None and value.lower() != "none" and not turbo:
            raise InputError(f"{option} belongs to --preset turbo (its few-step sampler); add --preset turbo")
    if turbo and config.resolution not in (None, 480) and config.distill_lora is None:
        raise InputError(f"--preset turbo: the public distillation LoRA (lightx2v) is for 480p, got --resolution "
                         f"{config.resolution}; use --resolution 480 or --distill-lora FILE")


def check_views(config: WorldConfig) -> None:
    """The options of sparse views (views2world.py): counts and files; their contents are read by
    :func:`matrix_world.pipeline.views.check_view_files` (sizes, distances, the poses file)."""
    if not config.views:
        if config.view_distances or config.poses:
            raise InputError("--view-distances and --poses belong to sparse views: use scripts/views2world.py A.png B.png ...")
        if config.trajectory == "through":
            raise InputError("--trajectory through passes through the poses of several views: use scripts/views2world.py "
                             "A.png B.png ... (one panorama: a preset or a JSON path)")
        return
    if config.image is None or not config.panorama:
        raise InputError("sparse views need view A as a panorama (views2world.py A.png B.png ...)")
    for view in config.views:
        if not Path(view).is_file():
            raise InputError(f"view {view} does not exist")
    if config.view_distances and (config.distance is None or len(config.view_distances) != len(config.views)):
        raise InputError(f"give a distance map for every view or for none: {1 + len(config.views)} views, "
                         f"{int(config.distance is not None) + len(config.view_distances)} distance maps")
    if config.distance is not None and not config.view_distances:
        raise InputError(f"give a distance map for every view or for none: {1 + len(config.views)} views, 1 distance map")
    for path in config.view_distances:
        if not Path(path).is_file():
            raise InputError(f"distance file {path} does not exist")
    if config.poses is not None and not Path(config.poses).is_file():
        raise InputError(f"--poses {config.poses} does not exist (expected a JSON file with one pose per view)")


def check_input_files(config: WorldConfig) -> None:
    """The inputs' contents, read before anything is written: a complete (not truncated) image, a
    distance map by :func:`~matrix_world.io.read_distance`'s rule and of the panorama's size, and
    --flux-lora / --wan-lora specs (pure checks: no hub, no download)."""
    from matrix_world.generation.flux_lora import validate_lora_spec as validate_flux_lora
    from matrix_world.generation.wan_lora import validate_lora_spec as validate_wan_lora
    from matrix_world.io import check_image_file, read_distance

    size = check_image_file(config.image) if config.image is not None else None
    if size is not None and min(size) < MIN_IMAGE_SIDE:
        what = "panorama" if config.panorama else "image"
        raise InputError(f"{what} {config.image} is {size[1]}x{size[0]} pixels; expected at least "
                         f"{2 * MIN_IMAGE_SIDE if config.panorama else MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
    if config.distance is not None:
        read_distance(config.distance, expected_shape=size)
    if config.flux_lora is not None:
        validate_flux_lora(config.flux_lora, what="--flux-lora")
    if config.wan_lora is not None:
        validate_wan_lora(config.wan_lora, what="--wan-lora")
    if config.distill_lora is not None:
        validate_wan_lora(config.distill_lora, what="--distill-lora")
    if config.flux_turbo_lora is not None:
        validate_flux_lora(config.flux_turbo_lora, what="--flux-turbo-lora")
    if config.views:
        check_view_files(config)
    if config.lrm_model is not None:
        from matrix_world.generation.weights import check_weights_spec

        check_weights_spec(config.lrm_model, what="--lrm-model")


def check_view_files(config: WorldConfig) -> None:
    """The sparse views' contents: 2:1 panoramas (of any size: resized to view A's with a note),
    distance maps of their own view's size by the one distance rule (NaN refused), and a poses
    file with one finite rigid pose per view."""
    from matrix_world.io import check_image_file, read_distance
    from matrix_world.trajectory import Trajectory

    paths = [config.image, *config.views]
    sizes = [check_image_file(p) for p in paths]  # (H, W)
    for path, (h, w) in zip(paths, sizes):
        if w != 2 * h:
            raise InputError(f"view {path} is {w}x{h}; sparse views must be 360-degree equirectangular panoramas (W = 2H)")
    for path, size in zip(config.view_distances, sizes[1:]):
        read_distance(path, expected_shape=size)
    if config.poses is not None:
        poses = Trajectory.from_json(config.poses)
        if len(poses) != len(paths):
            raise InputError(f"--poses {config.poses} has {len(poses)} poses but there are {len(paths)} views; "
                             "expected one pose per view, view A first")
