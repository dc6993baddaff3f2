"""glTF 2.0 binary (.glb) splats with the Khronos ``KHR_gaussian_splatting`` extension (read and write).

Followed: the extension's README in KhronosGroup/glTF, ``extensions/2.0/Khronos/KHR_gaussian_splatting``
(the text of commit 63770cc, 2026-04-15, "Editorial review"; ratified by Khronos since). Layout:

* One mesh primitive with ``mode`` POINTS (0) and ``extensions.KHR_gaussian_splatting`` =
  ``{"kernel": "ellipse", "colorSpace": "srgb_rec709_display", "projection": "perspective",
  "sortingMethod": "cameraDistance"}``; the extension is listed in ``extensionsUsed`` only, so
  viewers without it show a coloured point cloud.
* Attributes: ``POSITION`` (VEC3 float, with min/max), ``KHR_gaussian_splatting:ROTATION``
  (VEC4, unit quaternion in glTF order x y z w), ``:SCALE`` (VEC3, LINEAR standard deviations,
  not logs), ``:OPACITY`` (SCALAR, in [0, 1], i.e. after the sigmoid), ``:SH_DEGREE_0_COEF_0``
  (VEC3, the raw DC coefficients: colour = 0.5 + 0.2820948 * dc) and, per higher degree l, the
  2l + 1 attributes ``:SH_DEGREE_l_COEF_n`` (n = 0 is m = -l), each VEC3 (r, g, b): the same
  order as the 3DGS ``f_rest`` coefficients. ``COLOR_0`` (VEC4 unsigned byte normalised) is the
  fallback colour: the DC colour clamped to [0, 1], decoded from sRGB to linear as the base glTF
  spec wants, alpha = opacity.
* Axes: glTF's own (+Y up, +Z forward, -X right), i.e. our OpenCV frame turned 180 degrees about
  z (preset ``gltf`` of :mod:`matrix_world.axes`): the writer converts, the reader converts back.
  PlayCanvas splat-transform's .glb writer uses the same frame (tests/test_splat_transform.py).

The writer stores float32 values; the reader accepts every component type the extension allows
(float, normalised signed/unsigned bytes and shorts, unsigned integers for SCALE), byte strides,
several splat primitives and node transforms (similarities: translation, rotation, uniform scale;
others are refused), and refuses what it cannot read exactly (sparse accessors, external buffers,
required extensions such as SPZ compression) with one line. Round-trip error of our own files:
positions, SH and quaternions bit for bit up to the float32 axis change; log-scale and opacity
through float32 exp/sigmoid (relative 1e-6 and absolute 1e-7 in opacity).
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch

from matrix_world.axes import from_axes, to_axes
from matrix_world.errors import InputError, SplatNote
from matrix_world.gaussians import SH_C0, Gaussians
from matrix_world.io import atomic_write

EXTENSION = "KHR_gaussian_splatting"
PREFIX = EXTENSION + ":"
EXTENSION_OBJECT = {"kernel": "ellipse", "colorSpace": "srgb_rec709_display", "projection": "perspective",
                    "sortingMethod": "cameraDistance"}
GLB_MAGIC, GLB_VERSION = 0x46546C67, 2  # b"glTF"
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942
FLOAT, ARRAY_BUFFER = 5126, 34962
COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
READABLE_REQUIRED = {EXTENSION, "KHR_mesh_quantization"}  # extensions we read exactly when required
OPACITY_EPS = 1e-7


def sh_attribute_names(degree: int) -> list[str]:
    """The attribute names of the SH bands above DC, in ``sh_rest`` order (degree 1 m=-1..1, then 2, 3)."""
    return [f"{PREFIX}SH_DEGREE_{l}_COEF_{n}" for l in range(1, degree + 1) for n in range(2 * l + 1)]


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# --------------------------------------------------------------------------- write


def encode_glb(gaussians: Gaussians, *, generator: str = "matrix_world") -> bytes:
    """Gaussians (our frame) -> .glb bytes (glTF axes, float32 attributes, see the module doc)."""
    g = to_axes(gaussians.detach().to("cpu"), "gltf")
    n = len(g)
    f32 = lambda t: np.ascontiguousarray(t.detach().cpu().to(torch.float32).numpy())
    q = torch.nn.functional.normalize(g.quats.double(), dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    rgb = np.clip(0.5 + SH_C0 * g.sh_dc[:, 0, :].double().numpy(), 0.0, 1.0)
    color0 = np.concatenate([_srgb_to_linear(rgb), torch.sigmoid(g.opacity_logits.double()).numpy()[:, None]], axis=1)
    columns: list[tuple[str, np.ndarray, int, bool]] = [  # (attribute, data [N, width], component type, normalised)
        ("POSITION", f32(g.means), FLOAT, False),
        ("COLOR_0", np.clip(np.round(color0 * 255.0), 0, 255).astype(np.uint8), 5121, True),
        (f"{PREFIX}ROTATION", f32(q[:, [1, 2, 3, 0]]), FLOAT, False),
        (f"{PREFIX}SCALE", f32(torch.exp(g.log_scales.double())), FLOAT, False),
        (f"{PREFIX}OPACITY", f32(torch.sigmoid(g.opacity_logits.double()))[:, None], FLOAT, False),
        (f"{PREFIX}SH_DEGREE_0_COEF_0", f32(g.sh_dc[:, 0, :]), FLOAT, False),
    ]
    if g.sh_rest is not None:
        rest = f32(g.sh_rest)  # [N, K, 3]
        columns += [(name, np.ascontiguousarray(rest[:, i]), FLOAT, False)
                    for i, name in enumerate(sh_attribute_names(g.sh_degree))]
    width_name = {1: "SCALAR", 3: "VEC3", 4: "VEC4"}
    blobs, views, accessors, attributes, offset = [], [], [], {}, 0
    for index, (name, data, ctype, normalized) in enumerate(columns):
        raw = data.tobytes()
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(raw), "target": ARRAY_BUFFER})
        accessor = {"bufferView": index, "componentType": ctype, "count": n, "type": width_name[data.shape[1]]}
        if normalized:
            accessor["normalized"] = True
        if name == "POSITION":  # required by the glTF spec
            accessor["min"] = [float(v) for v in data.min(0)]
            accessor["max"] = [float(v) for v in data.max(0)]
        accessors.append(accessor)
        attributes[name] = index
        pad = (-len(raw)) % 4
        blobs.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    binary = b"".join(blobs)
    doc = {
        "asset": {"version": "2.0", "generator": generator},
        "extensionsUsed": [EXTENSION],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "world"}],
        "meshes": [{"name": "gaussians", "primitives": [{"attributes": attributes, "mode": 0,
                                                         "extensions": {EXTENSION: dict(EXTENSION_OBJECT)}}]}],
        "buffers": [{"byteLength": len(binary)}], "bufferViews": views, "accessors": accessors,
    }
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    if total >= 2**32:
        raise InputError(f"{n} Gaussians make a .glb of {total / 2**30:.1f} GiB; a .glb holds less than 4 GiB "
                         "(prune with --budget or write .spz)")
    return b"".join([struct.pack("<III", GLB_MAGIC, GLB_VERSION, total), struct.pack("<II", len(text), CHUNK_JSON),
                     text, struct.pack("<II", len(binary), CHUNK_BIN), binary])


def write_glb(path: str | os.PathLike, gaussians: Gaussians) -> None:
    """Write a KHR_gaussian_splatting .glb, atomically."""
    path = Path(path)
    if len(gaussians) == 0:
        raise InputError(f"refusing to write {path}: there are no Gaussians (empty set)")
    blob = encode_glb(gaussians.detach().to("cpu").validated(name=str(path)))
    with atomic_write(path) as tmp:
        tmp.write_bytes(blob)


# --------------------------------------------------------------------------- read


def split_glb(blob: bytes, *, name: str = "glb") -> tuple[dict, bytes]:
    """The JSON document and the BIN chunk of a .glb (b"" when it has none)."""
    if len(blob) < 20:
        raise InputError(f"{name}: not a .glb file ({len(blob)} bytes; a .glb starts with a 12-byte header)")
    magic, version, length = struct.unpack_from("<III", blob, 0)
    if magic != GLB_MAGIC:
        raise InputError(f"{name}: not a binary glTF (.glb) file (magic 0x{magic:08x}, expected 0x{GLB_MAGIC:08x})")
    if version != GLB_VERSION:
        raise InputError(f"{name}: glTF container version {version} is not supported (expected 2)")
    if length > len(blob):
        raise InputError(f"{name}: .glb is truncated ({len(blob)} bytes, its header says {length})")
    doc, binary, pos = None, b"", 12
    while pos + 8 <= length:
        size, kind = struct.unpack_from("<II", blob, pos)
        if pos + 8 + size > length:
            raise InputError(f"{name}: .glb chunk at byte {pos} runs past the end of the file")
        chunk = blob[pos + 8: pos + 8 + size]
        if kind == CHUNK_JSON and doc is None:
            try:
                doc = json.loads(chunk.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise InputError(f"{name}: the .glb's JSON chunk is not valid JSON ({type(exc).__name__})") from exc
        elif kind == CHUNK_BIN and not binary:
            binary = chunk
        pos += 8 + size
    if not isinstance(doc, dict):
        raise InputError(f"{name}: the .glb has no JSON object chunk")
    return doc, binary


def _accessor(doc: dict, binary: bytes, index, *, what: str) -> np.ndarray:
    """Accessor ``index`` as float64 [count, width] (normalised integers mapped as glTF defines)."""
    acc = doc["accessors"][index]
    if "sparse" in acc:
        raise InputError(f"{what}: sparse accessors are not supported")
    dtype = COMPONENTS.get(acc["componentType"])
    if dtype is None or acc["type"] not in WIDTHS:
        raise InputError(f"{what}: unsupported accessor componentType {acc['componentType']} / type {acc['type']!r}")
    count, width, item = int(acc["count"]), WIDTHS[acc["type"]], np.dtype(dtype).itemsize
    if count < 0:
        raise InputError(f"{what}: negative accessor count {count}")
    if "bufferView" not in acc:
        return np.zeros((count, width))
    view = doc["bufferViews"][acc["bufferView"]]
    buffer = doc["buffers"][view["buffer"]]
    if "uri" in buffer or view["buffer"] != 0:
        raise InputError(f"{what}: data outside the .glb (external buffer {buffer.get('uri', view['buffer'])!r}) "
                         "is not supported; pack it into one .glb")
    stride = int(view.get("byteStride", width * item))
    start = int(view.get("byteOffset", 0)) + int(acc.get("byteOffset", 0))
    end = start + (stride * (count - 1) + width * item if count else 0)
    view_end = int(view.get("byteOffset", 0)) + int(view["byteLength"])
    if start < 0 or end > view_end or view_end > len(binary) or stride < width * item:
        raise InputError(f"{what}: accessor {index} reaches past its buffer view or the BIN chunk "
                         f"({end} > {min(view_end, len(binary))} bytes)")
    if count == 0:
        return np.zeros((0, width))
    arr = np.ndarray((count, width), dtype=np.dtype(dtype).newbyteorder("<"), buffer=binary, offset=start,
                     strides=(stride, item)).astype(np.float64)
    if acc.get("normalized"):
        top = {5120: 127.0, 5121: 255.0, 5122: 32767.0, 5123: 65535.0}.get(acc["componentType"])
        if top is None:
            raise InputError(f"{what}: normalized is defined for byte and short components only")
        arr = np.maximum(arr / top, -1.0)  # glTF: signed max(c / MAX, -1), unsigned c / MAX
    return arr


def _node_matrix(node: dict) -> np.ndarray:
    """A node's local 4x4 transform (glTF: ``matrix`` column-major, or T * R * S)."""
    if "matrix" in node:
        return np.asarray(node["matrix"], dtype=np.float64).reshape(4, 4).T
    x, y, z, w = (float(v) for v in node.get("rotation", (0, 0, 0, 1)))
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    out = np.eye(4)
    out[:3, :3] = rot * np.asarray(node.get("scale", (1, 1, 1)), dtype=np.float64)[None, :]
    out[:3, 3] = np.asarray(node.get("translation", (0, 0, 0)), dtype=np.float64)
    return out


def _mesh_instances(doc: dict) -> list[tuple[int, np.ndarray]]:
    """(mesh index, global 4x4) for every node of the default scene that holds a mesh."""
    nodes = doc.get("nodes", [])
    if "scenes" not in doc:
        return [(i, np.eye(4)) for i in range(len(doc.get("meshes", [])))]
    scene = doc["scenes"][doc.get("scene", 0)]
    out, stack, seen = [], [(int(i), np.eye(4)) for i in scene.get("nodes", [])], set()
    while stack:
        index, parent = stack.pop()
        if index in seen:
            raise InputError("the glTF node hierarchy has a cycle")
        seen.add(index)
        node = nodes[index]
        world = parent @ _node_matrix(node)
        if "mesh" in node:
            out.append((int(node["mesh"]), world))
        stack += [(int(c), world) for c in node.get("children", [])]
    return out


def _primitive_gaussians(doc: dict, binary: bytes, prim: dict, what: str) -> Gaussians:
    ext = prim["extensions"][EXTENSION]
    if ext.get("kernel", "ellipse") != "ellipse":
        raise InputError(f"{what}: kernel {ext.get('kernel')!r} is not supported (expected 'ellipse')")
    if ext.get("colorSpace") == "lin_rec709_display":
        warnings.warn(f"{what}: colorSpace is lin_rec709_display (linear); the colours are kept as stored", SplatNote,
                      stacklevel=4)
    if prim.get("mode", 4) != 0:
        raise InputError(f"{what}: a KHR_gaussian_splatting primitive must have mode POINTS (0), got {prim.get('mode', 4)}")
    attrs = prim["attributes"]
    required = ["POSITION", f"{PREFIX}ROTATION", f"{PREFIX}SCALE", f"{PREFIX}OPACITY", f"{PREFIX}SH_DEGREE_0_COEF_0"]
    missing = [a for a in required if a not in attrs]
    if missing:
        raise InputError(f"{what}: missing required attributes {', '.join(missing)}")
    degree = 0
    while degree < 3 and any(a.startswith(f"{PREFIX}SH_DEGREE_{degree + 1}_") for a in attrs):
        if not all(a in attrs for a in sh_attribute_names(degree + 1)[degree * (degree + 2):]):
            raise InputError(f"{what}: SH degree {degree + 1} is partially defined (all its 2l+1 coefficients are required)")
        degree += 1
    higher = sorted(a for a in attrs if a.startswith(f"{PREFIX}SH_DEGREE_") and a not in sh_attribute_names(degree)
                    and a != f"{PREFIX}SH_DEGREE_0_COEF_0")
    if higher:
        raise InputError(f"{what}: SH attributes {', '.join(higher)} without all lower degrees (or beyond degree 3)")
    read = lambda a, width: _check_width(_accessor(doc, binary, attrs[a], what=f"{what} {a}"), width, a, what)
    means, quats_xyzw, scales = read("POSITION", 3), read(f"{PREFIX}ROTATION", 4), read(f"{PREFIX}SCALE", 3)
    opacity, dc = read(f"{PREFIX}OPACITY", 1)[:, 0], read(f"{PREFIX}SH_DEGREE_0_COEF_0", 3)
    rest = [read(a, 3) for a in sh_attribute_names(degree)]
    n = len(means)
    if any(len(x) != n for x in (quats_xyzw, scales, opacity, dc, *rest)):
        raise InputError(f"{what}: attributes have different counts (POSITION has {n})")
    if n and (scales.min() < 0 or not (0.0 <= opacity.min() and opacity.max() <= 1.0)):
        raise InputError(f"{what}: scales must be >= 0 and opacities in [0, 1] (got scale min {scales.min():.3g}, "
                         f"opacity range {opacity.min():.3g}..{opacity.max():.3g})")
    a = np.clip(opacity, OPACITY_EPS, 1.0 - OPACITY_EPS)
    norm = np.linalg.norm(quats_xyzw, axis=1, keepdims=True)
    quats = (quats_xyzw / np.where(norm > 0, norm, 1.0))[:, [3, 0, 1, 2]]
    with np.errstate(divide="ignore"):
        log_scales = np.log(scales)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).float()
    return Gaussians(t(means), t(quats), t(log_scales), t(np.log(a / (1.0 - a))), t(dc)[:, None, :],
                     t(np.stack(rest, axis=1)) if rest else None)


def _check_width(arr: np.ndarray, width: int, attribute: str, what: str) -> np.ndarray:
    if arr.shape[1] != width:
        raise InputError(f"{what}: attribute {attribute} must have {width} components, got {arr.shape[1]}")
    return arr


def decode_glb(blob: bytes, *, name: str = "glb") -> Gaussians:
    """.glb bytes -> Gaussians in our frame: every KHR_gaussian_splatting primitive of the default scene,
    each with its node's global transform applied."""
    doc, binary = split_glb(blob, name=name)
    try:
        version = str(doc.get("asset", {}).get("version", ""))
        if not version.startswith("2."):
            raise InputError(f"{name}: glTF asset version {version!r} is not supported (expected 2.x)")
        unreadable = [e for e in doc.get("extensionsRequired", []) if e not in READABLE_REQUIRED]
        if unreadable:
            raise InputError(f"{name}: requires glTF extensions this reader does not implement: {', '.join(unreadable)} "
                             "(re-export without compression)")
        parts, skipped = [], 0
        for mesh_index, world in _mesh_instances(doc):
            for p, prim in enumerate(doc["meshes"][mesh_index].get("primitives", [])):
                if EXTENSION not in prim.get("extensions", {}):
                    skipped += 1
                    continue
                g = _primitive_gaussians(doc, binary, prim, f"{name} mesh {mesh_index} primitive {p}")
                if not np.allclose(world, np.eye(4), atol=1e-12):
                    g = g.transform(torch.from_numpy(world[:3]))  # InputError unless a similarity
                parts.append(g)
    except InputError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise InputError(f"{name}: malformed glTF ({type(exc).__name__}: {exc})") from exc
    if skipped:
        warnings.warn(f"{Path(name).name}: ignored {skipped} primitives without {EXTENSION} (meshes, not splats)",
                      SplatNote, stacklevel=2)
    if not parts or sum(len(p) for p in parts) == 0:
        raise InputError(f"{name}: the glTF holds no {EXTENSION} splats")
    g = parts[0] if len(parts) == 1 else Gaussians.concatenate(parts)
    return from_axes(g, "gltf").validated(name=name)


def read_glb(path: str | os.PathLike) -> Gaussians:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return decode_glb(path.read_bytes(), name=str(path))
