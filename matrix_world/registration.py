"""Relative poses of sparse 360-degree panoramas: features on perspective cuts, one pose per panorama.

Conventions (DESIGN.md §3): OpenCV frames; a pose is a camera-to-world 4x4 ``c2w``; the
world is the first view's camera (view A). Distances are along each pixel's ray.

The method, once (:func:`register_views`):

1. **Features** (:func:`panorama_features`): each panorama is cut into six perspective
   views around the cube axes (FOV 100, so they overlap) and OpenCV's SIFT runs on each. A
   keypoint is kept only by the cut whose axis is nearest to its ray, so the cuts partition
   the sphere, and it becomes a unit **bearing vector in the panorama's frame**. That is the
   rig constraint: all cuts of one panorama share one pose (their rotations are known), so
   every keypoint of the panorama lives in one frame and one relative pose explains them all.
2. **Matching** (:func:`match_features`): nearest neighbours of all cuts pooled, Lowe's ratio
   test and a mutual check.
3. **Relative pose** (:func:`relative_pose`): the essential matrix ``E = [t]x R`` of the
   bearing pairs (``b^T E a = 0`` for ``X_b = R X_a + t``) by RANSAC over the linear
   eight-point solver, scored by the angle between each bearing and its epipolar plane
   (a spherical camera has no image plane, so no pixel error); the decomposition with most
   points in front of both cameras (positive distance along both rays, not ``z > 0``) wins;
   then a robust least-squares refinement of (R, t) on the inliers. A pure rotation (no
   parallax) is detected and returned with t = 0.
4. **Scale** from the distance maps: the inliers triangulated with a unit baseline give
   their distance along A's rays in baseline units; the median ratio to A's distance map is
   the baseline in A's units. B's own distance map is then expressed in A's units by the
   median ratio of the triangulated distance along B's rays to B's map (``distance_scale``;
   1 when both maps share units, e.g. both metric).
5. **Several views**: each later view is registered against every view already placed
   and attached to the one with the most inliers (poses composed, distances in A's units).

A pair that does not overlap enough (too few matches or consistent matches) raises
:class:`~matrix_world.errors.InputError`; the caller says what to do (``--poses``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from matrix_world.cameras import PerspectiveView, crop_perspective
from matrix_world.equirect import direction_to_pixel
from matrix_world.errors import InputError, require

CUT_AXES = np.array([[0, 0, 1], [1, 0, 0], [0, 0, -1], [-1, 0, 0], [0, -1, 0], [0, 1, 0]], dtype=np.float64)
CUT_ANGLES = ((0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0), (0.0, 90.0), (0.0, -90.0))  # (yaw, pitch)


@dataclass
class RegistrationConfig:
    """Knobs of the registration (defaults work for 256..2048-row panoramas)."""

    cut_fov: float = 100.0  # horizontal FOV of each of the six perspective cuts (degrees)
    cut_scale: float = 2.0  # cut size = cut_scale x the panorama's pixels over that FOV (SIFT likes detail)
    max_features: int = 6000  # per panorama
    contrast_threshold: float = 0.02  # SIFT (OpenCV default 0.04: synthetic and hazy scenes need more keypoints)
    ratio: float = 0.8  # Lowe's ratio test
    threshold_px: float = 2.0  # RANSAC inlier threshold, in panorama pixels (angle = px x pi / H)
    iterations: int = 20000  # RANSAC hypotheses (8-point samples: an all-inlier draw at 35% inliers is 1 in 4400)
    min_matches: int = 40  # fewer mutual matches: the views do not overlap enough
    min_inliers: int = 30  # fewer consistent matches: refused
    min_inlier_ratio: float = 0.25
    min_parallax_deg: float = 1.0  # matches used for the scale need at least this triangulation angle
    seed: int = 0  # RANSAC sampling


@dataclass
class Features:
    """Keypoints of one panorama: unit bearings in its camera frame and SIFT descriptors."""

    bearings: np.ndarray  # [N, 3] float64
    descriptors: np.ndarray  # [N, 128] float32


@dataclass
class PairPose:
    """B relative to A: ``X_b = R X_a + t`` (A's camera -> B's camera), t in A's distance units."""

    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3]
    distance_scale: float  # multiply B's distance map by this to get A's units
    matches: int
    inliers: int
    median_error_deg: float
    parallax_deg: float  # median triangulation angle of the inliers
    scale_points: int  # inliers used for the scale

    @property
    def c2w_b_in_a(self) -> np.ndarray:
        """B's camera -> A's camera [4, 4]."""
        out = np.eye(4)
        out[:3, :3] = self.rotation.T
        out[:3, 3] = -self.rotation.T @ self.translation
        return out


@dataclass
class ViewRegistration:
    """Poses of all views in view A's frame and each view's distance scale to A's units."""

    c2w: np.ndarray  # [N, 4, 4] float64, c2w[0] = I
    distance_scale: np.ndarray  # [N] float64, 1 for view A
    parent: list[int]  # the view each one was registered against (-1 for A)
    pairs: list[dict] = field(default_factory=list)  # per registered view: matches, inliers, errors


# --------------------------------------------------------------------------- 1. features


def panorama_features(rgb: np.ndarray, config: RegistrationConfig | None = None) -> Features:
    """SIFT keypoints of a panorama [H, 2H, 3] float32 in [0, 1] as bearings in its own frame."""
    cv2 = require("cv2", "pip install opencv-python-headless")
    config = config or RegistrationConfig()
    h = rgb.shape[0]
    size = int(round(config.cut_scale * h * config.cut_fov / 180.0))
    pano = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
    sift = cv2.SIFT_create(nfeatures=max(1, config.max_features // 6), contrastThreshold=config.contrast_threshold)
    bearings, descriptors = [], []
    for k, (yaw, pitch) in enumerate(CUT_ANGLES):
        view = PerspectiveView(yaw, pitch, config.cut_fov, size, size)
        image, K, rot = crop_perspective(pano, view)
        gray = cv2.cvtColor((image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY)
        points, desc = sift.detectAndCompute(gray, None)
        if desc is None or not points:
            continue
        xy = np.array([p.pt for p in points], dtype=np.float64) + 0.5  # OpenCV: pixel centres at integers
        K = K.numpy()
        rays = np.stack(((xy[:, 0] - K[0, 2]) / K[0, 0], (xy[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(xy))), axis=1)
        rays = rays @ rot.numpy().T  # crop camera -> panorama camera (the rig: one frame for all cuts)
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        own = np.argmax(rays @ CUT_AXES.T, axis=1) == k  # the cut nearest to the ray keeps it
        bearings.append(rays[own])
        descriptors.append(desc[own])
    if not bearings:
        return Features(np.zeros((0, 3)), np.zeros((0, 128), np.float32))
    return Features(np.concatenate(bearings), np.concatenate(descriptors).astype(np.float32))


# --------------------------------------------------------------------------- 2. matching


def match_features(a: Features, b: Features, ratio: float = 0.8) -> np.ndarray:
    """Mutual nearest-neighbour matches passing Lowe's ratio test: [M, 2] indices (into a, into b)."""
    cv2 = require("cv2", "pip install opencv-python-headless")
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return np.zeros((0, 2), np.int64)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    forward = matcher.knnMatch(a.descriptors, b.descriptors, k=2)
    backward = matcher.knnMatch(b.descriptors, a.descriptors, k=1)
    best_back = np.array([m[0].trainIdx if m else -1 for m in backward])
    pairs = [(m[0].queryIdx, m[0].trainIdx) for m in forward
             if len(m) == 2 and m[0].distance < ratio * m[1].distance and best_back[m[0].trainIdx] == m[0].queryIdx]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------- 3. relative pose


def skew(t: np.ndarray) -> np.ndarray:
    """[3] -> the cross-product matrix [3, 3]."""
    return np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])


def _eight_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Essential matrices from batches of bearing pairs: a, b [K, n >= 8, 3] -> E [K, 3, 3]."""
    rows = (b[..., :, None] * a[..., None, :]).reshape(*a.shape[:-1], 9)  # b^T E a = <outer(b, a), E>
    _, _, vt = np.linalg.svd(rows)
    e = vt[..., -1, :].reshape(-1, 3, 3)
    u, _, vt = np.linalg.svd(e)
    return u @ np.diag([1.0, 1.0, 0.0]) @ vt


def epipolar_angles(E: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (radians) between each bearing and its epipolar plane, the larger of the two views.

    E [..., 3, 3] (batched hypotheses allowed), a, b [N, 3] unit -> [..., N].
    """
    ea = np.einsum("...ij,nj->...ni", E, a)  # normal of the epipolar plane in B
    etb = np.einsum("...ji,nj->...ni", E, b)  # ... and in A
    num = np.abs(np.einsum("nj,...nj->...n", b, ea))
    sin_b = num / np.maximum(np.linalg.norm(ea, axis=-1), 1e-12)
    sin_a = num / np.maximum(np.linalg.norm(etb, axis=-1), 1e-12)
    return np.arcsin(np.clip(np.maximum(sin_a, sin_b), 0.0, 1.0))


def triangulate(rotation: np.ndarray, translation: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint triangulation of bearing pairs for ``X_b = R X_a + t``: distances along a and along b [N]."""
    u = a @ rotation.T  # A's rays in B's frame
    uu, vv, uv = (u * u).sum(1), (b * b).sum(1), (u * b).sum(1)
    ut, vt = u @ translation, b @ translation
    det = np.maximum(uu * vv - uv * uv, 1e-12)
    lam_a = (-ut * vv + uv * vt) / det  # minimise |lam_a u + t - lam_b v|
    lam_b = (uu * vt - uv * ut) / det
    return lam_a, lam_b


def _decompose(E: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (R, t) of E with most points at positive distance along both rays."""
    u, _, vt = np.linalg.svd(E)
    if np.linalg.det(u) < 0:
        u = -u
    if np.linalg.det(vt) < 0:
        vt = -vt
    w = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    best, best_count = (np.eye(3), u[:, 2]), -1
    for rot in (u @ w @ vt, u @ w.T @ vt):
        for t in (u[:, 2], -u[:, 2]):
            lam_a, lam_b = triangulate(rot, t, a, b)
            count = int(((lam_a > 0) & (lam_b > 0)).sum())
            if count > best_count:
                best, best_count = (rot, t), count
    return best


def _refine(rotation: np.ndarray, translation: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Robust least squares of the epipolar angles over (rotation vector, unit translation)."""
    from scipy.optimize import least_squares
    from scipy.spatial.transform import Rotation

    def unpack(x):
        t = x[3:]
        return Rotation.from_rotvec(x[:3]).as_matrix(), t / max(np.linalg.norm(t), 1e-12)

    def residuals(x):
        rot, t = unpack(x)
        return epipolar_angles(skew(t) @ rot, a, b)

    x0 = np.concatenate([Rotation.from_matrix(rotation).as_rotvec(), translation])
    fit = least_squares(residuals, x0, loss="soft_l1", f_scale=scale, max_nfev=200)
    return unpack(fit.x)


def relative_pose(a: np.ndarray, b: np.ndarray, threshold: float, config: RegistrationConfig | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R [3, 3], unit t [3] or 0, inliers [N] bool) of matched bearings a, b [N, 3] (see the module docstring).

    threshold: inlier angle in radians. Raises InputError with fewer than 8 pairs.
    """
    config = config or RegistrationConfig()
    n = len(a)
    if n < 8:
        raise InputError(f"{n} matched features; at least 8 are needed for a relative pose")
    rng = np.random.default_rng(config.seed)
    sample = np.argsort(rng.random((config.iterations, n)), axis=1)[:, :8]
    hypotheses = _eight_point(a[sample], b[sample])  # [K, 3, 3]
    counts = np.zeros(len(hypotheses), np.int64)
    for start in range(0, len(hypotheses), 256):  # bounded memory: 256 x N angles at a time
        counts[start:start + 256] = (epipolar_angles(hypotheses[start:start + 256], a, b) < threshold).sum(-1)
    inliers = epipolar_angles(hypotheses[int(np.argmax(counts))], a, b) < threshold
    rotation, translation = _decompose(_eight_point(a[inliers][None], b[inliers][None])[0], a[inliers], b[inliers])
    for _ in range(2):
        rotation, translation = _refine(rotation, translation, a[inliers], b[inliers], threshold)
        inliers = epipolar_angles(skew(translation) @ rotation, a, b) < threshold
    # no parallax: a rotation alone explains the matches (E is then undefined)
    rot_only = _kabsch(a[inliers], b[inliers])
    turned = np.arccos(np.clip((a @ rot_only.T * b).sum(1), -1.0, 1.0))
    if (turned[inliers] < threshold).mean() > 0.9:
        return rot_only, np.zeros(3), turned < threshold
    return rotation, translation, inliers


def _kabsch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation R minimising sum |R a - b|^2 over unit vectors [N, 3]."""
    u, _, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


# --------------------------------------------------------------------------- 4. scale


def sample_distance(distance: np.ndarray, bearings: np.ndarray) -> np.ndarray:
    """Nearest-pixel distance of a panorama map [H, 2H] along bearings [N, 3] -> [N] (inf = sky)."""
    h, w = distance.shape
    px, py = direction_to_pixel(torch.from_numpy(bearings), h, w)
    col = np.clip(np.floor(px.numpy()).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor(py.numpy()).astype(np.int64), 0, h - 1)
    return distance[row, col]


def register_pair(feat_a: Features, feat_b: Features, distance_a: np.ndarray, distance_b: np.ndarray,
                  height: int, config: RegistrationConfig | None = None, names: tuple[str, str] = ("A", "B")) -> PairPose:
    """B's pose relative to A, with t in A's distance units and B's distance scale (module docstring)."""
    config = config or RegistrationConfig()
    pairs = match_features(feat_a, feat_b, config.ratio)
    hint = (f"views {names[0]} and {names[1]} cannot be registered: {{}}; they may not overlap enough "
            "(give the poses with --poses FILE.json)")
    if len(pairs) < config.min_matches:
        raise InputError(hint.format(f"{len(pairs)} feature matches, at least {config.min_matches} needed"))
    a, b = feat_a.bearings[pairs[:, 0]], feat_b.bearings[pairs[:, 1]]
    threshold = config.threshold_px * math.pi / height
    rotation, t_unit, inliers = relative_pose(a, b, threshold, config)
    count = int(inliers.sum())
    if count < max(config.min_inliers, config.min_inlier_ratio * len(pairs)):
        raise InputError(hint.format(f"only {count} of {len(pairs)} matches agree on one relative pose"))
    a, b = a[inliers], b[inliers]
    d_a, d_b = sample_distance(distance_a, a), sample_distance(distance_b, b)
    errors = np.degrees(epipolar_angles(skew(t_unit) @ rotation, a, b)) if t_unit.any() else \
        np.degrees(np.arccos(np.clip((a @ rotation.T * b).sum(1), -1, 1)))
    if not t_unit.any():  # same place: only the distance maps' ratio is left to find
        good = np.isfinite(d_a) & np.isfinite(d_b)
        if not good.any():
            raise InputError(hint.format("the views turn about one point and their matches all lie on sky"))
        return PairPose(rotation, np.zeros(3), float(np.median(d_a[good] / d_b[good])), len(pairs), count,
                        float(np.median(errors)), 0.0, int(good.sum()))
    lam_a, lam_b = triangulate(rotation, t_unit, a, b)
    parallax = np.degrees(np.arccos(np.clip((a @ rotation.T * b).sum(1), -1.0, 1.0)))
    good = (lam_a > 0) & (lam_b > 0) & (parallax > config.min_parallax_deg) & np.isfinite(d_a) & np.isfinite(d_b)
    if good.sum() < 8:
        raise InputError(hint.format(f"only {int(good.sum())} consistent matches with enough parallax and a finite "
                                     "distance to fix the scale"))
    # the baseline in A's units: A's points (distance map) must project onto B's bearings
    baseline = fit_scale(rotation @ (a[good] * d_a[good, None]).T, t_unit, b[good], threshold)
    # B's distance map in A's units: B's points must project onto A's bearings
    inv_t = -rotation.T @ (t_unit * baseline)
    scale_b = fit_scale(rotation.T @ (b[good] * d_b[good, None]).T, inv_t, a[good], threshold, offset_scaled=False)
    return PairPose(rotation, t_unit * baseline, scale_b, len(pairs), count, float(np.median(errors)),
                    float(np.median(parallax)), int(good.sum()))


def fit_scale(points: np.ndarray, direction: np.ndarray, bearings: np.ndarray, threshold: float, *,
              offset_scaled: bool = True) -> float:
    """The scale s > 0 that best aligns points [3, N] with bearings [N, 3] (robust, in angle).

    offset_scaled: the ray of point i is ``points_i + s * direction`` (fit a baseline);
    otherwise ``s * points_i + direction`` (fit a distance map's scale). The cost is the
    truncated squared angle between each ray and its bearing (a far point whose angle
    hardly depends on s weighs little), minimised over a log grid, then a finer one.
    """
    def cost(s: np.ndarray) -> np.ndarray:  # s [S] -> [S]
        if offset_scaled:
            rays = points.T[None] + s[:, None, None] * direction
        else:
            rays = s[:, None, None] * points.T[None] + direction
        rays = rays / np.maximum(np.linalg.norm(rays, axis=-1, keepdims=True), 1e-12)
        angle = np.arccos(np.clip((rays * bearings[None]).sum(-1), -1.0, 1.0))
        return np.minimum(angle, 3.0 * threshold).__pow__(2).sum(-1)

    if offset_scaled:
        centre = float(np.median(np.linalg.norm(points, axis=0)))  # a first guess: the points' typical distance
    else:
        centre = 1.0
    grid = centre * np.geomspace(1e-3, 1e3, 241)
    best = grid[int(np.argmin(cost(grid)))]
    for _ in range(3):
        grid = best * np.geomspace(0.9, 1.0 / 0.9, 81)
        best = grid[int(np.argmin(cost(grid)))]
        grid = best * np.geomspace(0.99, 1.0 / 0.99, 81)
    return float(grid[int(np.argmin(cost(grid)))])


# --------------------------------------------------------------------------- 5. several views


def register_views(rgbs: list[np.ndarray], distances: list[np.ndarray], config: RegistrationConfig | None = None,
                   names: list[str] | None = None, window: int | None = None) -> ViewRegistration:
    """Poses of panoramas [H, 2H, 3] (one size) in the first one's frame, with their distances
    [H, 2H] (+inf = sky) scaled to its units; each view attaches to the placed view it matches
    best among all earlier ones (or the ``window`` just before it: keyframes of a video)."""
    config = config or RegistrationConfig()
    names = names or [chr(ord("A") + i) if i < 26 else str(i) for i in range(len(rgbs))]
    height = rgbs[0].shape[0]
    feats = [panorama_features(rgb, config) for rgb in rgbs]
    c2w = [np.eye(4)]
    scales = [1.0]
    parent, pairs = [-1], []
    for i in range(1, len(rgbs)):
        best: tuple[int, PairPose] | None = None
        failures = []
        for j in range(0 if window is None else max(0, i - window), i):
            try:
                pose = register_pair(feats[j], feats[i], distances[j] * scales[j], distances[i], height, config,
                                     names=(names[j], names[i]))
            except InputError as exc:
                failures.append(exc)
                continue
            if best is None or pose.inliers > best[1].inliers:
                best = (j, pose)
        if best is None:
            raise failures[-1] if len(failures) == 1 else InputError(
                f"view {names[i]} cannot be registered to any earlier view ({'; '.join(str(f).split(': ')[1] for f in failures[:3])}); "
                "the views may not overlap enough (give the poses with --poses FILE.json)")
        j, pose = best
        c2w.append(c2w[j] @ pose.c2w_b_in_a)
        scales.append(pose.distance_scale)
        parent.append(j)
        pairs.append({"view": names[i], "to": names[j], "matches": pose.matches, "inliers": pose.inliers,
                      "median_error_deg": round(pose.median_error_deg, 4), "parallax_deg": round(pose.parallax_deg, 3),
                      "scale_points": pose.scale_points, "distance_scale": round(pose.distance_scale, 5),
                      "baseline": round(float(np.linalg.norm(pose.translation)), 5)})
    return ViewRegistration(np.stack(c2w), np.array(scales), parent, pairs)
