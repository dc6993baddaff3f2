"""The scaffold job behind ``scripts/render_scaffold.py``: inputs -> run directory.

Steps (each a resumable stage of :class:`~matrix_world.rundir.RunDir`):

1. Read and check the inputs (before anything is written): an 8-bit RGB equirect panorama
   (W = 2H) and a float distance map [H, W] of the same size, read by
   :func:`matrix_world.io.read_distance` (the one rule: .npy, or an .npz holding
   ``distance``; float16/32/64, > 0, no NaN; ``+inf`` marks sky (no return) and is
   replaced by 2 x the largest finite distance when the mesh is built, Matrix-3D's rule).
   Gray, RGBA and 16-bit images are rejected unless ``allow_convert`` (then gray is
   replicated, alpha dropped, 16-bit scaled to [0, 1], and a note says so).
2. Stage ``trajectory`` -> ``trajectory.json``: a preset or a JSON file
   (:func:`~matrix_world.trajectory.load_trajectory`), its yaw rounded to whole panorama
   columns. The file holds the poses actually rendered.
3. Stage ``scaffold`` -> ``scaffold.npz`` in the one layout (``rgb`` [F, H, 2H, 3] uint8,
   ``mask`` [F, H, 2H] bool, ``distance`` [F, H, 2H] float16), ``scaffold_rgb.mp4``,
   ``scaffold_mask.mp4`` (+ ``scaffold_mesh.ply`` or ``.glb``): the panorama and distance
   are turned by the trajectory's yaw and given to the one scaffold builder,
   :func:`matrix_world.scaffold.build.build_scaffold` (frame 0 is the turned panorama with a
   full mask). The rasteriser is the scaffold stage's :func:`~matrix_world.pipeline.scaffold.choose`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from matrix_world.errors import InputError
from matrix_world.io import read_distance, read_image
from matrix_world.pipeline.scaffold import build_and_write, choose
from matrix_world.rundir import RunDir
from matrix_world.runlock import run_lock
from matrix_world.runtime import RASTERISER_CHOICES
from matrix_world.trajectory import (
    PRESETS,
    Trajectory,
    load_trajectory,
    snap_yaw,
    turn_equirect,
)

BACKENDS = RASTERISER_CHOICES  # the scaffold rasterisers (auto: the scaffold stage's choose)
CUSTOM_SCALES = {"auto": None, "keep": False, "fit": True}
MIN_HEIGHT = 4


@dataclass
class ScaffoldJob:
    """Everything the scaffold command needs (mirrors its command-line options)."""

    panorama: Path
    distance: Path
    trajectory: str
    out: Path
    frames: int | None = None  # presets: default 81; files: their pose count
    height: int = 256  # output equirect height (width 2 x height)
    yaw: float = 0.0  # presets: motion azimuth, degrees turning right
    move: float = 0.6  # presets: path length as a fraction of the forward distance
    custom_scale: str = "auto"  # files: auto | keep | fit (Matrix-3D's rescaling)
    fps: float | None = None
    backend: str = "auto"
    device: str | None = None  # cuda backend: which GPU (cuda, cuda:1)
    occlusion_threshold: float = 0.05
    decimate: int = 1  # one mesh vertex per decimate x decimate pixels (faster on CPU)
    mesh_out: str | None = None  # None | "ply" | "glb"
    allow_convert: bool = False
    force: bool = False

    @property
    def scaffold_backend(self) -> str:
        """The rasteriser asked for (read by the scaffold stage's ``choose``)."""
        return self.backend


# --------------------------------------------------------------------------- inputs


def load_panorama(path: str | Path, *, allow_convert: bool = False,
                  on_convert: Callable[[str], None] | None = None) -> np.ndarray:
    """Read an equirect panorama: float32 [H, 2H, 3] in [0, 1]; InputError on bad input.

    Gray / RGBA / 16-bit / float images raise unless ``allow_convert``; then they are
    converted (gray replicated, alpha dropped, 16-bit scaled) and ``on_convert`` is told.
    """
    try:
        image = read_image(path, strict=True)
    except InputError as strict_error:
        image = read_image(path, strict=False)  # raises again when the file itself is the problem
        if not allow_convert:
            raise InputError(f"{strict_error} (pass --allow-convert to convert it)") from None
        if on_convert is not None:
            on_convert(f"converted {Path(path).name} to RGB in [0, 1]: {strict_error}")
    h, w = image.shape[:2]
    if w != 2 * h:
        raise InputError(f"panorama {path} is {w}x{h} (width x height); expected an equirectangular image "
                         "with width = 2 x height")
    if h < MIN_HEIGHT:
        raise InputError(f"panorama {path} is only {h} pixels high; expected at least {MIN_HEIGHT}")
    return image


def job_device(job: ScaffoldJob):
    """The torch device of the job: --device, else CUDA when present, else CPU."""
    import torch

    from matrix_world.runtime import check_device

    check_device(job.device, allow_auto=False)
    return torch.device(job.device or ("cuda" if torch.cuda.is_available() else "cpu"))


# --------------------------------------------------------------------------- the job


SCAFFOLD_BYTES_PER_PIXEL = 12  # rgb + mask of the scaffold, its rasteriser buffers and the video encoder's copy


def check_scaffold_memory(frames: int, height: int) -> None:
    """The scaffold video of ``frames`` frames at ``height`` fits in the available memory."""
    from matrix_world.runtime import check_memory

    check_memory(frames * height * 2 * height * SCAFFOLD_BYTES_PER_PIXEL,
                 f"a scaffold of {frames} frames of {2 * height}x{height} (--height {height})",
                 "a smaller --height or fewer --frames (or poses in the trajectory file)")


def check_job(job: ScaffoldJob) -> None:
    """Option checks that need no file access."""
    if job.height < MIN_HEIGHT:
        raise InputError(f"--height {job.height} is too small; expected at least {MIN_HEIGHT} (width = 2 x height)")
    if job.frames is not None and job.frames < 2:
        raise InputError(f"--frames {job.frames}: a trajectory needs at least 2 frames")
    if job.custom_scale not in CUSTOM_SCALES:
        raise InputError(f"unknown custom scale {job.custom_scale!r}; expected one of {', '.join(CUSTOM_SCALES)}")
    if job.decimate < 1:
        raise InputError(f"--decimate {job.decimate}; expected a positive integer")
    if job.mesh_out not in (None, "ply", "glb"):
        raise InputError(f"--mesh-out {job.mesh_out!r}; expected ply or glb")
    if not (math.isfinite(job.move) and job.move > 0):
        raise InputError(f"--move {job.move}; expected a fraction of the forward distance > 0")
    check_scaffold_memory(job.frames or 81, job.height)  # a file's pose count: checked again once it is read
    out = Path(job.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} is a file; expected a folder (created if missing)")


def run_scaffold_job(job: ScaffoldJob, log: Callable[[str], None] = print,
                     note: Callable[[str], None] | None = None) -> RunDir:
    """Run the scaffold job into ``job.out`` (see the module docstring); returns the RunDir.

    log: progress lines. note: things the user should know (e.g. an image was converted).
    """
    # 1. everything that can be wrong with the inputs is found before anything is written
    check_job(job)
    pano = load_panorama(job.panorama, allow_convert=job.allow_convert, on_convert=note or log)
    h, w = pano.shape[:2]
    if h % job.decimate or h // job.decimate < 2:
        raise InputError(f"--decimate {job.decimate} does not divide the panorama height {h}; "
                         "expected a divisor of it (leaving at least 2 rows)")
    distance, _ = read_distance(job.distance, (h, w))  # +inf = sky
    traj = load_trajectory(job.trajectory, distance, job.frames, rescale=CUSTOM_SCALES[job.custom_scale],
                           yaw=job.yaw, scale=job.move, fps=job.fps)
    traj, columns = snap_yaw(traj, w)
    check_scaffold_memory(len(traj), job.height)
    if job.backend not in BACKENDS:
        raise InputError(f"unknown backend {job.backend!r}; expected one of {', '.join(BACKENDS)}")
    device = job_device(job)
    backend, _ = choose(job, device)

    with run_lock(job.out):  # one writer per run directory
        return _run_scaffold_job(job, log, pano, distance, traj, columns, backend, device)


def _run_scaffold_job(job: ScaffoldJob, log, pano, distance, traj, columns, backend, device) -> RunDir:
    run = RunDir(job.out, force=job.force)
    run.set_inputs(panorama=job.panorama, distance=job.distance,
                   trajectory=None if job.trajectory in PRESETS else job.trajectory)

    # 2. trajectory.json
    traj_config = {"trajectory": job.trajectory if job.trajectory in PRESETS else "file", "frames": job.frames,
                   "yaw": job.yaw, "move": job.move, "custom_scale": job.custom_scale, "fps": job.fps}
    traj_files = {"distance": job.distance, "trajectory": None if job.trajectory in PRESETS else job.trajectory}
    with run.stage("trajectory", traj_config, files=traj_files, outputs=["trajectory.json"],
                   backend="preset" if job.trajectory in PRESETS else "file") as st:
        if not st.done:
            traj.to_json(st.path("trajectory.json"))
            st.info.update(frames=len(traj), yaw=traj.yaw, yaw_columns=columns)
    traj = Trajectory.from_json(run.path / "trajectory.json")  # render exactly what the file says
    log(f"trajectory: {traj.name}, {len(traj)} frames, yaw {traj.yaw:.3f} deg" + (" (reused)" if st.done else ""))

    # 3. scaffold frames
    from matrix_world.scaffold.mesh import ScaffoldConfig

    mesh_config = ScaffoldConfig(occlusion_threshold=job.occlusion_threshold, decimate=job.decimate)
    outputs = ["scaffold.npz", "scaffold_rgb.mp4", "scaffold_mask.mp4"]
    if job.mesh_out:
        outputs.append(f"scaffold_mesh.{job.mesh_out}")
    config = {"height": job.height, "backend": job.backend, "mesh": asdict(mesh_config),
              "allow_convert": job.allow_convert}
    with run.stage("scaffold", config, inputs=["trajectory.json"],
                   files={"panorama": job.panorama, "distance": job.distance}, outputs=outputs, backend=backend) as st:
        if not st.done:
            _render_into(st, pano, distance, traj, columns, job.height, backend, device, mesh_config, job.mesh_out, log)
    if st.done:
        log(f"scaffold: up to date in {run.path} (reused)")
    return run


def _render_into(st, pano: np.ndarray, distance: np.ndarray, traj: Trajectory, columns: int, height: int,
                 backend: str, device, mesh_config, mesh_out: str | None, log: Callable[[str], None]) -> None:
    """Turn the panorama by ``columns``, build its scaffold along ``traj`` and write the stage outputs.

    pano: [H, W, 3] float32, distance: [H, W] float32 (+inf = sky), both untouched by the turn.
    """
    import functools

    from matrix_world.scaffold.build import build_scaffold
    from matrix_world.scaffold.mesh import export_mesh

    scaffold, mesh, times = build_and_write(st, traj.fps, functools.partial(
        build_scaffold, turn_equirect(pano, columns), turn_equirect(distance, columns), traj.c2w, height,
        config=mesh_config, backend=backend, device=device))
    seconds = times["mesh_and_render"]
    if mesh_out:
        export_mesh(mesh, st.path(f"scaffold_mesh.{mesh_out}"))
    known = float(scaffold.mask.mean())
    f, h, w = scaffold.mask.shape
    st.info.update(device=str(device) if backend == "cuda" else "cpu", frames=int(f), height=int(h), width=int(w),
                   mesh_vertices=int(mesh.vertices.shape[0]), mesh_faces=int(mesh.faces.shape[0]),
                   seconds=round(seconds, 4), known_fraction=round(known, 4))
    log(f"scaffold: {f} frames {w}x{h}, backend {backend}, mesh + render {seconds:.2f} s, {100 * known:.1f}% pixels known")
