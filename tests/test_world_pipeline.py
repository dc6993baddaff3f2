"""The world pipeline end to end on CPU with the no-weight backends: artifacts, manifest,
resume after an interruption, chained exploration, bad input."""

import errno
import json

import numpy as np
import pytest
import torch

from matrix_world.app.cli import run_main
from matrix_world.errors import InputError
from matrix_world.pipeline import ExploreConfig, explore
from matrix_world.io import load_npz, read_image
from matrix_world.metrics import psnr
from matrix_world.pipeline import WorldPipeline
from matrix_world.trajectory import Trajectory
from matrix_world.app.world_cli import image2world_main, text2world_main
from script_helpers import TINY_PROMPT as PROMPT
from script_helpers import sha256 as sha
from script_helpers import tiny_config as tiny

ARTIFACTS = ("panorama.png", "depth.npz", "trajectory.json", "scaffold.npz", "scaffold_rgb.mp4", "scaffold_mask.mp4",
             "video.npz", "video.mp4", "world.ply", "world.spz", "preview.mp4", "preview_panorama.png",
             "contact_sheet.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "run"
    result = WorldPipeline(log=lambda *_: None)(tiny(out))
    return out, result


def test_run_directory_and_manifest(world):
    out, result = world
    for name in ARTIFACTS + ("manifest.json",):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backends"] == {"panorama": "procedural", "depth": "procedural", "trajectory": "preset",
                                    "scaffold": "cpu", "video": "fill", "reconstruction": "lift",
                                    "preview": "cpu", "contact_sheet": "cpu"}
    assert manifest["plan"]["preview_only"] is True and manifest["seed"] == 0
    assert "torch" in manifest["versions"] and manifest["world_config"]["prompt"] == PROMPT
    assert set(manifest["timings"]) == set(manifest["backends"])
    for name in ARTIFACTS:  # the recorded hashes are those of the files
        assert manifest["artifacts"][name]["sha256"] == sha(out / name), name
    assert result.num_gaussians > 1000


def test_artifacts_hold_consistent_values(world):
    out, _ = world
    pano = read_image(out / "panorama.png")
    scaffold = load_npz(out / "scaffold.npz")
    depth = load_npz(out / "depth.npz")
    traj = Trajectory.from_json(out / "trajectory.json")
    frames = load_npz(out / "video.npz")["frames"]
    assert pano.shape == (128, 256, 3) and depth["distance"].shape == (128, 256)
    assert scaffold["rgb"].shape == (9, 64, 128, 3) and frames.shape == (9, 64, 128, 3)
    assert scaffold["mask"][0].all() and 0.2 < scaffold["mask"][-1].mean() < 1.0
    small = pano.reshape(64, 2, 128, 2, 3).mean(axis=(1, 3))
    assert np.abs(scaffold["rgb"][0] / 255.0 - small).max() <= 1 / 255 + 1e-6  # frame 0 is the panorama
    known = scaffold["mask"]
    assert np.array_equal(frames[known], scaffold["rgb"][known])  # fill keeps known pixels
    torch.testing.assert_close(traj.c2w[0], torch.eye(4, dtype=torch.float64))
    # the world re-rendered from the first pose reproduces the panorama
    from matrix_world.reconstruction.render import render_panorama
    from matrix_world.splat_io import load_splats

    view = render_panorama(load_splats(out / "world.ply"), traj.c2w[0], 64)
    cover = view.alpha[0] > 0.9
    assert cover.float().mean() > 0.5
    target = torch.from_numpy(frames[0] / 255.0).permute(2, 0, 1).float()
    # (a 64-row world of lifted keyframes re-rendered through 41-pixel cube faces: blur keeps this
    # near 21 dB; an unrelated image scores ~10 dB. Exact lift reproduction is tested in test_lift.py.)
    assert psnr(view.rgb.clamp(0, 1), target, cover[None].expand(3, -1, -1)) > 20.0


def test_resume_after_interrupt_gives_the_same_artifacts(world, tmp_path, monkeypatch):
    reference, _ = world
    out = tmp_path / "run"
    import matrix_world.pipeline.world as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "video_stage", interrupted)
    assert run_main(text2world_main, [PROMPT, "--out", str(out), "--preset", "preview", "--resolution", "64",
                                      "--panorama-height", "128", "--frames", "9", "--device", "cpu"]) == 130
    assert (out / "scaffold.npz").is_file() and not (out / "video.npz").exists()
    assert not list(out.glob(".staging-*"))  # nothing half-written
    monkeypatch.undo()
    WorldPipeline(log=lambda *_: None)(tiny(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"][-1]["skipped"] == ["panorama", "depth", "trajectory", "scaffold"]
    for name in ARTIFACTS:
        if not name.endswith(".mp4"):  # videos carry encoder timing metadata on some ffmpeg builds
            assert sha(out / name) == sha(reference / name), name


def test_chained_exploration(tmp_path):
    # a synthetic indoor scene with its ground-truth video (``oracle``), so that the check
    # measures the chaining, not the preview hole filler
    out = base = tmp_path / "chained"
    base_lines = []
    WorldPipeline(log=base_lines.append)(tiny(out, prompt="a small room", video_backend="oracle"))
    assert sum(line.strip().startswith("note: --prompt only picks the procedural scene") for line in base_lines) == 1
    before = load_npz(base / "video.npz")["frames"][-1] / 255.0
    sheet_before = read_image(out / "contact_sheet.png")
    lines = []
    seg = explore(ExploreConfig(run_dir=str(out), trajectory="straight", frames=9), log=lines.append)
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["segments"]) == ["001"] and manifest["world"]["segments"] == ["001"]
    first = Trajectory.from_json(out / "trajectory.json")
    second = Trajectory.from_json(out / "segments" / "001" / "trajectory.json")
    torch.testing.assert_close(second.c2w[0], first.c2w[-1])  # continues from the last pose, world frame
    assert seg.checks["start_pose_in_world_frame"]
    from matrix_world.reconstruction.render import render_panorama
    from matrix_world.splat_io import load_splats

    merged = load_splats(out / "world.ply")
    ids = load_npz(out / "world_segments.npz")["segment"]
    base_count = len(load_splats(out / "world_base.ply"))
    assert len(ids) == len(merged) == seg.merged_gaussians and set(np.unique(ids)) == {0, 1}
    assert (ids == 0).sum() == base_count and (ids == 1).sum() > 0
    # the world's own outputs are refreshed for the merged world: preview.mp4 flies the base
    # path then the segment's, the contact sheet's panorama row shows both start views
    from matrix_world.io import read_video, video_length
    from matrix_world.pipeline.report import LABEL_HEIGHT

    assert video_length(out / "preview.mp4") == 9 + 9
    assert manifest["stages"]["preview"]["config"]["parts"] == [".", "segments/001"]
    sheet = read_image(out / "contact_sheet.png")
    assert sheet.shape == sheet_before.shape and not np.array_equal(sheet, sheet_before)
    pano_row = sheet[LABEL_HEIGHT:LABEL_HEIGHT + 192]  # 4 columns of 384 x 192
    assert (pano_row[:, 384:768] < 0.98).any(-1).mean() > 0.5  # the segment's start view (was white)
    assert (pano_row[:, 768:] > 0.99).all()  # no third part
    last = read_video(out / "preview.mp4", [17])[0] / 255.0  # the merged world at the segment's last pose
    seg_last = read_video(out / "segments" / "001" / "preview.mp4", [8])[0] / 255.0
    assert np.abs(last - seg_last).mean() < 0.1
    # the counts explained: made vs kept, and the merged total as their sum
    made, kept = seg.num_gaussians, int((ids == 1).sum())
    text = "\n".join(lines)
    assert "note: the world's --prompt is unused here: the oracle video backend reads no text" in text
    assert f"segment 001 made {made:,}; {kept:,} kept in the merged world, {made - kept:,} dropped" in text
    assert f"merged world.ply: {len(merged):,} Gaussians = base {base_count:,} + 001 {kept:,}" in text
    # the second segment's first frame, re-rendered from the merged world, matches the first
    # segment's last frame on the pixels the world covers
    last = before
    view = render_panorama(merged, second.c2w[0], 64)
    known = view.alpha[0] > 0.9
    assert known.float().mean() > 0.5
    target = torch.from_numpy(last).permute(2, 0, 1).float()
    assert psnr(view.rgb.clamp(0, 1), target, known[None].expand(3, -1, -1)) >= 25.0


def test_bad_input(tmp_path, monkeypatch, capsys):
    assert run_main(text2world_main, ["", "--out", str(tmp_path / "a")]) == 2
    assert "empty prompt" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert run_main(image2world_main, [str(bad), "--out", str(tmp_path / "b"), "--device", "cpu"]) == 2
    assert "cannot decode" in capsys.readouterr().err
    afile = tmp_path / "file"
    afile.write_text("x")
    assert run_main(text2world_main, [PROMPT, "--out", str(afile), "--device", "cpu"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(InputError, match="--distance needs --panorama"):
        WorldPipeline()(tiny(tmp_path / "c", image=str(bad), distance=str(bad)))
    # a full disk surfaces as one clear line and leaves no half-written artifact
    import matrix_world.io as io

    real_replace = io.os.replace

    def full_disk(src, dst):
        if str(dst).endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", full_disk)
    out = tmp_path / "d"
    assert run_main(text2world_main, [PROMPT, "--out", str(out), "--preset", "preview", "--resolution", "64",
                                      "--panorama-height", "128", "--frames", "9", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    assert not (out / "panorama.png").exists() and not list(out.glob("**/*.tmp*"))
