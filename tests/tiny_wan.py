"""A tiny, randomly initialised Wan2.1 image-to-video pipeline for CPU tests (FACTS §B).

The components are built by :func:`matrix_world.generation.tiny_models.tiny_wan_components`
(the one copy, shared with the scripts' ``--tiny`` options); here they are saved with
``save_pretrained`` and reloaded offline, so tests exercise the real loading code.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

from matrix_world.generation.tiny_models import tiny_wan_components, tiny_wan_vae  # noqa: F401  (tiny_wan_vae: re-exported)


@functools.lru_cache(maxsize=1)
def tiny_wan_dir() -> str:
    """A folder holding a saved tiny pipeline in the diffusers layout (built once per process)."""
    from matrix_world.generation.wan_pipeline import PanoVideoPipeline

    folder = Path(tempfile.mkdtemp(prefix="tiny_wan_")) / "tiny-wan-i2v"
    PanoVideoPipeline(**tiny_wan_components()).save_pretrained(str(folder))
    return str(folder)


def load_tiny_pipeline():
    """Reload the saved tiny pipeline offline (fresh modules every call, float32, eval mode)."""
    from matrix_world.generation.wan_pipeline import PanoVideoPipeline

    pipe = PanoVideoPipeline.from_pretrained(tiny_wan_dir(), dtype=torch.float32, local_files_only=True)
    for name in ("transformer", "vae", "text_encoder", "image_encoder"):
        getattr(pipe, name).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
