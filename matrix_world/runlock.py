"""One writer per run directory: :func:`run_lock`, an advisory ``flock`` on ``<out>/.lock``,
released when the process ends, however it ends; a second writer is refused with one line naming
the holder. Writers (the world, explore, scaffold, video2pano and stabilize pipelines, LoRA
training) hold it around their :class:`matrix_world.rundir.RunDir`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from matrix_world.errors import InputError
from matrix_world.io import OutputError

LOCK = ".lock"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def run_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the run directory ``path`` for writing (created if missing) for the ``with`` block.

    An exclusive ``flock`` on ``<path>/.lock``; the file records who holds it (pid, host,
    command, start). A second holder is refused at once with :class:`InputError` naming the
    first. The kernel drops the lock when the holding process dies, so a killed run never
    blocks the next one. On exit the lock file is removed, and the folder too if this call
    created it and nothing else was written.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output folder {folder} is a file; expected a folder (created if missing)")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from exc
    file = folder / LOCK
    while True:
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write in the output folder {folder}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise OutputError(f"cannot lock the output folder {folder}: {exc.strerror or exc}") from exc
            raise InputError(f"{folder} is in use by another run ({holder}); wait for it to finish or choose "
                             "another --out") from None
        try:  # the holder before us may have removed the file after we opened it: lock the live one
            same = os.fstat(fd).st_ino == os.stat(file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "argv": list(sys.argv)}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
    try:
        check_writable(folder)
        yield folder
    finally:
        with contextlib.suppress(OSError):
            file.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a run that wrote nothing leaves no folder behind


def check_writable(folder: Path) -> None:
    """Create and remove a folder in ``folder`` (a read-only run folder, or one on a
    read-only disk, is refused before any stage starts); OutputError otherwise."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise OutputError(f"cannot write in the output folder {folder} ({exc.strerror or exc}); expected a writable "
                          "folder (check its permissions and the disk)") from None


def _read_holder(fd: int) -> str:
    """'pid 123 on host, since ..., command ...' from a lock file, or 'unknown holder'."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536).decode("utf-8"))
        command = " ".join(str(a) for a in info.get("argv", []))[:200]
        return f"pid {info['pid']} on {info['host']} since {info['started']}: {command}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown holder"
