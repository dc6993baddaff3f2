"""Finding model weights: a local folder/file or a Hugging Face hub id, never a silent download.

Every real backend resolves its weights through here, so a missing model always ends in the
same one-line message: what was looked for, where, and the command that downloads it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from matrix_world.errors import InputError


class WeightsNotFoundError(InputError):
    """Model weights are neither a local path nor in the Hugging Face cache."""


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def _looks_like_hub_id(name: str) -> bool:
    """``owner/name`` (Hugging Face's characters), not a weights file name, not a local path."""
    return (bool(_HUB_ID.fullmatch(name)) and not name.lower().endswith(WEIGHT_SUFFIXES)
            and not Path(name).expanduser().exists())


def check_weights_spec(spec: str, *, what: str, aliases: tuple[str, ...] = ()) -> str:
    """What a weights spec is, without looking at the hub or downloading: 'none', 'alias', 'file',
    'folder' or 'hub' (a plausible ``owner/name`` id; whether it is cached is resolved later).

    WeightsNotFoundError (an InputError; one line, naming ``what``) for anything else: a
    path-looking value (a path separator other than the one of ``owner/name``, a leading
    ``.``/``~``, or a weights suffix such as .safetensors) that does not exist, or a bare word
    that is no alias.
    The resolvers (:func:`resolve_file`, the LoRA ``resolve_lora`` functions) accept exactly
    the specs this accepts.
    """
    spec = str(spec)
    if spec.strip().lower() == "none":
        return "none"
    if spec in aliases:
        return "alias"
    path = Path(spec).expanduser()
    if path.is_file():
        from matrix_world.checkpoints import check_weights_header

        check_weights_header(path, what=what)
        return "file"
    if path.is_dir():
        return "folder"
    if _looks_like_hub_id(spec):
        return "hub"
    choices = ", ".join(["none", *aliases])
    if "/" in spec or os.sep in spec or "\\" in spec or spec.startswith((".", "~")) or spec.lower().endswith(WEIGHT_SUFFIXES):
        raise WeightsNotFoundError(f"{what} {spec} does not exist; expected {choices}, an existing file or folder, "
                                   "or a Hugging Face hub id owner/name")
    raise WeightsNotFoundError(f"{what} {spec!r} is neither {choices}, an existing file or folder, nor a Hugging Face "
                               "hub id owner/name")


def resolve_pretrained(name_or_path: str, *, what: str, allow_download: bool = False) -> str:
    """Return a local folder holding a diffusers/transformers model.

    name_or_path: a local folder, or a hub id such as ``black-forest-labs/FLUX.1-dev``.
    Hub ids are looked up in the local Hugging Face cache only, unless ``allow_download``
    (and HF_HUB_OFFLINE is not set), in which case huggingface_hub downloads them.
    Raises WeightsNotFoundError naming the id, the places looked at and the download command.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise WeightsNotFoundError(f"{what}: expected a model folder, got the file {path}")
        return str(path)
    if not _looks_like_hub_id(name_or_path):
        raise WeightsNotFoundError(f"{what}: the local folder {path} does not exist (expected a folder or a hub id like owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(name_or_path, local_files_only=not allow_download or _offline())
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        raise WeightsNotFoundError(
            f"{what}: weights '{name_or_path}' not found (looked for a local folder '{path}' and in the "
            f"Hugging Face cache {_hub_cache()}); download them with: "
            f"huggingface-cli download {name_or_path}  (then pass the hub id or the folder) [{type(exc).__name__}]"
        ) from None


def resolve_file(name_or_path: str, *, what: str, filename: str | None = None, allow_download: bool = False) -> str:
    """Return a local file (a LoRA or checkpoint) from a file path, a folder + filename, or a hub id + filename."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        if filename is None:
            raise WeightsNotFoundError(f"{what}: {path} is a folder; give the file name inside it")
        candidate = path / filename
        if candidate.is_file():
            return str(candidate)
        raise WeightsNotFoundError(f"{what}: {candidate} does not exist")
    if filename is None or not _looks_like_hub_id(name_or_path):
        raise WeightsNotFoundError(f"{what}: file {path} does not exist")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return hf_hub_download(name_or_path, filename, local_files_only=not allow_download or _offline())
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        raise WeightsNotFoundError(
            f"{what}: '{filename}' from '{name_or_path}' not found (looked in the Hugging Face cache "
            f"{_hub_cache()}); download it with: huggingface-cli download {name_or_path} {filename} [{type(exc).__name__}]"
        ) from None


def weights_available(name_or_path: str, filename: str | None = None) -> bool:
    """True when the weights can be had without a download (used by ``auto`` backend choice)."""
    try:
        if filename is None:
            resolve_pretrained(name_or_path, what="probe")
        else:
            resolve_file(name_or_path, what="probe", filename=filename)
    except InputError:
        return False
    return True
