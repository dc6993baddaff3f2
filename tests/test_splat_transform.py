"""Our exports read and written by a third-party tool: PlayCanvas splat-transform (the converter behind
SuperSplat), values compared, not only "it opened".

splat-transform is found through $SPLAT_TRANSFORM (its CLI, e.g. node_modules/.bin/splat-transform) or
on PATH; CI installs it (.ci/run). Without node or splat-transform every test skips with the reason.
Each check goes through splat-transform's readers and writers and back into our readers:

* .ply / .splat / .spz (ours) -> splat-transform -> .ply, read by us: their decoders against ours;
* .ply (ours) -> splat-transform -> .spz (version 3, Niantic's library) and .glb (their
  KHR_gaussian_splatting writer), read by us: their encoders against our decoders;
* our .glb against theirs, attribute by attribute (splat-transform has no .glb reader).

Covariances are compared, not quaternions: R and R·diag(1, -1, -1) are one Gaussian, and SPZ's
axis conversion picks one or the other.
"""

import json
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch

from matrix_world.errors import SplatNote
from matrix_world.splat_gltf import EXTENSION, read_glb, split_glb
from matrix_world.splat_io import read_ply, read_spz, save_splats
from test_splat_io import random_gaussians


def _splat_transform() -> list[str]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed (splat-transform runs on node)")
    cli = os.environ.get("SPLAT_TRANSFORM") or shutil.which("splat-transform")
    if not cli or not os.path.exists(cli):
        pytest.skip("splat-transform not found: npm install @playcanvas/splat-transform and set SPLAT_TRANSFORM "
                    "to node_modules/.bin/splat-transform (CI does)")
    return [cli]


@pytest.fixture(scope="module")
def splat_transform():
    cmd = _splat_transform()
    out = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=60)
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if out.returncode != 0 or match is None:
        pytest.skip(f"splat-transform does not run here: {(out.stderr or out.stdout).strip()[:200]}")
    version = tuple(int(v) for v in match.groups())

    def run(src, dst, *extra):
        done = subprocess.run(cmd + ["-q", "-w", str(src), *extra, str(dst)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return dst

    run.version = version
    return run


@pytest.fixture(scope="module")
def world():
    return random_gaussians(300, degree=3, seed=21, rgb_range=True)


def _read_ply(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SplatNote; their float32 quaternions renormalised
        return read_ply(path, opacity="logit")


def _assert_close(a, b, *, means, log_scales, opacity, dc, rest, cov_rel):
    assert (a.means - b.means).abs().max() <= means
    assert (a.log_scales - b.log_scales).abs().max() <= log_scales
    assert (a.opacities - b.opacities).abs().max() <= opacity
    assert (a.sh_dc - b.sh_dc).abs().max() <= dc
    if rest is not None:
        assert a.sh_degree == b.sh_degree and (a.sh_rest - b.sh_rest).abs().max() <= rest
    ca, cb = a.covariances().double(), b.covariances().double()
    scale = cb.flatten(1).abs().amax(1)[:, None, None]
    assert ((ca - cb).abs() / scale).max() <= cov_rel


def test_ply_is_read_and_written_bit_exactly(tmp_path, splat_transform, world):
    save_splats(tmp_path / "ours.ply", world)
    theirs = _read_ply(splat_transform(tmp_path / "ours.ply", tmp_path / "theirs.ply"))
    _assert_close(theirs, world, means=0, log_scales=0, opacity=0, dc=0, rest=0, cov_rel=0)


def test_splat_is_decoded_as_we_decode_it(tmp_path, splat_transform, world):
    from matrix_world.splat_io import read_splat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SplatNote)  # .splat has no SH bands
        save_splats(tmp_path / "ours.splat", world)
    ours = read_splat(tmp_path / "ours.splat")
    theirs = _read_ply(splat_transform(tmp_path / "ours.splat", tmp_path / "theirs.ply"))
    # quaternion bytes: antimatter15 (and we) decode (v - 128) / 128, splat-transform (v - 127.5) / 127.5,
    # half a quantisation step apart
    _assert_close(theirs, ours, means=0, log_scales=1e-6, opacity=1e-6, dc=1e-6, rest=None, cov_rel=0.05)
    assert (theirs.quats - ours.quats).abs().max() <= 1.0 / 128
    # and both are the world within .splat's 8-bit quantisation (colour, opacity, quaternion)
    _assert_close(theirs, world, means=0, log_scales=1e-6, opacity=0.5 / 255 + 1e-6, dc=0.5 / 255 / 0.2821 + 1e-5,
                  rest=None, cov_rel=0.1)


def test_spz_rub_is_placed_like_the_ply(tmp_path, splat_transform, world):
    if splat_transform.version < (2, 1, 0):
        pytest.skip(f"splat-transform {splat_transform.version} reads .spz raw (RUB handling came in 2.1.0)")
    save_splats(tmp_path / "ours.spz", world)  # RUB, the SPZ spec's axes
    theirs = _read_ply(splat_transform(tmp_path / "ours.spz", tmp_path / "theirs.ply"))
    ours = read_spz(tmp_path / "ours.spz")
    _assert_close(theirs, ours, means=1e-6, log_scales=1e-6, opacity=1e-6, dc=1e-6, rest=1e-6, cov_rel=1e-4)
    _assert_close(theirs, world, means=0.5 / 4096 + 1e-6, log_scales=0.5 / 16 + 1e-5, opacity=0.5 / 255 + 1e-6,
                  dc=0.5 / (0.15 * 255) + 1e-5, rest=8.5 / 128 + 1e-5, cov_rel=0.2)
    # --spz-axes rdf: splat-transform (which converts RUB) sees y and z negated, as raw readers see a RUB file
    save_splats(tmp_path / "raw.spz", world, spz_axes="rdf")
    flipped = _read_ply(splat_transform(tmp_path / "raw.spz", tmp_path / "raw.ply"))
    assert (flipped.means - world.means * torch.tensor([1.0, -1.0, -1.0])).abs().max() <= 0.5 / 4096 + 1e-6


def test_their_spz_is_read_by_us(tmp_path, splat_transform, world):
    save_splats(tmp_path / "ours.ply", world)
    theirs = read_spz(splat_transform(tmp_path / "ours.ply", tmp_path / "theirs.spz", "--spz-version", "3"))
    _assert_close(theirs, world, means=0.5 / 4096 + 1e-6, log_scales=0.5 / 16 + 1e-5, opacity=0.5 / 255 + 1e-6,
                  dc=0.5 / (0.15 * 255) + 1e-5, rest=8.5 / 128 + 1e-5, cov_rel=0.2)


def test_their_glb_is_read_by_us_and_matches_ours(tmp_path, splat_transform, world):
    save_splats(tmp_path / "ours.ply", world)
    save_splats(tmp_path / "ours.glb", world)
    splat_transform(tmp_path / "ours.ply", tmp_path / "theirs.glb")
    theirs = read_glb(tmp_path / "theirs.glb")
    _assert_close(theirs, world, means=0, log_scales=1e-6, opacity=1e-6, dc=0, rest=1e-6, cov_rel=1e-5)
    # attribute by attribute, in the file (glTF axes): same names, same extension object, same values
    docs = {who: split_glb((tmp_path / f"{who}.glb").read_bytes()) for who in ("ours", "theirs")}
    prims = {who: doc["meshes"][0]["primitives"][0] for who, (doc, _) in docs.items()}
    assert set(prims["ours"]["attributes"]) == set(prims["theirs"]["attributes"])
    assert prims["ours"]["extensions"][EXTENSION] == prims["theirs"]["extensions"][EXTENSION]
    assert prims["ours"]["mode"] == prims["theirs"]["mode"] == 0

    def values(who, name):
        doc, binary = docs[who]
        acc = doc["accessors"][prims[who]["attributes"][name]]
        view = doc["bufferViews"][acc["bufferView"]]
        dtype = {5126: "<f4", 5121: "u1"}[acc["componentType"]]
        width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc["type"]]
        return np.frombuffer(binary, dtype, acc["count"] * width, view["byteOffset"] + acc.get("byteOffset", 0)).reshape(-1, width)

    for name in prims["ours"]["attributes"]:
        a, b = values("ours", name), values("theirs", name)
        if name == "COLOR_0":  # the base spec wants linear COLOR_0: we decode sRGB, splat-transform does not
            assert np.array_equal(a[:, 3], b[:, 3])
            continue
        if name.endswith(":ROTATION"):  # q and -q are one rotation (we store w >= 0)
            a = a * np.sign((a * b).sum(1, keepdims=True))
        assert np.allclose(a, b, rtol=1e-6, atol=1e-7), name
    json.dumps(docs["ours"][0])  # our document is plain JSON
