"""Splat files: standard 3DGS .ply, Niantic .spz, antimatter15 .splat (read and write).

``save_splats(path, gaussians, axes=...)`` / ``load_splats(path)`` pick the format from the
extension. Every reader returns a validated ``Gaussians`` in our frame (OpenCV, DESIGN §3);
malformed files raise ``InputError`` with one line saying what is wrong. Readers report
what they converted or ignored as ``SplatNote`` warnings (the converter prints them).

.ply (INRIA 3DGS layout, what SuperSplat, three.js/Spark, Unity/Unreal plug-ins and
nerfstudio read): binary little-endian, one ``vertex`` element with float properties
exactly ``x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3K-1} opacity scale_0
scale_1 scale_2 rot_0 rot_1 rot_2 rot_3``: normals zero, opacity as a logit, scales as
natural logs, rotation as (w, x, y, z), f_rest channel-major (all K red coefficients, then
green, then blue). Written values are the float32 tensors bit for bit.

The reader also accepts other tools' files: unknown properties (e.g. ``red green blue``)
are ignored with a note, any numeric property type is read as float32. Matrix-3D's two
non-standard variants are converted:

* ``filter_3D`` (its optimisation backend, Mip-Splatting's 3D smoothing filter stored apart
  from the Gaussians; standard viewers ignore it and show aliasing). Fused as Mip-Splatting
  does at render time: ``s' = sqrt(s^2 + f^2)`` per axis and
  ``o' = sigmoid(o) * sqrt(prod(s^2) / prod(s^2 + f^2))``; stored back as log(s') and logit(o').
* opacity stored in [0, 1] instead of a logit (its feed-forward LRM). ``opacity="auto"``
  treats the column as linear when every value lies in [0, 1] AND the file either has the
  LRM's extra uint8 ``red green blue`` properties or at least 100 Gaussians (a trained 3DGS
  scene essentially never has all logits in [0, 1], i.e. all opacities in [0.5, 0.73]);
  ``opacity="logit"`` / ``"linear"`` force the interpretation. Linear values are clamped to
  [1e-6, 1 - 1e-6] before the logit.

.spz (Niantic, implemented from its public description): gzip of a 16-byte header (magic
0x5053474e, version, N, SH degree, fractional bits, flags, reserved) then per-attribute
arrays: positions as 24-bit signed fixed point, alphas uint8 (sigmoid * 255), colours uint8
(dc * 0.15 * 255 + 127.5), scales uint8 ((log s + 10) * 16), rotations (v2: x y z of the
w>=0 unit quaternion as q * 127.5 + 127.5; v3: "smallest three", 4 bytes), SH uint8
(x * 128 + 128, degree-1 coefficients kept to 5 bits, higher ones to 4, colour channel
fastest). The SPZ spec stores RUB axes (x right, y up, z back); ``spz_axes="rub"`` (the
default) converts from our frame on write and back on read, so ``read_spz(write_spz(g)) ~= g``.
``spz_axes="rdf"`` stores our frame as is (x right, y down, z forward, like the .ply), for
readers that take .spz raw (see README, "Exports": Spark, the Unity plug-in, splat-transform
before 2.1); the file does not record which, so the reader must be told the same. We write version 2 with 12 fractional bits (fewer if the scene is too large for
24 bits); we read versions 2 and 3 without extension records. Quantisation steps (the
round-trip tolerances): position 2^-12 (0.24 mm at metric scale), log-scale 1/16, opacity
1/255, DC colour 1/(0.15*255) ~= 0.026, quaternion components ~1/127.5, SH 1/16 (deg 1) and
1/8 (higher).

.glb (glTF 2.0 with the Khronos KHR_gaussian_splatting extension): :mod:`matrix_world.splat_gltf`.

.splat (antimatter15's web viewer): 32 bytes per Gaussian, no header: position 3 x float32,
linear scale 3 x float32, RGBA uint8 (colour = clamp(0.5 + C0 * dc), alpha = opacity),
rotation 4 x uint8 (w, x, y, z) as q * 128 + 128. No higher SH bands (dropped with a note).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from matrix_world.axes import get_preset, to_axes
from matrix_world.errors import InputError, SplatNote
from matrix_world.gaussians import SH_C0, Gaussians, sh_degree_from_rest
from matrix_world.io import atomic_write
from matrix_world.splat_gltf import read_glb, write_glb

FORMATS = (".ply", ".spz", ".splat", ".glb")
SPZ_AXES = ("rub", "rdf")  # how a .spz stores its axes: the spec's RUB (converted) or our RDF frame raw
SPZ_MAGIC = 0x5053474E
SPZ_COLOR_SCALE = 0.15
LINEAR_OPACITY_EPS = 1e-6


OPACITY_MODES = ("auto", "logit", "linear")  # how a .ply's opacity column is read (see the module docstring)

def _note(message: str) -> None:
    warnings.warn(message, SplatNote, stacklevel=3)


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{path}: unknown splat format {suffix!r}; expected one of {', '.join(FORMATS)}")
    return suffix


def _check_exportable(gaussians: Gaussians, path: Path) -> Gaussians:
    if len(gaussians) == 0:
        raise InputError(f"refusing to write {path}: there are no Gaussians (empty set)")
    return gaussians.detach().to("cpu").validated(name=str(path))


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy()


# --------------------------------------------------------------------------- PLY


def ply_property_names(sh_degree: int) -> list[str]:
    """The standard INRIA property names, in order, for an SH degree."""
    k = (sh_degree + 1) ** 2 - 1
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * k)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def ply_header(count: int, sh_degree: int) -> str:
    """The exact header text the writer produces (what INRIA's plyfile-based writer produces)."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {count}"]
    lines += [f"property float {name}" for name in ply_property_names(sh_degree)]
    return "\n".join(lines + ["end_header"]) + "\n"


def write_ply(path: str | os.PathLike, gaussians: Gaussians, *, axes: str = "opencv") -> None:
    """Write the standard 3DGS .ply (binary little-endian, float32), atomically."""
    path = Path(path)
    g = to_axes(_check_exportable(gaussians, path), axes)
    n, k = len(g), (0 if g.sh_rest is None else g.sh_rest.shape[1])
    columns = [
        _f32(g.means),
        np.zeros((n, 3), np.float32),
        _f32(g.sh_dc[:, 0, :]),
        _f32(g.sh_rest.transpose(1, 2).reshape(n, 3 * k)) if k and g.sh_rest is not None else np.zeros((n, 0), np.float32),
        _f32(g.opacity_logits[:, None]),
        _f32(g.log_scales),
        _f32(g.quats),
    ]
    data = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype="<f4")
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(ply_header(n, g.sh_degree).encode("ascii"))
        f.write(data.tobytes())


_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
              "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def _check_ply_counts(path: Path) -> None:
    """A binary PLY's header may not claim more rows than the file's bytes can hold (an absurd
    ``element vertex`` count would make the reader allocate, or overflow, before it reads)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0 or b"format ascii" in head[:end]:
        return  # not ours to judge here: plyfile's own parse error (or an ASCII file, read line by line)
    body = path.stat().st_size - head.index(b"\n", end) - 1
    lines = head[:end].decode("ascii", "replace").splitlines()
    for i, line in enumerate(lines):
        words = line.split()
        if len(words) != 3 or words[0] != "element":
            continue
        count = int(words[2]) if words[2].isdigit() else -1
        props = [p.split() for p in lines[i + 1:]]
        props = props[:next((k for k, p in enumerate(props) if p[:1] != ["property"]), len(props))]
        row = sum(_PLY_SIZES.get(p[1], 1) for p in props if len(p) == 3)  # lists: at least their count byte
        if count < 0 or count * max(row, 1) > body:
            raise InputError(f"{path}: not a valid PLY file (its header claims {words[2]} {words[1]} rows of {row} "
                             f"bytes but the file holds {body} bytes of data); expected a complete PLY file")


def _read_vertex(path: Path):
    plyfile = __import__("plyfile")
    _check_ply_counts(path)
    try:
        ply = plyfile.PlyData.read(str(path))
    except (plyfile.PlyParseError, ValueError, EOFError, UnicodeDecodeError, IndexError, struct.error,
            OverflowError, MemoryError) as exc:
        raise InputError(f"{path}: not a valid PLY file ({type(exc).__name__}: {exc}); expected a binary or ASCII "
                         ".ply of 3D Gaussians") from None
    names = [e.name for e in ply.elements]
    if "chunk" in names:
        raise InputError(f"{path}: this is a SuperSplat compressed PLY (element 'chunk'); decompress it in SuperSplat first")
    if "vertex" not in names:
        raise InputError(f"{path}: PLY has no 'vertex' element (elements: {', '.join(names) or 'none'})")
    return ply["vertex"]


def read_ply(path: str | os.PathLike, *, opacity: str = "auto", fuse_filter_3d: bool = True) -> Gaussians:
    """Read a 3DGS .ply (standard, Matrix-3D variants, or other tools' with extra properties)."""
    path = Path(path)
    if opacity not in OPACITY_MODES:
        raise InputError(f"opacity must be 'auto', 'logit' or 'linear', got {opacity!r}")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    vertex = _read_vertex(path)
    data = vertex.data
    props = [p.name for p in vertex.properties]
    n = len(data)
    if n == 0:
        raise InputError(f"{path}: the PLY holds no Gaussians (0 vertices)")
    if [p for p in props if p.startswith("scale_") and p not in ("scale_0", "scale_1", "scale_2")]:
        raise InputError(f"{path}: Gaussians with more than 3 scales are not supported")
    if "scale_0" in props and "scale_2" not in props:
        raise InputError(f"{path}: 2D Gaussian splats (2 scales per splat) are not supported; expected scale_0..scale_2")
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [p for p in required if p not in props]
    if missing:
        raise InputError(f"{path}: not a 3D Gaussian splat PLY, missing properties: {', '.join(missing)}")
    rest_names = sorted((p for p in props if p.startswith("f_rest_")), key=lambda s: int(s.split("_")[-1]) if s.split("_")[-1].isdigit() else -1)
    if rest_names and (len(rest_names) % 3 or rest_names != [f"f_rest_{i}" for i in range(len(rest_names))]):
        raise InputError(f"{path}: f_rest properties must be f_rest_0..f_rest_(3K-1), got {len(rest_names)}")
    k = len(rest_names) // 3
    try:
        sh_degree_from_rest(k)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    known = set(required) | set(rest_names) | {"nx", "ny", "nz", "filter_3D"}
    extra = [p for p in props if p not in known]
    if extra:
        _note(f"{path.name}: ignored non-standard properties: {', '.join(extra)}")

    def col(*names: str) -> torch.Tensor:
        try:
            return torch.from_numpy(np.stack([np.asarray(data[name], dtype=np.float32) for name in names], axis=1))
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path}: properties {', '.join(names)} must be numeric scalars ({exc})") from exc

    means = col("x", "y", "z")
    sh_dc = col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :]
    sh_rest = col(*rest_names).reshape(n, 3, k).transpose(1, 2).contiguous() if k else None
    raw_opacity = col("opacity")[:, 0]
    log_scales = col("scale_0", "scale_1", "scale_2")
    quats = col("rot_0", "rot_1", "rot_2", "rot_3")

    if opacity == "auto":
        in_unit = bool(torch.isfinite(raw_opacity).all() and raw_opacity.min() >= 0 and raw_opacity.max() <= 1)
        lrm_like = {"red", "green", "blue"} <= set(props)
        opacity = "linear" if in_unit and (lrm_like or n >= 100) else "logit"
        if opacity == "linear":
            _note(f"{path.name}: opacity values all lie in [0, 1] (Matrix-3D LRM variant); converted to logits")
    if opacity == "linear":
        raw_opacity = torch.logit(raw_opacity.clamp(LINEAR_OPACITY_EPS, 1 - LINEAR_OPACITY_EPS))

    if "filter_3D" in props and fuse_filter_3d:
        f2 = col("filter_3D")[:, 0:1].to(torch.float64) ** 2
        s2 = torch.exp(2.0 * log_scales.to(torch.float64))
        fused = s2 + f2
        coef = torch.sqrt(s2.prod(-1) / fused.prod(-1))
        op = torch.sigmoid(raw_opacity.to(torch.float64)) * coef
        raw_opacity = torch.logit(op.clamp(LINEAR_OPACITY_EPS, 1 - LINEAR_OPACITY_EPS)).to(torch.float32)
        log_scales = (0.5 * torch.log(fused)).to(torch.float32)
        _note(f"{path.name}: fused the Mip-Splatting 'filter_3D' field into scales and opacities (Matrix-3D variant)")
    elif "filter_3D" in props:
        _note(f"{path.name}: 'filter_3D' left unfused (fuse_filter_3d=False)")

    g = Gaussians(means, quats, log_scales, raw_opacity, sh_dc, sh_rest)
    return g.validated(name=str(path))


# --------------------------------------------------------------------------- SPZ


def _spz_fractional_bits(means: np.ndarray) -> int:
    limit = float(np.abs(means).max()) if means.size else 0.0
    max_fixed = (1 << 23) - 1
    if limit > max_fixed:
        raise InputError(f"scene too large for .spz 24-bit positions (|coordinate| up to {limit:.3g}; must be < {max_fixed})")
    bits = 12
    while bits > 0 and limit * (1 << bits) > max_fixed:
        bits -= 1
    return bits


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = np.round(x * 128.0).astype(np.int64) + 128
    q = (q + bucket // 2) // bucket * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def _check_spz_axes(spz_axes: str) -> None:
    if spz_axes not in SPZ_AXES:
        raise InputError(f"spz axes must be one of {', '.join(SPZ_AXES)}, got {spz_axes!r}")


def encode_spz(gaussians: Gaussians, *, antialiased: bool = False, spz_axes: str = "rub") -> bytes:
    """Gaussians (our frame) -> .spz bytes (version 2, gzip; RUB axes, or ours raw with ``spz_axes="rdf"``)."""
    _check_spz_axes(spz_axes)
    g = to_axes(gaussians, "opengl") if spz_axes == "rub" else gaussians  # RDF (ours) -> RUB: a proper rotation
    n, degree = len(g), g.sh_degree
    means = g.means.detach().cpu().to(torch.float64).numpy()
    bits = _spz_fractional_bits(means)
    fixed = np.round(means * (1 << bits)).astype(np.int64).reshape(-1) & 0xFFFFFF
    positions = np.stack([(fixed >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8)
    alphas = _u8(torch.sigmoid(g.opacity_logits.double()).cpu().numpy() * 255.0)
    colors = _u8(g.sh_dc[:, 0, :].double().cpu().numpy() * (SPZ_COLOR_SCALE * 255.0) + 127.5)
    scales = _u8((g.log_scales.double().cpu().numpy() + 10.0) * 16.0)
    q = torch.nn.functional.normalize(g.quats.double(), dim=-1).cpu().numpy()
    q = np.where(q[:, :1] < 0, -q, q)  # w >= 0, then store x y z
    rotations = _u8(q[:, 1:] * 127.5 + 127.5)
    parts = [
        struct.pack("<IIIBBBB", SPZ_MAGIC, 2, n, degree, bits, 1 if antialiased else 0, 0),
        positions.tobytes(), alphas.tobytes(), colors.tobytes(), scales.tobytes(), rotations.tobytes(),
    ]
    if degree > 0:
        assert g.sh_rest is not None  # degree > 0
        rest = g.sh_rest.detach().double().cpu().numpy()  # [N, K, 3], colour fastest as in SPZ
        sh = np.concatenate((_quantize_sh(rest[:, :3], 5), _quantize_sh(rest[:, 3:], 4)), axis=1)
        parts.append(sh.tobytes())
    return gzip.compress(b"".join(parts), compresslevel=6, mtime=0)


def decode_spz(blob: bytes, *, name: str = "spz", spz_axes: str = "rub") -> Gaussians:
    """.spz bytes -> Gaussians in our frame (versions 2 and 3; ``spz_axes`` as the file was written)."""
    _check_spz_axes(spz_axes)
    try:
        raw = gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{name}: not a gzip-compressed .spz file ({exc})") from exc
    if len(raw) < 16:
        raise InputError(f"{name}: .spz header is truncated ({len(raw)} bytes, expected 16)")
    magic, version, n, degree, bits, flags, _ = struct.unpack_from("<IIIBBBB", raw, 0)
    if magic != SPZ_MAGIC:
        raise InputError(f"{name}: bad .spz magic 0x{magic:08x}, expected 0x{SPZ_MAGIC:08x}")
    if version not in (2, 3):
        raise InputError(f"{name}: .spz version {version} is not supported (expected 2 or 3)")
    if degree > 3:
        raise InputError(f"{name}: .spz SH degree {degree} is not supported (expected 0..3)")
    if flags & 0x2:
        raise InputError(f"{name}: .spz extension records are not supported; re-export without extensions")
    if n == 0:
        raise InputError(f"{name}: the .spz holds no Gaussians")
    if flags & 0x1:
        _note(f"{Path(name).name}: trained with antialiasing (Mip-Splatting); render with rasterize_mode='antialiased'")
    k = (degree + 1) ** 2 - 1
    rot_bytes = 4 if version >= 3 else 3
    sizes = [9 * n, n, 3 * n, 3 * n, rot_bytes * n, 3 * k * n]
    if len(raw) < 16 + sum(sizes):
        raise InputError(f"{name}: .spz data is truncated ({len(raw) - 16} bytes for {n} Gaussians, expected {sum(sizes)})")
    buf = np.frombuffer(raw, dtype=np.uint8, offset=16, count=sum(sizes))
    pos, alpha, color, scale, rot, sh = np.split(buf, np.cumsum(sizes)[:-1])
    pos = pos.reshape(n * 3, 3).astype(np.int32)
    fixed = pos[:, 0] | (pos[:, 1] << 8) | (pos[:, 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = (fixed.astype(np.float64) / (1 << bits)).reshape(n, 3)
    a = np.clip(alpha.astype(np.float64) / 255.0, 0.5 / 255.0, 1.0 - 0.5 / 255.0)
    logits = np.log(a / (1.0 - a))
    dc = (color.reshape(n, 3).astype(np.float64) / 255.0 - 0.5) / SPZ_COLOR_SCALE
    log_scales = scale.reshape(n, 3).astype(np.float64) / 16.0 - 10.0
    if version >= 3:
        quats_xyzw = _unpack_smallest_three(rot.reshape(n, 4))
    else:
        xyz = rot.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz**2).sum(-1)))
        quats_xyzw = np.concatenate((xyz, w[:, None]), axis=1)
    quats = quats_xyzw[:, [3, 0, 1, 2]]
    quats = quats / np.linalg.norm(quats, axis=1, keepdims=True).clip(min=1e-12)
    sh_rest = None
    if k:
        sh_rest = torch.from_numpy((sh.reshape(n, k, 3).astype(np.float64) - 128.0) / 128.0).float()
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).float()
    g = Gaussians(t(means), t(quats), t(log_scales), t(logits), t(dc)[:, None, :], sh_rest)
    if spz_axes == "rub":
        g = g.transform(get_preset("opengl").transform().inverse())  # RUB -> ours
    return g.validated(name=name)


def _unpack_smallest_three(r: np.ndarray) -> np.ndarray:
    comp = r[:, 0].astype(np.uint64) | (r[:, 1].astype(np.uint64) << 8) | (r[:, 2].astype(np.uint64) << 16) | (r[:, 3].astype(np.uint64) << 24)
    largest = (comp >> np.uint64(30)).astype(np.int64)
    out = np.zeros((r.shape[0], 4), dtype=np.float64)
    mask = np.uint64((1 << 9) - 1)
    for i in (3, 2, 1, 0):
        skip = largest == i
        mag = (comp & mask).astype(np.float64)
        neg = ((comp >> np.uint64(9)) & np.uint64(1)).astype(bool)
        val = math.sqrt(0.5) * mag / float((1 << 9) - 1)
        val = np.where(neg, -val, val)
        out[:, i] = np.where(skip, 0.0, val)
        comp = np.where(skip, comp, comp >> np.uint64(10))
    rest = (out**2).sum(-1)
    out[np.arange(r.shape[0]), largest] = np.sqrt(np.maximum(0.0, 1.0 - rest))
    return out


def write_spz(path: str | os.PathLike, gaussians: Gaussians, *, antialiased: bool = False, spz_axes: str = "rub") -> None:
    """Write a .spz (version 2), atomically. Axes: SPZ's RUB, or ours raw (``spz_axes="rdf"``); see the module doc."""
    path = Path(path)
    _check_spz_axes(spz_axes)
    blob = encode_spz(_check_exportable(gaussians, path), antialiased=antialiased, spz_axes=spz_axes)
    with atomic_write(path) as tmp:
        tmp.write_bytes(blob)


def read_spz(path: str | os.PathLike, *, spz_axes: str = "rub") -> Gaussians:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return decode_spz(path.read_bytes(), name=str(path), spz_axes=spz_axes)


# --------------------------------------------------------------------------- .splat


SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def write_splat(path: str | os.PathLike, gaussians: Gaussians, *, axes: str = "opencv") -> None:
    """Write antimatter15's .splat (32 bytes per Gaussian), atomically."""
    path = Path(path)
    g = to_axes(_check_exportable(gaussians, path), axes)
    if g.sh_rest is not None:
        _note(f"{path.name}: .splat has no view-dependent colour; dropped SH degree {g.sh_degree} bands")
    out = np.zeros(len(g), dtype=SPLAT_DTYPE)
    out["position"] = _f32(g.means)
    out["scale"] = _f32(g.scales)
    rgb = (g.sh_dc[:, 0, :].double() * SH_C0 + 0.5).cpu().numpy()
    out["rgba"][:, :3] = _u8(rgb * 255.0)
    out["rgba"][:, 3] = _u8(torch.sigmoid(g.opacity_logits.double()).cpu().numpy() * 255.0)
    q = torch.nn.functional.normalize(g.quats.double(), dim=-1).cpu().numpy()
    out["rot"] = _u8(q * 128.0 + 128.0)
    with atomic_write(path) as tmp:
        tmp.write_bytes(out.tobytes())


def read_splat(path: str | os.PathLike) -> Gaussians:
    """Read antimatter15's .splat. Colours come back as SH DC; opacity clamped to [0.5, 254.5]/255."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    blob = path.read_bytes()
    if len(blob) == 0 or len(blob) % 32:
        raise InputError(f"{path}: a .splat file is a whole number of 32-byte records, got {len(blob)} bytes")
    rec = np.frombuffer(blob, dtype=SPLAT_DTYPE)
    rgba = rec["rgba"].astype(np.float64) / 255.0
    a = np.clip(rgba[:, 3], 0.5 / 255.0, 1.0 - 0.5 / 255.0)
    with np.errstate(divide="ignore"):
        log_scales = np.log(rec["scale"].astype(np.float64))
    quats = (rec["rot"].astype(np.float64) - 128.0) / 128.0
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.where(norm > 0, quats / np.where(norm > 0, norm, 1.0), 0.0)  # 8-bit quantisation, not an error
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).float()
    g = Gaussians(
        t(rec["position"]), t(quats), t(log_scales), t(np.log(a / (1.0 - a))), t((rgba[:, :3] - 0.5) / SH_C0)[:, None, :]
    )
    return g.validated(name=str(path))


# --------------------------------------------------------------------------- dispatch


def save_splats(path: str | os.PathLike, gaussians: Gaussians, *, axes: str = "opencv", spz_axes: str = "rub") -> None:
    """Write .ply / .spz / .splat / .glb by extension. ``axes`` is an export preset (``matrix_world.axes``)
    for .ply and .splat; .spz stores the axes ``spz_axes`` names and .glb glTF's own (both converted
    automatically), so only ``opencv`` (no extra change) is accepted for them."""
    path = Path(path)
    fmt = _format_of(path)
    preset = get_preset(axes)
    _check_spz_axes(spz_axes)
    if fmt in (".spz", ".glb") and preset.name != "opencv":
        raise InputError(f"{fmt} defines its own axes (converted automatically); axis presets apply to .ply and .splat only")
    if fmt == ".ply":
        write_ply(path, gaussians, axes=axes)
    elif fmt == ".splat":
        write_splat(path, gaussians, axes=axes)
    elif fmt == ".glb":
        write_glb(path, _check_exportable(gaussians, path))
    else:
        write_spz(path, gaussians, spz_axes=spz_axes)


def load_splats(path: str | os.PathLike, *, opacity: str = "auto", spz_axes: str = "rub") -> Gaussians:
    """Read .ply / .spz / .splat / .glb by extension into our frame (``opacity`` only matters for .ply,
    ``spz_axes`` only for .spz)."""
    path = Path(path)
    fmt = _format_of(path)
    if fmt == ".ply":
        return read_ply(path, opacity=opacity)
    if fmt == ".spz":
        return read_spz(path, spz_axes=spz_axes)
    if fmt == ".glb":
        return read_glb(path)
    return read_splat(path)
