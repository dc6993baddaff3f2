"""Reading user weights files (LoRAs, checkpoints): the one reader, and a cheap header check.

``.safetensors`` goes through safetensors, anything else through ``torch.load(weights_only=True)``:
a pickle's code is never run, and whatever is wrong with the bytes is one line naming the file.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

from matrix_world.errors import InputError, one_line, short_error

_PICKLE_REFUSAL = re.compile(r"Unsupported global: GLOBAL [\w.]+|Trying to load unsupported GLOBAL [\w.]+"
                             r"|Trying to load unsupported object[^.;\n]*")
_ZIP_MAGIC = b"PK\x03\x04"


def check_weights_header(path: str | os.PathLike, *, what: str = "weights file") -> None:
    """A cheap look at a weights file before a run starts (its tensors are read later): a
    ``.safetensors`` header that parses, or the first bytes of a torch zip / pickle file.
    InputError of one line otherwise (random bytes, a truncated header, a header too large)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"cannot read {what} {path} as .safetensors ({short_error(exc)}); expected a complete "
                             ".safetensors file") from None
        return
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head == _ZIP_MAGIC or head[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle (protocol 2+)
        raise InputError(f"{what} {path} is neither a .safetensors file nor a torch file (it starts with "
                         f"{head!r}); expected a LoRA / weights file")


def load_weights(path: str | os.PathLike, *, what: str = "weights file", mmap: bool = False) -> Any:
    """Read a weights file, the one reader of user checkpoints: ``.safetensors`` with safetensors,
    anything else with ``torch.load(weights_only=True)`` (a pickle's code is never run).

    Whatever is wrong with the bytes (random data, a truncated file, a safetensors header too
    large, a pickle that holds code or foreign objects) is an :class:`InputError` of one short
    line naming the file and what was expected; torch's multi-line advice about
    ``weights_only=False`` is left out on purpose (it would run the file's code).
    ``mmap``: map the tensors of a zip-format torch file instead of reading them (falls back to
    a plain read for legacy files)."""
    import pickle
    import struct

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, MemoryError, OverflowError) as exc:
            raise InputError(f"cannot read {what} {path} as .safetensors ({short_error(exc)}); expected a complete "
                             ".safetensors file") from None
    readable = (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError, IndexError, KeyError, TypeError,
                AttributeError, ImportError, struct.error, UnicodeDecodeError, OverflowError, MemoryError)
    try:
        with warnings.catch_warnings():  # torch's multi-line notes about pickle protocols of a bad file
            warnings.simplefilter("ignore", UserWarning)
            if mmap:
                try:
                    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:  # mmap needs the zip format; legacy files load without it
                    if "mmap" not in str(exc):
                        raise
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except readable as exc:
        text = str(exc)
        refusal = _PICKLE_REFUSAL.search(text)
        if refusal and "Weights only load failed" in text:
            raise InputError(f"{what} {path} holds Python objects beyond tensors ({one_line(refusal.group(0))}); "
                             "refused by torch.load(weights_only=True) without running them: expected a plain dict of "
                             "tensors (.safetensors, .pt, .ckpt)") from None
        if "Weights only load failed" in text:  # torch's advice paragraphs dropped: the reason only
            reasons = [p for p in text.split("\n\n") if p.strip()
                       and not p.strip().startswith(("Weights only load failed", "Check the documentation"))]
            text = one_line(reasons[0]).removeprefix("WeightsUnpickler error: ") if reasons else "unreadable"
            raise InputError(f"cannot read {what} {path} with torch.load(weights_only=True) ({text}); expected a "
                             ".safetensors file or a torch file of tensors") from None
        raise InputError(f"cannot read {what} {path} with torch.load(weights_only=True) ({short_error(exc)}); expected "
                         "a .safetensors file or a torch file of tensors") from None
