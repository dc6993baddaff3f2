"""The world pipeline: text or image -> panorama -> depth -> trajectory -> scaffold -> video -> 3D Gaussians.

One object, :class:`WorldPipeline`, used by ``scripts/text2world.py`` and
``scripts/image2world.py`` (and, for chained segments, by :mod:`matrix_world.pipeline.explore`).
Its ``__call__`` reads as the numbered steps of the method; each step is a resumable stage
of the run directory, one module per stage in this package.

Backends: every stage takes a backend name or ``auto``. ``auto`` picks the real model when
its weights are on this machine (a local folder or the Hugging Face cache) and a CUDA GPU is
present, and otherwise the backend that needs no weights; each stage's ``choose`` says which
and why (:mod:`matrix_world.pipeline.plan`), printed at the start and stored in the manifest.

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
from dataclasses import dataclass
from pathlib import Path

from matrix_world.errors import InputError
from matrix_world.pipeline.config import WorldConfig, check_inputs
from matrix_world.pipeline.context import StageContext
from matrix_world.pipeline.depth import depth_stage, make_depth_fn
from matrix_world.pipeline.panorama import panorama_stage
from matrix_world.pipeline.plan import Plan, check_plan, make_plan, prompt_note
from matrix_world.pipeline.reconstruction import reconstruction_stage
from matrix_world.pipeline.report import contact_sheet_stage, preview_stage, summarize
from matrix_world.pipeline.scaffold import OCCLUSION_THRESHOLD, scaffold_stage
from matrix_world.pipeline.trajectory import trajectory_stage
from matrix_world.pipeline.video import video_stage
from matrix_world.pipeline.views import video_anchors, view_cache, views_stage
from matrix_world.rundir import RunDir, file_sha256, jsonable
from matrix_world.runlock import run_lock
from matrix_world.runtime import apply_threads


def slug(text: str, limit: int = 40) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (words[:limit].rstrip("-") or "world")


def default_out(config: WorldConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = config.prompt or (Path(config.image).stem if config.image else "world")
    return Path("outputs") / f"{slug(name)}-{stamp}"


@dataclass
class WorldResult:
    """Where a run's results are, and what it took."""

    out: Path
    plan: Plan
    num_gaussians: int
    seconds: dict[str, float]
    peak_gpu_gb: dict[str, float] = dataclasses.field(default_factory=dict)  # per stage that measures its own


class WorldPipeline:
    """Text or image -> explorable world of 3D Gaussians in a run directory.

    ``WorldPipeline(log=print)(config)`` runs every stage (resuming finished ones) and
    returns a :class:`WorldResult`.
    """

    def __init__(self, log=print, models: dict | None = None, adjust_plan=None, distributed=None):
        self.log = log
        self.distributed = distributed  # rank 0's Team of a several-GPU run (pipeline.distributed), or None
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
        ctx = StageContext(run=run, device=plan.device, seed=config.seed, log=self.log, models=self.models,
                           distributed=self.distributed)
        run.set_inputs(**input_files(config))
        run.manifest["request"] = {"prompt": config.prompt, "preset": config.preset, "trajectory": config.trajectory,
                                   "frames": config.frames, "height": plan.height, "device": str(plan.device)}
        run.manifest["plan"] = {"backends": plan.backends, "reasons": plan.reasons, "preview_only": plan.preview_only}
        run.manifest["world_config"] = dataclasses.asdict(dataclasses.replace(config, out=str(out)))
        start = time.perf_counter()
        try:
            num_gaussians = self._stages(ctx, config, plan)
        finally:
            ctx.release(*ctx.owned)  # after a failure too: no model this run loaded outlives it

        seconds = {name: rec.get("seconds", 0.0) for name, rec in run.manifest["stages"].items()}
        peaks = {name: rec["info"]["peak_gpu_gb"] for name, rec in run.manifest["stages"].items()
                 if isinstance((rec.get("info") or {}).get("peak_gpu_gb"), (int, float))}
        result = WorldResult(out=out, plan=plan, num_gaussians=num_gaussians, seconds=seconds, peak_gpu_gb=peaks)
        summarize(result, wall=time.perf_counter() - start, log=self.log)
        return result

    def _stages(self, ctx: StageContext, config: WorldConfig, plan: Plan) -> int:
        """Steps 2-8, each a resumable stage; returns the number of Gaussians.

        Models are loaded once and freed in order (ctx.release: dropped, gc, torch.cuda.empty_cache()),
        so each stage's models load into a GPU that holds nothing of the stages before.
        """
        # 2. panorama from text or image
        rgb = panorama_stage(ctx, plan.panorama, prompt=config.prompt, image=config.image)
        ctx.release()  # FLUX lives inside the stage function: free what it left
        # 3. panoramic distance (+ sky)
        depth = depth_stage(ctx, plan.depth, rgb)
        # 3b. sparse views (views2world): their poses in view A's frame, distances in A's units
        views = views_stage(ctx, config, plan.depth, rgb, depth) if config.views else None
        if keyframe_depth_model(plan):
            ctx.park("depth")  # MoGe waits on the CPU for the reconstruction's keyframes
        else:
            ctx.release("depth")
        # 4. camera path through the panorama (or through every view's pose)
        traj = trajectory_stage(ctx, config.trajectory, config.frames, depth["distance"],
                                views_c2w=None if views is None else views.c2w, snap=plan.recon.keyframes.stride)
        # 5. occlusion-aware scaffold video + mask along the path (+ the views' 3D cache)
        cache = {} if views is None else view_cache(views, traj, OCCLUSION_THRESHOLD)
        scaffold = scaffold_stage(ctx, plan.backends["scaffold"], plan.height, rgb, depth, traj, **cache)
        # 6. panoramic video: the unknown parts of the scaffold generated (input views kept exactly)
        frames = video_stage(ctx, plan.video, scaffold, traj, config.prompt,
                             anchors=None if views is None else video_anchors(views, traj))
        ctx.release()  # Wan lives inside the stage function
        # 7. 3D Gaussians from the video, exported as world.ply (+ .spz / .splat / .glb / collider)
        depth_fn = make_depth_fn(plan.depth, plan.device, scaffold, traj, ctx)
        gaussians = reconstruction_stage(ctx, plan.recon, frames, depth, traj, depth_fn,
                                         exports=tuple(config.exports), depth_config=plan.depth.to_dict(),
                                         spz_axes=config.spz_axes)
        ctx.release("depth")
        # 8. what a person looks at: preview.mp4 fly-through and a contact sheet
        preview_stage(ctx, gaussians, traj, plan.height)
        contact_sheet_stage(ctx, rgb, scaffold, frames)
        return len(gaussians)

    def _announce(self, config: WorldConfig, plan: Plan, out: Path) -> None:
        self.log(f"matrix_world: preset {config.preset}, device {plan.device}, video {plan.height}x{2 * plan.height}, "
                 f"{config.frames} frames -> {out}")
        for stage, backend in plan.backends.items():
            self.log(f"  {stage:<15} {backend:<11} ({plan.reasons.get(stage, '')})")
        note = prompt_note(config.prompt, plan.backends)
        if note is not None:
            self.log(f"  {note}")
        if plan.preview_only:
            self.log("  NOTE: only the preview backends run (no model weights or no GPU here). For the real models, "
                     "download FLUX.1-dev + the Matrix-3D LoRA, MoGe-2 and Wan2.1-I2V-14B (see README: 'Real weights') "
                     "and run on a CUDA GPU.")


def keyframe_depth_model(plan: Plan) -> bool:
    """True when the reconstruction runs the depth stage's model (MoGe) on its keyframes."""
    return plan.depth.backend == "moge" and plan.recon.backend in ("lift", "optimize")


# Options that never change an artifact: a change of any other option makes another world.
_RUN_OPTIONS = ("out", "resume", "overwrite", "threads", "gpus", "cfg_parallel")


def input_files(config: WorldConfig) -> dict[str, str | None]:
    """{key: path or None} of the input files, as the manifest's ``inputs`` records them."""
    files: dict[str, str | None] = {"image": config.image, "distance": config.distance}
    files.update({f"view_{i:02d}": p for i, p in enumerate(config.views, 1)})
    files.update({f"view_{i:02d}_distance": p for i, p in enumerate(config.view_distances, 1)})
    if config.views:
        files["poses"] = config.poses
    return files


def input_hashes(config: WorldConfig) -> dict[str, str | None]:
    """sha256 of the input files (None where not given), as ``RunDir.set_inputs`` records them."""
    return {key: None if path is None else file_sha256(path) for key, path in input_files(config).items()}


def _same_inputs(manifest: dict, hashes: dict) -> bool:
    """The manifest records exactly these input files' contents (an input absent on one side is None)."""
    stored = {key: rec.get("sha256") for key, rec in manifest.get("inputs", {}).items()}
    return all(stored.get(key) == hashes.get(key) for key in set(stored) | set(hashes))


def same_world(manifest: dict, config: WorldConfig, hashes: dict) -> bool:
    """True when the run of ``manifest`` is this world: same prompt, seed and input contents
    (other options may differ: resuming reruns what they change)."""
    old = manifest.get("world_config") or {}
    return ((old.get("prompt"), old.get("seed"), old.get("panorama", False)) == (config.prompt, config.seed, config.panorama)
            and _same_inputs(manifest, hashes))


def _world_changed(manifest: dict, config: WorldConfig, hashes: dict) -> bool:
    """True when any option that changes an artifact differs from the world stored in ``manifest``."""
    stored = {k: v for k, v in (manifest.get("world_config") or {}).items() if k not in _RUN_OPTIONS}
    now = {k: v for k, v in jsonable(dataclasses.asdict(config)).items() if k not in _RUN_OPTIONS}
    for key in ("views", "view_distances", "poses"):  # worlds made before sparse views existed had none
        stored.setdefault(key, now[key] if not config.views else None)
    return stored != now or not _same_inputs(manifest, hashes)


def check_out_folder(out: Path, config: WorldConfig, hashes: dict) -> None:
    """``--out`` must be new, empty, or this same world (to resume); anything else only with --overwrite."""
    from matrix_world.rundir import MANIFEST
    from matrix_world.runlock import LOCK

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
