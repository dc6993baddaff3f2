"""Pipeline overheads (issue 14, item 3): the .npz member rule, previews written in the background
before the stage is committed, artifacts hashed once with a resume that still catches a changed
file, keyframes converted alone, and every model a run loads released after its last use."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import threading
import time
import weakref
import zipfile

import numpy as np
import pytest
import torch

from matrix_world import io as mw_io
from matrix_world import rundir as mw_rundir
from matrix_world.io import in_background, save_npz, to_uint8
from matrix_world.rundir import MANIFEST, RunDir
from matrix_world.scaffold.build import Scaffold, load_scaffold, save_scaffold


def _scaffold(f=3, h=8, seed=0) -> Scaffold:
    g = np.random.default_rng(seed)
    mask = g.random((f, h, 2 * h)) > 0.3
    rgb = (g.integers(0, 256, (f, h, 2 * h, 3)) * mask[..., None]).astype(np.uint8)
    distance = np.where(mask, g.random((f, h, 2 * h)) * 10 + 0.5, np.inf).astype(np.float16)
    return Scaffold(rgb, mask, distance)


# --------------------------------------------------------------------------- .npz layout


def test_large_frames_are_stored_masks_and_small_arrays_deflated_and_every_layout_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(mw_io, "COMPRESS_MAX_BYTES", 200)  # the rule at test size: rgb and distance are "large"
    sc = _scaffold()
    save_scaffold(tmp_path / "new.npz", sc)
    save_npz(tmp_path / "old.npz", compressed=True, rgb=sc.rgb, mask=sc.mask, distance=sc.distance)  # runs before issue 14
    save_npz(tmp_path / "stored.npz", compressed=False, rgb=sc.rgb, mask=sc.mask, distance=sc.distance)
    methods = {i.filename: i.compress_type for i in zipfile.ZipFile(tmp_path / "new.npz").infolist()}
    assert methods == {"rgb.npy": zipfile.ZIP_STORED, "mask.npy": zipfile.ZIP_DEFLATED, "distance.npy": zipfile.ZIP_STORED}
    assert {i.compress_type for i in zipfile.ZipFile(tmp_path / "old.npz").infolist()} == {zipfile.ZIP_DEFLATED}
    assert {i.compress_type for i in zipfile.ZipFile(tmp_path / "stored.npz").infolist()} == {zipfile.ZIP_STORED}
    for name in ("new.npz", "old.npz", "stored.npz"):  # one reader for every layout, values bit-identical
        back = load_scaffold(tmp_path / name)
        assert back.rgb.dtype == np.uint8 and back.mask.dtype == bool and back.distance.dtype == np.float16
        np.testing.assert_array_equal(back.rgb, sc.rgb)
        np.testing.assert_array_equal(back.mask, sc.mask)
        np.testing.assert_array_equal(back.distance, sc.distance)  # +inf included
    small = {"x": np.arange(10, dtype=np.float32)}
    save_npz(tmp_path / "small.npz", **small)
    assert zipfile.ZipFile(tmp_path / "small.npz").infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    # deterministic: the same arrays give the same bytes (artifact hashes do not change on a rerun)
    save_scaffold(tmp_path / "again.npz", sc)
    assert (tmp_path / "again.npz").read_bytes() == (tmp_path / "new.npz").read_bytes()
    # the mask member really shrinks (level-1 deflate), the stored members are their raw size
    infos = {i.filename: i for i in zipfile.ZipFile(tmp_path / "new.npz").infolist()}
    assert infos["rgb.npy"].compress_size == infos["rgb.npy"].file_size
    assert infos["mask.npy"].compress_size < infos["mask.npy"].file_size


def test_to_uint8_on_tensors_gives_the_bytes_of_the_numpy_rule():
    x = np.concatenate([np.random.default_rng(0).normal(0.5, 0.4, 10_000).astype(np.float32),
                        (np.arange(256, dtype=np.float32) + 0.5) / 255.0, np.array([-1.0, 0.0, 1.0, 2.0], np.float32)])
    t = to_uint8(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8
    np.testing.assert_array_equal(t.numpy(), to_uint8(x))
    assert to_uint8(torch.from_numpy(to_uint8(x))).numpy().tobytes() == to_uint8(x).tobytes()


# --------------------------------------------------------------------------- background writers


def test_in_background_waits_for_every_job_and_raises_the_first_error(tmp_path):
    started = threading.Barrier(2, timeout=5)  # both jobs must run at the same time to pass the barrier

    def job(name):
        def run():
            started.wait()
            time.sleep(0.05)
            (tmp_path / name).write_text(name)
        return run

    with in_background(job("a"), job("b")):
        pass
    assert (tmp_path / "a").read_text() == "a" and (tmp_path / "b").read_text() == "b"

    def fails():
        raise OSError("disk full")

    def slow():
        time.sleep(0.2)
        (tmp_path / "slow").write_text("done")

    with pytest.raises(OSError, match="disk full"):
        with in_background(fails, slow):
            pass
    assert (tmp_path / "slow").read_text() == "done"  # the error waited for the other job


def _scaffold_world(tmp_path):
    """A tiny run directory with panorama.png, depth.npz and trajectory.json, and the scaffold stage's inputs."""
    from matrix_world.io import write_image
    from matrix_world.pipeline.context import StageContext
    from matrix_world.trajectory import Trajectory

    h = 16
    lat = (0.5 - (np.arange(h) + 0.5) / h) * np.pi
    rgb = np.random.default_rng(1).random((h, 2 * h, 3)).astype(np.float32)
    dist = np.repeat((3.0 + np.cos(lat))[:, None], 2 * h, axis=1).astype(np.float32)
    run = RunDir(tmp_path / "run", seed=0)
    with run.stage("panorama", {}, outputs=["panorama.png"]) as st:
        write_image(st.path("panorama.png"), rgb)
    with run.stage("depth", {}, outputs=["depth.npz"]) as st:
        save_npz(st.path("depth.npz"), distance=dist)
    c2w = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    c2w[:, 2, 3] = torch.linspace(0, 0.5, 4)
    with run.stage("trajectory", {}, outputs=["trajectory.json"]) as st:
        Trajectory(c2w=c2w, fps=8.0).to_json(st.path("trajectory.json"))
    ctx = StageContext(run=run, device=torch.device("cpu"), seed=0, log=lambda *_: None)
    traj = Trajectory.from_json(run.path / "trajectory.json")
    return ctx, rgb, {"distance": dist, "sky": np.zeros(dist.shape, bool)}, traj


def test_scaffold_previews_are_complete_before_the_stage_is_committed(tmp_path, monkeypatch):
    from matrix_world.pipeline import scaffold as stage_module

    ctx, rgb, depth, traj = _scaffold_world(tmp_path)
    real = stage_module.write_video
    finished = []

    def slow_writer(path, frames, **kw):
        real(path, frames, **kw)  # the frames arrive chunk by chunk while they render
        time.sleep(0.3)  # then slower than the npz: the stage must wait for it
        finished.append(path.name)

    monkeypatch.setattr(stage_module, "write_video", slow_writer)
    scaffold = stage_module.scaffold_stage(ctx, "cpu", 8, rgb, depth, traj)
    assert sorted(finished) == ["scaffold_mask.mp4", "scaffold_rgb.mp4"]
    out = ctx.run.path
    manifest = json.loads((out / MANIFEST).read_text())
    for name in ("scaffold.npz", "scaffold_rgb.mp4", "scaffold_mask.mp4"):
        assert manifest["artifacts"][name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest(), name
    # the previews, encoded from the chunks as they rendered, show the scaffold's frames in order (frame 0 = the panorama)
    rgb_video, mask_video = mw_io.read_video(out / "scaffold_rgb.mp4"), mw_io.read_video(out / "scaffold_mask.mp4")
    assert len(rgb_video) == len(mask_video) == 4
    errors = np.abs(rgb_video.astype(np.float32) - scaffold.rgb).mean(axis=(1, 2, 3))
    assert errors.max() < 25 and np.abs(rgb_video[0].astype(np.float32) - scaffold.rgb[1]).mean() > errors[0]
    assert ((mask_video[..., 0] > 127) == scaffold.mask).mean() > 0.95
    seconds = manifest["stages"]["scaffold"]["info"]["seconds"]
    assert seconds["write"] >= 0.3  # the stage's write step waited for the (slow) previews
    # the returned scaffold is the file's content (fresh run) and the reused stage reads the same
    back = load_scaffold(out / "scaffold.npz")
    reused = stage_module.scaffold_stage(ctx, "cpu", 8, rgb, depth, traj)
    for got in (scaffold, reused):
        for key in ("rgb", "mask", "distance"):
            np.testing.assert_array_equal(getattr(got, key), getattr(back, key))

    # a failing preview writer fails the stage: no record, no artifact of the new run in place
    def broken(path, frames, **kw):
        time.sleep(0.1)
        raise mw_io.OutputError(f"cannot write {path.name}")

    monkeypatch.setattr(stage_module, "write_video", broken)
    before = (out / "scaffold.npz").read_bytes()
    ctx.run.force = True
    with pytest.raises(mw_io.OutputError, match="cannot write scaffold_"):
        stage_module.scaffold_stage(ctx, "cpu", 10, rgb, depth, traj)
    assert (out / "scaffold.npz").read_bytes() == before  # the earlier outputs are untouched
    assert not any(p.name.startswith(".staging") for p in out.iterdir())


# --------------------------------------------------------------------------- hashing once, safe resume


class HashCounter:
    def __init__(self, monkeypatch):
        self.paths: list[str] = []
        real = mw_rundir.file_sha256

        def counted(path, *a, **kw):
            self.paths.append(os.path.basename(path))
            return real(path, *a, **kw)

        monkeypatch.setattr(mw_rundir, "file_sha256", counted)


def _old(path, seconds=10.0):
    """Date ``path``'s mtime back (a file written a while ago: its stat signature is trusted)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def _write_stage(run, name="s", data=b"0123456789" * 100, make_old=True):
    with run.stage(name, {"k": 1}, outputs=["a.bin"]) as st:
        if not st.done:
            st.path("a.bin").write_bytes(data)
            if make_old:
                _old(st.path("a.bin"))
    return st


def test_each_artifact_is_hashed_once_in_a_run_and_not_again_on_resume(tmp_path, monkeypatch):
    hashes = HashCounter(monkeypatch)
    run = RunDir(tmp_path / "run")
    _write_stage(run)
    with run.stage("next", {}, inputs=["a.bin"], outputs=["b.txt"]) as st:  # a later stage reads a.bin
        st.path("b.txt").write_text("b")
    assert hashes.paths.count("a.bin") == 1  # the commit's hash, reused as the next stage's input hash
    record = json.loads((tmp_path / "run" / MANIFEST).read_text())["artifacts"]["a.bin"]
    assert record["stat"]["mtime_ns"] == (tmp_path / "run" / "a.bin").stat().st_mtime_ns
    hashes.paths.clear()
    resumed = RunDir(tmp_path / "run")  # a new process: both stages are reused without reading a.bin
    assert _write_stage(resumed).done
    with resumed.stage("next", {}, inputs=["a.bin"], outputs=["b.txt"]) as st:
        assert st.done
    assert "a.bin" not in hashes.paths


@pytest.mark.parametrize("change", ["same size, mtime restored", "replaced by a copy", "touched"])
def test_resume_still_detects_a_changed_artifact(tmp_path, monkeypatch, change, capsys):
    import shutil

    run = RunDir(tmp_path / "run")
    _write_stage(run)
    path = tmp_path / "run" / "a.bin"
    stat = path.stat()
    if change == "same size, mtime restored":
        with open(path, "r+b") as f:
            f.write(b"X")  # one byte changed in place
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as recorded: only ctime tells
    elif change == "replaced by a copy":
        other = tmp_path / "other.bin"
        other.write_bytes(b"9876543210" * 100)
        os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        shutil.copy2(other, path)  # same size and mtime, other bytes
    else:
        os.utime(path)  # same bytes, new mtime: hashed again, found equal, reused
    hashes = HashCounter(monkeypatch)
    st = _write_stage(RunDir(tmp_path / "run"))
    assert hashes.paths.count("a.bin") >= 1  # the signature did not hold: the bytes were read
    if change == "touched":
        assert st.done
    else:
        assert not st.done and "differs from the sha256" in capsys.readouterr().err
        assert path.read_bytes() == b"0123456789" * 100  # recomputed


def test_a_just_written_artifact_has_no_trusted_signature_and_is_read_on_resume(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    _write_stage(run, make_old=False)
    record = json.loads((tmp_path / "run" / MANIFEST).read_text())["artifacts"]["a.bin"]
    if record["stat"] is not None:  # a very slow machine took > 0.1 s between the write and the commit
        pytest.skip("the file was already older than the racy window at commit")
    path = tmp_path / "run" / "a.bin"
    with open(path, "r+b") as f:  # changed within the same clock tick, size kept
        f.write(b"X")
    hashes = HashCounter(monkeypatch)
    assert not _write_stage(RunDir(tmp_path / "run")).done
    assert "a.bin" in hashes.paths


def test_package_versions_are_read_once(monkeypatch):
    mw_rundir._package_versions.cache_clear()
    calls = []
    real = mw_rundir.importlib.metadata.version
    monkeypatch.setattr(mw_rundir.importlib.metadata, "version", lambda name: calls.append(name) or real(name))
    first = mw_rundir.package_versions()
    n = len(calls)
    assert mw_rundir.package_versions() == first and len(calls) == n and n > 0
    mw_rundir._package_versions.cache_clear()


# --------------------------------------------------------------------------- keyframes


def test_uint8_frames_give_the_keyframes_of_the_float_frames():
    from matrix_world.reconstruction.keyframes import KeyframeConfig, prepare_keyframes

    g = np.random.default_rng(0)
    frames = g.integers(0, 256, (6, 8, 16, 3)).astype(np.uint8)
    c2w = torch.eye(4, dtype=torch.float64).repeat(6, 1, 1)
    dist = np.full((8, 16), 2.0, np.float32)
    config = KeyframeConfig(stride=2)
    a = prepare_keyframes(frames, c2w, dist, config=config)
    b = prepare_keyframes(frames.astype(np.float32) / 255.0, c2w, dist, config=config)
    c = prepare_keyframes(torch.from_numpy(frames), c2w, dist, config=config)
    assert a.indices == [0, 2, 4, 5] and a.rgb.dtype == torch.float32
    assert torch.equal(a.rgb, b.rgb) and torch.equal(c.rgb, b.rgb)


# --------------------------------------------------------------------------- models freed in order


def test_every_model_a_run_loads_is_released_after_its_last_use(tmp_path, monkeypatch):
    from tiny_moge import build_tiny_moge
    from tiny_wan import tiny_wan_dir

    from matrix_world.generation import moge_backend
    from matrix_world.generation import video as video_module
    from matrix_world.pipeline import WorldConfig, WorldPipeline
    from matrix_world.pipeline import depth as depth_module

    checkpoint = build_tiny_moge(tmp_path / "moge" / "model.pt", version=2)
    refs: dict[str, list] = {"moge": [], "wan": []}
    seen: list[tuple[str, bool]] = []
    real_load_moge, real_load_wan = moge_backend.load_moge, video_module.load_video_pipeline
    real_estimate = depth_module.estimate_frame_distances

    def load_moge(*a, **kw):
        moge = real_load_moge(*a, **kw)
        refs["moge"].append(weakref.ref(moge.model))
        return moge

    def load_wan(*a, **kw):
        pipe, info = real_load_wan(*a, **kw)
        refs["wan"].extend(weakref.ref(getattr(pipe, k)) for k in ("transformer", "vae", "text_encoder"))
        return pipe, info

    def estimate(*a, **kw):  # keyframe depth (reconstruction): Wan must be gone by now (no gc.collect() here)
        seen.append(("wan alive at keyframe depth", any(r() is not None for r in refs["wan"])))
        return real_estimate(*a, **kw)

    monkeypatch.setattr(moge_backend, "load_moge", load_moge)
    monkeypatch.setattr(video_module, "load_video_pipeline", load_wan)
    monkeypatch.setattr(depth_module, "estimate_frame_distances", estimate)

    def adjust(plan):
        plan.depth.view_size = 56
        plan.depth.keyframe_known_fraction = None  # MoGe on every keyframe (the scaffold knows most of them) ...
        plan.depth.keyframe_skip_known_views = False  # ... and on all their views
        return plan

    config = WorldConfig(prompt="a small room", out=str(tmp_path / "run"), preset="preview", depth_backend="moge",
                         moge_model=str(checkpoint), video_backend="wan", wan_model=tiny_wan_dir(), wan_lora="none",
                         recon_backend="lift", frames=9, resolution=64, panorama_height=128, device="cpu",
                         exports=(), threads=1)
    injected = object()  # a caller's model: kept
    lines: list[str] = []
    pipeline = WorldPipeline(log=lines.append, models={"other": injected}, adjust_plan=adjust)
    pipeline(config)
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert manifest["backends"]["depth"] == "moge" and manifest["backends"]["video"] == "wan"
    # the video stage says where the model went and which speed options auto took, with the reasons
    options = [line for line in lines if line.startswith("  video options: ")]
    assert len(options) == 1 and "memory full (" in options[0] and "attention native (auto: torch SDPA" in options[0]
    assert "compile off (auto: no CUDA device)" in options[0] and "cache off (" in options[0]
    assert len(refs["moge"]) == 1  # loaded once: the depth stage's MoGe served the keyframes too
    assert len(refs["wan"]) == 3 and seen and not any(alive for _, alive in seen)
    gc.collect()
    assert all(r() is None for r in refs["moge"] + refs["wan"])  # nothing the run loaded outlives it
    assert pipeline.models == {"other": injected}


def test_read_video_falls_back_to_opencv_without_the_ffmpeg_plugin(tmp_path, monkeypatch):
    """Where imageio's FFMPEG plugin is missing (the GPU machine), the one reader decodes with OpenCV:
    the same frame count and, up to the two decoders' rounding, the same pixels."""
    import imageio.v2 as imageio

    from matrix_world.io import read_video, video_fps, video_length, write_video

    g = np.random.default_rng(0)
    frames = np.repeat(np.repeat(g.integers(0, 255, (5, 8, 16, 3), dtype=np.uint8), 4, axis=1), 4, axis=2)  # [5, 32, 64, 3]
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=8)
    with_plugin = read_video(path, [0, 4, 2])

    def no_plugin(*args, **kwargs):
        raise ImportError("The `FFMPEG` plugin is not installed.")

    monkeypatch.setattr(imageio, "get_reader", no_plugin)
    assert video_length(path) == 5
    assert abs(video_fps(path) - 8.0) < 1e-3
    without = read_video(path, [0, 4, 2])
    assert without.shape == with_plugin.shape == (3, 32, 64, 3)
    assert np.abs(without.astype(int) - with_plugin.astype(int)).mean() < 3.0
