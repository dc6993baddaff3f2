"""Camera trajectories through a panorama: presets, JSON import/export, validation.

Conventions (DESIGN.md §3):

* Poses are OpenCV camera-to-world 4x4 matrices ``c2w`` (x right, y down, z forward),
  float64. The world frame is the frame-0 camera: every trajectory made here starts with
  ``c2w[0] == identity``.
* The frame-0 camera sits at the centre of the source panorama, turned right by
  ``Trajectory.yaw`` degrees (the DESIGN §3 yaw: +z towards +x). A consumer turns the
  panorama by that yaw before using the poses (:func:`turn_equirect`), exactly as
  Matrix-3D rolls its panorama so that the motion azimuth is centred. Turning by a whole
  number of columns keeps the panorama pixels untouched, so frame 0 of a scaffold is the
  (turned) input panorama itself.
* Lengths are in the units of the distance map (metres for metric depth, arbitrary for
  MoGe-1's relative depth).

Presets (Matrix-3D's geometry, FACTS §C), with ``d`` = the distance just below the
horizon in the motion direction (:func:`forward_distance`) and ``l = move * d``
(``move`` = 0.6 by default, Matrix-3D's ``movement_range``):

* ``straight``: move ``l`` straight ahead, heading fixed.
* ``s_curve``: forward ``l`` with a lateral sine ``amplitude * d * sin(2 pi s / l)``
  (amplitude 0.15; Matrix-3D uses 0.15 scene units on depth normalised to about 1, so
  this equals theirs at d = 1 and keeps the shape for any units), heading along the
  tangent. The frame-0 heading is the tangent (57.5 degrees off the motion axis), so the
  panorama is turned by it too and frame 0 shows what the frame-0 pose sees (Matrix-3D
  pastes the unturned panorama as frame 0, a jump of 57.5 degrees to frame 1).
* ``r_curve`` / ``l_curve``: a 30 degree arc to the right / left ending ``l`` ahead
  (radius ``l / sin 30``, so it ends 0.27 l to the side), heading along the tangent. (Matrix-3D's public
  ``l_curve`` produces a mirrored, det = -1 rotation; we use the proper mirror image of
  ``r_curve``.)
* ``orbit``: look-around at a fixed position, yaw sweeping 360 degrees in ``F`` equal
  steps (frame ``F`` would equal frame 0, so the video loops).

Custom trajectories are JSON: ours ``{"convention": "opencv_c2w", "poses": [[16 floats
row-major], ...], "fps": 16}`` (optional: ``"yaw"`` degrees, ``"name"``, ``"meta"``) or
Matrix-3D's plain list of 4x4 OpenCV world-to-camera matrices. Both are re-expressed relative to frame 0 (the frame-0 heading
becomes the yaw) and may be rescaled like Matrix-3D so that the farthest camera reaches
half the panorama distance in its direction.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from matrix_world.cameras import (
    c2w_to_w2c,
    make_pose,
    rigidity_error,
    rotation_yaw,
    w2c_to_c2w,
)
from matrix_world.equirect import direction_to_lonlat
from matrix_world.errors import InputError
from matrix_world.io import write_text

PRESETS = ("straight", "s_curve", "l_curve", "r_curve", "orbit")
CONVENTION = "opencv_c2w"
RIGID_TOLERANCE = 1e-3  # max |R^T R - I|, |det R - 1|, |last row - (0,0,0,1)| accepted from files
# Largest camera translation |t| accepted, in the distance map's units (metres for metric depth):
# 10 km. A scaffold is built from one panorama; a camera farther away sees nothing of it, and
# values like 1e30 are a broken export (or millimetres), not a path.
MAX_TRANSLATION = 1e4

# Matrix-3D samples the distance at row int(H/2 * 1.05): about 4.5 degrees below the horizon.
FORWARD_LATITUDE_DEG = -4.5
FORWARD_WINDOW_DEG = 3.0


@dataclass
class Trajectory:
    """A camera path: OpenCV ``c2w`` poses with ``c2w[0] = I`` (world = frame-0 camera).

    c2w: Tensor  # [F, 4, 4] float64
    fps: frames per second of the video made along it.
    yaw: degrees the frame-0 camera is turned right from the source panorama's forward
        direction (turn the panorama by it before rendering; see the module docstring).
    name: preset name or the file it came from (provenance only).
    meta: JSON-able provenance (forward distance, move fraction, ...).
    """

    c2w: Tensor
    fps: float = 16.0
    yaw: float = 0.0
    name: str = "custom"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.c2w = torch.as_tensor(self.c2w, dtype=torch.float64).cpu()
        self.fps = float(self.fps)
        self.yaw = float(self.yaw)
        if not math.isfinite(self.fps) or self.fps <= 0:
            raise InputError(f"trajectory fps must be a positive number, got {self.fps}")
        if not math.isfinite(self.yaw):
            raise InputError(f"trajectory yaw must be a finite number of degrees, got {self.yaw}")
        validate_poses(self.c2w)

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def w2c(self) -> Tensor:
        """World-to-camera poses [F, 4, 4] (gsplat's ``viewmats``)."""
        return c2w_to_w2c(self.c2w)

    @property
    def positions(self) -> Tensor:
        """Camera centres in the world frame: [F, 3]."""
        return self.c2w[:, :3, 3]

    def to_dict(self) -> dict:
        """Our JSON form. Floats are written with Python's shortest exact repr (bit-exact)."""
        poses = [[float(v) for v in pose.reshape(16).tolist()] for pose in self.c2w]
        return {"convention": CONVENTION, "poses": poses, "fps": self.fps, "yaw": self.yaw,
                "name": self.name, "meta": self.meta}

    def to_json(self, path: str | os.PathLike) -> None:
        """Write our JSON form atomically."""
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "trajectory") -> Trajectory:
        """Parse our JSON form exactly as stored (no re-expression, no rescaling)."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object with \"convention\" and \"poses\"")
        convention = data.get("convention")
        if convention != CONVENTION:
            raise InputError(f"{source}: convention {convention!r} is not supported; expected \"{CONVENTION}\" "
                             "(or a Matrix-3D list of 4x4 world-to-camera matrices)")
        c2w = _poses_array(data.get("poses"), source)
        validate_poses(torch.from_numpy(c2w), what=source)  # errors name the file
        fps = data.get("fps", 16.0)
        yaw = data.get("yaw", 0.0)
        for key, value in (("fps", fps), ("yaw", yaw)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{source}: \"{key}\" must be a number, got {value!r}")
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise InputError(f"{source}: \"meta\" must be a JSON object")
        name = str(data.get("name", "custom"))
        return cls(torch.from_numpy(c2w), fps=fps, yaw=yaw, name=name, meta=meta)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Trajectory:
        """Read our JSON form exactly as stored (bit-exact inverse of :meth:`to_json`)."""
        return cls.from_dict(_read_json(path), source=str(path))


# --------------------------------------------------------------------------- validation


def validate_poses(c2w, *, what: str = "trajectory", min_frames: int = 2) -> None:
    """Raise InputError unless ``c2w`` is [F, 4, 4], F >= ``min_frames`` (a camera path: 2), finite,
    rigid (tolerance 1e-3) and every translation has |t| <= MAX_TRANSLATION (1e4, the distance
    map's units); the message names the first bad pose."""
    c2w = torch.as_tensor(c2w)
    if c2w.dim() != 3 or tuple(c2w.shape[1:]) != (4, 4):
        raise InputError(f"{what}: poses have shape {tuple(c2w.shape)}; expected [F, 4, 4]")
    if c2w.shape[0] < min_frames:
        raise InputError(f"{what} has {c2w.shape[0]} pose(s); expected at least {min_frames} frames")
    bad = ~torch.isfinite(c2w).all(dim=(1, 2))
    if bad.any():
        raise InputError(f"{what}: pose {int(bad.nonzero()[0])} contains NaN or Inf; expected finite numbers")
    reach = c2w[:, :3, 3].to(torch.float64).norm(dim=-1)
    far = reach > MAX_TRANSLATION
    if far.any():
        i = int(far.nonzero()[0])
        raise InputError(f"{what}: pose {i} has translation |t| = {float(reach[i]):.3g}, beyond {MAX_TRANSLATION:g}; "
                         "expected camera positions within 1e4 units (metres for metric depth) of the panorama")
    err = rigidity_error(c2w)
    if (err > RIGID_TOLERANCE).any():
        i = int((err > RIGID_TOLERANCE).nonzero()[0])
        raise InputError(f"{what}: pose {i} is not a rigid transform (rotation error {float(err[i]):.3g}); "
                         "expected an orthonormal rotation with det +1 and last row 0 0 0 1")


def read_pose(path: str | os.PathLike) -> Tensor:
    """One camera pose from a JSON file ``{"convention": "opencv_c2w", "poses": [[16 floats]]}``
    (a trajectory file holding exactly one pose): c2w [4, 4] float64, checked finite and rigid."""
    source = str(path)
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("convention") != CONVENTION:
        raise InputError(f"{source}: expected a JSON object {{\"convention\": \"{CONVENTION}\", \"poses\": [[16 floats]]}}")
    c2w = _poses_array(data.get("poses"), source)
    if len(c2w) != 1:
        raise InputError(f"{source}: expected exactly one pose, got {len(c2w)}")
    c2w = torch.from_numpy(c2w)
    validate_poses(c2w, what=source, min_frames=1)
    return c2w[0]


def _poses_array(poses, source: str) -> np.ndarray:
    """JSON poses (16 floats row-major, or 4x4 nested lists) -> float64 [F, 4, 4]."""
    if not isinstance(poses, list) or not poses:
        raise InputError(f"{source}: \"poses\" must be a non-empty list of 4x4 matrices (16 numbers each)")
    try:
        arr = np.array(poses, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{source}: poses must be numbers, 16 per pose (row-major 4x4)") from None
    if arr.ndim == 2 and arr.shape[1] == 16:
        arr = arr.reshape(-1, 4, 4)
    if arr.ndim != 3 or arr.shape[1:] != (4, 4):
        raise InputError(f"{source}: poses have shape {arr.shape}; expected F x 16 numbers or F x 4 x 4")
    return arr


def _read_json(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"trajectory file {path} does not exist (expected a .json file)")
    from matrix_world.io import read_json

    return read_json(path, what="trajectory file",
                     expected=f'{{"convention": "{CONVENTION}", "poses": [[16 floats], ...]}} or a list of 4x4 matrices')


# --------------------------------------------------------------------------- distance helpers


def _as_distance(distance) -> np.ndarray:
    """[H, W] numpy/torch -> float64 numpy with non-finite values (sky) set to 2 x max finite."""
    d = distance.detach().cpu().numpy() if isinstance(distance, Tensor) else np.asarray(distance)
    d = d.astype(np.float64)
    if d.ndim != 2 or d.shape[1] != 2 * d.shape[0]:
        raise InputError(f"distance has shape {d.shape}; expected an equirect [H, 2H] array")
    finite = np.isfinite(d) & (d > 0)
    if not finite.any():
        raise InputError("distance has no finite positive value; expected distances > 0 (+inf only for sky)")
    return np.where(finite, d, 2.0 * d[finite].max())


def _window(centers_deg: np.ndarray, target_deg: float, half_deg: float, wrap: bool) -> np.ndarray:
    diff = centers_deg - target_deg
    if wrap:
        diff = (diff + 180.0) % 360.0 - 180.0
    inside = np.abs(diff) <= half_deg
    return inside if inside.any() else np.abs(diff) == np.abs(diff).min()


def forward_distance(distance, yaw: float = 0.0) -> float:
    """Distance just below the horizon in the direction ``yaw`` (degrees, turning right).

    Matrix-3D reads one pixel about 4.5 degrees below the horizon; we take the median over
    a window of +-3 degrees (at least +-1.5 pixels) around that point, after setting
    sky (+inf / invalid) to 2 x the largest finite distance as Matrix-3D does.
    """
    d = _as_distance(distance)
    h, w = d.shape
    lat = (0.5 - (np.arange(h) + 0.5) / h) * 180.0
    lon = ((np.arange(w) + 0.5) / w - 0.5) * 360.0
    half = max(FORWARD_WINDOW_DEG, 1.5 * 180.0 / h)  # at least about 3 x 3 pixels
    rows = _window(lat, FORWARD_LATITUDE_DEG, half, wrap=False)
    cols = _window(lon, yaw, half, wrap=True)
    return float(np.median(d[np.ix_(rows, cols)]))


def distance_along(distance, directions: Tensor) -> Tensor:
    """Panorama distance (sky filled) at the nearest pixel of each direction [N, 3] -> [N]."""
    d = _as_distance(distance)
    h, w = d.shape
    lon, lat = direction_to_lonlat(directions.to(torch.float64))
    col = np.floor(((lon.numpy() / (2 * math.pi)) + 0.5) * w).astype(np.int64) % w
    row = np.clip(np.floor((0.5 - lat.numpy() / math.pi) * h).astype(np.int64), 0, h - 1)
    return torch.from_numpy(d[row, col])


# --------------------------------------------------------------------------- turning the panorama


def yaw_to_columns(yaw: float, width: int) -> int:
    """Whole columns (in [0, W)) that turn a W-wide panorama right by about ``yaw`` degrees."""
    return round(yaw / 360.0 * width) % width


def turn_equirect(image: np.ndarray | Tensor, columns: int, axis: int = 1):
    """Turn an equirect array right by whole ``columns``: new column j = old column j + columns.

    Works on [H, W, ...] numpy arrays (axis=1) or tensors with the width on ``axis``.
    The content that was ``columns`` pixels right of the centre is centred afterwards.
    """
    if isinstance(image, Tensor):
        return torch.roll(image, shifts=-columns, dims=axis)
    return np.roll(image, -columns, axis=axis)


def snap_yaw(traj: Trajectory, width: int) -> tuple[Trajectory, int]:
    """Round ``traj.yaw`` to whole columns of a W-wide panorama: (trajectory, columns).

    The returned trajectory's yaw is exactly ``columns * 360 / W`` (minus 360 when above
    180; what a turn by whole columns does); its poses are unchanged.
    """
    columns = yaw_to_columns(traj.yaw, width)
    yaw = columns * 360.0 / width
    yaw = yaw - 360.0 if yaw > 180.0 else yaw
    return (traj if yaw == traj.yaw else replace(traj, yaw=yaw)), columns


# --------------------------------------------------------------------------- presets


def _heading_yaw(c2w: Tensor) -> float:
    """Azimuth (degrees, turning right) of a pose's forward axis, ignoring pitch."""
    forward = c2w[:3, 2]
    return math.degrees(math.atan2(float(forward[0]), float(forward[2])))


def _relative_to_first(c2w: Tensor) -> Tensor:
    """Re-express poses relative to frame 0 (``c2w[0]^-1 @ c2w``); exact when frame 0 is I."""
    if torch.equal(c2w[0], torch.eye(4, dtype=c2w.dtype)):
        return c2w.clone()
    out = c2w_to_w2c(c2w[0]) @ c2w
    out[0] = torch.eye(4, dtype=c2w.dtype)
    return out


def _yaw_rotations(angles_deg) -> Tensor:
    return torch.stack([rotation_yaw(float(a)) for a in angles_deg])


def make_preset(name: str, distance=None, frames: int = 81, *, yaw: float = 0.0, scale: float = 0.6,
                amplitude: float = 0.15, arc_deg: float = 30.0, fps: float = 16.0) -> Trajectory:
    """One of :data:`PRESETS` through the panorama whose distance map is given.

    distance: [H, 2H] numpy or torch (+inf = sky); needed by all presets but ``orbit``.
    yaw: motion azimuth in degrees (turning right) in the panorama.
    scale: path length as a fraction of the forward distance d (Matrix-3D: 0.6).
    amplitude: s_curve lateral amplitude as a fraction of d. arc_deg: curve angle.
    Returns a Trajectory with c2w[0] = I whose ``yaw`` is the frame-0 heading.
    """
    if name not in PRESETS:
        raise InputError(f"unknown trajectory preset {name!r}; expected one of {', '.join(PRESETS)} or a .json file")
    frames = int(frames)
    if frames < 2:
        raise InputError(f"a trajectory needs at least 2 frames, got {frames}")
    for key, value in (("yaw", yaw), ("scale", scale), ("amplitude", amplitude), ("arc_deg", arc_deg)):
        if not math.isfinite(float(value)):
            raise InputError(f"preset {key} must be finite, got {value}")
    t = torch.arange(frames, dtype=torch.float64) / (frames - 1)  # [F] in [0, 1]
    zero = torch.zeros_like(t)
    meta: dict = {"preset": name, "motion_yaw": float(yaw)}

    if name == "orbit":
        angles = 360.0 * torch.arange(frames, dtype=torch.float64) / frames
        c2w = make_pose(_yaw_rotations(angles), torch.zeros(frames, 3, dtype=torch.float64))
        return Trajectory(c2w, fps=fps, yaw=yaw, name=name, meta=meta)

    if distance is None:
        raise InputError(f"preset {name!r} needs the panorama's distance map to scale the motion")
    d = forward_distance(distance, yaw)
    length = scale * d
    meta.update(forward_distance=d, scale=float(scale))

    if name == "straight":
        rot = torch.eye(3, dtype=torch.float64).expand(frames, 3, 3)
        pos = torch.stack((zero, zero, length * t), dim=-1)
        c2w = make_pose(rot, pos)
    elif name == "s_curve":
        a = amplitude * d
        meta["amplitude"] = float(amplitude)
        s = length * t
        phase = 2.0 * math.pi * t
        pos = torch.stack((a * torch.sin(phase), zero, s), dim=-1)
        # tangent d(pos)/ds = (a 2pi/l cos, 0, 1): heading angle atan2(x, z)
        heading = torch.rad2deg(torch.atan2(a * 2.0 * math.pi / length * torch.cos(phase), torch.ones_like(t)))
        c2w = make_pose(_yaw_rotations(heading), pos)
    else:  # r_curve / l_curve
        sign = 1.0 if name == "r_curve" else -1.0
        radius = length / math.sin(math.radians(arc_deg))
        theta = torch.deg2rad(arc_deg * t)
        pos = torch.stack((sign * radius * (1.0 - torch.cos(theta)), zero, radius * torch.sin(theta)), dim=-1)
        c2w = make_pose(_yaw_rotations(sign * torch.rad2deg(theta)), pos)
        meta["arc_deg"] = float(arc_deg)

    heading0 = _heading_yaw(c2w[0])
    return Trajectory(_relative_to_first(c2w), fps=fps, yaw=yaw + heading0, name=name, meta=meta)


# --------------------------------------------------------------------------- custom trajectories


def load_matrix3d_trajectory(path: str | os.PathLike, *, fps: float = 16.0) -> Trajectory:
    """Matrix-3D's JSON list of 4x4 OpenCV world-to-camera matrices -> Trajectory.

    Poses are re-expressed relative to frame 0 (``c2w_i' = c2w_0^-1 c2w_i``) and the
    frame-0 heading becomes ``yaw``, as Matrix-3D does; no rescaling here
    (see :func:`load_trajectory`). Like Matrix-3D, this takes the panorama as seen by the
    frame-0 camera: a pitched or rolled frame 0 tilts the panorama's up axis with it.
    """
    data = _read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of 4x4 world-to-camera matrices (Matrix-3D format)")
    w2c = torch.from_numpy(_poses_array(data, str(path)))
    validate_poses(w2c, what=str(path))
    return _from_world_c2w(w2c_to_c2w(w2c), fps=fps, yaw=0.0, name=Path(path).name)


def _from_world_c2w(c2w: Tensor, *, fps: float, yaw: float, name: str, meta: dict | None = None) -> Trajectory:
    heading0 = _heading_yaw(c2w[0])
    return Trajectory(_relative_to_first(c2w), fps=fps, yaw=yaw + heading0, name=name, meta=dict(meta or {}))


def fit_to_panorama(traj: Trajectory, distance, reach: float = 0.5) -> Trajectory:
    """Rescale positions so the farthest camera reaches ``reach`` x the panorama distance
    in its direction (Matrix-3D's rule for custom paths, reach 0.5)."""
    pos = traj.positions  # [F, 3]
    norm = pos.norm(dim=-1)
    moving = norm > 1e-12 * max(1.0, float(norm.max()))
    if not moving.any():
        return traj
    directions = rotation_yaw(traj.yaw) @ (pos[moving] / norm[moving, None]).T  # into the panorama frame
    ratio = float((norm[moving] / distance_along(distance, directions.T)).max())
    factor = reach / ratio
    c2w = traj.c2w.clone()
    c2w[:, :3, 3] *= factor
    meta = dict(traj.meta, fit_reach=float(reach), fit_factor=factor)
    return replace(traj, c2w=c2w, meta=meta)


def check_trajectory_spec(spec: str) -> int | None:
    """Validate a trajectory option before anything runs: None for a preset, else the pose count
    of the JSON file as :func:`load_trajectory` reads it (parsed and validated, not yet fitted to
    a panorama); InputError listing the presets for anything else."""
    return None if str(spec) in PRESETS else len(load_trajectory(spec, rescale=False))


def load_trajectory(spec: str, distance=None, frames: int | None = None, *, rescale: bool | None = None,
                    yaw: float = 0.0, scale: float = 0.6, fps: float | None = None) -> Trajectory:
    """A preset name or a JSON file -> Trajectory with c2w[0] = I.

    frames: preset length (default 81); for files, must match the file's pose count if given.
    rescale: files only. True = Matrix-3D's rule (:func:`fit_to_panorama`), False = keep the
        poses' lengths (in the distance map's units). None = True for Matrix-3D lists,
        False for our ``opencv_c2w`` JSON.
    yaw, scale: presets only (motion azimuth in degrees, path length as a fraction of d).
    """
    spec = str(spec)
    if spec in PRESETS:
        return make_preset(spec, distance, 81 if frames is None else frames, yaw=yaw, scale=scale,
                           fps=16.0 if fps is None else fps)
    if not Path(spec).is_file():
        raise InputError(f"unknown trajectory {spec!r}: expected a preset ({', '.join(PRESETS)}) or an existing "
                         ".json file of poses (no preset has that name, and the file does not exist)")
    data = _read_json(spec)
    if isinstance(data, list):
        traj = load_matrix3d_trajectory(spec)
        rescale = True if rescale is None else rescale
    else:
        stored = Trajectory.from_dict(data, source=spec)
        traj = _from_world_c2w(stored.c2w, fps=stored.fps, yaw=stored.yaw, name=Path(spec).name, meta=stored.meta)
        rescale = False if rescale is None else rescale
    if fps is not None:
        traj = replace(traj, fps=float(fps))
    if frames is not None and int(frames) != len(traj):
        raise InputError(f"{spec} has {len(traj)} poses but {frames} frames were asked for; "
                         "leave the frame count unset to use the file's")
    if rescale:
        if distance is None:
            raise InputError("rescaling a custom trajectory needs the panorama's distance map")
        traj = fit_to_panorama(traj, distance)
    return traj


# --------------------------------------------------------------------------- paths through sparse views

THROUGH = "through"  # --trajectory of views2world: a smooth path through every view's pose


def _rotation_slerp_path(rotations: np.ndarray, times: np.ndarray, frames: int) -> np.ndarray:
    """A C2-smooth rotation path [F, 3, 3] through ``rotations`` [N, 3, 3] at ``times`` [N]."""
    from scipy.spatial.transform import Rotation, RotationSpline

    t = np.arange(frames, dtype=np.float64)
    rots = Rotation.from_matrix(rotations)
    if len(rotations) == 2:  # RotationSpline needs 3 keys for its cubic: slerp between two
        from scipy.spatial.transform import Slerp

        return Slerp(times, rots)(t).as_matrix()
    return RotationSpline(times, rots)(t).as_matrix()


def anchor_frames(positions: np.ndarray, frames: int, snap: int = 1) -> list[int]:
    """Frame index of each view on a path of ``frames`` frames: proportional to the distance
    travelled (equal spacing when the views stand in one place), first 0, last F - 1, strictly
    increasing, rounded to multiples of ``snap`` where that keeps them apart (the
    reconstruction's keyframe stride, so every view is a keyframe)."""
    n = len(positions)
    if frames < n:
        raise InputError(f"a path through {n} views needs at least {n} frames, got {frames}")
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    steps = steps if steps.sum() > 1e-9 else np.ones(n - 1)
    steps = np.maximum(steps, 0.05 * steps.sum())  # every segment gets some frames
    cum = np.concatenate([[0.0], np.cumsum(steps)]) / steps.sum() * (frames - 1)
    for step in (snap, 1):
        idx = [int(round(c / step) * step) for c in cum]
        idx[-1] = frames - 1
        if all(b > a for a, b in zip(idx, idx[1:])):
            return idx
    return [int(round(i * (frames - 1) / (n - 1))) for i in range(n)]  # (frames >= n keeps these distinct)


def through_path(view_c2w, frames: int = 81, *, snap: int = 1, fps: float = 16.0) -> Trajectory:
    """A smooth camera path that passes exactly through every view's pose, in view order.

    view_c2w: [N, 4, 4] (N >= 2) the views' c2w in view 0's frame (view 0 = identity).
    Positions: a natural cubic spline over the anchor frames (a line for two views);
    orientations: a rotation spline (slerp for two). At each anchor frame the pose IS the
    view's pose (copied, not interpolated), so the scaffold frame there is that panorama.
    ``meta["anchors"]`` lists the anchor frame of every view (first 0, last F - 1).
    """
    from scipy.interpolate import CubicSpline

    views = torch.as_tensor(view_c2w, dtype=torch.float64)
    validate_poses(views, what="view poses")
    if not torch.allclose(views[0], torch.eye(4, dtype=torch.float64), atol=1e-9):
        views = _relative_to_first(views)
    poses = views.numpy()
    anchors = anchor_frames(poses[:, :3, 3], int(frames), snap)
    t = np.arange(frames, dtype=np.float64)
    if len(poses) == 2:
        w = (t - anchors[0]) / (anchors[1] - anchors[0])
        pos = (1 - w)[:, None] * poses[0, :3, 3] + w[:, None] * poses[1, :3, 3]
    else:
        pos = CubicSpline(anchors, poses[:, :3, 3], bc_type="natural")(t)
    rot = _rotation_slerp_path(poses[:, :3, :3], np.array(anchors, dtype=np.float64), frames)
    c2w = make_pose(torch.from_numpy(rot), torch.from_numpy(pos))
    c2w[anchors] = views  # exactly the views' poses
    meta = {"preset": THROUGH, "anchors": anchors, "views": len(poses)}
    return Trajectory(c2w, fps=fps, yaw=0.0, name=THROUGH, meta=meta)


def smooth_path(key_c2w, key_frames, frames: int, *, sigma: float = 2.0, fps: float = 16.0) -> Trajectory:
    """A stabilised path from shaky keyframe poses: Gaussian-weighted local fits, pinned at the start.

    key_c2w: [K, 4, 4] keyframe poses in keyframe 0's frame (keyframe 0 = identity) at frame
    indices ``key_frames`` [K] (first 0). sigma: the smoothing width in keyframes. Positions
    are a local linear fit (no pull towards the middle at the ends), orientations a weighted
    rotation mean. The path's frame 0 is keyframe 0's pose exactly (world = its camera); the
    correction that makes it so fades out over the first ``sigma`` keyframe intervals.
    """
    from scipy.spatial.transform import Rotation

    keys = torch.as_tensor(key_c2w, dtype=torch.float64).numpy()
    times = np.asarray(key_frames, dtype=np.float64)
    if len(keys) < 2 or len(times) != len(keys) or times[0] != 0 or np.any(np.diff(times) <= 0) or times[-1] >= frames:
        raise InputError(f"smooth_path needs >= 2 keyframes at increasing frames starting at 0 and below {frames}, "
                         f"got {times.tolist()}")
    width = max(float(sigma), 1e-3) * float(np.mean(np.diff(times)))
    t = np.arange(frames, dtype=np.float64)
    weights = np.exp(-0.5 * ((t[:, None] - times[None]) / width) ** 2)  # [F, K]
    pos = np.empty((frames, 3))
    rots = Rotation.from_matrix(keys[:, :3, :3])
    rot = []
    for i in range(frames):
        w = weights[i]
        design = np.stack([np.ones_like(times), times - t[i]], axis=1) * np.sqrt(w)[:, None]
        coef = np.linalg.lstsq(design, keys[:, :3, 3] * np.sqrt(w)[:, None], rcond=None)[0]
        pos[i] = coef[0]
        rot.append(rots.mean(weights=w))
    smooth_rot = Rotation.concatenate(rot)
    fade = np.exp(-0.5 * (t / width) ** 2)  # 1 at frame 0
    pos += fade[:, None] * (keys[0, :3, 3] - pos[0])
    correction = Rotation.from_matrix(keys[0, :3, :3]) * smooth_rot[0].inv()
    smooth_rot = Rotation.from_rotvec(fade[:, None] * correction.as_rotvec()[None]) * smooth_rot
    c2w = make_pose(torch.from_numpy(smooth_rot.as_matrix()), torch.from_numpy(pos))
    c2w[0] = torch.from_numpy(keys[0])
    meta = {"preset": "smooth", "key_frames": [int(k) for k in times], "sigma": float(sigma)}
    return Trajectory(c2w, fps=fps, yaw=0.0, name="smooth", meta=meta)
