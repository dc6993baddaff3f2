"""Checks of a run's artifacts without reading them whole: a file's stat signature (has it changed
since its sha256 was recorded?) and whether it still loads as its kind (see :mod:`matrix_world.rundir`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from matrix_world.errors import one_line

RACY_NS = 100_000_000  # a stat signature counts only for files last written >= 0.1 s before it was taken


def stat_signature(path: str | os.PathLike) -> dict[str, int] | None:
    """The stat fields that change whenever a file's bytes may have (see matrix_world.rundir's module docstring),
    with the time they were read; None when the filesystem's timestamps are too coarse to tell."""
    st = os.stat(path)
    checked = time.time_ns()
    if st.st_mtime_ns % 1_000_000_000 == 0 or st.st_mtime_ns > checked - RACY_NS:
        return None  # whole-second timestamps, or written too recently: the bytes are read again next time
    return {"mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino, "checked_ns": checked}


def signature_holds(path: str | os.PathLike, record: dict) -> bool:
    """True when ``path`` still has the size and stat signature ``record`` (an artifact record) holds."""
    sig = record.get("stat")
    if not sig:
        return False
    st = os.stat(path)
    return (st.st_size == record.get("bytes") and st.st_mtime_ns == sig.get("mtime_ns")
            and st.st_ctime_ns == sig.get("ctime_ns") and st.st_ino == sig.get("inode"))


def artifact_load_problem(path: Path) -> str | None:
    """None when the artifact ``path`` reads back as its kind, else why not: every member of an
    ``.npz`` passes its CRC, a ``.json`` parses, a ``.png`` / ``.jpg`` decodes, a ``.ply`` has a
    header. A file whose bytes were damaged before its sha256 was recorded (a disk fault while
    it was written, a copy that truncated it and the manifest with it) fails here."""
    import zipfile

    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
                if bad is not None:
                    return f"member {bad} fails its CRC"
                if not all(name.endswith(".npy") for name in archive.namelist()):
                    return "not an archive of .npy arrays"
        elif suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(path) as img:
                img.load()
        elif suffix == ".ply":
            with open(path, "rb") as f:
                head = f.read(1 << 16)
            if not head.startswith(b"ply") or b"end_header" not in head:
                return "no PLY header"
    except (OSError, ValueError, EOFError, RecursionError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        return f"{type(exc).__name__}: {one_line(exc)}"
    return None
