"""The plan of a run: the device, and per stage the backend, why, and its configuration.

:func:`make_plan` only calls each stage's ``choose(config, device)`` (the one ``auto`` rule
of that stage, beside its stage function) and ``configure(config, backend)``; the reasons
printed at the start of a run and stored in the manifest are theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from matrix_world.errors import InputError
from matrix_world.generation.depth import DepthConfig
from matrix_world.generation.panorama import PanoramaConfig
from matrix_world.generation.video import VideoConfig
from matrix_world.pipeline import depth, panorama, reconstruction, scaffold, video
from matrix_world.pipeline.config import WorldConfig
from matrix_world.reconstruction.stage import ReconConfig

# The stages with a backend choice, in run order, and their choosers.
CHOOSERS = {"panorama": panorama.choose, "depth": depth.choose, "scaffold": scaffold.choose,
            "video": video.choose, "reconstruction": reconstruction.choose}
NO_WEIGHTS = {"file", "procedural", "prior", "fill", "oracle", "lift", "photo"}
MODEL_STAGES = ("panorama", "depth", "video", "reconstruction")  # the stages whose backends may need weights


@dataclass
class Plan:
    """The backend chosen for each stage, with the reason, and the stage configurations."""

    device: torch.device
    backends: dict[str, str]
    reasons: dict[str, str]
    height: int  # video frame height (width 2 x height)
    panorama: PanoramaConfig
    depth: DepthConfig
    video: VideoConfig
    recon: ReconConfig
    notes: list[str] = field(default_factory=list)

    @property
    def preview_only(self) -> bool:
        """True when no stage runs a model that needs weights."""
        return all(self.backends[stage] in NO_WEIGHTS for stage in MODEL_STAGES)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a CUDA device asked for must exist."""
    from matrix_world.runtime import check_device

    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_plan(config: WorldConfig) -> Plan:
    """Resolve the device and every stage's ``auto`` backend into concrete stage configurations."""
    device = resolve_device(config.device)
    backends, reasons = {}, {}
    for stage, choose in CHOOSERS.items():
        backends[stage], reasons[stage] = choose(config, device)
    return Plan(device=device, backends=backends, reasons=reasons,
                height=video.frame_height(config, backends["video"]),
                panorama=panorama.configure(config, backends["panorama"]),
                depth=depth.configure(config, backends["depth"]),
                video=video.configure(config, backends["video"]),
                recon=reconstruction.configure(config, backends["reconstruction"]))


# Bytes a run holds per pixel of one video frame: scaffold rgb + mask, the video's uint8 and float32 copies,
# the reconstruction's per-pixel work: an estimate from the arrays a run holds (not a measured peak).
BYTES_PER_VIDEO_PIXEL = 32
BYTES_PER_PANORAMA_PIXEL = 48  # float32 rgb, distance, masks and the scaffold mesh's vertices


def run_bytes(frames: int, height: int, panorama_height: int) -> int:
    """Memory estimate of a world run: ``frames`` x ``height`` x 2 ``height`` video pixels and one
    ``panorama_height`` x 2 ``panorama_height`` panorama."""
    return frames * height * 2 * height * BYTES_PER_VIDEO_PIXEL + panorama_height * 2 * panorama_height * BYTES_PER_PANORAMA_PIXEL


def check_plan(config: WorldConfig, plan: Plan) -> None:
    """What the chosen backends need of the inputs (still before anything is written)."""
    from matrix_world.runtime import check_memory

    check_memory(run_bytes(config.frames, plan.height, plan.panorama.height),
                 f"--frames {config.frames} of {2 * plan.height}x{plan.height} (--resolution {plan.height})",
                 "fewer --frames (longer walks: chained segments with scripts/explore.py) or a smaller --resolution")
    if plan.backends["video"] == "wan" and (config.frames - 1) % 4:
        raise InputError(f"the Wan video model needs 4k+1 frames (e.g. 81, 49, 17), got --frames {config.frames}")
    if plan.backends["reconstruction"] == "lrm":
        if (config.frames - 1) % 4:
            raise InputError(f"the lrm reconstruction reads Wan-VAE latents: it needs 4k+1 frames (e.g. 81, 49, 17), "
                             f"got --frames {config.frames}")
        if plan.height % 16:
            raise InputError(f"the lrm reconstruction needs a video height divisible by 16 (an even latent grid), "
                             f"got {plan.height}")
        if plan.recon.lrm.model is None:
            from matrix_world.reconstruction.lrm import OFFICIAL_FILE, OFFICIAL_REPO

            where = config.lrm_model or f"{OFFICIAL_REPO} {OFFICIAL_FILE}"
            raise InputError(f"--recon-backend lrm: the LRM checkpoint {where} is not on this machine; download it "
                             f"(huggingface-cli download {OFFICIAL_REPO} {OFFICIAL_FILE}) or pass --lrm-model PATH")
        if plan.backends["video"] != "wan" and plan.recon.lrm.vae is None:
            raise InputError("--recon-backend lrm reads the video's Wan-VAE latents: the video backend is "
                             f"{plan.backends['video']} and no Wan VAE is on this machine (pass --wan-model FOLDER)")


# Which backends read the text prompt, and how (the others ignore it).
PROMPT_READERS = {("panorama", "flux"): "generates the panorama from it",
                  ("panorama", "flux-fill"): "guides the outpainting with it",
                  ("panorama", "procedural"): "picks a synthetic scene by its keywords",
                  ("video", "wan"): "guides the video with it"}


def prompt_note(prompt: str, backends: dict[str, str]) -> str | None:
    """One note line when ``--prompt`` is given but no backend of the plan generates from it
    (the preview backends: at most the procedural scene's choice by keyword), else None."""
    if not prompt.strip():
        return None
    readers = [(stage, b) for stage, b in backends.items() if (stage, b) in PROMPT_READERS]
    if any(b in ("flux", "flux-fill", "wan") for _, b in readers):
        return None
    video = backends.get("video", "?")
    if readers:
        return (f"note: --prompt only picks the procedural scene by its keywords; no model reads the text "
                f"(the {video} video backend ignores it; flux and wan use it)")
    return (f"note: --prompt is unused here: the {backends.get('panorama', '?')} panorama and the {video} video "
            "backend read no text (flux and wan use it)")
