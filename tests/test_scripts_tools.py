"""The tool scripts (render_scaffold, convert_splats, convert_matrix3d_lora, synthetic data,
video_multigpu) as a new user runs them: each a subprocess with its DEFAULT options (no --device,
the default preset; only sizes made small), checked by what it wrote, not only its exit code.
Offline with an empty model cache; the shared runs are fixtures in conftest.py, the helpers
in script_helpers.py. Also: --help of every script (tyro) documents every option, and values out of
range are one-line errors."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from script_helpers import (  # helpers and constants of the script tests
    capture_help,
    PROMPT, FRAMES, ROOT, SCRIPTS, run_script, one_line_error, sha256, read_ply, check_world_ply,
    load_script, help_rows, without_hint, expected_arguments,
)


# --------------------------------------------------------------------------- render_scaffold


def test_render_scaffold_on_a_run(world_run, env, tmp_path):
    run, _ = world_run
    out = tmp_path / "scaffold"
    proc = run_script("render_scaffold.py", "--panorama", run / "panorama.png", "--distance", run / "depth.npz",
                      "--trajectory", "straight", "--frames", FRAMES, "--height", 32, "--out", out, env=env)
    assert f"wrote {out}" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"manifest.json", "trajectory.json", "scaffold.npz", "scaffold_rgb.mp4",
                                               "scaffold_mask.mp4"}
    data = np.load(out / "scaffold.npz")
    rgb, mask = data["rgb"], data["mask"]
    assert rgb.shape == (FRAMES, 32, 64, 3) and rgb.dtype == np.uint8
    assert mask.shape == (FRAMES, 32, 64) and mask.dtype == bool
    assert mask[0].all() and 0 < mask[1:].mean() < 1 and (rgb[~mask] == 0).all()  # unknown pixels are black
    poses = np.array(json.loads((out / "trajectory.json").read_text())["poses"]).reshape(-1, 4, 4)
    assert len(poses) == FRAMES and np.allclose(poses[0], np.eye(4))
    z = poses[:, 2, 3]
    assert (np.diff(z) > 0).all() and np.abs(poses[:, :2, 3]).max() < 1e-9  # straight ahead (+z), level


# --------------------------------------------------------------------------- convert_splats

# our (OpenCV) frame -> the preset's, rows = target axes in ours (written out here, not taken from axes.py)
AXES = {
    "opencv": np.eye(3),
    "opengl": np.diag([1.0, -1.0, -1.0]),
    "threejs": np.diag([1.0, -1.0, -1.0]),
    "blender": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    "unity": np.diag([1.0, -1.0, 1.0]),
    "unreal": 100.0 * np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]]),
}


@pytest.mark.parametrize("preset,ext", [("opencv", ".ply"), ("opengl", ".splat"), ("threejs", ".ply"),
                                        ("blender", ".ply"), ("unity", ".ply"), ("unreal", ".splat")])
def test_convert_splats_axes_and_back(world_run, env, tmp_path, preset, ext):
    from matrix_world.splat_io import load_splats

    src = world_run[0] / "world.ply"
    ref = load_splats(src)
    out, back = tmp_path / f"world_{preset}{ext}", tmp_path / "back.ply"
    proc = run_script("convert_splats.py", src, out, "--axes", preset, env=env)
    assert f"{len(ref)} Gaussians (of {len(ref)} read)" in proc.stdout
    m = AXES[preset]
    stored = load_splats(out)  # as stored: the preset's frame
    means = ref.means.double().numpy()
    extent = float(np.abs(means).max())
    assert np.allclose(stored.means.double().numpy(), means @ m.T, atol=1e-5 * extent * np.abs(m).max())
    if ext == ".ply":  # exact covariances (.splat quantises rotations to 8 bits)
        cov = ref.covariances().double().numpy()
        expected = m @ cov @ m.T
        assert np.allclose(stored.covariances().double().numpy(), expected, rtol=1e-3, atol=1e-5 * np.abs(expected).max())
    if ext == ".ply" and preset == "opencv":
        assert np.array_equal(read_ply(out)[1], read_ply(src)[1])  # standard in, identical out

    run_script("convert_splats.py", out, back, "--in-axes", preset, env=env)
    again = load_splats(back)
    assert len(again) == len(ref)
    assert np.allclose(again.means.double().numpy(), means, atol=1e-5 * extent)
    tol = 1e-5 if ext == ".ply" else 1.0 / 255 + 1e-6  # .splat stores colour and opacity in 8 bits
    assert np.allclose(again.opacities.numpy(), ref.opacities.numpy(), atol=tol)
    assert np.allclose(again.rgb.clamp(0, 1).numpy(), ref.rgb.clamp(0, 1).numpy(), atol=tol)


def test_convert_splats_spz_round_trip_and_axes_refused(world_run, env, tmp_path):
    from matrix_world.splat_io import load_splats

    src = world_run[0] / "world.ply"
    ref = load_splats(src)
    run_script("convert_splats.py", src, tmp_path / "w.spz", env=env)
    run_script("convert_splats.py", tmp_path / "w.spz", tmp_path / "back.ply", env=env)
    back = check_world_ply(tmp_path / "back.ply")
    extent = float(ref.means.abs().max())
    assert len(back) == len(ref) and np.abs(back[:, :3] - ref.means.numpy()).max() <= 1e-3 * extent
    proc = run_script("convert_splats.py", src, tmp_path / "bad.spz", "--axes", "unity", env=env, expect=2)
    assert "spz defines its own axes" in one_line_error(proc) and not (tmp_path / "bad.spz").exists()


# --------------------------------------------------------------------------- convert_matrix3d_lora


def test_convert_matrix3d_lora(env, tmp_path):
    from safetensors import safe_open

    rank, dim, ffn = 4, 24, 40
    shapes = {"self_attn.q": (dim, dim), "self_attn.k": (dim, dim), "self_attn.v": (dim, dim), "self_attn.o": (dim, dim),
              "cross_attn.q": (dim, dim), "cross_attn.k": (dim, dim), "cross_attn.v": (dim, dim),
              "cross_attn.o": (dim, dim), "cross_attn.k_img": (dim, dim), "cross_attn.v_img": (dim, dim),
              "ffn.0": (ffn, dim), "ffn.2": (dim, ffn)}
    expected_names = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
                      "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
                      "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0",
                      "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
                      "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}
    g = torch.Generator().manual_seed(0)
    official, expected = {}, {}
    for block in range(2):  # the official checkpoint's layout: diffusion_model.blocks.N.<wan module>.lora_{A,B}.weight
        for module, (out_f, in_f) in shapes.items():
            a, b = torch.randn(rank, in_f, generator=g), torch.randn(out_f, rank, generator=g)
            official[f"diffusion_model.blocks.{block}.{module}.lora_A.weight"] = a
            official[f"diffusion_model.blocks.{block}.{module}.lora_B.weight"] = b
            expected[f"transformer.blocks.{block}.{expected_names[module]}.lora_A.weight"] = a
            expected[f"transformer.blocks.{block}.{expected_names[module]}.lora_B.weight"] = b
    a, b = torch.randn(rank, dim, generator=g), torch.randn(16, rank, generator=g)
    official.update({"diffusion_model.head.head.lora_A.weight": a, "diffusion_model.head.head.lora_B.weight": b})
    expected.update({"transformer.proj_out.lora_A.weight": a, "transformer.proj_out.lora_B.weight": b})
    ckpt = tmp_path / "pano_video_gen_480p.ckpt"
    torch.save(official, ckpt)

    out = tmp_path / "pano_480p.safetensors"
    proc = run_script("convert_matrix3d_lora.py", ckpt, out, env=env)
    assert f"wrote {out}: {len(expected) // 2} LoRA modules, rank {rank}" in proc.stdout
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == set(expected)
        for key, value in expected.items():
            assert torch.equal(f.get_tensor(key), value), key
        assert f.metadata()["format"] == "pt"

    again = run_script("convert_matrix3d_lora.py", out, tmp_path / "again.safetensors", env=env, expect=2)
    assert "already in the diffusers layout" in one_line_error(again)
    wrong = run_script("convert_matrix3d_lora.py", ckpt, tmp_path / "out.pt", env=env, expect=2)
    assert "must end with .safetensors" in one_line_error(wrong) and not (tmp_path / "out.pt").exists()


# --------------------------------------------------------------------------- synthetic data


def test_build_synthetic_dataset(env, tmp_path):
    from matrix_world.datasets.clips import read_clip

    out = tmp_path / "dataset"
    proc = run_script("build_synthetic_dataset.py", "--out", out, "--clips", 2, "--frames", FRAMES, "--height", 32, env=env)
    assert "2 clip(s) built, 0 already complete" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001"]
    for index in range(2):
        folder = out / f"{index:05d}"
        assert sorted(p.name for p in (folder / "rgb").iterdir()) == [f"{i:05d}.png" for i in range(FRAMES)]
        clip = read_clip(folder)
        assert clip.rgb.shape == (FRAMES, 32, 64, 3) and clip.rgb.dtype == np.float32
        assert 0 <= clip.rgb.min() and clip.rgb.max() <= 1 and clip.rgb.std() > 0
        assert clip.distance.shape == (FRAMES, 32, 64) and clip.sky.shape == (FRAMES, 32, 64)
        assert np.isfinite(clip.distance).all() and (clip.distance > 0).all()
        assert clip.c2w.shape == (FRAMES, 4, 4) and np.allclose(clip.c2w[0], np.eye(4))
        assert clip.prompt and clip.meta["index"] == index and clip.meta["frames"] == FRAMES
        assert clip.meta["height"] == 32 and clip.meta["width"] == 64
    stamp = (out / "00000" / "meta.json").stat().st_mtime_ns
    again = run_script("build_synthetic_dataset.py", "--out", out, "--clips", 2, "--frames", FRAMES, "--height", 32, env=env)
    assert "0 clip(s) built, 2 already complete" in again.stdout  # resumable: complete clips are kept
    assert (out / "00000" / "meta.json").stat().st_mtime_ns == stamp


def test_synthetic_contact_sheet_default_out(env, tmp_path):
    from PIL import Image

    proc = run_script("synthetic_contact_sheet.py", "--height", 32, env=env, cwd=tmp_path)
    sheet = tmp_path / "docs" / "synthetic_scenes.png"  # the default --out, relative to the cwd
    with Image.open(sheet) as im:
        assert im.mode == "P" and im.size == (5 * 32, 7 * 32)  # rows: 7 kinds; tiles: 2h RGB + 2h distance + h top view
        rows = np.asarray(im.convert("RGB")).reshape(7, 32, 160, 3)
    assert (rows.reshape(7, -1).std(axis=1) > 0).all()
    kinds = [line.split()[0] for line in proc.stdout.splitlines() if " tris " in line]
    assert kinds == ["forest", "city", "beach", "snow", "harbour", "room", "hall"]
    assert "wrote docs/synthetic_scenes.png" in proc.stdout


# --------------------------------------------------------------------------- video_multigpu


def test_video_multigpu_help_and_missing_weights(world_run, env, tmp_path):
    helptext = run_script("video_multigpu.py", "--help", env=env).stdout
    for option in ("--prompt", "--resolution", "--model", "--lora", "--height", "--cpu"):
        assert option in helptext
    run = tmp_path / "world"
    shutil.copytree(world_run[0], run)
    video = sha256(run / "video.npz")
    # default model, one process without torchrun: the missing weights are a one-line error
    proc = run_script("video_multigpu.py", run, "--prompt", PROMPT, "--cpu", env=env, expect=2)
    assert "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers" in one_line_error(proc)
    assert sha256(run / "video.npz") == video
    several = run_script("video_multigpu.py", run, "--prompt", PROMPT, "--cpu", env=env, expect=2,
                         extra_env={"WORLD_SIZE": "2", "RANK": "0"})
    assert "--cpu runs one process" in one_line_error(several)


def test_video_multigpu_tiny_model_one_cpu_process(world_run, env, tmp_path):
    from tiny_wan import tiny_wan_dir

    run = tmp_path / "world"
    shutil.copytree(world_run[0], run)
    proc = run_script("video_multigpu.py", run, "--prompt", PROMPT, "--cpu", "--model", tiny_wan_dir(), "--lora", "none",
                      "--steps", 2, "--dtype", "float32", "--height", 32, env=env)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["backend"] == "wan" and (info["height"], info["width"], info["frames"]) == (32, 64, FRAMES)
    assert info["parallel"]["world_size"] == 1 and info["steps"] == 2
    frames = np.load(run / "video.npz")["frames"]
    assert frames.shape == (FRAMES, 32, 64, 3) and frames.dtype == np.uint8 and frames.std() > 0
    assert (run / "video.mp4").stat().st_size > 0


# --------------------------------------------------------------------------- --help and bad values (tyro)

TYRO_SCRIPTS = sorted(SCRIPTS.glob("*.py")) + [ROOT / "benchmarks" / "build_benchmark_split.py"]


@pytest.fixture
def script(monkeypatch):
    """Load a script as a module (benchmarks/ on the path for benchmarks' own imports)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))

    def load(path):
        return load_script(path, f"cli_script_{path.stem}")

    return load


@pytest.mark.parametrize("path", TYRO_SCRIPTS, ids=[p.name for p in TYRO_SCRIPTS])
def test_help_reads_clean(path, script, monkeypatch):
    """No issue numbers, no tyro ``{None}|`` metavars, boxes still aligned."""
    text, _, _ = capture_help(script(path), monkeypatch)
    assert not re.search(r"\bissues? \d|\(#\d", text, re.IGNORECASE), text
    assert "{None}" not in text
    widths = {len(line) for line in text.splitlines() if line.startswith(("│", "╭", "╰"))}
    assert len(widths) <= 2, widths  # the boxes' right edges line up (one width per box at most)


@pytest.mark.parametrize("name", ["text2world.py", "image2world.py", "views2world.py", "explore.py"])
def test_help_lists_every_backend(name, script, monkeypatch):
    from matrix_world.pipeline.config import BACKEND_OPTIONS, backend_choices

    text, _, _ = capture_help(script(SCRIPTS / name), monkeypatch)
    rows = {invocation.split()[0]: description for _, invocation, description in help_rows(text)}
    for stage, names in backend_choices().items():
        flag = "--" + BACKEND_OPTIONS[stage].replace("_", "-")
        if flag not in rows:
            assert name == "explore.py" and stage in ("panorama", "depth", "scaffold"), (name, flag)
            continue
        listed = re.findall(r"[a-z][a-z-]*", rows[flag].split("(default")[0])
        assert set(names) <= set(listed), (name, flag, rows[flag])


@pytest.mark.parametrize("name", ["text2world.py", "convert_splats.py", "view.py"])
def test_help_states_the_spz_axis_rule(name, script, monkeypatch):
    text, _, _ = capture_help(script(SCRIPTS / name), monkeypatch)
    rows = {invocation.split()[0]: description for _, invocation, description in help_rows(text)}
    rule = rows["--spz-axes"]
    assert "rub" in rule and "rdf" in rule and "SPZ spec" in rule and "raw" in rule, rule


@pytest.mark.parametrize("path", TYRO_SCRIPTS, ids=[p.name for p in TYRO_SCRIPTS])
def test_help_documents_every_option(path, script, monkeypatch):
    """--help of every script (in-process, the options class caught on its way to tyro.cli) lists
    every field of that class, and nothing else, each with a description of its own."""
    text, parsed, code = capture_help(script(path), monkeypatch)
    assert code in (0, None) and len(parsed) == 1, text
    assert text.startswith(f"usage: {path.name} ")

    rows = {invocation: (box, without_hint(description)) for box, invocation, description in help_rows(text)}
    assert rows.pop("-h, --help")[1] == "show this help message and exit"
    for field, (spellings, aliases) in expected_arguments(parsed[0]).items():
        row = next((r for r in rows if set(spellings) & set(r.replace(",", " ").split())), None)
        assert row is not None, f"{path.name}: {spellings[0]} ({field}) is not in --help:\n{text}"
        box, description = rows.pop(row)
        assert all(a in row.replace(",", " ").split() for a in aliases), (row, aliases)
        assert box == ("positional arguments" if not spellings[0].startswith("-") else "options"), (row, box)
        assert len(description) >= 8 and any(c.isalpha() for c in description), \
            f"{path.name}: {row} has no description: {description!r}"
    assert not rows, f"{path.name}: --help rows without an options field: {sorted(rows)}"


def _argv(path):
    """Valid values for each script's required arguments (nothing is read before the checks)."""
    return {"build_synthetic_dataset.py": ["--out", "unused", "--clips", "1"],
            "convert_splats.py": ["in.ply", "out.ply"],
            "render_scaffold.py": ["--panorama", "p.png", "--distance", "d.npy", "--trajectory", "straight",
                                   "--out", "unused"],
            "view.py": ["world.ply"],
            "video_multigpu.py": ["unused", "--prompt", "p"]}.get(path.name, [])


BAD_VALUES = [  # (script, bad options, words of the one-line error)
    ("build_synthetic_dataset.py", ["--frames", "-3"], ["--frames", "expected a positive integer, got -3"]),
    ("build_synthetic_dataset.py", ["--clips", "0"], ["--clips", "positive integer"]),
    ("build_synthetic_dataset.py", ["--look-around", "nan"], ["--look-around", "finite number"]),
    ("build_synthetic_dataset.py", ["--backend", "gpu"], ["--backend", "one of auto, cpu, cuda", "'gpu'"]),
    ("build_synthetic_dataset.py", ["--distance-dtype", "float64"], ["--distance-dtype", "float16, float32"]),
    ("convert_splats.py", ["--budget", "0"], ["--budget", "positive integer"]),
    ("convert_splats.py", ["--axes", "maya"], ["--axes", "opencv, opengl", "'maya'"]),
    ("convert_splats.py", ["--opacity", "sigmoid"], ["--opacity", "auto, logit, linear"]),
    ("convert_splats.py", ["--min-opacity", "inf"], ["--min-opacity", "finite"]),
    ("render_scaffold.py", ["--frames", "0"], ["--frames", "positive integer"]),
    ("render_scaffold.py", ["--move", "0"], ["--move", "expected a number > 0"]),
    ("render_scaffold.py", ["--fps", "nan"], ["--fps", "expected a number > 0"]),
    ("render_scaffold.py", ["--yaw", "inf"], ["--yaw", "finite"]),
    ("render_scaffold.py", ["--occlusion-threshold", "-0.1"], ["--occlusion-threshold", "> 0"]),
    ("render_scaffold.py", ["--mesh-out", "obj"], ["--mesh-out", "ply, glb"]),
    ("render_scaffold.py", ["--custom-scale", "stretch"], ["--custom-scale", "auto, fit, keep"]),
    ("synthetic_contact_sheet.py", ["--height", "0"], ["--height", "positive integer"]),
    ("view.py", ["--port", "70000"], ["--port", "from 0 to 65535, got 70000"]),
    ("view.py", ["--max-frustums", "0"], ["--max-frustums", "positive integer"]),
    ("view.py", ["--frustum-scale", "0"], ["--frustum-scale", "> 0"]),
    ("video_multigpu.py", ["--steps", "0"], ["--steps", "positive integer"]),
    ("video_multigpu.py", ["--resolution", "1080p"], ["--resolution", "480p, 720p"]),
    ("video_multigpu.py", ["--guidance", "nan"], ["--guidance", "finite"]),
    ("build_benchmark_split.py", ["--threads", "0"], ["--threads", "positive integer"]),
    ("build_benchmark_split.py", ["--heldout", "-1"], ["--heldout", "positive integer"]),
]


@pytest.mark.parametrize("case", BAD_VALUES, ids=[f"{c[0]} {' '.join(c[1])}" for c in BAD_VALUES])
def test_bad_value_one_line_error(case, script, capsys, tmp_path, monkeypatch):
    """A value that parses but is out of range: ``error: --option: ...`` (one line), exit code 2,
    before anything is read or written."""
    from matrix_world.app.cli import run_main

    name, bad, words = case
    path = next(p for p in TYRO_SCRIPTS if p.name == name)
    module = script(path)
    monkeypatch.chdir(tmp_path)
    assert run_main(module.main, _argv(path) + bad) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    for word in words:
        assert word in captured.err, (word, captured.err)
    assert captured.out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,argv,words", [
    ("view.py", ["world.ply", "--port", "70000"], ["--port", "70000"]),
    ("build_synthetic_dataset.py", ["--out", "dataset", "--clips", "2", "--frames", "-3"], ["--frames", "-3"]),
])
def test_bad_value_exit_code_from_the_script(name, argv, words, env, tmp_path):
    proc = run_script(name, *argv, env=env, cwd=tmp_path, expect=2)
    error = one_line_error(proc)
    assert proc.stderr == error + "\n" and all(w in error for w in words), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_unparsable_value_is_tyros_error(env, tmp_path):
    """What does not parse at all (as for the world CLIs): tyro's message naming the option, exit code 2,
    no traceback."""
    proc = run_script("view.py", "world.ply", "--port", "eighty", env=env, cwd=tmp_path, expect=2)
    assert "Traceback" not in proc.stderr and "--port" in proc.stderr and proc.stdout == ""
