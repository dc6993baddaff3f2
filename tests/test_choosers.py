"""The one ``auto`` rule of each stage: ``choose(config, device) -> (backend, reason)``.

make_plan only calls these; the README's backend table is checked against the registries
they choose from. GPUs and weights are simulated with monkeypatch (the rules are what is
tested here, not the models).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import matrix_world.generation.moge_backend as moge_backend
import matrix_world.generation.weights as weights
import matrix_world.reconstruction.render as splat_render
import matrix_world.scaffold.raster_cuda as raster_cuda
from matrix_world.pipeline import WorldConfig, depth, panorama, reconstruction, scaffold, video
from matrix_world.pipeline.config import BACKEND_OPTIONS, backend_choices
from matrix_world.pipeline.plan import CHOOSERS, make_plan

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def all_weights(monkeypatch):
    """Every model's weights 'on this machine' and every GPU kernel working."""
    monkeypatch.setattr(weights, "weights_available", lambda *a, **k: True)
    monkeypatch.setattr(moge_backend, "moge_available", lambda *a, **k: True)
    monkeypatch.setattr(raster_cuda, "nvdiffrast_problem", lambda device="cuda": None)
    monkeypatch.setattr(splat_render, "gsplat_problem", lambda device="cuda": None)


def choices(config: WorldConfig, device: torch.device) -> dict[str, str]:
    return {stage: choose(config, device)[0] for stage, choose in CHOOSERS.items()}


def test_a_cpu_machine_gets_the_no_weight_backends_even_with_weights(all_weights):
    # depth auto used to pick MoGe on a CPU machine when its weights were cached (contrary to the README)
    got = choices(WorldConfig(prompt="a harbour"), CPU)
    assert got == {"panorama": "procedural", "depth": "procedural", "scaffold": "cpu", "video": "fill",
                   "reconstruction": "lift"}
    photo = choices(WorldConfig(image="p.jpg"), CPU)
    assert photo["panorama"] == "photo" and photo["depth"] == "prior"
    assert "no CUDA GPU" in depth.choose(WorldConfig(image="p.jpg"), CPU)[1]


def test_a_gpu_with_weights_gets_the_models(all_weights):
    assert choices(WorldConfig(prompt="a harbour"), GPU) == {
        "panorama": "flux", "depth": "moge", "scaffold": "cuda", "video": "wan", "reconstruction": "optimize"}
    assert panorama.choose(WorldConfig(image="p.jpg"), GPU)[0] == "flux-fill"
    assert panorama.choose(WorldConfig(image="p.png", panorama=True), GPU) == ("file", "the input is a panorama")
    assert depth.choose(WorldConfig(image="p.png", panorama=True, distance="d.npy"), GPU)[0] == "file"


def test_preview_and_requested_backends(all_weights):
    preview = choices(WorldConfig(prompt="a harbour", preset="preview"), GPU)
    assert preview == {"panorama": "procedural", "depth": "procedural", "scaffold": "cuda", "video": "fill",
                       "reconstruction": "lift"}
    asked = WorldConfig(prompt="a harbour", panorama_backend="file", depth_backend="prior", scaffold_backend="cpu",
                        video_backend="oracle", recon_backend="lift")
    assert {stage: choose(asked, GPU) for stage, choose in CHOOSERS.items()} == {
        "panorama": ("file", "requested"), "depth": ("prior", "requested"), "scaffold": ("cpu", "requested"),
        "video": ("oracle", "requested"), "reconstruction": ("lift", "requested")}


def test_each_missing_piece_on_a_gpu_is_named(monkeypatch):
    monkeypatch.setattr(weights, "weights_available", lambda *a, **k: False)
    monkeypatch.setattr(moge_backend, "moge_available", lambda *a, **k: False)
    monkeypatch.setattr(raster_cuda, "nvdiffrast_problem", lambda device="cuda": "no nvcc")
    monkeypatch.setattr(splat_render, "gsplat_problem", lambda device="cuda": "kernels failed")
    config = WorldConfig(image="p.jpg")
    assert depth.choose(config, GPU) == ("prior", "MoGe weights Ruicheng/moge-2-vitl-normal not on this machine: "
                                         "ground-plane + far-dome heuristic")
    assert scaffold.choose(config, GPU) == ("cpu", "the CUDA rasteriser cannot run here (no nvcc): the CPU rasteriser")
    assert video.choose(config, GPU) == ("fill", "auto: Wan weights 'Wan-AI/Wan2.1-I2V-14B-480P-Diffusers' not found "
                                         "locally")
    assert reconstruction.choose(config, GPU)[0] == "lift"
    assert "kernels failed" in reconstruction.choose(config, GPU)[1]
    # the Matrix-3D LoRAs are part of "the weights": without them the real models are not picked
    monkeypatch.setattr(weights, "weights_available", lambda repo, *files, **k: repo != "Skywork/Matrix-3D")
    assert panorama.choose(WorldConfig(prompt="a harbour"), GPU)[0] == "procedural"
    assert panorama.choose(WorldConfig(prompt="a harbour", flux_lora="none"), GPU)[0] == "flux"
    assert video.choose(config, GPU)[1].startswith("auto: Matrix-3D LoRA")
    assert video.choose(WorldConfig(image="p.jpg", wan_lora="none"), GPU)[0] == "wan"


def test_make_plan_only_calls_the_choosers(monkeypatch, all_weights):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = WorldConfig(prompt="a harbour", device="cuda")
    plan = make_plan(config)
    assert plan.backends == choices(config, GPU)
    assert plan.reasons == {stage: choose(config, GPU)[1] for stage, choose in CHOOSERS.items()}
    assert (plan.panorama.backend, plan.depth.backend, plan.video.backend, plan.recon.backend) == (
        "flux", "moge", "wan", "optimize")
    assert plan.height == 480 and plan.panorama.memory == "auto"  # --memory auto now reaches FLUX
    cpu = make_plan(WorldConfig(prompt="a harbour", device="cpu", memory="full"))
    assert cpu.height == 256 and cpu.video.height == 256 and cpu.panorama.memory == "full" and cpu.preview_only


def test_readme_backend_table_lists_every_registered_backend():
    choices_now = backend_choices()
    assert set(choices_now) == set(CHOOSERS) == set(BACKEND_OPTIONS)
    table = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in ("panorama", "depth", "scaffold", "video", "splats"):
            table["reconstruction" if cells[0] == "splats" else cells[0]] = set(re.findall(r"`([a-z-]+)`", cells[1] + cells[2]))
    for stage, names in choices_now.items():
        assert table.get(stage) == set(names) - {"auto"}, stage
