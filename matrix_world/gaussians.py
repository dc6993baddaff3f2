"""The 3D Gaussians container every stage shares, and the small rotation/SH maths it needs.

Conventions (DESIGN.md §3), the same as the INRIA 3DGS code and gsplat:

* ``means`` [N, 3] in the world frame (OpenCV: x right, y down, z forward; world = the first
  camera of the first segment). Axis conversion for engines happens only at export
  (``matrix_world.axes``).
* ``quats`` [N, 4] as (w, x, y, z); the rotation R of a Gaussian maps its local axes to
  world. Stored quaternions are unit length after ``validated()``; renderers normalise anyway.
* ``log_scales`` [N, 3]: natural log of the standard deviations along the local axes.
  Covariance ``Sigma = R diag(exp(log_scales))^2 R^T``.
* ``opacity_logits`` [N]: opacity = sigmoid(logit).
* ``sh_dc`` [N, 1, 3]: degree-0 SH coefficient per colour channel, as in 3DGS:
  colour = 0.5 + C0 * sh_dc with C0 = 0.28209479177387814 (view-independent part).
* ``sh_rest`` [N, K, 3] or None: higher SH bands, K = (degree + 1)^2 - 1 (3, 8 or 15; degree <= 3), in
  the real SH basis of 3DGS (``eval_sh_basis``).
* ``segment`` [N] int64 or None: which world segment (chained exploration) a Gaussian
  belongs to.

All tensors share one device and one floating dtype. The dataclass is a plain value: the
methods return new containers and never modify the tensors in place, so an optimiser may
keep its own leaf tensors and wrap them in a ``Gaussians`` for rendering.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from matrix_world.errors import InputError

SH_C0 = 0.28209479177387814
MIN_LOG_SCALE = math.log(1e-7)  # zero scales are clamped to this (a degenerate, needle-thin Gaussian)


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """Colour in [0, 1] [..., 3] -> SH DC coefficient [..., 3] (``(rgb - 0.5) / C0``)."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(sh_dc: Tensor) -> Tensor:
    """SH DC coefficient [..., 3] -> colour [..., 3] (``0.5 + C0 * dc``, not clamped)."""
    return sh_dc * SH_C0 + 0.5


def sh_degree_from_rest(num_rest: int) -> int:
    """Number K of higher-band coefficients -> SH degree (0 -> 0, 3 -> 1, 8 -> 2, 15 -> 3)."""
    for degree in range(4):
        if (degree + 1) ** 2 - 1 == num_rest:
            return degree
    raise InputError(f"{num_rest} higher-order SH coefficients per channel is not (degree+1)^2 - 1 for an SH degree 0..3")


# --------------------------------------------------------------------------- rotations


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Quaternions (w, x, y, z) [..., 4] (normalised here) -> rotation matrices [..., 3, 3]."""
    q = torch.nn.functional.normalize(quats, dim=-1)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack(
        (
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ),
        dim=-1,
    )
    return rot.reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(rot: Tensor) -> Tensor:
    """Proper rotation matrices [..., 3, 3] -> unit quaternions (w, x, y, z) [..., 4] with w >= 0.

    Shepperd's method: pick the largest of (w, x, y, z) to divide by, so it is stable for
    every rotation (including 180 degree turns).
    """
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = torch.stack(
        (
            torch.stack((1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]), -1),
            torch.stack((m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]), -1),
            torch.stack((m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]), -1),
            torch.stack((m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22), -1),
        ),
        dim=-2,
    )  # [..., 4 choices, 4]; row i is 4 * q_i * q
    diag = torch.stack((1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1)
    best = diag.argmax(-1, keepdim=True)  # [..., 1]
    q = torch.gather(candidates, -2, best[..., None].expand(*best.shape[:-1], 1, 4))[..., 0, :]
    q = torch.nn.functional.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of (w, x, y, z) quaternions [..., 4] (rotate by b, then by a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


# --------------------------------------------------------------------------- spherical harmonics

_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def eval_sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis of 3DGS (``eval_sh`` of the INRIA code) at unit directions [..., 3] -> [..., (degree+1)^2]."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [_SH_C2[0] * xy, _SH_C2[1] * yz, _SH_C2[2] * (2 * zz - xx - yy), _SH_C2[3] * xz, _SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            _SH_C3[0] * y * (3 * xx - yy),
            _SH_C3[1] * xy * z,
            _SH_C3[2] * y * (4 * zz - xx - yy),
            _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _SH_C3[4] * x * (4 * zz - xx - yy),
            _SH_C3[5] * z * (xx - yy),
            _SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def _fibonacci_sphere(count: int) -> Tensor:
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / count
    r = torch.sqrt(1.0 - z * z)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack((r * torch.cos(phi), r * torch.sin(phi), z), dim=-1)


def sh_rotation_matrix(ortho: Tensor, degree: int) -> Tensor:
    """Linear map [K, K] on the higher SH bands (K = (degree+1)^2 - 1) for an orthogonal 3x3 matrix.

    If the world is mapped by ``d' = Q d`` (Q a rotation or a reflection), a colour function
    c(d) = sum_k a_k Y_k(d) becomes c'(d') = c(Q^T d'); its coefficients are ``b = T a``. T is
    found exactly by least squares on 64 directions (each band is closed under O(3), so the
    fit has zero residual up to rounding).
    """
    dirs = _fibonacci_sphere(64)
    q = ortho.detach().to(torch.float64).cpu()
    basis_new = eval_sh_basis(degree, dirs)[:, 1:]  # Y(d')
    basis_old = eval_sh_basis(degree, dirs @ q)[:, 1:]  # Y(Q^T d'), rows of dirs are d'^T
    return torch.linalg.lstsq(basis_new, basis_old).solution  # [K, K]


# --------------------------------------------------------------------------- container


@dataclass
class Gaussians:
    """A set of N 3D Gaussians (see the module docstring for every convention)."""

    means: Tensor  # [N, 3]
    quats: Tensor  # [N, 4] (w, x, y, z)
    log_scales: Tensor  # [N, 3]
    opacity_logits: Tensor  # [N]
    sh_dc: Tensor  # [N, 1, 3]
    sh_rest: Tensor | None = None  # [N, K, 3]
    segment: Tensor | None = None  # [N] int64

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.dim() == 2 else -1
        expected = {
            "means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,), "sh_dc": (n, 1, 3),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise InputError(f"Gaussians.{name} must have shape {shape} (N={n}), got {got}")
        if self.sh_rest is not None:
            if self.sh_rest.dim() != 3 or self.sh_rest.shape[0] != n or self.sh_rest.shape[2] != 3:
                raise InputError(f"Gaussians.sh_rest must have shape [N, K, 3] (N={n}), got {tuple(self.sh_rest.shape)}")
            try:
                sh_degree_from_rest(self.sh_rest.shape[1])
            except InputError as exc:
                raise InputError(f"Gaussians.sh_rest: {exc}") from None
            if self.sh_rest.shape[1] == 0:
                self.sh_rest = None
        if self.segment is not None and tuple(self.segment.shape) != (n,):
            raise InputError(f"Gaussians.segment must have shape ({n},), got {tuple(self.segment.shape)}")
        for name in ("quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest"):
            value = getattr(self, name)
            if value is not None and (value.device != self.means.device or not value.is_floating_point()):
                raise InputError(f"Gaussians.{name} must be a floating tensor on {self.means.device}, got {value.dtype} on {value.device}")

    # ------------------------------------------------------------------ construction

    @classmethod
    def empty(cls, *, sh_degree: int = 0, device=None, dtype=torch.float32) -> Gaussians:
        """No Gaussians (N = 0)."""
        z = lambda *s: torch.zeros(*s, device=device, dtype=dtype)
        rest = z(0, (sh_degree + 1) ** 2 - 1, 3) if sh_degree > 0 else None
        return cls(z(0, 3), z(0, 4), z(0, 3), z(0), z(0, 1, 3), rest)

    @classmethod
    def from_values(
        cls,
        means: Tensor,  # [N, 3]
        rgb: Tensor,  # [N, 3] in [0, 1]
        scales: Tensor,  # [N, 3] or [N] (isotropic), linear standard deviations
        opacities: Tensor,  # [N] in (0, 1)
        quats: Tensor | None = None,  # [N, 4] (w, x, y, z); identity by default
        segment: Tensor | None = None,  # [N]
    ) -> Gaussians:
        """Build from activated values (linear scales, opacities in (0, 1), colours in [0, 1])."""
        n = means.shape[0]
        if scales.dim() == 1:
            scales = scales[:, None].expand(n, 3)
        if quats is None:
            quats = torch.zeros(n, 4, device=means.device, dtype=means.dtype)
            quats[:, 0] = 1.0
        eps = torch.finfo(means.dtype).eps
        opacities = opacities.clamp(eps, 1.0 - eps)
        return cls(
            means=means,
            quats=quats.to(means.dtype),
            log_scales=torch.log(scales.to(means.dtype)),
            opacity_logits=torch.logit(opacities.to(means.dtype)),
            sh_dc=rgb_to_sh_dc(rgb.to(means.dtype))[:, None, :],
            segment=segment,
        )

    # ------------------------------------------------------------------ views

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def sh_degree(self) -> int:
        return 0 if self.sh_rest is None else sh_degree_from_rest(self.sh_rest.shape[1])

    @property
    def scales(self) -> Tensor:
        """Standard deviations along the local axes [N, 3]."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        """Opacities in (0, 1) [N]."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def rgb(self) -> Tensor:
        """View-independent colour ``0.5 + C0 * dc`` clamped to [0, 1]: [N, 3]."""
        return sh_dc_to_rgb(self.sh_dc[:, 0, :]).clamp(0.0, 1.0)

    def sh_coeffs(self) -> Tensor:
        """All SH coefficients [N, (degree+1)^2, 3] (gsplat's ``colors`` with ``sh_degree``)."""
        return self.sh_dc if self.sh_rest is None else torch.cat((self.sh_dc, self.sh_rest), dim=1)

    def rotations(self) -> Tensor:
        """Rotation matrices [N, 3, 3] (local -> world)."""
        return quat_to_rotmat(self.quats)

    def covariances(self) -> Tensor:
        """World covariances ``R S^2 R^T`` [N, 3, 3]."""
        m = self.rotations() * self.scales[:, None, :]
        return m @ m.transpose(-1, -2)

    def _fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _map(self, fn) -> Gaussians:
        return Gaussians(**{k: (None if v is None else fn(v)) for k, v in self._fields().items()})

    # ------------------------------------------------------------------ device / copies

    def to(self, device=None, dtype: torch.dtype | None = None) -> Gaussians:
        """Move to a device and (optionally) cast the floating fields; ``segment`` stays int64."""
        return self._map(lambda v: v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None))

    def detach(self) -> Gaussians:
        return self._map(lambda v: v.detach())

    def clone(self) -> Gaussians:
        return self._map(lambda v: v.clone())

    # ------------------------------------------------------------------ selection

    def select(self, index: Tensor) -> Gaussians:
        """Subset by a boolean mask [N] or an index tensor [M] (order kept as given)."""
        index = index.to(self.device)
        if index.dtype == torch.bool and tuple(index.shape) != (len(self),):
            raise InputError(f"mask must have shape ({len(self)},), got {tuple(index.shape)}")
        return self._map(lambda v: v[index])

    def filter_opacity(self, min_opacity: float) -> Gaussians:
        """Keep Gaussians with opacity >= ``min_opacity``."""
        return self.select(self.opacities >= min_opacity)

    def filter_box(self, lower, upper) -> Gaussians:
        """Keep Gaussians whose mean lies in the axis-aligned box [lower, upper] (each [3])."""
        lo = torch.as_tensor(lower, device=self.device, dtype=self.dtype)
        hi = torch.as_tensor(upper, device=self.device, dtype=self.dtype)
        return self.select(((self.means >= lo) & (self.means <= hi)).all(dim=-1))

    def filter_distance(self, max_distance: float, center=(0.0, 0.0, 0.0), min_distance: float = 0.0) -> Gaussians:
        """Keep Gaussians whose mean is within [min_distance, max_distance] of ``center`` [3]."""
        c = torch.as_tensor(center, device=self.device, dtype=self.dtype)
        d = (self.means - c).norm(dim=-1)
        return self.select((d >= min_distance) & (d <= max_distance))

    def importance(self) -> Tensor:
        """Default importance score [N]: log(opacity x volume) = log sigmoid(logit) + sum(log_scales).

        Opacity x volume (the product of the three standard deviations) ranks big, opaque
        Gaussians first; small or transparent ones go first when pruning. Computed in the log
        domain so tiny or huge scales neither underflow nor overflow.
        """
        return torch.nn.functional.logsigmoid(self.opacity_logits) + self.log_scales.sum(dim=-1)

    def prune(self, budget: int, score: Tensor | None = None) -> Gaussians:
        """Keep the ``budget`` most important Gaussians (``score`` [N], higher = keep; default
        ``importance()``). The kept ones stay in their original order; ties keep lower indices."""
        if budget < 0:
            raise InputError(f"budget must be >= 0, got {budget}")
        if len(self) <= budget:
            return self
        score = self.importance() if score is None else score.to(self.device)
        if tuple(score.shape) != (len(self),):
            raise InputError(f"score must have shape ({len(self)},), got {tuple(score.shape)}")
        order = torch.sort(score.detach(), descending=True, stable=True).indices[:budget]
        return self.select(torch.sort(order).values)

    # ------------------------------------------------------------------ combination

    @staticmethod
    def concatenate(items: list[Gaussians], *, assign_segments: bool = False) -> Gaussians:
        """Concatenate sets in order. Higher SH bands are zero-padded to the largest degree.

        Segments: with ``assign_segments`` item i gets segment id i; otherwise existing ids are
        kept, and items without ids get -1 when any item has ids.
        """
        if not items:
            raise InputError("concatenate needs at least one Gaussians")
        degree = max(g.sh_degree for g in items)
        k = (degree + 1) ** 2 - 1
        ref = items[0]
        rests, segs = [], []
        for i, g in enumerate(items):
            g = g.to(ref.device, ref.dtype)
            rest = g.sh_rest if g.sh_rest is not None else torch.zeros(len(g), 0, 3, device=ref.device, dtype=ref.dtype)
            rests.append(torch.nn.functional.pad(rest, (0, 0, 0, k - rest.shape[1])))
            if assign_segments:
                segs.append(torch.full((len(g),), i, dtype=torch.int64, device=ref.device))
            else:
                segs.append(g.segment.to(ref.device) if g.segment is not None else torch.full((len(g),), -1, dtype=torch.int64, device=ref.device))
        cat = lambda name: torch.cat([getattr(g, name).to(ref.device, ref.dtype) for g in items])
        any_segment = assign_segments or any(g.segment is not None for g in items)
        return Gaussians(
            means=cat("means"), quats=cat("quats"), log_scales=cat("log_scales"), opacity_logits=cat("opacity_logits"),
            sh_dc=cat("sh_dc"), sh_rest=torch.cat(rests) if k > 0 else None,
            segment=torch.cat(segs) if any_segment else None,
        )

    # ------------------------------------------------------------------ geometry

    def transform(self, matrix: Tensor) -> Gaussians:
        """Apply a similarity ``x' = s Q x + t`` given as a 4x4 (or 3x4) matrix ``[sQ | t]``.

        Q must be orthogonal (a rotation, or a reflection with det -1); s > 0 uniform. Means
        are mapped, log-scales grow by log s, covariances become ``s^2 Q Sigma Q^T``, and the
        higher SH bands are rotated (``sh_rotation_matrix``). A reflection is not a rotation:
        the new rotation is ``R' = Q R F`` with F = diag(1, 1, -1), which is proper and gives
        the same covariance because F S^2 F = S^2.
        """
        m = torch.as_tensor(matrix, dtype=torch.float64)
        if tuple(m.shape) not in ((4, 4), (3, 4)):
            raise InputError(f"transform matrix must be 4x4 or 3x4, got {tuple(m.shape)}")
        a, t = m[:3, :3], m[:3, 3]
        det = torch.linalg.det(a)
        if not torch.isfinite(m).all() or det.abs() < 1e-12:
            raise InputError("transform matrix must be finite with an invertible 3x3 part")
        s = det.abs() ** (1.0 / 3.0)
        q = a / s
        if (q.T @ q - torch.eye(3, dtype=torch.float64)).abs().max() > 1e-5:
            raise InputError("transform must be a similarity (uniform scale x rotation/reflection); anisotropic scaling or shear cannot be applied to Gaussians exactly")
        reflect = bool(det < 0)
        dev, dt = self.device, self.dtype
        qd = q.to(dev, dt)
        means = self.means @ (s * q).to(dev, dt).T + t.to(dev, dt)
        rot = qd @ self.rotations()
        if reflect:
            rot = rot * torch.tensor([1.0, 1.0, -1.0], device=dev, dtype=dt)
        quats = rotmat_to_quat(rot)
        sh_rest = self.sh_rest
        if sh_rest is not None:
            tmat = sh_rotation_matrix(q, self.sh_degree).to(dev, dt)
            sh_rest = torch.einsum("jk,nkc->njc", tmat, sh_rest)
        return Gaussians(
            means=means, quats=quats, log_scales=self.log_scales + math.log(float(s)), opacity_logits=self.opacity_logits,
            sh_dc=self.sh_dc, sh_rest=sh_rest, segment=self.segment,
        )

    # ------------------------------------------------------------------ validation

    def validated(self, *, drop_invalid: bool = False, name: str = "Gaussians") -> Gaussians:
        """Check values and return a clean copy.

        * NaN/Inf in means, quats, opacity logits or SH, or NaN/+Inf in log-scales: InputError
          (or, with ``drop_invalid``, those Gaussians are dropped with a warning).
        * Zero scales (log-scale -inf, or below log(1e-7)): clamped to 1e-7 with a warning.
        * Zero-length quaternions: InputError (or dropped). Unnormalised quaternions (|q|
          off 1 by more than 1e-4): normalised with a warning. Normalised ones are returned
          with w >= 0 untouched otherwise.
        """
        if len(self) == 0:
            return self
        finite = torch.isfinite(self.means).all(-1) & torch.isfinite(self.quats).all(-1)
        finite &= torch.isfinite(self.opacity_logits) & torch.isfinite(self.sh_dc).all(-1).all(-1)
        finite &= ~torch.isnan(self.log_scales).any(-1) & ~(self.log_scales == math.inf).any(-1)
        if self.sh_rest is not None:
            finite &= torch.isfinite(self.sh_rest).all(-1).all(-1)
        qnorm = self.quats.norm(dim=-1)
        bad = ~finite | ~(qnorm > 1e-12)
        g = self
        if bad.any():
            count = int(bad.sum())
            if not drop_invalid:
                raise InputError(f"{name}: {count} of {len(self)} Gaussians have NaN/Inf attributes or zero-length quaternions; expected finite values (pass drop_invalid=True to drop them)")
            warnings.warn(f"{name}: dropped {count} of {len(self)} Gaussians with NaN/Inf attributes or zero-length quaternions", stacklevel=2)
            g = self.select(~bad)
            qnorm = qnorm[~bad]
        log_scales = g.log_scales
        tiny = log_scales < MIN_LOG_SCALE
        if tiny.any():
            warnings.warn(f"{name}: {int(tiny.any(-1).sum())} Gaussians have zero (or < 1e-7) scales; clamped to 1e-7", stacklevel=2)
            log_scales = log_scales.clamp(min=MIN_LOG_SCALE)
        quats = g.quats
        if ((qnorm - 1.0).abs() > 1e-4).any():
            warnings.warn(f"{name}: {int(((qnorm - 1.0).abs() > 1e-4).sum())} quaternions were not unit length; normalised", stacklevel=2)
            quats = quats / qnorm[:, None]
        return Gaussians(g.means, quats, log_scales, g.opacity_logits, g.sh_dc, g.sh_rest, g.segment)

    def __repr__(self) -> str:
        seg = "" if self.segment is None else f", segments={int(self.segment.unique().numel())}"
        return f"Gaussians(N={len(self)}, sh_degree={self.sh_degree}, device={self.device}, dtype={self.dtype}{seg})"
