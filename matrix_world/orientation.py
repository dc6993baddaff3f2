"""Camera orientation of every frame of a perspective video (Argus' view-based frame alignment).

The camera is taken to turn about its centre (or to look at far content): two frames then see the
same directions, and matched pixels x_i, x_j satisfy b_j = R_j^T R_i b_i for their bearings
b = K^-1 x / |K^-1 x|. So, per pair of frames:

1. SIFT features (OpenCV), matched with Lowe's ratio test, on grey frames shrunk to ``max_side``;
2. outliers removed by a RANSAC homography (a pure rotation is the homography K R K^-1, so this
   test does not depend on the focal length);
3. the rotation fitted to the inlier bearings in closed form (Kabsch / orthogonal Procrustes).

Frames are chained through keyframes (a frame is fitted to the current keyframe as long as at least
``min_inliers`` matches survive, else the previous frame becomes the keyframe), which keeps the drift
of frame-to-frame chaining down. Rotations are OpenCV camera-to-world (x right, y down, z forward),
world = frame 0's camera: ``rotations[0] = I`` (DESIGN §3).

Focal length (when the field of view is not given): the rotation fit leaves a reprojection residual
that is smallest at the true focal length (a wrong focal length bends the bearings so that no
rotation maps one frame's onto the other's); the horizontal FOV is searched on a grid and refined by
golden-section search, minimising the median residual over all pairs. It needs rotation between the
frames (a few degrees or more): with almost none the residual is flat and the FOV is not
determined (``info["fov_sharpness"]`` is then close to 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from matrix_world.errors import InputError

NO_FEATURES = ("orientation cannot be estimated from this video{where}: {why}; pass the camera orientations "
               "with --poses FILE.json (our trajectory JSON, one c2w pose per frame)")


@dataclass
class OrientationConfig:
    """How orientations are estimated (see the module docstring)."""

    max_side: int = 480  # frames are shrunk so their longer side is at most this for the features
    features: int = 2000  # SIFT features per frame
    ratio: float = 0.75  # Lowe's ratio test
    ransac_px: float = 1.5  # RANSAC threshold, pixels of the shrunk frame
    min_inliers: int = 24  # fewer inliers to the keyframe: the previous frame becomes the keyframe
    fov_range: tuple[float, float] = (20.0, 140.0)  # horizontal FOV search range, degrees
    fov_grid: int = 25


@dataclass
class Orientation:
    """rotations: Tensor  # [F, 3, 3] float64 camera-to-world, rotations[0] = I
    fov: horizontal field of view in degrees (given or estimated); info: what was done."""

    rotations: Tensor
    fov: float
    fov_estimated: bool
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- geometry


def kabsch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation R [3, 3] minimising sum |a_n - R b_n|^2 for unit vectors a, b [N, 3]."""
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag([1.0, 1.0, d]) @ vt


def bearings(points: np.ndarray, focal: float, width: float, height: float) -> np.ndarray:
    """Pixel coordinates [N, 2] (pixel-centre convention) -> unit camera rays [N, 3]."""
    rays = np.concatenate([(points - [width / 2.0, height / 2.0]) / focal, np.ones((len(points), 1))], axis=1)
    return rays / np.linalg.norm(rays, axis=1, keepdims=True)


def focal_from_fov(fov_deg: float, width: float) -> float:
    return 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)


def fit_rotation(pts_a: np.ndarray, pts_b: np.ndarray, focal: float, width: float, height: float) -> tuple[np.ndarray, float]:
    """R with b_a = R b_b (frame b's camera -> frame a's camera) and its RMS reprojection residual in pixels."""
    ba, bb = bearings(pts_a, focal, width, height), bearings(pts_b, focal, width, height)
    rot = kabsch(ba, bb)
    proj = bb @ rot.T
    z = np.maximum(proj[:, 2], 1e-6)
    uv = proj[:, :2] / z[:, None] * focal + [width / 2.0, height / 2.0]
    return rot, float(np.sqrt(np.mean(np.sum((uv - pts_a) ** 2, axis=1))))


def rotation_angle_deg(a: Tensor, b: Tensor) -> Tensor:
    """Angle in degrees of a^T b for rotations [..., 3, 3]."""
    rel = a.transpose(-1, -2).to(torch.float64) @ b.to(torch.float64)
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


# --------------------------------------------------------------------------- features


class _Features:
    """SIFT keypoints and descriptors of every frame, and RANSAC-filtered matches between two frames."""

    def __init__(self, frames: np.ndarray, config: OrientationConfig):
        import cv2

        f, h, w = frames.shape[:3]
        self.scale = min(1.0, config.max_side / max(h, w))
        self.width, self.height = w * self.scale, h * self.scale
        self.config = config
        sift = cv2.SIFT_create(nfeatures=config.features)  # type: ignore[attr-defined]  # in OpenCV >= 4.4, not in its stubs
        self.points, self.descriptors = [], []
        size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        for frame in frames:
            grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
            if self.scale < 1.0:
                grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
            keypoints, desc = sift.detectAndCompute(grey, None)
            # OpenCV keypoints are in pixel-index coordinates (centre of pixel j at j): +0.5 for ours
            self.points.append(np.array([k.pt for k in keypoints], np.float64).reshape(-1, 2) + 0.5)
            self.descriptors.append(desc)
        self.matcher = cv2.BFMatcher(cv2.NORM_L2)

    def match(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Inlier matches (points_i [N, 2], points_j [N, 2]) in the shrunk frames' pixels."""
        import cv2

        empty = np.zeros((0, 2)), np.zeros((0, 2))
        di, dj = self.descriptors[i], self.descriptors[j]
        if di is None or dj is None or len(di) < 8 or len(dj) < 8:
            return empty
        pairs = self.matcher.knnMatch(di, dj, k=2)
        good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < self.config.ratio * m[1].distance]
        if len(good) < 8:
            return empty
        pi = self.points[i][[m.queryIdx for m in good]]
        pj = self.points[j][[m.trainIdx for m in good]]
        _, inliers = cv2.findHomography(pj, pi, cv2.RANSAC, self.config.ransac_px, maxIters=4000, confidence=0.999)
        if inliers is None:
            return empty
        keep = inliers.ravel().astype(bool)
        return pi[keep], pj[keep]


# --------------------------------------------------------------------------- estimation


def estimate_orientations(frames: np.ndarray, fov: float | None = None,
                          config: OrientationConfig | None = None) -> Orientation:
    """Rotation of every frame relative to frame 0, and the FOV when not given.

    frames: np.ndarray  # [F, H, W, 3] uint8 RGB, F >= 2
    fov: horizontal field of view in degrees, or None to estimate it
    InputError (one line, naming --poses) when the frames have no usable features or a frame shares
    too few matches with the one before it.
    """
    config = config or OrientationConfig()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
        raise InputError(f"orientation estimation needs at least 2 RGB frames [F, H, W, 3], got {frames.shape}")
    feats = _Features(frames, config)
    counts = [len(p) for p in feats.points]
    if min(counts) < 8:
        i = int(np.argmin(counts))
        raise InputError(NO_FEATURES.format(where=f" (frame {i})", why=f"only {counts[i]} image features found "
                                            "(uniform or featureless frames)"))
    # 1. pairs: every frame fitted to its keyframe
    pairs: list[tuple[int, int, np.ndarray, np.ndarray]] = []
    key = 0
    for i in range(1, len(frames)):
        pa, pb = feats.match(key, i)
        if len(pa) < config.min_inliers and key != i - 1:
            key = i - 1
            pa, pb = feats.match(key, i)
        if len(pa) < config.min_inliers:
            raise InputError(NO_FEATURES.format(where=f" (frames {key} and {i})",
                                                why=f"only {len(pa)} consistent feature matches (need {config.min_inliers})"))
        pairs.append((key, i, pa, pb))
    # 2. the focal length
    w, h = feats.width, feats.height
    info: dict = {"pairs": [(a, b, len(pa)) for a, b, pa, _ in pairs], "features_per_frame": int(np.median(counts))}
    if fov is None:
        fov, search = _search_fov(pairs, w, h, config)
        info.update(search)
    focal = focal_from_fov(float(fov), w)
    # 3. rotations along the keyframe chain
    rotations = [np.eye(3)]
    residuals = []
    for a, b, pa, pb in pairs:
        rel, res = fit_rotation(pa, pb, focal, w, h)  # b_a = rel b_b: frame b's camera -> frame a's camera
        rotations.append(rotations[a] @ rel)
        residuals.append(res)
    rot = torch.from_numpy(np.stack(rotations))
    u, _, vt = torch.linalg.svd(rot)  # re-orthonormalise the products
    rot = u @ vt
    rot[0] = torch.eye(3, dtype=torch.float64)
    info.update(residual_px_median=float(np.median(residuals)), residual_px_max=float(np.max(residuals)),
                keyframes=sorted({a for a, _, _, _ in pairs}), analysis_size=[round(w), round(h)])
    return Orientation(rot, float(fov), "fov_grid" in info, info)


def _search_fov(pairs, width: float, height: float, config: OrientationConfig) -> tuple[float, dict]:
    """The horizontal FOV minimising the median rotation-fit residual over the pairs."""
    lo, hi = (math.log(math.tan(math.radians(v) / 2.0)) for v in config.fov_range)

    def cost(log_t: float) -> float:
        focal = 0.5 * width / math.exp(log_t)
        return float(np.median([fit_rotation(pa, pb, focal, width, height)[1] for _, _, pa, pb in pairs]))

    grid = np.linspace(lo, hi, config.fov_grid)
    costs = [cost(g) for g in grid]
    k = int(np.argmin(costs))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = cost(c), cost(d)
    for _ in range(30):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = cost(c)
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = cost(d)
    best = (a + b) / 2.0
    fov = math.degrees(2.0 * math.atan(math.exp(best)))
    best_cost = cost(best)
    return fov, {"fov_grid": [round(math.degrees(2.0 * math.atan(math.exp(g))), 2) for g in grid],
                 "fov_grid_residual_px": [round(c, 4) for c in costs], "fov_residual_px": best_cost,
                 "fov_sharpness": float(min(cost(best - 0.15), cost(best + 0.15)) / max(best_cost, 1e-9))}


# --------------------------------------------------------------------------- paths of orientations


def smooth_rotations(rotations: Tensor, sigma: float) -> Tensor:
    """Gaussian-smoothed orientation path: rotations [F, 3, 3] -> [F, 3, 3] (sigma in frames).

    Each output is the normalised, sign-aligned weighted mean of the quaternions within 3 sigma
    (a good approximation of the rotation mean for the small spreads of a hand-held path).
    """
    from matrix_world.gaussians import quat_to_rotmat, rotmat_to_quat

    if sigma <= 0:
        return rotations.clone()
    quats = rotmat_to_quat(rotations.to(torch.float64))  # [F, 4] wxyz
    f = len(quats)
    radius = max(1, int(math.ceil(3.0 * sigma)))
    out = torch.empty_like(quats)
    for i in range(f):
        idx = torch.arange(max(0, i - radius), min(f, i + radius + 1))
        q = quats[idx]
        q = torch.where(((q * quats[i]).sum(-1) < 0)[:, None], -q, q)
        wts = torch.exp(-0.5 * ((idx - i).to(torch.float64) / sigma) ** 2)
        mean = (wts[:, None] * q).sum(0)
        out[i] = mean / mean.norm()
    return quat_to_rotmat(out)
