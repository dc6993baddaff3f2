"""Corrupt input is refused with one line, before anything is written (the bad-input sweep):
truncated images, distance maps outside the one rule, absurd trajectories, malformed LoRA
checkpoints, LoRA specs that name nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from matrix_world.app.cli import run_main
from matrix_world.errors import InputError
from matrix_world.io import check_image_file, read_distance, read_image
from matrix_world.pipeline import WorldConfig, WorldPipeline
from matrix_world.pipeline.config import check_inputs
from matrix_world.app.world_cli import image2world_main, text2world_main

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
H = 16
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def refused(capsys, main, argv, out) -> str:
    """``main(argv)`` exits 2 with one ``error:`` line and leaves no ``out`` folder; returns the line."""
    assert run_main(main, [*argv, "--out", str(out), "--device", "cpu", "--preset", "preview"]) == 2
    err = one_line_error(capsys)
    assert not out.exists()
    return err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    f = tmp_path_factory.mktemp("corrupt")
    rng = np.random.default_rng(0)
    pano = (rng.random((H, 2 * H, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(f / "pano.jpg"), pano)
    cv2.imwrite(str(f / "pano.png"), pano)
    jpg, png = (f / "pano.jpg").read_bytes(), (f / "pano.png").read_bytes()
    (f / "trunc.jpg").write_bytes(jpg[: len(jpg) // 3])
    (f / "trunc.png").write_bytes(png[: len(png) // 2])
    broken = bytearray(png)
    broken[len(broken) // 2] ^= 0xFF  # a flipped byte in the image data: CRC / zlib error
    (f / "crc.png").write_bytes(bytes(broken))
    (f / "trunc_named.png").write_bytes(jpg[: len(jpg) // 3])  # a JPEG by content, whatever the suffix

    good = (1.0 + rng.random((H, 2 * H))).astype(np.float32)
    np.save(f / "good.npy", good)
    nan = good.copy()
    nan[2, 3] = nan[4, 5] = np.nan
    np.save(f / "nan.npy", nan)
    np.save(f / "int64.npy", np.round(good * 1000).astype(np.int64))
    np.save(f / "object.npy", np.array([good, "x"], dtype=object), allow_pickle=True)
    np.save(f / "small.npy", good[:8, :16])
    huge = good.astype(np.float64)
    huge[0, 0] = 1e300
    np.save(f / "huge.npy", huge)
    zero = good.copy()
    zero[1, 1] = 0.0
    np.save(f / "zero.npy", zero)
    sky = good.copy()
    sky[:3] = np.inf
    np.save(f / "sky16.npy", sky.astype(np.float16))
    np.savez(f / "nokey.npz", depth=good)
    sky_mask = np.zeros_like(good, bool)
    sky_mask[:2] = True
    nan_in_sky = good.copy()
    nan_in_sky[0, 0] = np.nan  # under the sky mask: sky whatever the value
    np.savez(f / "masked.npz", distance=nan_in_sky, sky=sky_mask)

    def traj(poses, name):
        (f / name).write_text(json.dumps({"convention": "opencv_c2w", "poses": [p.ravel().tolist() for p in poses]}))

    far = np.eye(4)
    far[:3, 3] = [0.0, 0.0, 1e30]
    traj([np.eye(4), far], "far.json")
    scaled = np.eye(4)
    scaled[:3, :3] *= 1.5
    traj([np.eye(4), np.eye(4), scaled], "scaled.json")
    step = np.eye(4)
    step[2, 3] = 0.5
    traj([np.eye(4), step], "ok.json")
    eye = json.dumps(np.eye(4).ravel().tolist())
    nan_pose = eye.replace("1.0]", "NaN]")  # JSON's NaN literal in pose 1
    (f / "nan.json").write_text(f'{{"convention": "opencv_c2w", "poses": [{eye}, {nan_pose}]}}')
    (f / "far_matrix3d.json").write_text(json.dumps([np.eye(4).tolist(), np.linalg.inv(far).tolist()]))
    return f


def world(f: Path, out: Path, **kw) -> WorldConfig:
    base = {"image": str(f / "pano.png"), "panorama": True, "out": str(out), "preset": "preview", "resolution": 64,
            "frames": 9, "device": "cpu"}
    return WorldConfig(**{**base, **kw})


# --------------------------------------------------------------------------- 1. truncated images


@pytest.mark.parametrize("name, kind", [("trunc.jpg", "JPEG"), ("trunc.png", "PNG"), ("crc.png", "PNG"),
                                        ("trunc_named.png", "JPEG")])
def test_truncated_image_is_refused(files, name, kind):
    for read in (check_image_file, read_image, lambda p: read_image(p, strict=True)):
        with pytest.raises(InputError, match=f"{name} is a truncated or corrupt {kind} file .*expected a complete {kind}"):
            read(files / name)
    assert check_image_file(files / "pano.jpg") == (H, 2 * H)
    assert read_image(files / "pano.png").shape == (H, 2 * H, 3)


def test_truncated_panorama_image2world_writes_nothing(files, tmp_path, capsys):
    out = tmp_path / "run"
    err = refused(capsys, image2world_main, [str(files / "trunc.jpg"), "--panorama"], out)
    assert "trunc.jpg is a truncated or corrupt JPEG file" in err and "expected a complete JPEG file" in err
    with pytest.raises(InputError, match="truncated or corrupt PNG"):  # a photo too, not only panoramas
        WorldPipeline(log=lambda *_: None)(world(files, out, image=str(files / "trunc.png"), panorama=False))
    assert not out.exists()


def test_truncated_panorama_script_exit_code(files, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "image2world.py"), str(files / "trunc.jpg"), "--panorama",
                           "--out", str(out), "--device", "cpu", "--preset", "preview"],
                          capture_output=True, text=True, env=ENV, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: image ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "truncated or corrupt JPEG" in proc.stderr and not out.exists()


def test_truncated_panorama_render_scaffold(files, tmp_path, capsys):
    sys.path.insert(0, str(SCRIPTS))
    import render_scaffold

    out = tmp_path / "run"
    assert run_main(render_scaffold.main, ["--panorama", str(files / "trunc.jpg"), "--distance", str(files / "good.npy"),
                                           "--trajectory", "straight", "--out", str(out), "--allow-convert"]) == 2
    assert "truncated or corrupt JPEG" in one_line_error(capsys) and not out.exists()


# --------------------------------------------------------------------------- 2. one distance reader


def _depth_file_backend(path):
    from matrix_world.generation.depth import DepthConfig, estimate_depth

    return estimate_depth(np.zeros((H, 2 * H, 3), np.float32), DepthConfig(backend="file", path=str(path)))


def _render_scaffold_reader(path):  # what scaffold_job reads: the panorama's shape required
    return read_distance(path, (H, 2 * H))[0]


READERS = {"read_distance": read_distance, "depth file backend": _depth_file_backend,
           "render_scaffold": _render_scaffold_reader}
BAD_DISTANCES = [  # (file, words of the one-line message)
    ("nan.npy", ["has 2 NaN value(s)", "expected distances > 0"]),
    ("int64.npy", ["dtype int64", "quantised depth image", "expected float32"]),
    ("object.npy", ["Python-object array", "float16/32/64 [H, W]"]),
    ("huge.npy", ["1 value(s) beyond float32's range"]),
    ("zero.npy", ["1 value(s) <= 0"]),
    ("nokey.npz", ["no 'distance' array", "['depth']"]),
    ("missing.npy", ["does not exist"]),
]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name, words", BAD_DISTANCES, ids=[c[0] for c in BAD_DISTANCES])
def test_every_distance_reader_has_the_same_rule(files, reader, name, words):
    with pytest.raises(InputError) as err:
        READERS[reader](files / name)
    message = str(err.value)
    assert "\n" not in message and message == str(pytest.raises(InputError, read_distance, files / name).value)
    for word in words:
        assert word in message, (word, message)


def test_distance_rule_accepts(files):
    d, sky = read_distance(files / "sky16.npy", (H, 2 * H))  # float16, +inf = sky
    assert d.dtype == np.float32 and sky[:3].all() and not sky[3:].any() and np.isinf(d[sky]).all()
    d, sky = read_distance(files / "masked.npz")  # an .npz 'sky' mask overrides the values under it
    assert sky[:2].all() and not sky[2:].any() and np.isposinf(d[:2]).all()
    result = _depth_file_backend(files / "sky16.npy")
    assert np.array_equal(result.sky, np.isinf(np.load(files / "sky16.npy"))) and np.isfinite(result.distance).all()
    with pytest.raises(InputError, match=r"is 8x16 \(H x W\) but the panorama is 16x32; expected the same size"):
        read_distance(files / "small.npy", (H, 2 * H))


@pytest.mark.parametrize("name, words", [("nan.npy", ["has 2 NaN"]), ("int64.npy", ["dtype int64"]),
                                         ("small.npy", ["8x16", "panorama is 16x32"])])
def test_image2world_distance_refused_before_writing(files, tmp_path, capsys, name, words):
    err = refused(capsys, image2world_main, [str(files / "pano.png"), "--panorama", "--distance", str(files / name)],
                  tmp_path / "run")
    for word in words:
        assert word in err, (word, err)


def test_good_inputs_pass_the_checks(files, tmp_path):
    check_inputs(world(files, tmp_path / "run", distance=str(files / "good.npy"), trajectory=str(files / "ok.json"),
                       wan_lora="none", flux_lora="matrix3d"))
    check_inputs(world(files, tmp_path / "run", image=str(files / "pano.jpg"), wan_lora="owner/some-lora"))
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 3. trajectories


@pytest.mark.parametrize("name, words", [
    ("far.json", ["pose 1 has translation |t| = 1e+30", "beyond 10000"]),
    ("far_matrix3d.json", ["pose 1 has translation |t| = 1e+30"]),
    ("scaled.json", ["pose 2 is not a rigid transform"]),
    ("nan.json", ["pose 1 contains NaN or Inf"]),
])
def test_bad_trajectory_refused_before_writing(files, tmp_path, capsys, name, words):
    from matrix_world.trajectory import load_trajectory

    with pytest.raises(InputError) as err:
        load_trajectory(str(files / name), np.ones((H, 2 * H), np.float32))
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    err = refused(capsys, text2world_main, ["a room", "--trajectory", str(files / name)], tmp_path / "run")
    assert f"{name}: {words[0]}" in err  # the file and the pose are named


def test_translation_bound_applies_to_trajectories_in_memory():
    from matrix_world.trajectory import MAX_TRANSLATION, Trajectory

    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    c2w[1, 0, 3] = MAX_TRANSLATION  # the bound itself is accepted
    Trajectory(c2w)
    c2w[1, 0, 3] = 2 * MAX_TRANSLATION
    with pytest.raises(InputError, match="pose 1 has translation"):
        Trajectory(c2w)


# --------------------------------------------------------------------------- 4. the LoRA converter


def official(rank=4, dim=8, blocks=2) -> dict:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(blocks):
        for module in ("self_attn.q", "cross_attn.k", "ffn.0"):
            out = 2 * dim if module == "ffn.0" else dim
            sd[f"diffusion_model.blocks.{i}.{module}.lora_A.weight"] = torch.randn(rank, dim, generator=g)
            sd[f"diffusion_model.blocks.{i}.{module}.lora_B.weight"] = torch.randn(out, rank, generator=g)
    return sd


def _convert(tmp_path, state, capsys):
    sys.path.insert(0, str(SCRIPTS))
    import convert_matrix3d_lora

    torch.save(state, tmp_path / "in.ckpt")
    out = tmp_path / "out.safetensors"
    code = convert_matrix3d_lora.main([str(tmp_path / "in.ckpt"), str(out)])
    captured = capsys.readouterr()
    return code, captured, out


def test_converter_good_checkpoint(tmp_path, capsys):
    code, captured, out = _convert(tmp_path, official(), capsys)
    assert code == 0 and "6 LoRA modules, rank 4" in captured.out and out.is_file()


@pytest.mark.parametrize("edit, words", [
    (lambda sd: sd.__setitem__("diffusion_model.blocks.0.self_attn.q.lora_A.weight", torch.zeros(4, 8, 2)),
     ["blocks.0.self_attn.q.lora_A.weight (4, 8, 2) float32 (expected a 2-D float lora_A [rank, in])"]),
    (lambda sd: sd.__setitem__("diffusion_model.blocks.1.ffn.0.lora_B.weight", torch.zeros(16)),
     ["blocks.1.ffn.0.lora_B.weight (16,)", "lora_B [out, rank]"]),
    (lambda sd: sd.__setitem__("diffusion_model.blocks.1.cross_attn.k.lora_B.weight", torch.zeros(8, 3)),
     ["blocks.1.cross_attn.k: lora_A (4, 8) and lora_B (8, 3) have ranks 4 and 3"]),
    (lambda sd: sd.update({k: torch.zeros(8 if "lora_A" in k else v.shape[0], v.shape[1] if "lora_A" in k else 8)
                           for k, v in list(sd.items()) if "blocks.1.self_attn.q" in k}),
     ["ranks differ between modules (rank 4: 5 e.g.", "rank 8: 1 e.g. blocks.1.self_attn.q"]),
    (lambda sd: sd.__setitem__("diffusion_model.blocks.1.self_attn.q.lora_A.weight", torch.zeros(4, 12)),
     ["blocks.N.self_attn.q: in/out sizes differ between blocks"]),
    (lambda sd: sd.__setitem__("diffusion_model.blocks.0.ffn.0.lora_A.weight", torch.zeros(4, 8, dtype=torch.int64)),
     ["blocks.0.ffn.0.lora_A.weight (4, 8) int64"]),
    (lambda sd: sd.__setitem__("diffusion_model.blocks.0.self_attn.norm_q.lora_A.weight", torch.zeros(4, 8)),
     ["no mapping", "blocks.0.self_attn.norm_q"]),
])
def test_converter_bad_checkpoint_exit_2_nothing_written(tmp_path, capsys, edit, words):
    state = official()
    edit(state)
    code, captured, out = _convert(tmp_path, state, capsys)
    assert code == 2 and not out.exists() and not list(tmp_path.glob(".out*")), captured.err
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1 and "rank 4" not in captured.out, err
    for word in words:
        assert word in err, (word, err)


def test_converter_script_subprocess(tmp_path):
    state = official()
    state["diffusion_model.blocks.0.self_attn.q.lora_A.weight"] = torch.zeros(4, 8, 2)
    torch.save(state, tmp_path / "bad.ckpt")
    out = tmp_path / "out.safetensors"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "convert_matrix3d_lora.py"), str(tmp_path / "bad.ckpt"),
                           str(out)], capture_output=True, text=True, env=ENV, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "1 bad LoRA tensor(s)" in proc.stderr, proc.stderr
    assert "nothing written" in proc.stderr and not out.exists() and proc.stdout == ""


# --------------------------------------------------------------------------- 5. LoRA specs


@pytest.mark.parametrize("flag, value, words", [
    ("--wan-lora", "matrix3D", ["--wan-lora 'matrix3D' is neither none, matrix3d", "hub id owner/name"]),
    ("--wan-lora", "/no/such/lora.safetensors", ["--wan-lora /no/such/lora.safetensors does not exist"]),
    ("--wan-lora", "lora.ckpt", ["--wan-lora lora.ckpt does not exist"]),
    ("--wan-lora", "owner/name/extra", ["does not exist"]),
    ("--flux-lora", "./pano_lora", ["--flux-lora ./pano_lora does not exist"]),
    ("--flux-lora", "pano-lora", ["--flux-lora 'pano-lora' is neither none, matrix3d,"]),
])
def test_unknown_lora_spec_refused_before_writing(tmp_path, capsys, flag, value, words):
    err = refused(capsys, text2world_main, ["a room", flag, value], tmp_path / "run")
    for word in words:
        assert word in err, (word, err)


def test_lora_specs_accepted_and_folders(files, tmp_path):
    from matrix_world.generation.flux_lora import validate_lora_spec as flux_spec
    from matrix_world.generation.wan_lora import validate_lora_spec as wan_spec

    from safetensors.torch import save_file

    lora = tmp_path / "mine.safetensors"
    save_file({"w": torch.zeros(1)}, str(lora))  # a real header: a file spec's header is read (issue 18)
    for spec, kind in (("none", "none"), ("None", "none"), ("matrix3d", "alias"), ("matrix3d-720p", "alias"),
                       (str(lora), "file"), ("Skywork/Matrix-3D", "hub")):
        assert wan_spec(spec) == kind
    assert flux_spec("matrix3d") == "alias" and flux_spec(str(tmp_path)) == "folder"  # its only .safetensors
    with pytest.raises(InputError, match="is a folder; expected a LoRA file"):
        wan_spec(str(tmp_path))
    (tmp_path / "other.safetensors").write_bytes(b"x")
    with pytest.raises(InputError, match="holds 2 .safetensors files; expected exactly one"):
        flux_spec(str(tmp_path))
    check_inputs(world(files, tmp_path / "run", wan_lora=str(lora), flux_lora="none"))
