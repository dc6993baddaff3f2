"""Run directory: resumption, config hashes, atomic stages, manifest contents."""

import hashlib
import importlib.metadata
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from matrix_world.errors import InputError
from matrix_world.io import save_npz, write_text
from matrix_world.rundir import MANIFEST, RunDir, canonical_json, config_hash, jsonable, small_info


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Counter:
    def __init__(self):
        self.calls = 0

    def write(self, text="hello"):
        def fn(st):
            self.calls += 1
            write_text(st.path("a.txt"), text)
            save_npz(st.path("sub/b.npz"), x=np.arange(3))
        return fn


def test_resume_skips_a_finished_stage(tmp_path):
    out = tmp_path / "run"
    c = Counter()
    st = RunDir(out, seed=7).run_stage("s1", {"k": 1}, ["a.txt", "sub/b.npz"], c.write(), backend="cpu")
    assert c.calls == 1 and not st.done
    mtime = (out / "a.txt").stat().st_mtime_ns
    manifest = json.loads((out / MANIFEST).read_text())
    st2 = RunDir(out).run_stage("s1", {"k": 1}, ["a.txt", "sub/b.npz"], c.write("other"), backend="cpu")
    assert c.calls == 1 and st2.done  # skipped: same config hash, outputs present
    assert (out / "a.txt").read_text() == "hello" and (out / "a.txt").stat().st_mtime_ns == mtime
    after = json.loads((out / MANIFEST).read_text())
    assert after["stages"]["s1"] == manifest["stages"]["s1"]
    assert after["runs"][-1]["skipped"] == ["s1"] and after["runs"][-1]["ran"] == []
    assert [r["ran"] for r in after["runs"]] == [["s1"], []]
    assert after["seed"] == 7  # kept from the first run
    # the context-manager form agrees
    with RunDir(out).stage("s1", {"k": 1}, outputs=["a.txt", "sub/b.npz"], backend="cpu") as st3:
        assert st3.done and st3.path("a.txt") == out / "a.txt"


def test_config_change_input_change_or_missing_output_reruns(tmp_path):
    out = tmp_path / "run"
    src = tmp_path / "input.bin"
    src.write_bytes(b"one")
    c = Counter()

    def run(config, **kw):
        return RunDir(out, **kw).run_stage("s1", config, ["a.txt", "sub/b.npz"], c.write(), files={"src": src})

    run({"k": 1})
    h1 = json.loads((out / MANIFEST).read_text())["stages"]["s1"]["config_hash"]
    run({"k": 1})
    assert c.calls == 1
    run({"k": 2})  # config changed
    assert c.calls == 2
    h2 = json.loads((out / MANIFEST).read_text())["stages"]["s1"]["config_hash"]
    assert h1 != h2
    src.write_bytes(b"two")  # input content changed
    run({"k": 2})
    assert c.calls == 3
    (out / "sub/b.npz").unlink()  # an output went missing
    run({"k": 2})
    assert c.calls == 4 and (out / "sub/b.npz").is_file()
    (out / "a.txt").write_text("truncated!")  # an output changed size
    run({"k": 2})
    assert c.calls == 5 and (out / "a.txt").read_text() == "hello"
    run({"k": 2}, force=True)
    assert c.calls == 6


def test_downstream_stage_reruns_when_its_input_artifact_changes(tmp_path):
    out = tmp_path / "run"
    calls = []

    def first(text):
        return lambda st: write_text(st.path("first.txt"), text)

    def second(st):
        calls.append(1)
        write_text(st.path("second.txt"), (out / "first.txt").read_text() + "!")

    for cfg in ({"v": 1}, {"v": 1}, {"v": 2}):
        run = RunDir(out)
        run.run_stage("first", cfg, ["first.txt"], first(f"v{cfg['v']}"))
        run.run_stage("second", {}, ["second.txt"], second, inputs=["first.txt"])
    assert len(calls) == 2 and (out / "second.txt").read_text() == "v2!"


def test_failed_stage_leaves_nothing(tmp_path):
    out = tmp_path / "fresh"

    def boom(st):
        write_text(st.path("a.txt"), "complete file of a stage that then fails")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        RunDir(out).run_stage("s1", {}, ["a.txt"], boom)
    assert not out.exists()  # the folder it created is gone again

    # after a good run, a failing rerun keeps the old outputs and manifest byte for byte
    c = Counter()
    RunDir(out).run_stage("s1", {"k": 1}, ["a.txt", "sub/b.npz"], c.write())
    before = {p.name: p.read_bytes() for p in (out / "a.txt", out / "sub/b.npz", out / MANIFEST)}

    def half(st):
        write_text(st.path("a.txt"), "new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        RunDir(out).run_stage("s1", {"k": 2}, ["a.txt", "sub/b.npz"], half)
    assert {p.name: p.read_bytes() for p in (out / "a.txt", out / "sub/b.npz", out / MANIFEST)} == before
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", MANIFEST, "sub"]  # no staging, no temp files

    def forgets(st):
        write_text(st.path("a.txt"), "only one of two outputs")

    with pytest.raises(RuntimeError, match=r"without writing \['sub/b.npz'\]"):
        RunDir(out).run_stage("s1", {"k": 3}, ["a.txt", "sub/b.npz"], forgets)
    assert (out / "a.txt").read_bytes() == before["a.txt"]


def test_manifest_contents(tmp_path):
    out = tmp_path / "run"
    pano = tmp_path / "pano.png"
    pano.write_bytes(b"\x89PNG fake")

    @dataclass
    class Cfg:
        height: int = 8
        threshold: float = 0.05

    run = RunDir(out, seed=123)
    run.set_inputs(panorama=pano, unused=None)
    with run.stage("scaffold", Cfg(), outputs=["a.txt"], files={"panorama": pano}, backend="auto") as st:
        write_text(st.path("a.txt"), "x")
        st.backend = "cpu"
        st.info["frames"] = 5
    m = json.loads((out / MANIFEST).read_text())
    assert m["format"] == "matrix_world.run/1" and m["seed"] == 123
    assert m["inputs"]["panorama"] == {"path": str(pano.resolve()), "sha256": sha(pano), "bytes": pano.stat().st_size}
    assert "unused" not in m["inputs"]
    assert m["config"]["scaffold"] == {"height": 8, "threshold": 0.05}
    assert m["backends"] == {"scaffold": "cpu"}
    assert m["timings"]["scaffold"] >= 0 and m["stages"]["scaffold"]["seconds"] == m["timings"]["scaffold"]
    art = m["artifacts"]["a.txt"]
    assert {k: v for k, v in art.items() if k != "stat"} == {"sha256": sha(out / "a.txt"), "bytes": 1, "stage": "scaffold"}
    assert art["stat"] is None or art["stat"]["mtime_ns"] == (out / "a.txt").stat().st_mtime_ns  # None: just written
    rec = m["stages"]["scaffold"]
    assert rec["status"] == "done" and rec["info"] == {"frames": 5} and rec["inputs"] == {"file:panorama": sha(pano)}
    assert rec["config_hash"] == config_hash({"stage": "scaffold", "config": {"height": 8, "threshold": 0.05},
                                              "inputs": {"file:panorama": sha(pano)}, "outputs": ["a.txt"]})
    v = m["versions"]
    assert v["python"] == ".".join(map(str, sys.version_info[:3]))
    for pkg in ("numpy", "torch", "diffusers"):
        try:
            assert v[pkg] == importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            assert pkg not in v
    assert m["runs"][-1]["ran"] == ["scaffold"]


def test_versions_are_read_without_importing_heavy_packages():
    code = ("import sys; from matrix_world.rundir import package_versions; v = package_versions(); "
            "assert 'numpy' in v and 'python' in v; "
            "assert not {'torch', 'diffusers', 'transformers'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_output_folders_and_outputs(tmp_path):
    file = tmp_path / "afile"
    file.write_text("x")
    with pytest.raises(InputError, match="is a file; expected a folder"):
        RunDir(file)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        RunDir(tmp_path / "bad")
    run = RunDir(tmp_path / "ok")
    with pytest.raises(ValueError, match="relative path inside"), run.stage("s", {}, outputs=["../escape.txt"]):
        pass
    with pytest.raises(ValueError, match="did not declare"), run.stage("s", {}, outputs=["a.txt"]) as st:
        st.path("b.txt")
    with pytest.raises(InputError, match="does not exist"), run.stage("s", {}, outputs=["a.txt"], inputs=["x.npz"]):
        pass


def test_segments_and_canonical_hash(tmp_path):
    run = RunDir(tmp_path / "run")
    seg = run.segment("seg001")
    seg.run_stage("video", {"a": 1}, ["video.npz"], lambda st: save_npz(st.path("video.npz"), v=np.zeros(2)))
    assert (tmp_path / "run/segments/seg001/video.npz").is_file()
    assert json.loads((tmp_path / "run" / MANIFEST).read_text())["segments"] == {"seg001": "segments/seg001"}
    assert json.loads((tmp_path / "run/segments/seg001" / MANIFEST).read_text())["stages"]["video"]["status"] == "done"
    assert config_hash({"a": 1, "b": [1.0, 2]}) == config_hash({"b": (1.0, 2), "a": 1})
    assert config_hash({"x": 0.1}) != config_hash({"x": 0.1 + 1e-16 * 2})
    assert canonical_json({"p": np.float32(0.5), "q": float("inf")}) == '{"p":0.5,"q":"inf"}'


@dataclass
class _Opts:
    path: Path
    scale: float


class _Opaque:
    def __str__(self):
        return "<opaque>"


def test_jsonable_values_strict_and_not():
    import torch

    value = {1: _Opts(Path("a/b.png"), float("nan")), "t": (np.int64(3), np.float64("-inf"), np.bool_(True)),
             "arr": np.arange(4, dtype=np.float32).reshape(2, 2), "tensor": torch.tensor([0.5, float("inf")]),
             "scalar": torch.tensor(2.5)}
    expected = {"1": {"path": "a/b.png", "scale": "nan"}, "t": [3, "-inf", True], "arr": [[0.0, 1.0], [2.0, 3.0]],
                "tensor": [0.5, "inf"], "scalar": 2.5}
    assert jsonable(value) == expected and jsonable(value, strict=False) == expected
    assert json.dumps(jsonable(value), allow_nan=False)  # plain JSON, no NaN tokens
    assert jsonable(np.float64("nan")) == "nan"  # not numpy's repr 'np.float64(nan)'
    with pytest.raises(TypeError, match="_Opaque"):
        jsonable({"x": [_Opaque()]})
    assert jsonable({"x": [_Opaque(), {1}]}, strict=False) == {"x": ["<opaque>", "{1}"]}
    assert jsonable(_Opts, strict=False) == str(_Opts)  # a dataclass type is not an instance


def test_small_info_keeps_the_small_entries_as_json():
    import torch

    info = {"backend": "flux", "seed": np.int64(7), "seam": np.float32(0.25), "bad": float("nan"), "none": None,
            "shifts": list(range(10)), "grid": np.zeros((40, 40)), "long": "x" * 3000, "obj": _Opaque(),
            "tensor": torch.ones(2), "big_tensor": torch.zeros(5000), 3: (1, 2)}
    small = small_info(info)
    assert small == {"backend": "flux", "seed": 7, "seam": 0.25, "bad": "nan", "none": None, "shifts": list(range(10)),
                     "obj": "<opaque>", "tensor": [1.0, 1.0], "3": [1, 2]}
    assert json.loads(json.dumps(small)) == small  # what the manifest stores (strict jsonable accepts it)
    assert jsonable(small) == small
    # the limit is on the JSON text: '[0, 1, 2]' is 9 characters
    assert "shifts" in small_info({"shifts": [0, 1, 2]}, limit=10) and not small_info({"shifts": [0, 1, 2]}, limit=9)


def test_benchmark_results_use_the_manifest_sanitiser(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_common", Path(__file__).resolve().parent.parent / "benchmarks/common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    monkeypatch.setenv("OUT", str(tmp_path))
    path = common.write_results("b", {"psnr": np.float32(31.5), "lpips": float("nan"), "device": _Opaque()})
    assert json.loads(path.read_text()) == {"psnr": 31.5, "lpips": "nan", "device": "<opaque>"}
