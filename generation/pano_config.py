"""The panorama stage's options and result, and the input checks its FLUX backends share.

:class:`PanoramaConfig` is the one dataclass of all panorama backends (``panorama.py``
registers and runs them; ``flux_pano.py`` and ``image2pano.py`` implement the model ones).
Sizes: height is a multiple of 16 (VAE 8x, 2x2 token packing), width = 2 * height, at most
``MAX_HEIGHT`` = 1024. Prompts: ``prompt_template`` is a format string with ``{prompt}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from matrix_world.errors import InputError

DEFAULT_FLUX = "black-forest-labs/FLUX.1-dev"
DEFAULT_FLUX_FILL = "black-forest-labs/FLUX.1-Fill-dev"
WORLDGEN_TEMPLATE = "A high quality 360 panorama photo of {prompt}, HDR, RAW, 360 consistent, omnidirectional"
MAX_HEIGHT = 1024
DECODE_METHODS = ("wrap", "blended", "plain")


@dataclass
class PanoramaConfig:
    """Options of the panorama stage (one dataclass for all backends; unused fields are ignored)."""

    backend: str = "flux"  # flux | flux-fill | file | photo | procedural (auto: resolved by the pipeline)
    model: str | None = None  # hub id or folder; None -> FLUX.1-dev (flux) / FLUX.1-Fill-dev (flux-fill)
    lora: str | None = None  # LoRA .safetensors file, folder, hub id, or "matrix3d"
    lora_weight_name: str | None = None  # file inside a LoRA folder / hub repo
    lora_scale: float = 1.0  # adapter weight (strength)
    turbo_lora: str | None = None  # a few-step LoRA stacked on ``lora`` ("turbo-alpha" = FLUX.1-Turbo-Alpha, 8 steps)
    height: int = 512  # output is height x 2*height
    steps: int = 50
    guidance: float | None = None  # None -> 7.0 (flux, Matrix-3D) / 30.0 (flux-fill)
    true_cfg_scale: float = 1.0  # > 1 enables the negative prompt (two transformer passes per step)
    negative_prompt: str | None = None
    prompt_template: str | None = None  # None -> "{prompt}" (flux) / WORLDGEN_TEMPLATE (flux-fill)
    seed: int = 0
    roll_fraction: float = 0.4  # last 40% of the steps are rolled (Matrix-3D)
    decode: str = "wrap"  # wrap | blended | plain
    wrap_pad_cols: int = 4  # latent columns wrapped on each side (Matrix-3D: 2; 4 halved the border error on the tiny VAE)
    memory: str = "auto"  # auto | full | offload | lowvram (generation.memory; auto: the fastest that fits)
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bfloat16 | float16 | float32
    max_sequence_length: int = 512  # T5 tokens
    allow_download: bool = False  # let huggingface_hub download missing weights
    # image -> panorama (flux-fill)
    fov: float | None = None  # horizontal FOV of the photo in degrees; None -> MoGe estimate, else 60
    fov_model: str | None = "Ruicheng/moge-2-vitl-normal"  # MoGe used to estimate the FOV (None: never)
    mask_erode: int = 4  # pixels (at the output size) of the photo's border that are regenerated
    blend_width: int = 8  # pixels over which the kept photo fades into the generated surround
    # file backend
    path: str | None = None  # panorama file for backend "file" (or pass image=)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PanoramaResult:
    rgb: np.ndarray  # [H, 2H, 3] float32 in [0, 1]
    info: dict = field(default_factory=dict)  # backend, model, lora, seed, seam score, timings, ...
    mask: np.ndarray | None = None  # [H, 2H] bool: pixels copied from an input photo (flux-fill), else None


# --------------------------------------------------------------------------- input checks


def check_height(height: int, multiple: int = 16) -> int:
    """Validate a panorama height for the FLUX backends (width is 2 * height)."""
    if not isinstance(height, (int, np.integer)) or isinstance(height, bool):
        raise InputError(f"panorama height must be an integer, got {height!r}")
    if height > MAX_HEIGHT:
        raise InputError(
            f"panorama height {height} is above the limit of {MAX_HEIGHT} ({2 * MAX_HEIGHT}x{MAX_HEIGHT}); "
            "generate at <= 1024 and upscale the result"
        )
    if height <= 0 or height % multiple:
        lower = max(multiple, height // multiple * multiple)
        raise InputError(f"panorama height must be a positive multiple of {multiple}, got {height} (try {lower} or {lower + multiple})")
    return int(height)


def format_prompt(prompt: str | None, template: str | None, *, allow_empty: bool) -> str:
    """Apply a prompt template (a format string with ``{prompt}``); reject an empty prompt unless allowed."""
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"prompt must be text, got {type(prompt).__name__}")
    text = (prompt or "").strip()
    if not text and not allow_empty:
        raise InputError("the prompt is empty; text -> panorama needs a description (an empty prompt is allowed only with an input image)")
    template = template or "{prompt}"
    if "{prompt}" not in template:
        raise InputError(f"prompt template must contain '{{prompt}}', got {template!r}")
    if not text:
        return ""
    return template.replace("{prompt}", text)
