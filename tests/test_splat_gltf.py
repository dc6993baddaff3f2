"""glTF 2.0 KHR_gaussian_splatting .glb splats, .spz axes, and the collider mesh."""

import json
import math
import struct
import warnings

import numpy as np
import pytest
import torch

from matrix_world.axes import to_axes
from matrix_world.collider import ColliderConfig, collider_mesh, collider_radius, sky_shell_radius, write_collider
from matrix_world.errors import InputError, SplatNote
from matrix_world.gaussians import Gaussians
from matrix_world.splat_gltf import EXTENSION, decode_glb, encode_glb, sh_attribute_names, split_glb
from matrix_world.splat_io import decode_spz, encode_spz, load_splats, save_splats
from test_splat_io import _converter, random_gaussians


def _glb(doc: dict, binary: bytes) -> bytes:
    text = json.dumps(doc).encode()
    text += b" " * ((-len(text)) % 4)
    binary += b"\0" * ((-len(binary)) % 4)
    total = 28 + len(text) + len(binary)
    return struct.pack("<IIIII", 0x46546C67, 2, total, len(text), 0x4E4F534A) + text + struct.pack("<II", len(binary), 0x004E4942) + binary


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_glb_roundtrip_values(tmp_path, degree):
    g = random_gaussians(200, degree=degree, seed=degree)
    save_splats(tmp_path / "w.glb", g)
    h = load_splats(tmp_path / "w.glb")
    assert h.sh_degree == degree
    assert (h.means - g.means).abs().max() == 0  # the axis change negates: exact in float32
    assert (h.sh_dc - g.sh_dc).abs().max() == 0
    if degree:
        assert (h.sh_rest - g.sh_rest).abs().max() < 1e-6  # rotated there and back by a 180-degree turn
    assert (h.log_scales - g.log_scales).abs().max() < 1e-6
    assert (h.opacities - g.opacities).abs().max() < 1e-6
    assert torch.allclose(h.covariances(), g.covariances(), rtol=1e-5, atol=1e-7)


def test_glb_layout_follows_the_extension():
    g = random_gaussians(10, degree=2, seed=3)
    doc, binary = split_glb(encode_glb(g))
    assert doc["asset"]["version"] == "2.0" and doc["extensionsUsed"] == [EXTENSION] and "extensionsRequired" not in doc
    prim = doc["meshes"][0]["primitives"][0]
    assert prim["mode"] == 0
    assert prim["extensions"][EXTENSION] == {"kernel": "ellipse", "colorSpace": "srgb_rec709_display",
                                             "projection": "perspective", "sortingMethod": "cameraDistance"}
    expected = {"POSITION", "COLOR_0", f"{EXTENSION}:ROTATION", f"{EXTENSION}:SCALE", f"{EXTENSION}:OPACITY",
                f"{EXTENSION}:SH_DEGREE_0_COEF_0", *sh_attribute_names(2)}
    assert set(prim["attributes"]) == expected and len(sh_attribute_names(2)) == 8
    pos = doc["accessors"][prim["attributes"]["POSITION"]]
    view = doc["bufferViews"][pos["bufferView"]]
    p = np.frombuffer(binary, "<f4", 30, view["byteOffset"]).reshape(10, 3)
    # glTF axes: +Y up, +Z forward, -X right = ours turned 180 degrees about z
    assert np.array_equal(p, (g.means * torch.tensor([-1.0, -1.0, 1.0])).numpy())
    assert np.allclose(pos["min"], p.min(0)) and np.allclose(pos["max"], p.max(0))
    op = doc["accessors"][prim["attributes"][f"{EXTENSION}:OPACITY"]]
    o = np.frombuffer(binary, "<f4", 10, doc["bufferViews"][op["bufferView"]]["byteOffset"])
    assert np.allclose(o, g.opacities.numpy(), atol=1e-7)  # after the sigmoid
    sc = doc["accessors"][prim["attributes"][f"{EXTENSION}:SCALE"]]
    s = np.frombuffer(binary, "<f4", 30, doc["bufferViews"][sc["bufferView"]]["byteOffset"]).reshape(10, 3)
    assert np.allclose(s, g.scales.numpy(), rtol=1e-6)  # linear, not logs


def _quantised_doc(g: Gaussians, node: dict):
    """A hand-made .glb in glTF axes: normalised int16 rotations with a byte stride, uint8 opacity, node transform."""
    t = to_axes(g, "gltf")
    n = len(t)
    q = torch.nn.functional.normalize(t.quats.double(), dim=-1)[:, [1, 2, 3, 0]].numpy()
    rot = np.zeros((n, 6), np.int16)  # 4 used + 2 padding int16 per element: byteStride 12
    rot[:, :4] = np.round(q * 32767)
    parts = [t.means.numpy().astype("<f4").tobytes(), rot.tobytes(), t.scales.numpy().astype("<f4").tobytes(),
             np.round(t.opacities.numpy() * 255).astype(np.uint8).tobytes(), t.sh_dc[:, 0].numpy().astype("<f4").tobytes()]
    views, offset, blob = [], 0, b""
    for part, stride in zip(parts, [None, 12, None, None, None]):
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(part), **({"byteStride": stride} if stride else {})})
        pad = (-len(part)) % 4
        blob += part + b"\0" * pad
        offset += len(part) + pad
    acc = [{"bufferView": 0, "componentType": 5126, "count": n, "type": "VEC3"},
           {"bufferView": 1, "componentType": 5122, "normalized": True, "count": n, "type": "VEC4"},
           {"bufferView": 2, "componentType": 5126, "count": n, "type": "VEC3"},
           {"bufferView": 3, "componentType": 5121, "normalized": True, "count": n, "type": "SCALAR"},
           {"bufferView": 4, "componentType": 5126, "count": n, "type": "VEC3"}]
    names = ["POSITION", f"{EXTENSION}:ROTATION", f"{EXTENSION}:SCALE", f"{EXTENSION}:OPACITY", f"{EXTENSION}:SH_DEGREE_0_COEF_0"]
    doc = {"asset": {"version": "2.0"}, "extensionsUsed": [EXTENSION], "scene": 0,
           "scenes": [{"nodes": [0]}], "nodes": [{"children": [1]}, {"mesh": 0, **node}],
           "meshes": [{"primitives": [{"attributes": dict(zip(names, range(5))), "mode": 0,
                                       "extensions": {EXTENSION: {"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}}}]}],
           "buffers": [{"byteLength": len(blob)}], "bufferViews": views, "accessors": acc}
    return doc, blob


def test_glb_reader_takes_quantised_attributes_strides_and_node_transforms():
    g = random_gaussians(50, seed=4)
    h = decode_glb(_glb(*_quantised_doc(g, {})))
    assert (h.means - g.means).abs().max() == 0
    cov = g.covariances()
    assert (h.covariances() - cov).abs().max() <= 3e-4 * cov.abs().max()  # int16 quaternions: ~3e-5 rad
    assert (h.opacities - g.opacities).abs().max() <= 0.5 / 255 + 1e-6
    # a node turned 90 degrees about glTF's y, scaled by 2 and moved: the Gaussians follow exactly
    s = math.sqrt(0.5)
    node = {"translation": [1.0, 2.0, 3.0], "rotation": [0.0, s, 0.0, s], "scale": [2.0, 2.0, 2.0]}
    moved = decode_glb(_glb(*_quantised_doc(g, node)))
    m = torch.tensor([[0.0, 0, 2, 1], [0, 2, 0, 2], [-2, 0, 0, 3], [0, 0, 0, 1]], dtype=torch.float64)  # T R S in glTF axes
    flip = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))  # ours <-> glTF (its own inverse)
    expected = h.transform(flip @ m @ flip)
    assert torch.allclose(moved.means, expected.means, atol=1e-5)
    assert torch.allclose(moved.covariances(), expected.covariances(), rtol=1e-4, atol=1e-6)


def test_bad_glb_raise_input_error():
    g = random_gaussians(8, seed=5)
    good = encode_glb(g)
    doc, binary = split_glb(good)

    def variant(edit):
        d = json.loads(json.dumps(doc))
        edit(d)
        return _glb(d, binary)

    prim = lambda d: d["meshes"][0]["primitives"][0]
    cases = {
        "not a binary glTF": b"x" * 40,
        "truncated": good[: len(good) // 2],
        "requires glTF extensions": variant(lambda d: d.update(extensionsRequired=["KHR_gaussian_splatting_compression_spz_2"])),
        "missing required attributes": variant(lambda d: prim(d)["attributes"].pop(f"{EXTENSION}:SCALE")),
        "partially defined": variant(lambda d: prim(d)["attributes"].update({f"{EXTENSION}:SH_DEGREE_1_COEF_0": 5})),
        "sparse": variant(lambda d: d["accessors"][0].update(sparse={"count": 1})),
        "reaches past": variant(lambda d: d["accessors"][0].update(count=10**6)),
        "no KHR_gaussian_splatting splats": variant(lambda d: prim(d).pop("extensions")),
        "mode POINTS": variant(lambda d: prim(d).update(mode=4)),
        "malformed glTF": variant(lambda d: d.pop("accessors")),
        "not supported (expected 'ellipse')": variant(lambda d: prim(d)["extensions"][EXTENSION].update(kernel="box")),
    }
    for message, blob in cases.items():
        with warnings.catch_warnings(), pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            warnings.simplefilter("ignore", SplatNote)
            decode_glb(blob)
    with pytest.raises(InputError, match="similarity"):  # non-uniform node scale cannot move Gaussians exactly
        decode_glb(variant(lambda d: d["nodes"][0].update(scale=[1.0, 2.0, 1.0])))
    with pytest.raises(InputError, match="defines its own axes"):
        save_splats("/nonexistent/x.glb", g, axes="unity")


def test_spz_axes_rdf_stores_our_frame_raw():
    g = random_gaussians(40, degree=1, seed=6, rgb_range=True)
    rub, rdf = decode_spz(encode_spz(g), spz_axes="rdf"), decode_spz(encode_spz(g, spz_axes="rdf"), spz_axes="rdf")
    # read raw, the RUB file has y and z negated; the RDF file is our frame as is
    assert (rub.means - g.means * torch.tensor([1.0, -1.0, -1.0])).abs().max() <= 0.5 / 4096 + 1e-6
    assert (rdf.means - g.means).abs().max() <= 0.5 / 4096 + 1e-6
    assert (rdf.log_scales - g.log_scales).abs().max() <= 0.5 / 16 + 1e-5
    q = torch.nn.functional.normalize(g.quats, dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    assert (rdf.quats[:, 1:] - q[:, 1:]).abs().max() <= 0.5 / 127.5 + 1e-4  # stored raw: x y z of the w >= 0 quaternion
    assert (decode_spz(encode_spz(g)).means - g.means).abs().max() <= 0.5 / 4096 + 1e-6  # rub both ways
    with pytest.raises(InputError, match="spz axes"):
        encode_spz(g, spz_axes="luf")


# --------------------------------------------------------------------------- collider


def _sphere_gaussians(n=4000, radius=2.0, seed=0, shell=0):
    gen = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n + shell, 3, generator=gen), dim=-1)
    r = torch.cat([torch.full((n,), radius), torch.full((shell,), 40.0)])
    k = n + shell
    return Gaussians(d * r[:, None], torch.tensor([[1.0, 0, 0, 0]]).repeat(k, 1), torch.full((k, 3), math.log(0.03)),
                     torch.full((k,), 3.0), torch.zeros(k, 1, 3))


def test_collider_of_a_sphere_is_closed_and_on_the_surface(tmp_path):
    import trimesh

    g = _sphere_gaussians(shell=3000)  # a sky shell at 40 m: found by its distances and left out
    assert sky_shell_radius(g.means.norm(dim=-1).numpy()) == pytest.approx(40.0 * math.exp(-0.04), rel=0.05)
    mesh = collider_mesh(g, ColliderConfig(resolution=48, target_faces=3000))
    assert mesh.gaussians_used == 4000 and len(mesh.faces) <= 3000
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces)
    edges = np.sort(tm.edges, axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts % 2 == 0).all() and tm.is_winding_consistent  # closed: no boundary edge
    assert tm.volume > 0  # faces wound outwards
    r = np.linalg.norm(mesh.vertices, axis=1)
    # a slab about two voxels thick around the r = 2 sphere of splats (voxel = 4 / 48)
    assert np.abs(r - 2.0).max() < 2.5 * mesh.voxel_size
    write_collider(tmp_path / "c.glb", mesh)
    back = trimesh.load(tmp_path / "c.glb", force="mesh")
    assert len(back.faces) == len(mesh.faces)
    assert np.allclose(np.sort(back.vertices[:, 1]), np.sort(-mesh.vertices[:, 1]), atol=1e-5)  # glTF: y up


def test_collider_radius_ignores_the_sky_and_the_horizon():
    near = np.random.default_rng(0).uniform(1.0, 10.0, 5000)
    assert collider_radius(np.concatenate([near, np.full(3000, 300.0)]), reach=2.0) == pytest.approx(
        1.5 * np.percentile(near, 90) + 2.0)
    with pytest.raises(InputError, match="resolution"):
        collider_mesh(_sphere_gaussians(100), ColliderConfig(resolution=2))


def test_convert_splats_writes_glb_and_collider(tmp_path, capsys):
    from matrix_world.app.cli import run_main

    conv = _converter()
    g = _sphere_gaussians(2000)
    save_splats(tmp_path / "in.ply", g)
    args = [str(tmp_path / "in.ply"), str(tmp_path / "w.glb"), "--collider", str(tmp_path / "c.glb"),
            "--collider-resolution", "32"]
    assert run_main(conv.main, args) == 0
    out = capsys.readouterr().out
    assert "collider of" in out
    assert (load_splats(tmp_path / "w.glb").means - g.means).abs().max() == 0
    assert run_main(conv.main, [str(tmp_path / "w.glb"), str(tmp_path / "raw.spz"), "--spz-axes", "rdf"]) == 0
    raw = decode_spz((tmp_path / "raw.spz").read_bytes(), spz_axes="rdf")
    assert (raw.means - g.means).abs().max() <= 0.5 / 4096 + 1e-6
    assert run_main(conv.main, [str(tmp_path / "in.ply"), str(tmp_path / "x.ply"), "--collider", str(tmp_path / "c.obj")]) == 2
    assert "must be a .glb" in capsys.readouterr().err
