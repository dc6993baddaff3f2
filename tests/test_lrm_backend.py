"""The ``lrm`` reconstruction backend in the pipeline: the video stage's latents, no second encode,
the same Gaussians as the network called directly, and the checks made before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matrix_world.errors import InputError
from matrix_world.io import load_npz
from matrix_world.pipeline import WorldConfig, WorldPipeline
from matrix_world.pipeline.plan import check_plan, make_plan
from matrix_world.reconstruction.lrm import LRMConfig, PanoLRM
from matrix_world.reconstruction.lrm_backend import LRMBackendConfig, reconstruct_lrm
from matrix_world.splat_io import load_splats
from matrix_world.trajectory import Trajectory

PROMPT = "a quiet harbour town at sunset"


@pytest.fixture(scope="module")
def lrm_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_lrm") / "lrm"
    PanoLRM(LRMConfig.tiny()).save_pretrained(folder)
    return folder


def config(out, lrm_folder, **kw) -> WorldConfig:
    base = dict(prompt=PROMPT, out=str(out), preset="preview", video_backend="wan", wan_lora="none",
                recon_backend="lrm", lrm_model=str(lrm_folder), frames=9, resolution=64, panorama_height=128,
                device="cpu", exports=(), threads=1)
    return WorldConfig(**{**base, **kw})


def test_lrm_backend_reads_the_video_stages_latents(tmp_path, lrm_folder):
    from tiny_wan import load_tiny_pipeline

    out = tmp_path / "run"
    logs: list[str] = []
    result = WorldPipeline(log=logs.append, models={"video": load_tiny_pipeline()})(config(out, lrm_folder))
    assert result.plan.backends["reconstruction"] == "lrm"
    latents = load_npz(out / "video_latents.npz")["latents"]
    assert latents.shape == (3, 16, 8, 16) and latents.dtype == np.float32  # 9 frames -> T = 3; 64 x 128 / 8
    import json

    record = json.loads((out / "manifest.json").read_text())["stages"]["reconstruction"]
    assert record["backend"] == "lrm" and record["info"]["latents"] == "the video stage's (Wan)"
    # the same Gaussians as the network called directly on those latents and the run's poses
    traj = Trajectory.from_json(out / "trajectory.json")
    direct, info = reconstruct_lrm(LRMBackendConfig(model=str(lrm_folder)), latents=torch.from_numpy(latents),
                                   c2w=traj.c2w, device=torch.device("cpu"))
    saved = load_splats(out / "world.ply", opacity="logit")  # (the auto rule would read all-[0, 1] logits as linear)
    assert len(saved) == len(direct) == info["num_gaussians"] > 0
    assert info["frames_kept"] == 5  # frames 0, 2, 4, 6, 8
    torch.testing.assert_close(saved.means, direct.means.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(saved.opacity_logits, direct.opacity_logits.float(), atol=1e-4, rtol=1e-4)
    # the .ply's opacity column holds our logits, not the official sigmoid([0, 1]) values
    from plyfile import PlyData

    column = torch.from_numpy(np.asarray(PlyData.read(str(out / "world.ply"))["vertex"]["opacity"], np.float32))
    torch.testing.assert_close(column, direct.opacity_logits.float(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(column, torch.sigmoid(direct.opacity_logits.float()), atol=1e-2)


def test_lrm_refusals_come_before_anything_is_written(tmp_path, lrm_folder, monkeypatch):
    import matrix_world.pipeline.reconstruction as recon_stage

    out = tmp_path / "refused"
    with pytest.raises(InputError, match="4k\\+1 frames"):
        cfg = config(out, lrm_folder, frames=10, video_backend="fill")
        check_plan(cfg, make_plan(cfg))
    monkeypatch.setattr(recon_stage, "wan_folder", lambda config: None)
    with pytest.raises(InputError, match="no Wan VAE is on this machine"):
        cfg = config(out, lrm_folder, video_backend="fill")
        check_plan(cfg, make_plan(cfg))
    monkeypatch.setattr(recon_stage, "lrm_checkpoint", lambda config: None)
    with pytest.raises(InputError, match="LRM checkpoint .* is not on this machine"):
        WorldPipeline(log=lambda *_: None)(config(out, lrm_folder, lrm_model=None))
    assert not out.exists()
    with pytest.raises(InputError, match="--lrm-model"):
        WorldPipeline(log=lambda *_: None)(config(out, "no/such/lrm.pt"))
    assert not out.exists()


def test_auto_picks_the_lrm_only_where_its_weights_are(monkeypatch, lrm_folder):
    import matrix_world.pipeline.reconstruction as recon_stage
    import matrix_world.reconstruction.render as splat_render

    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(splat_render, "gsplat_problem", lambda device="cuda": None)
    monkeypatch.setattr(recon_stage, "wan_folder", lambda config: "/models/wan")
    cfg = WorldConfig(prompt=PROMPT, lrm_model=str(lrm_folder))
    assert recon_stage.choose(cfg, gpu) == ("lrm", "the panoramic LRM checkpoint and the Wan VAE found: "
                                           "feed-forward reconstruction")
    assert recon_stage.choose(cfg, torch.device("cpu"))[0] == "lift"
    monkeypatch.setattr(recon_stage, "wan_folder", lambda config: None)  # no VAE for the latents
    assert recon_stage.choose(cfg, gpu)[0] == "optimize"
    assert recon_stage.choose(WorldConfig(prompt=PROMPT), gpu)[0] == "optimize"  # no checkpoint (the test hub is empty)
