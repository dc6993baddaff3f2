"""Convert Matrix-3D's official panoramic LRM checkpoint into our self-describing folder, once.

    python scripts/convert_matrix3d_lrm.py pano_lrm_480p.pt checkpoints/pano_lrm
    python scripts/convert_matrix3d_lrm.py pano_lrm_480p.pt checkpoints/pano_lrm --dtype bfloat16

IN is ``checkpoints/pano_lrm_480p.pt`` of the hub repo Skywork/Matrix-3D: ``{'module': state_dict}``
with the network under ``gs_decoder1.``, read with torch.load(weights_only=True). OUT_DIR gets
``config.json`` (the network's sizes) and ``model.safetensors`` (our tensor names), which
``PanoLRM.from_pretrained(OUT_DIR)`` loads. Strict: every tensor of the network must be there
with its shape; keys outside the network are listed in one ``note:`` line. A bad or incomplete
checkpoint prints ``error: <the bad tensors>``, exits with code 2 and writes nothing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from matrix_world.app.cli import note, run_main, tyro_cli
from matrix_world.errors import InputError, one_line


@dataclass
class ConvertLRMOptions:
    """Options of convert_matrix3d_lrm.py."""

    checkpoint: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="CHECKPOINT")]]
    """the official pano_lrm_480p.pt (or any file in its layout)"""
    out_dir: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="OUT_DIR")]]
    """folder to write config.json and model.safetensors into"""
    dtype: Literal["keep", "float32", "bfloat16", "float16"] = "keep"
    """dtype of the written tensors (keep: as stored in the checkpoint)"""
    config: Path | None = None
    """JSON object of the LRMConfig fields that differ from the official network (None: the official network)"""
    overwrite: bool = False
    """replace a converted checkpoint already in OUT_DIR"""


def _config(path: Path | None):
    from matrix_world.reconstruction.lrm import LRMConfig

    if path is None:
        return LRMConfig.official()
    try:
        fields = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the config {path}: {one_line(exc)}") from None
    if not isinstance(fields, dict):
        raise InputError(f"the config {path} must hold a JSON object of LRMConfig fields")
    try:
        return LRMConfig.from_dict({**LRMConfig.official().to_dict(), **fields}, source=str(path))
    except TypeError as exc:
        raise InputError(f"{path}: {one_line(exc)}") from None


def convert(options: ConvertLRMOptions) -> int:
    import torch

    from matrix_world.reconstruction.lrm import CONFIG_FILE, OFFICIAL_REPO, WEIGHTS_FILE, read_lrm_checkpoint, save_lrm_folder

    out = options.out_dir
    if out.exists() and not out.is_dir():
        raise InputError(f"OUT_DIR {out} is a file; give a folder")
    if not options.overwrite and any((out / name).exists() for name in (CONFIG_FILE, WEIGHTS_FILE)):
        raise InputError(f"{out} already holds a converted checkpoint; pass --overwrite to replace it")
    if not options.checkpoint.is_file():
        raise InputError(f"checkpoint {options.checkpoint} is not a file (expected the official .pt)")
    config = _config(options.config)
    # 1. read and check everything before anything is written
    config, state, ignored = read_lrm_checkpoint(options.checkpoint, config=config)
    if options.dtype != "keep":
        dtype = getattr(torch, options.dtype)
        state = {k: v.to(dtype) for k, v in state.items()}
    # 2. write
    save_lrm_folder(out, config, state, source=f"{options.checkpoint.name} ({OFFICIAL_REPO} layout)")
    if ignored:
        note(ignored)
    dtypes = ", ".join(sorted({str(v.dtype).removeprefix("torch.") for v in state.values()}))
    print(f"wrote {out}: {len(state)} tensors, {sum(v.numel() for v in state.values()):,} parameters ({dtypes})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command: ``error: <one line>`` and exit code 2 on bad input, 0 when written."""

    def run(args):
        options = tyro_cli(ConvertLRMOptions, args, prog="convert_matrix3d_lrm.py",
                           description=__doc__.split("\n\n")[0])
        return convert(options)

    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
