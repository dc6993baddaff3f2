"""The run directory never mixes or loses data, and inputs are refused before anything is
written: the lock, --out rules, segments invalidated by a changed world, atomic commits,
sha256-verified resume, the explore seed on resume, CPU threads and the GPU probes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from matrix_world.app.cli import run_main
from matrix_world.errors import InputError
from matrix_world.pipeline.explore import ExploreConfig, explore
from matrix_world.pipeline import WorldPipeline
from matrix_world.pipeline.plan import check_plan, make_plan
from matrix_world.rundir import RunDir
from matrix_world.runlock import run_lock
from matrix_world.runtime import default_threads
from matrix_world.app.world_cli import explore_main, text2world_main
from script_helpers import TINY_PROMPT as PROMPT
from script_helpers import sha256 as sha
from script_helpers import tiny_args
from script_helpers import tiny_config as tiny

ROOT = Path(__file__).resolve().parents[1]
quiet = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    WorldPipeline(log=quiet)(tiny(out))
    return out


# --------------------------------------------------------------------------- inputs before writing


@pytest.mark.parametrize("args, message", [
    (["--trajectory", "s-curve"], "unknown trajectory 's-curve': expected a preset (straight, s_curve, l_curve, r_curve, orbit)"),
    (["--trajectory", "missing.json"], "unknown trajectory 'missing.json'"),
    (["--resolution", "100"], "--resolution must be a multiple of 16"),
    (["--resolution", "16000"], "--resolution must be a multiple of 16 from 64 to 2048"),
    (["--frames", "1"], "--frames must be between 2 and 2000"),
    (["--frames", "1000000000"], "--frames must be between 2 and 2000"),
    (["--panorama-height", "20"], "--panorama-height must be a multiple of 8"),
    (["--seed", "-7"], "--seed must be an integer in [0, 2**63)"),
    (["--exports", "spz", "spz"], "--exports names a format twice"),
    (["--video-backend", "banana"], "--video-backend must be one of auto, wan, fill, oracle"),
    (["--threads", "0"], "--threads must be at least 1"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_bad_options_are_refused_before_anything_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert run_main(text2world_main, [PROMPT, *tiny_args(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_a_bad_trajectory_file_is_refused_before_anything_is_written(tmp_path, capsys):
    bad = tmp_path / "path.json"
    bad.write_text(json.dumps({"convention": "opencv_c2w", "poses": [[1, 0, 0, 0] * 4]}))
    out = tmp_path / "run"
    assert run_main(text2world_main, [PROMPT, *tiny_args(out), "--trajectory", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not out.exists()


def test_wan_needs_4k_plus_1_frames_before_anything_is_written(tmp_path):
    config = tiny(tmp_path / "run", preset="fast", video_backend="wan", frames=10)
    with pytest.raises(InputError, match="4k\\+1 frames"):
        check_plan(config, make_plan(config))


def test_explore_refuses_bad_options_before_writing(world, capsys):
    before = sorted(p.relative_to(world) for p in world.rglob("*"))
    for args, message in [(["--trajectory", "s-curve"], "unknown trajectory 's-curve'"),
                          (["--name", "../../evil"], "is not a valid segment name"),
                          (["--frames", "0"], "--frames must be between 2 and 2000"),
                          (["--start-pose", "nowhere.json"], "--start-pose nowhere.json does not exist")]:
        assert run_main(explore_main, [str(world), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert sorted(p.relative_to(world) for p in world.rglob("*")) == before


# --------------------------------------------------------------------------- the lock


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(InputError, match=f"in use by another run \\(pid {os.getpid()} on "):
            with run_lock(out):
                pass
        # the same from another process, through the script: exit 2, one line, nothing written
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "text2world.py"), "a city at night",
                               *tiny_args(out)], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert f"is in use by another run (pid {os.getpid()}" in proc.stderr
        assert [p.name for p in out.iterdir()] == [".lock"]
    assert not out.exists()  # released, and the folder it made is gone


def test_a_killed_holder_does_not_block(tmp_path):
    out = tmp_path / "run"
    code = f"from matrix_world.runlock import run_lock\nimport os\nwith run_lock({str(out)!r}):\n    os._exit(0)\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert (out / ".lock").exists()  # the file stayed, the lock died with the process:
    with run_lock(out):  # taken at once
        pass


# --------------------------------------------------------------------------- --out rules


def test_out_holding_other_files_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "world.ply").write_bytes(b"my own splats")
    assert run_main(text2world_main, [PROMPT, *tiny_args(out)]) == 2
    assert "holds files that are not a matrix_world run (world.ply)" in capsys.readouterr().err
    assert (out / "world.ply").read_bytes() == b"my own splats" and sorted(os.listdir(out)) == ["world.ply"]
    assert run_main(text2world_main, [PROMPT, *tiny_args(out), "--overwrite"]) == 0
    assert (out / "world.ply").read_bytes() != b"my own splats" and (out / "manifest.json").is_file()


def test_another_world_is_refused_unless_overwrite_which_removes_its_segments(tmp_path, capsys):
    out = tmp_path / "run"
    WorldPipeline(log=quiet)(tiny(out))
    explore(ExploreConfig(run_dir=str(out), frames=9), log=quiet)
    stat = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    for args in (["--seed", "3"], []):
        prompt = PROMPT if args else "a city at night"
        assert run_main(text2world_main, [prompt, *tiny_args(out), *args]) == 2
        err = capsys.readouterr().err
        assert "holds another world (prompt 'a snowy forest', seed 0)" in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stat  # untouched
    assert run_main(text2world_main, ["a city at night", *tiny_args(out), "--overwrite"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_config"]["prompt"] == "a city at night" and manifest["segments"] == {}
    assert not (out / "segments").exists() and not (out / "world_base.ply").exists()
    assert "merge" not in manifest["stages"] and not (out / "world_segments.npz").exists()
    assert manifest["artifacts"]["world.ply"]["sha256"] == sha(out / "world.ply")
    assert manifest["artifacts"]["world.ply"]["stage"] == "reconstruction"


def test_changed_options_invalidate_the_explored_segments(tmp_path):
    out = tmp_path / "run"
    WorldPipeline(log=quiet)(tiny(out))
    base = sha(out / "world.ply")
    explore(ExploreConfig(run_dir=str(out), frames=9), log=quiet)
    assert sha(out / "world.ply") != base  # the merged world
    WorldPipeline(log=quiet)(tiny(out))  # same world: resumed, segments kept
    assert (out / "segments" / "001").is_dir()
    logs = []
    WorldPipeline(log=logs.append)(tiny(out, trajectory="l_curve"))  # the base walk changed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["segments"] == {} and not (out / "segments").exists() and not (out / "world_base.ply").exists()
    assert any("segments were built on the old world and are removed" in line for line in logs)
    assert manifest["artifacts"]["world.ply"]["stage"] == "reconstruction"
    assert manifest["artifacts"]["world.ply"]["sha256"] == sha(out / "world.ply")
    # the next segment merges only the new base
    explore(ExploreConfig(run_dir=str(out), frames=9), log=quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["segments"]) == ["001"]
    assert manifest["stages"]["merge"]["config"]["segments"] == ["base", "001"]


# --------------------------------------------------------------------------- atomic artifacts


def test_no_artifact_appears_without_its_manifest_record(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    with pytest.raises(ValueError, match="declares an output twice"):
        with run.stage("s", {}, outputs=["a.txt", "a.txt"]):
            pass
    real = os.replace
    calls = []

    def fail_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr("matrix_world.rundir.os.replace", fail_second)
    with pytest.raises(Exception, match="No space left on device"):
        with run.stage("s", {}, outputs=["a.txt", "b.txt"]) as st:
            st.path("a.txt").write_text("a")
            st.path("b.txt").write_text("b")
    assert not (tmp_path / "run" / "a.txt").exists() and not (tmp_path / "run" / "b.txt").exists()
    assert "a.txt" not in run.manifest["artifacts"] and "s" not in run.manifest["stages"]


def test_resume_verifies_sha256_and_recomputes_a_corrupt_artifact(world, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(world, out)
    reference = {name: sha(out / name) for name in ("depth.npz", "world.ply", "scaffold.npz")}
    data = bytearray((out / "depth.npz").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # same size, zeroed inside
    (out / "depth.npz").write_bytes(bytes(data))
    logs = []
    WorldPipeline(log=logs.append)(tiny(out))
    assert "depth: depth.npz differs from the sha256 the manifest recorded (changed or corrupt); recomputing it" \
        in capsys.readouterr().err
    assert any(line.startswith("  depth:") and "reused" not in line for line in logs)
    assert any(line.startswith("  scaffold: reused") for line in logs)  # its input is the same again
    for name, digest in reference.items():
        assert sha(out / name) == digest, name


# --------------------------------------------------------------------------- explore seed on resume


def _segment_record(out: Path, name: str = "001") -> dict:
    manifest = json.loads((out / "segments" / name / "manifest.json").read_text())
    return {"seed": manifest["seed"], "hashes": {k: v["config_hash"] for k, v in manifest["stages"].items()},
            "artifacts": {k: v["sha256"] for k, v in manifest["artifacts"].items() if not k.endswith(".mp4")}}


def test_a_resumed_segment_keeps_its_seed(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    WorldPipeline(log=quiet)(tiny(reference, recon_backend="lift"))
    explore(ExploreConfig(run_dir=str(reference), frames=9), log=quiet)
    expected = _segment_record(reference)
    assert expected["seed"] == 1  # the world's seed + its number

    out = tmp_path / "killed"
    WorldPipeline(log=quiet)(tiny(out, recon_backend="lift"))
    import matrix_world.pipeline.video as video

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "video_stage", killed)
    with pytest.raises(KeyboardInterrupt):
        explore(ExploreConfig(run_dir=str(out), frames=9), log=quiet)
    monkeypatch.undo()
    record = json.loads((out / "segments" / "001" / "manifest.json").read_text())
    assert set(record["stages"]) == {"start_view", "trajectory", "scaffold"}
    explore(ExploreConfig(run_dir=str(out), frames=9), log=quiet)  # resumes segment 001
    assert list(json.loads((out / "manifest.json").read_text())["segments"]) == ["001"]
    assert _segment_record(out) == expected


# --------------------------------------------------------------------------- threads and probes


def test_default_threads_leave_busy_cores_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(cores=2, load=0.0)[0] == 2
    assert default_threads(cores=2, load=0.2)[0] == 2
    assert default_threads(cores=2, load=1.0)[0] == 1
    assert default_threads(cores=2, load=4.5)[0] == 1
    assert default_threads(cores=16, load=3.0)[0] == 13
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == (3, "OMP_NUM_THREADS; --threads N to override")


def test_threads_option_sets_torch_threads(tmp_path):
    previous = torch.get_num_threads()
    try:
        logs = []
        WorldPipeline(log=logs.append)(tiny(tmp_path / "run", threads=2))
        assert torch.get_num_threads() == 2 and "  threads: 2 (--threads)" in logs
    finally:
        torch.set_num_threads(previous)


def test_auto_rasterisers_fall_back_with_the_reason_when_their_probe_fails(monkeypatch):
    import matrix_world.scaffold.raster_cuda as raster_cuda
    import matrix_world.reconstruction.render as splat_render
    from matrix_world.scaffold.render import rasteriser_for

    if not torch.cuda.is_available():
        assert raster_cuda.nvdiffrast_problem() == "no CUDA device"
        assert splat_render.gsplat_problem() == "no CUDA device"
    monkeypatch.setattr(raster_cuda, "nvdiffrast_problem", lambda device="cuda": "plugin failed (no nvcc)")
    assert rasteriser_for("auto", torch.device("cuda", 0)) == (
        "cpu", "the CUDA rasteriser cannot run here (plugin failed (no nvcc)): the CPU rasteriser")
    monkeypatch.setattr(raster_cuda, "nvdiffrast_problem", lambda device="cuda": None)
    assert rasteriser_for("auto", torch.device("cuda", 0))[0] == "cuda"
    monkeypatch.setattr(splat_render, "gsplat_problem", lambda device="cuda": "kernels failed")
    assert splat_render.rasteriser_for("auto", torch.device("cuda", 0))[0] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = make_plan(tiny("unused", preset="fast", device="cuda"))
    assert plan.backends["reconstruction"] == "lift" and "kernels failed" in plan.reasons["reconstruction"]


def test_tests_never_see_a_real_model_cache():
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert cache.is_relative_to(Path(os.environ["HF_HOME"])) and not any(cache.rglob("*"))
    assert not np.any([Path(p).name.startswith("models--") for p in cache.glob("*")])
