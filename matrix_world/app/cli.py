"""Shared command-line plumbing: one-line errors, exit codes, argparse value types.

Every script's ``main(argv)`` runs through :func:`run_main`:

* :class:`~matrix_world.errors.InputError` (bad user input), :class:`~matrix_world.io.OutputError`
  (cannot write) and :class:`~matrix_world.errors.MissingDependencyError` print
  ``error: <one line>`` on stderr and exit with code 2;
* Ctrl-C prints ``error: interrupted`` and exits with 130;
* anything else is a bug: the traceback is shown.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence

from matrix_world.errors import InputError, MissingDependencyError, one_line
from matrix_world.io import OutputError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def note(message: str) -> None:
    """Print ``note: <message>`` on stderr (things the user should know, not errors)."""
    print(f"note: {one_line(message)}", file=sys.stderr, flush=True)


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` and turn user-facing errors into ``error: ...`` and an exit code."""
    try:
        code = main(argv)
    except (InputError, OutputError, MissingDependencyError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return int(code or 0)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value
