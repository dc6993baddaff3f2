"""Splat files: bit-exact standard .ply, Matrix-3D variants, .spz/.splat within quantisation, bad files."""

import gzip
import math
import struct
import warnings

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from matrix_world.axes import to_axes
from matrix_world.errors import InputError
from matrix_world.gaussians import SH_C0, Gaussians
from matrix_world.splat_io import (
    SplatNote,
    decode_spz,
    encode_spz,
    load_splats,
    ply_header,
    read_ply,
    read_splat,
    save_splats,
    write_ply,
    write_splat,
)


def random_gaussians(n=64, degree=0, seed=0, rgb_range=False):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    dc = (torch.rand(n, 1, 3, generator=gen) - 0.5) / SH_C0 * 0.98 if rgb_range else r(n, 1, 3)
    rest = (torch.rand(n, (degree + 1) ** 2 - 1, 3, generator=gen) * 1.8 - 0.9) if degree else None
    return Gaussians(r(n, 3), torch.nn.functional.normalize(r(n, 4), dim=-1), r(n, 3) - 2.0,
                     torch.rand(n, generator=gen) * 8 - 4, dc, rest)


def write_custom_ply(path, columns: dict):
    """A .ply with exactly these vertex properties (name -> numpy array), via plyfile."""
    n = len(next(iter(columns.values())))
    arr = np.empty(n, dtype=[(k, v.dtype.str) for k, v in columns.items()])
    for k, v in columns.items():
        arr[k] = v
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))


def standard_columns(g: Gaussians) -> dict:
    cols = {k: g.means[:, i].numpy() for i, k in enumerate("xyz")}
    cols.update({f"f_dc_{i}": g.sh_dc[:, 0, i].numpy() for i in range(3)})
    cols["opacity"] = g.opacity_logits.numpy()
    cols.update({f"scale_{i}": g.log_scales[:, i].numpy() for i in range(3)})
    cols.update({f"rot_{i}": g.quats[:, i].numpy() for i in range(4)})
    return cols


# --------------------------------------------------------------------------- PLY


@pytest.mark.parametrize("degree", [0, 3])
def test_ply_roundtrip_is_bit_exact(tmp_path, degree):
    g = random_gaussians(100, degree=degree, seed=degree)
    write_ply(tmp_path / "a.ply", g)
    h = read_ply(tmp_path / "a.ply")
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh_dc"):
        assert torch.equal(getattr(h, name), getattr(g, name)), name
    assert (h.sh_rest is None) if degree == 0 else torch.equal(h.sh_rest, g.sh_rest)


def test_ply_has_exactly_the_standard_header_and_layout(tmp_path):
    g = random_gaussians(5, degree=1, seed=7)
    write_ply(tmp_path / "a.ply", g)
    raw = (tmp_path / "a.ply").read_bytes()
    header = raw[: raw.index(b"end_header\n") + len(b"end_header\n")].decode("ascii")
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    expected = "ply\nformat binary_little_endian 1.0\nelement vertex 5\n" + "".join(f"property float {n}\n" for n in names) + "end_header\n"
    assert header == expected == ply_header(5, 1)
    assert len(raw) == len(header) + 5 * len(names) * 4
    ply = PlyData.read(str(tmp_path / "a.ply"))
    assert [e.name for e in ply.elements] == ["vertex"] and ply.byte_order == "<" and not ply.text
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == names
    assert all(p.val_dtype == "f4" for p in vertex.properties)
    assert np.array_equal(vertex["nx"], np.zeros(5, np.float32))
    # f_rest is channel-major: f_rest_0..2 are red bands 1..3, f_rest_3..5 green, f_rest_6..8 blue
    assert np.array_equal(vertex["f_rest_1"], g.sh_rest[:, 1, 0].numpy())
    assert np.array_equal(vertex["f_rest_3"], g.sh_rest[:, 0, 1].numpy())
    assert np.array_equal(vertex["f_rest_8"], g.sh_rest[:, 2, 2].numpy())
    assert np.array_equal(vertex["rot_0"], g.quats[:, 0].numpy())  # w first


def test_ply_written_with_axes_preset(tmp_path):
    g = random_gaussians(10, seed=3)
    write_ply(tmp_path / "gl.ply", g, axes="opengl")
    h = read_ply(tmp_path / "gl.ply")
    assert torch.allclose(h.means, g.means * torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(h.covariances(), to_axes(g, "opengl").covariances(), atol=1e-6)


def test_matrix3d_filter_3d_variant_is_fused(tmp_path):
    g = random_gaussians(20, seed=1)
    cols = standard_columns(g)
    filt = np.linspace(0.01, 0.3, 20).astype(np.float32)
    cols["filter_3D"] = filt
    write_custom_ply(tmp_path / "m3d.ply", cols)
    with pytest.warns(SplatNote, match="filter_3D"):
        h = read_ply(tmp_path / "m3d.ply")
    s2 = torch.exp(2 * g.log_scales.double())
    f2 = torch.from_numpy(filt).double()[:, None] ** 2
    assert torch.allclose(h.scales.double(), torch.sqrt(s2 + f2), rtol=1e-5)
    coef = torch.sqrt(s2.prod(-1) / (s2 + f2).prod(-1))
    assert torch.allclose(h.opacities.double(), torch.sigmoid(g.opacity_logits.double()) * coef, rtol=1e-4, atol=1e-6)
    assert torch.equal(h.means, g.means) and torch.equal(h.quats, g.quats)
    with pytest.warns(SplatNote, match="unfused"):
        unfused = read_ply(tmp_path / "m3d.ply", fuse_filter_3d=False)
    assert torch.equal(unfused.log_scales, g.log_scales)


def test_matrix3d_lrm_variant_linear_opacity(tmp_path):
    # Matrix-3D's LRM writer: x y z red green blue f_dc f_rest(45, zero-padded) opacity in [0,1] scale rot
    n = 30
    g = random_gaussians(n, seed=2)
    opac = np.linspace(0.02, 0.98, n).astype(np.float32)
    cols = {k: g.means[:, i].numpy() for i, k in enumerate("xyz")}
    cols.update({c: np.full(n, 128, np.uint8) for c in ("red", "green", "blue")})
    cols.update({f"f_dc_{i}": g.sh_dc[:, 0, i].numpy() for i in range(3)})
    cols.update({f"f_rest_{i}": np.zeros(n, np.float32) for i in range(45)})
    cols["opacity"] = opac
    cols.update({f"scale_{i}": g.log_scales[:, i].numpy() for i in range(3)})
    cols.update({f"rot_{i}": g.quats[:, i].numpy() for i in range(4)})
    write_custom_ply(tmp_path / "lrm.ply", cols)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        h = read_ply(tmp_path / "lrm.ply")
    notes = " ".join(str(w.message) for w in rec)
    assert "[0, 1]" in notes and "red, green, blue" in notes
    assert torch.allclose(h.opacities, torch.from_numpy(opac), atol=1e-6)
    assert h.sh_degree == 3 and torch.equal(h.log_scales, g.log_scales)
    with pytest.warns(SplatNote, match="red, green, blue"):
        forced = read_ply(tmp_path / "lrm.ply", opacity="logit")
    assert torch.equal(forced.opacity_logits, torch.from_numpy(opac))
    # a small standard file whose logits happen to lie in [0, 1] is NOT reinterpreted
    small = standard_columns(random_gaussians(5, seed=4))
    small["opacity"] = np.linspace(0.1, 0.9, 5).astype(np.float32)
    write_custom_ply(tmp_path / "small.ply", small)
    assert torch.equal(read_ply(tmp_path / "small.ply").opacity_logits, torch.from_numpy(small["opacity"]))


def test_other_tools_extra_properties_are_ignored_with_a_note(tmp_path):
    g = random_gaussians(8, seed=5)
    cols = standard_columns(g)
    cols["semantic_id"] = np.arange(8, dtype=np.int32)
    cols["nx"] = np.ones(8, np.float64)  # normals of another type are fine too
    write_custom_ply(tmp_path / "other.ply", cols)
    with pytest.warns(SplatNote, match="semantic_id"):
        h = read_ply(tmp_path / "other.ply")
    assert torch.equal(h.means, g.means) and torch.equal(h.quats, g.quats) and torch.equal(h.opacity_logits, g.opacity_logits)


def test_ply_unnormalised_quaternions_are_normalised_with_a_warning(tmp_path):
    g = random_gaussians(6, seed=6)
    cols = standard_columns(g)
    for i in range(4):
        cols[f"rot_{i}"] = cols[f"rot_{i}"] * 3.0
    write_custom_ply(tmp_path / "q.ply", cols)
    with pytest.warns(UserWarning, match="normalised"):
        h = read_ply(tmp_path / "q.ply")
    assert torch.allclose(h.quats, g.quats, atol=1e-6)


def test_bad_ply_files_raise_input_error(tmp_path):
    g = random_gaussians(4, seed=8)
    (tmp_path / "garbage.ply").write_bytes(b"hello world\n")
    write_ply(tmp_path / "ok.ply", g)
    raw = (tmp_path / "ok.ply").read_bytes()
    (tmp_path / "truncated.ply").write_bytes(raw[:-50])
    cols = standard_columns(g)
    del cols["rot_3"]
    write_custom_ply(tmp_path / "missing.ply", cols)
    points = {k: g.means[:, i].numpy() for i, k in enumerate("xyz")}
    write_custom_ply(tmp_path / "points.ply", points)
    cols = standard_columns(g)
    cols.update({f"f_rest_{i}": np.zeros(4, np.float32) for i in range(4)})
    write_custom_ply(tmp_path / "rest.ply", cols)
    cols = standard_columns(g)
    del cols["scale_2"]
    write_custom_ply(tmp_path / "2dgs.ply", cols)
    nan = standard_columns(g)
    nan["x"] = nan["x"].copy()
    nan["x"][1] = np.nan
    write_custom_ply(tmp_path / "nan.ply", nan)
    empty = {k: v[:0] for k, v in standard_columns(g).items()}
    write_custom_ply(tmp_path / "empty.ply", empty)
    expected = {
        "garbage.ply": "not a valid PLY", "truncated.ply": "not a valid PLY", "missing.ply": "missing properties: rot_3",
        "points.ply": "not a 3D Gaussian splat", "rest.ply": "f_rest", "2dgs.ply": "2D Gaussian", "nan.ply": "NaN",
        "empty.ply": "no Gaussians", "absent.ply": "no such file",
    }
    for name, message in expected.items():
        with pytest.raises(InputError, match=message):
            read_ply(tmp_path / name)


def test_writers_refuse_empty_and_nan(tmp_path):
    for ext in ("ply", "spz", "splat"):
        with pytest.raises(InputError, match="empty"):
            save_splats(tmp_path / f"e.{ext}", Gaussians.empty())
    g = random_gaussians(3)
    g.means[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        write_ply(tmp_path / "n.ply", g)
    assert not (tmp_path / "n.ply").exists()
    with pytest.raises(InputError, match="unknown splat format"):
        save_splats(tmp_path / "a.obj", random_gaussians(3))


# --------------------------------------------------------------------------- SPZ


def test_spz_roundtrip_within_quantisation(tmp_path):
    g = random_gaussians(300, degree=2, seed=9, rgb_range=True)  # DC within the stored range (|dc| <= 3.33)
    save_splats(tmp_path / "a.spz", g)
    raw = gzip.decompress((tmp_path / "a.spz").read_bytes())
    assert struct.unpack_from("<IIIBBBB", raw) == (0x5053474E, 2, 300, 2, 12, 0, 0)
    assert len(raw) == 16 + 300 * (9 + 1 + 3 + 3 + 3 + 8 * 3)
    h = load_splats(tmp_path / "a.spz")
    eps = 1e-5
    assert (h.means - g.means).abs().max() <= 0.5 / 4096 + eps
    assert (h.log_scales - g.log_scales).abs().max() <= 0.5 / 16 + eps
    assert (h.opacities - g.opacities).abs().max() <= 0.5 / 255 + eps
    assert (h.sh_dc - g.sh_dc).abs().max() <= 0.5 / (0.15 * 255) + eps
    # SH: degree-1 coefficients kept to 5 bits, higher to 4 (step 8/128 and 16/128, plus rounding)
    assert (h.sh_rest[:, :3] - g.sh_rest[:, :3]).abs().max() <= 4.5 / 128 + eps
    assert (h.sh_rest[:, 3:] - g.sh_rest[:, 3:]).abs().max() <= 8.5 / 128 + eps
    # rotations are quantised in SPZ's own (RUB) frame: x, y, z of the w >= 0 quaternion to 1/127.5
    q_g, q_h = to_axes(g, "opengl").quats, to_axes(h, "opengl").quats
    q_h = torch.where((q_h * q_g).sum(-1, keepdim=True) < 0, -q_h, q_h)  # q and -q are one rotation
    assert (q_h[:, 1:] - q_g[:, 1:]).abs().max() <= 0.5 / 127.5 + 1e-4


def test_spz_stores_rub_axes_and_scales_fractional_bits():
    g = random_gaussians(4, seed=10)
    g = Gaussians(g.means * torch.tensor([1000.0, 3000.0, 5000.0]), g.quats, g.log_scales, g.opacity_logits, g.sh_dc)
    raw = gzip.decompress(encode_spz(g))
    bits = raw[13]
    assert bits == 10  # 12 bits would overflow 24-bit positions at |x| ~ 5000+
    x0 = int.from_bytes(raw[16:19], "little", signed=True) / 2**bits
    y0 = int.from_bytes(raw[19:22], "little", signed=True) / 2**bits
    assert x0 == pytest.approx(g.means[0, 0].item(), abs=1e-3)
    assert y0 == pytest.approx(-g.means[0, 1].item(), abs=1e-3)  # RUB: y up
    h = decode_spz(encode_spz(g))
    assert (h.means - g.means).abs().max() <= 0.5 / 1024 + 1e-3


def _pack_smallest_three(q_xyzw: np.ndarray) -> bytes:
    """SPZ v3 rotation packing, written from the format description (for the reader test)."""
    out = bytearray()
    for q in q_xyzw:
        q = q / np.linalg.norm(q)
        largest = int(np.argmax(np.abs(q)))
        negate = q[largest] < 0
        comp = largest
        for i in range(4):
            if i != largest:
                neg = (q[i] < 0) ^ negate
                mag = int(511 * abs(q[i]) / math.sqrt(0.5) + 0.5)
                comp = (comp << 10) | (int(neg) << 9) | mag
        out += struct.pack("<I", comp)
    return bytes(out)


def test_spz_version3_rotations_are_read():
    g = random_gaussians(50, seed=11)
    raw = bytearray(gzip.decompress(encode_spz(g)))
    n = 50
    rub = to_axes(g, "opengl").quats.double().numpy()
    q_xyzw = rub[:, [1, 2, 3, 0]]
    start = 16 + n * (9 + 1 + 3 + 3)
    v3 = bytes(raw[:4]) + struct.pack("<I", 3) + bytes(raw[8:start]) + _pack_smallest_three(q_xyzw)
    h = decode_spz(gzip.compress(v3))
    dots = (h.quats.double() * g.quats.double()).sum(-1).abs()
    assert dots.min() > 1 - 1e-5


def test_bad_spz_raise_input_error(tmp_path):
    good = gzip.decompress(encode_spz(random_gaussians(5)))
    cases = {
        b"not gzip at all": "gzip",
        gzip.compress(b"\x00" * 8): "truncated",
        gzip.compress(struct.pack("<I", 0x12345678) + good[4:]): "magic",
        gzip.compress(good[:4] + struct.pack("<I", 7) + good[8:]): "version 7",
        gzip.compress(good[:-10]): "truncated",
    }
    for blob, message in cases.items():
        with pytest.raises(InputError, match=message):
            decode_spz(blob)


# --------------------------------------------------------------------------- .splat


def test_splat_roundtrip_within_quantisation(tmp_path):
    g = random_gaussians(200, seed=12, rgb_range=True)
    write_splat(tmp_path / "a.splat", g)
    assert (tmp_path / "a.splat").stat().st_size == 200 * 32
    rec = np.frombuffer((tmp_path / "a.splat").read_bytes(), dtype=np.uint8).reshape(200, 32)
    assert np.array_equal(rec[:, :12].copy().view(np.float32), g.means.numpy())  # float32 positions first
    h = read_splat(tmp_path / "a.splat")
    assert torch.equal(h.means, g.means)
    assert (h.log_scales - g.log_scales).abs().max() <= 1e-5
    assert (h.rgb - g.rgb).abs().max() <= 0.5 / 255 + 1e-5
    assert (h.opacities - g.opacities).abs().max() <= 0.5 / 255 + 1e-5
    # quaternion components stored as q * 128 + 128 in uint8 -> within 1/128 after renormalising
    sign = torch.where((h.quats * g.quats).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    assert (sign * h.quats - g.quats).abs().max() <= 1.5 / 128
    rel = (h.covariances() - g.covariances()).norm(dim=(1, 2)) / g.covariances().norm(dim=(1, 2))
    assert rel.max() < 0.05


def test_bad_splat_raise_input_error(tmp_path):
    (tmp_path / "bad.splat").write_bytes(b"\x00" * 33)
    with pytest.raises(InputError, match="32-byte"):
        read_splat(tmp_path / "bad.splat")
    (tmp_path / "empty.splat").write_bytes(b"")
    with pytest.raises(InputError, match="32-byte"):
        read_splat(tmp_path / "empty.splat")


# --------------------------------------------------------------------------- converter


def _converter():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "convert_splats.py"
    spec = importlib.util.spec_from_file_location("convert_splats", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_splats_command(tmp_path, capsys):
    from matrix_world.app.cli import run_main

    conv = _converter()
    g = random_gaussians(12, seed=13)
    cols = standard_columns(g)
    cols["filter_3D"] = np.full(12, 0.05, np.float32)
    write_custom_ply(tmp_path / "m3d.ply", cols)
    assert run_main(conv.main, [str(tmp_path / "m3d.ply"), str(tmp_path / "out.ply"), "--axes", "blender"]) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "filter_3D" in err
    out = PlyData.read(str(tmp_path / "out.ply"))
    assert "filter_3D" not in [p.name for p in out["vertex"].properties]
    h = read_ply(tmp_path / "out.ply")
    with pytest.warns(SplatNote):
        fused = read_ply(tmp_path / "m3d.ply")
    assert torch.allclose(h.covariances(), to_axes(fused, "blender").covariances(), atol=1e-5)
    assert run_main(conv.main, [str(tmp_path / "out.ply"), str(tmp_path / "back.spz"), "--in-axes", "blender"]) == 0
    assert (load_splats(tmp_path / "back.spz").means - fused.means).abs().max() < 1e-3
    assert run_main(conv.main, [str(tmp_path / "nope.ply"), str(tmp_path / "x.ply")]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: ") 
    assert run_main(conv.main, [str(tmp_path / "out.ply"), str(tmp_path / "x.spz"), "--axes", "unity"]) == 2
