"""User-facing errors (and reader notes) and lazy imports of heavy optional packages."""

from __future__ import annotations

import importlib
from types import ModuleType


def one_line(message: object) -> str:
    """Collapse a message (e.g. an exception from a library) onto one line."""
    return " ".join(str(message).split())


def short_error(exc: BaseException, limit: int = 160) -> str:
    """``Type: first sentence`` of an exception, on one line, at most ``limit`` characters."""
    text = one_line(str(exc).split("\n\n")[0])
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class InputError(ValueError):
    """Bad user input. The message is one line: what was wrong and what is expected.

    Command-line entry points catch it, print ``error: <message>`` and exit with code 2.
    """


class SplatNote(UserWarning):
    """Something a splat or mesh reader converted or ignored (not an error); the converter prints it."""


class MissingDependencyError(ImportError):
    """An optional package is needed for this code path but is not installed."""


def require(module: str, install: str) -> ModuleType:
    """Import ``module`` or raise an error naming the package and its install command.

    Heavy and GPU-only packages (diffusers, gsplat, nvdiffrast, moge) are imported through
    this inside the functions that need them, never at module level.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"this feature needs the Python package '{module}' ({exc}); install it with: {install}"
        ) from exc
