"""The bad-input suite (issue 18): every script refuses hostile input with exit code 2, one
``error: ...`` line naming the input and what is expected, and an untouched output; a bug
prints one line and "rerun with --debug"; a resumed run recomputes an artifact that no longer
loads; two preview runs of one seed give the same world.ply.

The scripts run in-process (``main`` through ``run_main``, as the shell does), not as one
subprocess each: the whole file takes seconds, two tiny preview runs included.
"""

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from matrix_world.app.cli import EXIT_BUG, run_main
from matrix_world.pipeline import WorldPipeline
from script_helpers import SCRIPTS, box_distance, load_script, sha256, tiny_config

H = 16
quiet = lambda *_: None  # noqa: E731
GIB = 2**30


# --------------------------------------------------------------------------- the hostile files


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height, a tiny IDAT and IEND (a few hundred
    bytes that decode to gigabytes: a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class _Payload:
    """Unpickling this would create the marker folder (a pickle that runs code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture(scope="module")
def f(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(d / "pano.png"), (rng.random((H, 2 * H, 3)) * 255).astype(np.uint8))
    np.save(d / "dist.npy", box_distance(H))
    cv2.imwrite(str(d / "tiny.png"), np.zeros((1, 2, 3), np.uint8))  # a 2x1 "panorama"
    (d / "huge.png").write_bytes(png_header(20000, 10000))  # 200 megapixels
    (d / "bomb.png").write_bytes(png_header(100000, 50000))
    (d / "random.png").write_bytes(rng.bytes(3000))
    png = (d / "pano.png").read_bytes()
    (d / "trunc.png").write_bytes(png[: len(png) // 2])
    np.savez(d / "object.npz", distance=np.array([1.0, "x"], dtype=object))
    (d / "zip.npz").write_bytes(b"PK\x03\x04" + rng.bytes(500))
    nan = box_distance(H)
    nan[3, 4] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "small.npy", box_distance(H)[:8, :16])
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 99999999999999999999999\nproperty float x\n"
              "property float y\nproperty float z\nend_header\n")
    (d / "absurd.ply").write_bytes(header.encode() + bytes(24))
    (d / "random.ply").write_bytes(rng.bytes(2000))
    (d / "random.spz").write_bytes(rng.bytes(2000))
    (d / "random.safetensors").write_bytes(rng.bytes(2000))
    (d / "toolarge.safetensors").write_bytes(struct.pack("<Q", 10**15) + b"{}")
    (d / "random.ckpt").write_bytes(rng.bytes(2000))
    (d / "pickled.ckpt").write_bytes(b"\x80" + rng.bytes(2000))  # pickle protocol byte, then garbage
    torch.save({"lora": _Payload(d / "PAYLOAD_RAN")}, d / "code.ckpt")
    deep = "[" * 100_000 + "]" * 100_000  # RecursionError in json
    (d / "deep.json").write_text(deep)
    (d / "broken.json").write_text('{"poses": [[1, 2')
    (d / "a_file").write_text("not a folder")
    manifest_run = d / "deep_manifest_run"
    manifest_run.mkdir()
    (manifest_run / "manifest.json").write_text(deep)
    foreign = d / "foreign_run"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    import transformers  # noqa: F401  (its one-time import notice on stderr is not ours)

    return d


SCRIPT_CACHE: dict = {}


def script(name: str):
    if name not in SCRIPT_CACHE:
        SCRIPT_CACHE[name] = load_script(SCRIPTS / name, "bad_input_" + name.removesuffix(".py"))
    return SCRIPT_CACHE[name]


def snapshot(folder: Path) -> dict:
    """{relative path: sha256} of everything under ``folder`` ({} when it does not exist)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {".": sha256(folder)}
    return {str(p.relative_to(folder)): sha256(p) if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def refuse(capsys, name: str, argv: list[str], watched: list[Path]) -> str:
    """``scripts/NAME argv`` exits with 2, prints exactly one line on stderr, ``error: ...``, and
    leaves every watched path as it was; returns that line."""
    before = {str(p): snapshot(p) for p in watched}
    capsys.readouterr()
    code = run_main(script(name).main, argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    assert {str(p): snapshot(p) for p in watched} == before
    return lines[0]


# --------------------------------------------------------------------------- the cases

T2W = ["a quiet harbour town", "--preset", "preview", "--device", "cpu", "--frames", "9", "--resolution", "64",
       "--panorama-height", "64"]
I2W = ["--preset", "preview", "--device", "cpu", "--frames", "9", "--resolution", "64"]


def rs(**kw) -> list[str]:
    """render_scaffold.py options over the good inputs, overridden by ``kw`` (None drops one)."""
    base = {"panorama": "{f}/pano.png", "distance": "{f}/dist.npy", "trajectory": "straight", "out": "{out}",
            "frames": "5", "height": "16", "backend": "cpu"}
    base.update(kw)
    return [x for k, v in base.items() if v is not None for x in (f"--{k.replace('_', '-')}", v)]


# (script, arguments with {f} = the hostile files, {out} = the output; the words the error line must hold)
CASES = {
    # ---- text2world: options
    "t2w-device-banana": ("text2world.py", [*T2W, "--device", "banana"], ["--device 'banana' is not a device", "expected auto, cpu, cuda or cuda:N"]),
    "t2w-device-cuda-x": ("text2world.py", [*T2W, "--device", "cuda:x"], ["--device 'cuda:x' is not a device"]),
    "t2w-device-mps": ("text2world.py", [*T2W, "--device", "mps"], ["--device 'mps' is not a device"]),
    "t2w-seed-negative": ("text2world.py", [*T2W, "--seed", "-7"], ["--seed must be an integer in [0, 2**63), got -7"]),
    "t2w-seed-10e23": ("text2world.py", [*T2W, "--seed", str(10**23)], ["--seed must be an integer in [0, 2**63)", str(10**23)]),
    "t2w-frames-1e9": ("text2world.py", [*T2W, "--frames", "1000000000"], ["--frames must be between 2 and 2000", "1000000000"]),
    "t2w-frames-1": ("text2world.py", [*T2W, "--frames", "1"], ["--frames must be between 2 and 2000, got 1"]),
    "t2w-frames-abc": ("text2world.py", [*T2W, "--frames", "abc"], ["Error parsing --frames", "'abc'", "text2world.py --help"]),
    "t2w-resolution-16000": ("text2world.py", [*T2W, "--resolution", "16000"], ["--resolution must be a multiple of 16 from 64 to 2048", "16000"]),
    "t2w-resolution-100": ("text2world.py", [*T2W, "--resolution", "100"], ["--resolution must be a multiple of 16", "got 100"]),
    "t2w-panorama-height-20": ("text2world.py", [*T2W, "--panorama-height", "20"], ["--panorama-height must be a multiple of 8"]),
    "t2w-threads-0": ("text2world.py", [*T2W, "--threads", "0"], ["--threads must be at least 1"]),
    "t2w-exports-banana": ("text2world.py", [*T2W, "--exports", "banana"], ["--exports takes spz, splat, glb, collider", "'banana'"]),
    "t2w-video-backend": ("text2world.py", [*T2W, "--video-backend", "banana"], ["--video-backend must be one of auto, wan, fill"]),
    "t2w-preset": ("text2world.py", [*T2W, "--preset", "banana"], ["--preset", "banana"]),
    "t2w-unknown-option": ("text2world.py", [*T2W, "--colour", "red"], ["Unrecognized options", "--colour"]),
    "t2w-empty-prompt": ("text2world.py", ["", *T2W[1:]], ["an empty prompt", "describe the world in words"]),
    # ---- text2world: files and places
    "t2w-trajectory-deep-json": ("text2world.py", [*T2W, "--trajectory", "{f}/deep.json"], ["deep.json is JSON nested too deeply", "expected {\"convention\""]),
    "t2w-trajectory-broken-json": ("text2world.py", [*T2W, "--trajectory", "{f}/broken.json"], ["broken.json is not valid JSON", "expected"]),
    "t2w-trajectory-missing": ("text2world.py", [*T2W, "--trajectory", "{f}/nowhere.json"], ["unknown trajectory", "nowhere.json"]),
    "t2w-trajectory-preset-typo": ("text2world.py", [*T2W, "--trajectory", "s-curve"], ["unknown trajectory 's-curve'", "expected a preset"]),
    "t2w-wan-lora-random": ("text2world.py", [*T2W, "--wan-lora", "{f}/random.safetensors"], ["--wan-lora", "random.safetensors as .safetensors", "expected a complete .safetensors file"]),
    "t2w-wan-lora-header-too-large": ("text2world.py", [*T2W, "--wan-lora", "{f}/toolarge.safetensors"], ["toolarge.safetensors", "header too large", "expected a complete .safetensors file"]),
    "t2w-wan-lora-random-ckpt": ("text2world.py", [*T2W, "--wan-lora", "{f}/random.ckpt"], ["random.ckpt is neither a .safetensors file nor a torch file", "expected a LoRA"]),
    "t2w-flux-lora-random": ("text2world.py", [*T2W, "--flux-lora", "{f}/random.safetensors"], ["--flux-lora", "random.safetensors", "expected a complete .safetensors file"]),
    "t2w-wan-lora-missing": ("text2world.py", [*T2W, "--wan-lora", "{f}/none.safetensors"], ["none.safetensors does not exist", "expected"]),
    "t2w-out-is-a-file": ("text2world.py", [*T2W, "--out", "{f}/a_file"], ["a_file is a file", "expected a folder"]),
    "t2w-out-deep-manifest": ("text2world.py", [*T2W, "--out", "{f}/deep_manifest_run"], ["manifest.json is unreadable (RecursionError", "choose another output folder"]),
    "t2w-out-foreign-files": ("text2world.py", [*T2W, "--out", "{f}/foreign_run"], ["holds files that are not a matrix_world run (notes.txt)", "--overwrite"]),
    # ---- image2world: images and distance maps
    "i2w-panorama-2x1": ("image2world.py", ["{f}/tiny.png", "--panorama", *I2W], ["panorama", "tiny.png is 2x1 pixels", "expected at least 32x16"]),
    "i2w-photo-2x1": ("image2world.py", ["{f}/tiny.png", *I2W], ["image", "tiny.png is 2x1 pixels", "expected at least 16x16"]),
    "i2w-panorama-20000x10000": ("image2world.py", ["{f}/huge.png", "--panorama", *I2W], ["huge.png is 20000x10000 (200 megapixels)", "over the limit", "MATRIX_WORLD_MAX_IMAGE_PIXELS=200000000"]),
    "i2w-decompression-bomb": ("image2world.py", ["{f}/bomb.png", "--panorama", *I2W], ["bomb.png is 100000x50000", "over the limit", "expected a smaller image"]),
    "i2w-random-bytes-png": ("image2world.py", ["{f}/random.png", "--panorama", *I2W], ["cannot decode", "random.png", "expected a PNG/JPEG"]),
    "i2w-truncated-png": ("image2world.py", ["{f}/trunc.png", "--panorama", *I2W], ["trunc.png is a truncated or corrupt PNG", "expected a complete PNG"]),
    "i2w-missing-image": ("image2world.py", ["{f}/nowhere.png", "--panorama", *I2W], ["image", "nowhere.png does not exist"]),
    "i2w-no-image": ("image2world.py", I2W, ["image2world needs an image"]),
    "i2w-distance-object-array": ("image2world.py", ["{f}/pano.png", "--panorama", "--distance", "{f}/object.npz", *I2W], ["object.npz holds a Python-object array", "expected a float16/32/64"]),
    "i2w-distance-corrupt-zip": ("image2world.py", ["{f}/pano.png", "--panorama", "--distance", "{f}/zip.npz", *I2W], ["cannot read", "zip.npz", "expected a float16/32/64"]),
    "i2w-distance-nan": ("image2world.py", ["{f}/pano.png", "--panorama", "--distance", "{f}/nan.npy", *I2W], ["nan.npy", "NaN"]),
    "i2w-distance-wrong-size": ("image2world.py", ["{f}/pano.png", "--panorama", "--distance", "{f}/small.npy", *I2W], ["small.npy is 8x16", "expected the same size"]),
    "i2w-distance-without-panorama": ("image2world.py", ["{f}/pano.png", "--distance", "{f}/dist.npy", *I2W], ["--distance needs --panorama"]),
    # ---- render_scaffold: sizes against memory, options, files
    "rs-height-20000": ("render_scaffold.py", rs(height="20000", frames=None), ["81 frames of 40000x20000 (--height 20000) needs about", "expected a smaller --height or fewer --frames"]),
    "rs-frames-1e9": ("render_scaffold.py", rs(frames="1000000000"), ["1000000000 frames", "needs about", "expected a smaller --height or fewer --frames"]),
    "rs-device-banana": ("render_scaffold.py", rs(device="banana"), ["--device 'banana' is not a device", "expected cpu, cuda or cuda:N"]),
    "rs-backend-banana": ("render_scaffold.py", rs(backend="banana"), ["--backend: expected one of auto, cpu, cuda", "'banana'"]),
    "rs-height-0": ("render_scaffold.py", rs(height="0"), ["--height: expected a positive integer, got 0"]),
    "rs-panorama-20000x10000": ("render_scaffold.py", rs(panorama="{f}/huge.png"), ["huge.png is 20000x10000", "over the limit"]),
    "rs-distance-object-array": ("render_scaffold.py", rs(distance="{f}/object.npz"), ["object.npz holds a Python-object array"]),
    "rs-trajectory-deep-json": ("render_scaffold.py", rs(trajectory="{f}/deep.json"), ["deep.json is JSON nested too deeply"]),
    "rs-out-is-a-file": ("render_scaffold.py", rs(out="{f}/a_file"), ["a_file is a file", "expected a folder"]),
    "rs-missing-out": ("render_scaffold.py", rs(out=None), ["Missing from render_scaffold.py: --out PATH", "render_scaffold.py --help"]),
    # ---- view.py: ports and splat files (refused before a server starts: nothing hangs)
    "view-port-70000": ("view.py", ["{f}/absurd.ply", "--port", "70000"], ["--port: expected an integer from 0 to 65535, got 70000"]),
    "view-port-negative": ("view.py", ["{f}/absurd.ply", "--port", "-5"], ["--port: expected an integer from 0 to 65535, got -5"]),
    "view-ply-absurd-count": ("view.py", ["{f}/absurd.ply", "--port", "0"], ["absurd.ply: not a valid PLY file (its header claims 99999999999999999999999 vertex rows", "expected a complete PLY file"]),
    "view-ply-random": ("view.py", ["{f}/random.ply", "--port", "0"], ["random.ply", "not a valid PLY file", "expected a binary or ASCII .ply"]),
    "view-missing": ("view.py", ["{f}/nowhere", "--port", "0"], ["nowhere"]),
    "view-max-gaussians-0": ("view.py", ["{f}/absurd.ply", "--max-gaussians", "0"], ["--max-gaussians: expected a positive integer, got 0"]),
    # ---- convert_splats.py
    "convert-ply-absurd-count": ("convert_splats.py", ["{f}/absurd.ply", "{out}/w.spz"], ["not a valid PLY file (its header claims 99999999999999999999999 vertex rows"]),
    "convert-ply-random": ("convert_splats.py", ["{f}/random.ply", "{out}/w.spz"], ["random.ply", "not a valid PLY file", "expected a binary or ASCII .ply"]),
    "convert-spz-random": ("convert_splats.py", ["{f}/random.spz", "{out}/w.ply"], ["random.spz"]),
    "convert-budget-0": ("convert_splats.py", ["{f}/absurd.ply", "{out}/w.spz", "--budget", "0"], ["--budget: expected a positive integer, got 0"]),
    "convert-collider-not-glb": ("convert_splats.py", ["{f}/absurd.ply", "{out}/w.spz", "--collider", "{out}/c.obj"], ["--collider must be a .glb path", "'c.obj'"]),
    # ---- LoRA and LRM converters: weights files
    "lora-random-safetensors": ("convert_matrix3d_lora.py", ["{f}/random.safetensors", "{out}/o.safetensors"], ["random.safetensors as .safetensors", "expected a complete .safetensors file"]),
    "lora-header-too-large": ("convert_matrix3d_lora.py", ["{f}/toolarge.safetensors", "{out}/o.safetensors"], ["header too large", "expected a complete .safetensors file"]),
    "lora-random-ckpt": ("convert_matrix3d_lora.py", ["{f}/random.ckpt", "{out}/o.safetensors"], ["random.ckpt", "expected a .safetensors file or a torch file of tensors"]),
    "lora-pickle-garbage": ("convert_matrix3d_lora.py", ["{f}/pickled.ckpt", "{out}/o.safetensors"], ["pickled.ckpt", "expected a .safetensors file or a torch file of tensors"]),
    "lora-pickle-with-code": ("convert_matrix3d_lora.py", ["{f}/code.ckpt", "{out}/o.safetensors"], ["code.ckpt holds Python objects beyond tensors", "GLOBAL os.makedirs", "refused by torch.load(weights_only=True) without running them"]),
    "lora-output-suffix": ("convert_matrix3d_lora.py", ["{f}/random.ckpt", "{out}/o.bin"], ["output must end with .safetensors"]),
    "lrm-pickle-with-code": ("convert_matrix3d_lrm.py", ["{f}/code.ckpt", "{out}"], ["code.ckpt holds Python objects beyond tensors", "without running them"]),
    "lrm-random-ckpt": ("convert_matrix3d_lrm.py", ["{f}/random.ckpt", "{out}"], ["random.ckpt", "expected a .safetensors file or a torch file of tensors"]),
    # ---- build_synthetic_dataset.py
    "dataset-out-is-a-file": ("build_synthetic_dataset.py", ["--out", "{f}/a_file", "--clips", "1", "--frames", "3", "--height", "16"], ["--out", "a_file is a file", "expected a folder"]),
    "dataset-seed-negative": ("build_synthetic_dataset.py", ["--out", "{out}", "--clips", "1", "--seed", "-7"], ["--seed must be an integer in [0, 2**63), got -7"]),
    "dataset-height-20000": ("build_synthetic_dataset.py", ["--out", "{out}", "--clips", "1", "--height", "20000"], ["--height 20000 needs about", "expected a smaller --height"]),
    "dataset-clips-0": ("build_synthetic_dataset.py", ["--out", "{out}", "--clips", "0"], ["--clips: expected a positive integer, got 0"]),
    "dataset-backend": ("build_synthetic_dataset.py", ["--out", "{out}", "--clips", "1", "--backend", "banana"], ["--backend: expected one of auto, cpu, cuda"]),
    # ---- explore.py
    "explore-name-escape": ("explore.py", ["{f}/foreign_run", "--name", "../../evil"], ["--name '../../evil' is not a valid segment name", "use 1-64 letters"]),
    "explore-seed-negative": ("explore.py", ["{f}/foreign_run", "--seed", "-7"], ["--seed must be an integer in [0, 2**63), got -7"]),
    "explore-device-banana": ("explore.py", ["{f}/foreign_run", "--device", "banana"], ["--device 'banana' is not a device"]),
    "explore-frames-1e9": ("explore.py", ["{f}/foreign_run", "--frames", "1000000000"], ["--frames must be between 2 and 2000"]),
    "explore-not-a-run": ("explore.py", ["{f}/foreign_run"], ["foreign_run is not a world run directory", "make one with"]),
    "explore-start-pose-deep-json": ("explore.py", ["{f}/foreign_run", "--start-pose", "{f}/deep.json"], ["deep.json is JSON nested too deeply"]),
    # ---- video2pano / video2world / stabilize360
    "video2pano-device-banana": ("video2pano.py", ["{f}/nowhere.mp4", "--out", "{out}", "--device", "banana"], ["--device 'banana' is not a device"]),
    "video2world-seed-negative": ("video2world.py", ["{f}/nowhere.mp4", "--out", "{out}", "--seed", "-7"], ["--seed must be an integer in [0, 2**63), got -7"]),
    "video2pano-missing-video": ("video2pano.py", ["{f}/nowhere.mp4", "--out", "{out}", "--preset", "preview"], ["nowhere.mp4"]),
    "stabilize-random-video": ("stabilize360.py", ["{f}/random.png", "--out", "{out}"], ["random.png"]),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(case, f, tmp_path, capsys):
    name, argv, words = CASES[case]
    out = tmp_path / "out"
    argv = [a.format(f=f, out=out) for a in argv]
    if name in ("text2world.py", "image2world.py") and "--out" not in argv:
        argv += ["--out", str(out)]
    watched = [out, f]  # nothing created, nothing of the inputs (or an existing --out among them) changed
    line = refuse(capsys, name, argv, watched)
    for word in words:
        assert word in line, (word, line)
    assert not (f / "PAYLOAD_RAN").exists()  # no pickle payload ever runs


def test_the_suite_has_the_cases_the_issue_counts():
    assert len(CASES) >= 60


def test_memory_is_checked_against_what_the_machine_has(f, tmp_path, capsys, monkeypatch):
    """frames x resolution vs the available memory, before anything is allocated or written."""
    import matrix_world.runtime as runtime

    monkeypatch.setattr(runtime, "available_memory", lambda: 4 * GIB)
    out = tmp_path / "out"
    line = refuse(capsys, "text2world.py", [*T2W, "--frames", "2000", "--resolution", "2048", "--out", str(out)],
                  [out])
    assert "--frames 2000 of 4096x2048 (--resolution 2048) needs about" in line and "4.0 GiB is available" in line
    assert "expected fewer --frames" in line
    monkeypatch.setattr(runtime, "available_memory", lambda: 1 << 40)  # the same sizes pass the check
    from matrix_world.pipeline.plan import check_plan, make_plan

    config = tiny_config(out, frames=2000, resolution=2048)
    check_plan(config, make_plan(config))


def test_a_trajectory_file_of_many_poses_is_checked_once_read(f, tmp_path, capsys, monkeypatch):
    """render_scaffold.py without --frames takes the file's pose count: the memory check uses it."""
    import matrix_world.runtime as runtime

    poses = np.tile(np.eye(4).reshape(1, 16), (3000, 1))
    poses[:, 11] = np.linspace(0.0, 1.0, len(poses))  # a walk forward
    (tmp_path / "many.json").write_text(json.dumps({"convention": "opencv_c2w", "poses": poses.tolist(), "fps": 16}))
    monkeypatch.setattr(runtime, "available_memory", lambda: 8 * 2**20)  # 8 MiB: 81 frames pass, 3000 do not
    out = tmp_path / "out"
    line = refuse(capsys, "render_scaffold.py", [a.format(f=f) for a in rs(trajectory=str(tmp_path / "many.json"),
                                                                              frames=None, out=str(out))], [out])
    assert "a scaffold of 3000 frames of 32x16 (--height 16) needs about" in line
    assert "fewer --frames (or poses in the trajectory file)" in line


def test_the_pixel_limit_has_an_override(f, monkeypatch):
    from matrix_world.errors import InputError
    from matrix_world.io import check_image_file

    monkeypatch.setenv("MATRIX_WORLD_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(InputError, match=r"pano.png is 32x16 \(0 megapixels\), over the limit"):
        check_image_file(f / "pano.png")
    monkeypatch.setenv("MATRIX_WORLD_MAX_IMAGE_PIXELS", "512")
    assert check_image_file(f / "pano.png") == (H, 2 * H)
    monkeypatch.setenv("MATRIX_WORLD_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputError, match="MATRIX_WORLD_MAX_IMAGE_PIXELS='lots'; expected a positive whole number"):
        check_image_file(f / "pano.png")


def test_a_read_only_run_folder_is_refused_before_any_stage(f, tmp_path, capsys, monkeypatch):
    """As root a chmod does not stop writes, so the refusal of the disk is simulated: creating
    anything in the run folder fails with EACCES, as in a read-only folder."""
    out = tmp_path / "out"
    out.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.parent == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    line = refuse(capsys, "text2world.py", [*T2W, "--out", str(out)], [out])
    assert f"cannot write in the output folder {out} (Permission denied); expected a writable folder" in line


def test_a_stage_that_cannot_stage_its_output_is_an_output_error(tmp_path, monkeypatch):
    from matrix_world.io import OutputError
    from matrix_world.rundir import RunDir

    run = RunDir(tmp_path / "run")
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name.startswith(".staging-"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(OutputError, match=r"cannot write in the run folder .*Permission denied.*expected a writable"):
        with run.stage("panorama", {}, outputs=["panorama.png"]) as st:
            st.path("panorama.png")
    assert "panorama" not in run.manifest["stages"]


# --------------------------------------------------------------------------- bugs: one line, --debug


def _buggy(argv):
    return {}["missing"]  # a KeyError that no check foresaw


def test_a_bug_is_one_line_with_the_debug_hint(capsys):
    assert run_main(_buggy, []) == EXIT_BUG
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: internal error, KeyError: 'missing' (rerun with --debug for the traceback)"]


def test_debug_shows_the_traceback(capsys, monkeypatch):
    seen = []
    with pytest.raises(KeyError):
        run_main(lambda argv: seen.append(argv) or _buggy(argv), ["--frames", "3", "--debug"])
    assert seen == [["--frames", "3"]]  # the flag is removed before the script parses
    with pytest.raises(KeyError):  # a script whose main calls run_main itself (view.py) keeps the flag
        run_main(lambda argv: run_main(_buggy, argv), ["--debug"])
    monkeypatch.setenv("MATRIX_WORLD_DEBUG", "1")
    with pytest.raises(KeyError):
        run_main(_buggy, [])


def test_memory_error_is_one_line_exit_2(capsys):
    def hungry(argv):
        raise MemoryError("Unable to allocate 2.24 GiB for an array")

    assert run_main(hungry, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of memory (Unable to allocate 2.24 GiB")
    assert "expected smaller sizes" in err[0]


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as exited:
        script("render_scaffold.py").main(["--help"])
    assert exited.value.code == 0
    assert "--height" in capsys.readouterr().out


# --------------------------------------------------------------------------- resume and determinism


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two whole --preset preview runs of one seed into two folders (tiny sizes)."""
    root = tmp_path_factory.mktemp("determinism")
    for name in ("a", "b"):
        WorldPipeline(log=quiet)(tiny_config(root / name, seed=3))
    return root / "a", root / "b"


def test_two_seeded_preview_runs_give_the_same_world(two_runs):
    a, b = two_runs
    assert sha256(a / "world.ply") == sha256(b / "world.ply")
    for name in ("panorama.png", "depth.npz", "trajectory.json", "scaffold.npz", "video.npz"):
        ma, mb = (json.loads((r / "manifest.json").read_text())["artifacts"][name]["sha256"] for r in (a, b))
        assert ma == mb, name
    other = tiny_config(a.parent / "c", seed=4)  # and the seed matters (the test would pass on a constant)
    WorldPipeline(log=quiet)(other)
    assert sha256(a.parent / "c" / "panorama.png") != sha256(a / "panorama.png")


def test_an_artifact_that_no_longer_loads_is_recomputed_on_resume(two_runs, tmp_path, capsys):
    """depth.npz damaged together with its manifest record (same sha256: damaged before it was
    hashed, or the manifest restored with it): the hash check cannot see it, the load check
    does; the stage is recomputed with a warning and the run continues to the same world."""
    out = tmp_path / "run"
    shutil.copytree(two_runs[0], out)
    reference = {name: sha256(out / name) for name in ("depth.npz", "scaffold.npz", "world.ply")}
    data = bytearray((out / "depth.npz").read_bytes())
    data[40:104] = bytes(64)  # inside the first member: its CRC fails (np.load: BadZipFile / zlib error)
    (out / "depth.npz").write_bytes(bytes(data))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["artifacts"]["depth.npz"].update(sha256=sha256(out / "depth.npz"), bytes=len(data))
    (out / "manifest.json").write_text(json.dumps(manifest))
    logs: list[str] = []
    capsys.readouterr()
    WorldPipeline(log=logs.append)(tiny_config(out, seed=3))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: depth: depth.npz does not load")]
    assert len(warnings) == 1 and warnings[0].endswith("; recomputing it"), err
    assert any(line.startswith("  depth:") and "reused" not in line for line in logs)
    assert any(line.startswith("  scaffold: reused") for line in logs)  # its input is the same again
    for name, digest in reference.items():
        assert sha256(out / name) == digest, name


def test_an_artifact_check_names_each_kind_of_damage(tmp_path):
    from matrix_world.rundir import artifact_load_problem

    (tmp_path / "ok.json").write_text("[1]")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    (tmp_path / "bad.ply").write_bytes(b"not a ply")
    (tmp_path / "bad.npz").write_bytes(b"PK" + bytes(30))
    np.savez(tmp_path / "ok.npz", a=np.arange(3))
    assert artifact_load_problem(tmp_path / "ok.json") is None
    assert artifact_load_problem(tmp_path / "ok.npz") is None
    assert artifact_load_problem(tmp_path / "deep.json").startswith("RecursionError")
    assert artifact_load_problem(tmp_path / "bad.png") is not None
    assert artifact_load_problem(tmp_path / "bad.ply") == "no PLY header"
    assert artifact_load_problem(tmp_path / "bad.npz").startswith("BadZipFile")


def test_the_hostile_checkpoint_runs_code_when_unpickled_unrestricted(tmp_path):
    """The refused file is what it claims: torch.load(weights_only=False) would run its payload."""
    marker = tmp_path / "ran"
    torch.save({"lora": _Payload(marker)}, tmp_path / "code.ckpt")
    torch.load(tmp_path / "code.ckpt", weights_only=False)
    assert marker.is_dir()
