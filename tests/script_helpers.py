"""Helpers of the script and pipeline tests: running a script as a subprocess with its defaults,
checks of what a world run writes, a tiny preview world config, a box-room distance map. The
script tests' shared fixtures (`env`, one small `world_run`) are in conftest.py, so that both
test modules reuse one run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
PROMPT = "a quiet harbour town at sunset"
FRAMES = 9
SMALL = ["--frames", str(FRAMES), "--resolution", "64", "--panorama-height", "64"]
PLY_FIELDS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
CUDA = torch.cuda.is_available()
SHARED_PANORAMA = ROOT.parent / "shared" / "data" / "panoramas" / "city.png"  # beside the checkout


def script_env(tmp_path_factory) -> dict:
    """Subprocess environment: offline hub with an empty cache, one thread, not under torchrun."""
    hf = tmp_path_factory.mktemp("hf_home_empty")
    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                              "MASTER_PORT", "HF_TOKEN")}
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(hf), HF_HUB_CACHE=str(hf / "hub"), PYTHONUNBUFFERED="1")
    return out


def run_script(name: str, *args, env: dict, cwd: Path = ROOT, expect: int = 0, timeout: float = 300,
               extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """``python scripts/NAME args`` with ``sys.executable``; asserts the exit code."""
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**env, **(extra_env or {})}, check=False)
    assert proc.returncode == expect, (f"{name} exited {proc.returncode} (expected {expect})\n"
                                       f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The ``error: ...`` line of a failed run; there is no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


TINY_PROMPT = "a snowy forest"


def tiny_config(out, **kw):
    """A WorldConfig of a tiny in-process preview world: 9 frames of 64 x 128, a 128-row panorama, CPU."""
    from matrix_world.pipeline import WorldConfig

    base = dict(prompt=TINY_PROMPT, out=str(out), preset="preview", resolution=64, panorama_height=128, frames=9,
                device="cpu")
    return WorldConfig(**{**base, **kw})


def tiny_args(out) -> list[str]:
    """The command-line options of :func:`tiny_config` (after the prompt)."""
    return ["--out", str(out), "--preset", "preview", "--resolution", "64", "--panorama-height", "128",
            "--frames", "9", "--device", "cpu"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_ply(path: Path) -> tuple[list[str], np.ndarray]:
    """A binary little-endian float .ply read independently of matrix_world: (field names, [N, F] float32)."""
    blob = path.read_bytes()
    end = blob.index(b"end_header\n") + len(b"end_header\n")
    header = blob[:end].decode("ascii").splitlines()
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0", header[:2]
    count = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    props = [line.split() for line in header if line.startswith("property")]
    assert all(p[1] == "float" for p in props), props
    names = [p[2] for p in props]
    data = np.frombuffer(blob, dtype="<f4", offset=end)
    assert data.size == count * len(names), (data.size, count, names)
    return names, data.reshape(count, len(names))


def check_world_ply(path: Path) -> np.ndarray:
    """A standard 3DGS .ply with > 0 finite Gaussians; returns its [N, F] values."""
    names, values = read_ply(path)
    rest = [n for n in names if n.startswith("f_rest_")]
    assert [n for n in names if not n.startswith("f_rest_")] == PLY_FIELDS, names
    assert rest == [f"f_rest_{i}" for i in range(len(rest))] and len(rest) % 3 == 0
    assert len(values) > 0 and np.isfinite(values).all()
    quats = values[:, [names.index(f"rot_{i}") for i in range(4)]]
    assert (np.linalg.norm(quats, axis=1) > 1e-6).all()
    return values


def gaussians_printed(text: str) -> int:
    match = re.search(r"Gaussians: ([\d,]+)", text)
    assert match, text
    return int(match.group(1).replace(",", ""))


def box_distance(h: int) -> np.ndarray:
    """Distance from inside a 6 x 2.7 x 8 box room, [h, 2h] float32."""
    from matrix_world.equirect import equirect_directions

    d = equirect_directions(h, dtype=torch.float64).numpy()
    lo, hi = np.array([-3.0, -1.2, -4.0]), np.array([3.0, 1.5, 4.0])
    with np.errstate(divide="ignore"):
        t = np.where(d > 0, hi / d, np.where(d < 0, lo / d, np.inf))
    return t.min(-1).astype(np.float32)


def assert_pipeline_run(run: Path, stdout: str, pano_shape: tuple[int, int]) -> dict:
    """The files of a world run, their shapes/dtypes/values, and the manifest's record of them."""
    for name in ("manifest.json", "panorama.png", "depth.npz", "trajectory.json", "scaffold.npz", "scaffold_rgb.mp4",
                 "scaffold_mask.mp4", "video.npz", "video.mp4", "world.ply", "world.spz", "preview.mp4",
                 "preview_panorama.png", "contact_sheet.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["format"] == "matrix_world.run/1"
    assert manifest["world_config"]["device"] == "auto" and manifest["world_config"]["preset"] == "fast"
    assert manifest["request"]["device"] == ("cuda" if CUDA else "cpu")  # 'auto' resolved
    for name, record in manifest["artifacts"].items():  # every artifact's hash is the file's
        assert record["sha256"] == sha256(run / name), name

    pano = cv2.imread(str(run / "panorama.png"), cv2.IMREAD_UNCHANGED)
    assert pano.shape == (*pano_shape, 3) and pano.dtype == np.uint8 and pano.std() > 1
    depth = np.load(run / "depth.npz")
    assert depth["distance"].shape == pano_shape and depth["distance"].dtype == np.float32
    assert np.isfinite(depth["distance"]).all() and (depth["distance"] > 0).all()
    assert depth["sky"].dtype == bool and depth["valid"].dtype == bool

    traj = json.loads((run / "trajectory.json").read_text())
    poses = np.array(traj["poses"]).reshape(-1, 4, 4)
    assert traj["convention"] == "opencv_c2w" and len(poses) == FRAMES and traj["fps"] > 0
    assert np.allclose(poses[0], np.eye(4)) and np.isfinite(poses).all()
    assert np.linalg.norm(poses[-1, :3, 3]) > 0  # the camera moved

    scaffold = np.load(run / "scaffold.npz")
    rgb, mask = scaffold["rgb"], scaffold["mask"]
    assert rgb.shape == (FRAMES, 64, 128, 3) and rgb.dtype == np.uint8
    assert mask.shape == (FRAMES, 64, 128) and mask.dtype == bool
    assert mask[0].all() and 0 < mask[1:].mean() < 1  # frame 0 is the panorama; later frames have holes
    frames = np.load(run / "video.npz")["frames"]
    assert frames.shape == (FRAMES, 64, 128, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[mask], rgb[mask]) or manifest["plan"]["backends"]["video"] != "fill"  # fill keeps known pixels

    ply = check_world_ply(run / "world.ply")
    assert len(ply) == gaussians_printed(stdout) == manifest["stages"]["reconstruction"]["info"]["num_gaussians"]
    from matrix_world.splat_io import load_splats

    spz = load_splats(run / "world.spz")
    assert len(spz) == len(ply)
    extent = float(np.abs(ply[:, :3]).max())
    assert np.abs(spz.means.numpy() - ply[:, :3]).max() <= 1e-3 * max(extent, 1.0)  # 24-bit fixed point
    return manifest


def assert_offline_backends(manifest: dict, panorama: str, depth: str) -> None:
    backends = manifest["plan"]["backends"]
    assert backends["panorama"] == panorama and backends["depth"] == depth
    assert backends["video"] == "fill"  # no Wan weights in the empty cache
    assert backends["reconstruction"] == ("optimize" if CUDA else "lift")



# --------------------------------------------------------------------------- --help of the tyro scripts


def load_script(path: Path, name: str):
    """Import a script file as a module (registered, so that its dataclasses resolve their annotations)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def capture_help(module, monkeypatch) -> tuple[str, list, object]:
    """Run ``module.main(["--help"])`` in-process -> (help text, the options classes handed to
    tyro.cli, the exit code). stdout is a UTF-8 stream (tyro draws UTF-8 boxes), 100 columns."""
    import io

    import tyro

    parsed, real_cli = [], tyro.cli
    monkeypatch.setattr(tyro, "cli", lambda f, **kw: (parsed.append(f), real_cli(f, **kw))[1])
    monkeypatch.setenv("COLUMNS", "100")
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", out)
    try:
        module.main(["--help"])
        code = None
    except SystemExit as exited:
        code = exited.code
    finally:
        monkeypatch.undo()
    out.flush()
    return out.buffer.getvalue().decode(), parsed, code


def help_rows(text: str) -> list[tuple[str, str, str]]:
    """(box title, invocation, description) of each argument row of tyro's --help (UTF-8 boxes):
    a row starts at the box's left edge with the invocation (``--flag METAVAR`` or a positional's
    metavar), the description follows after 2+ spaces and/or on the indented lines below."""
    rows: list[list[str]] = []
    box = None
    for line in text.splitlines():
        if line.startswith("╭─ "):
            box = line[3:].split(" ─")[0]
        elif line.startswith("╰"):
            box = None
        elif box is not None and line.startswith("│ "):
            inner = line[2:].removesuffix("│").rstrip()
            if inner and not inner[0].isspace():
                invocation, _, description = re.split(r"(\s{2,}|$)", inner, maxsplit=1)
                rows.append([box, invocation, description.strip()])
            elif inner and rows:
                rows[-1][2] = (rows[-1][2] + " " + inner.strip()).strip()
    return [(b, i, d) for b, i, d in rows]


def without_hint(description: str) -> str:
    """A help description without tyro's trailing ``(default: ...)`` / ``(required)``."""
    if description.endswith("(required)"):
        return description[: -len("(required)")].strip()
    at = description.rfind("(default: ")
    return description[:at].strip() if at >= 0 else description


def expected_arguments(cls) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """{field name: (its spellings, one of which names its --help row; its aliases, all in that row)}:
    a tyro.conf.Positional field is its metavar, any other ``--name`` (a bool flag: or ``--no-name``)."""
    import dataclasses
    import typing

    import tyro

    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for field in dataclasses.fields(cls):
        hint, meta = hints[field.name], ()
        if typing.get_origin(hint) is typing.Annotated:
            hint, *meta = typing.get_args(hint)
        arg = next((m for m in meta if hasattr(m, "metavar") and hasattr(m, "aliases")), None)
        name = arg.name if arg is not None and arg.name else field.name
        aliases = tuple(arg.aliases or ()) if arg is not None else ()
        if any(m is tyro.conf.Positional for m in meta):
            out[field.name] = ((arg.metavar if arg is not None and arg.metavar else name.upper(),), ())
        else:
            flag = "--" + name.replace("_", "-")
            out[field.name] = ((flag, "--no-" + flag[2:]) if hint is bool else (flag,), aliases)
    return out
