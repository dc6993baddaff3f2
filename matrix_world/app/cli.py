"""Shared command-line plumbing: options parsed with tyro, value checks, one-line errors, exit codes.

Every script's ``main(argv)`` runs through :func:`run_main`:

* :class:`~matrix_world.errors.InputError` (bad user input), :class:`~matrix_world.io.OutputError`
  (cannot write) and :class:`~matrix_world.errors.MissingDependencyError` print
  ``error: <one line>`` on stderr and exit with code 2;
* Ctrl-C prints ``error: interrupted`` and exits with 130;
* anything else is a bug: the traceback is shown.

Options are a dataclass with a docstring per field, parsed by :func:`parse_options` (tyro, so
``--help`` lists every field with its documentation). tyro itself rejects what does not parse
(an unknown option, a missing required one, ``--frames abc``) with its own message and exit
code 2. Values that parse but are out of range are checked afterwards by the dataclass's
``check()`` method with the ``require_*`` helpers below: an :class:`InputError` naming the
option, which :func:`run_main` prints as one line. (Not in ``__post_init__``: tyro catches
a ``ValueError`` raised while it builds the object and draws its own box around it.)
A script that defines such a dataclass does without ``from __future__ import annotations``:
tests import scripts from their files, and string annotations need the module registered.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from matrix_world.errors import InputError, MissingDependencyError, one_line
from matrix_world.io import OutputError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

T = TypeVar("T")


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


# --------------------------------------------------------------------------- parsing


def parse_options(cls: type[T], argv: Sequence[str] | None, *, prog: str, doc: str | None) -> T:
    """``argv`` (default: ``sys.argv[1:]``) -> an instance of the options dataclass ``cls``, then
    its ``check()`` if it has one.

    ``--help`` starts with :func:`help_description` of ``doc`` (the script's docstring) and lists
    every field with its docstring. A bool field with default False is a plain ``--flag`` (no
    ``--no-flag`` twin), as argparse's ``store_true`` was. ``--help`` exits with 0; what tyro
    cannot parse exits with 2 and tyro's message."""
    import tyro

    args = list(sys.argv[1:] if argv is None else argv)
    options = tyro_cli(cls, args=args, prog=prog, description=help_description(doc or ""),
                       config=(tyro.conf.FlagCreatePairsOff,))
    check = getattr(options, "check", None)
    if callable(check):
        check()
    return options


def tyro_cli(cls: Any, *, args: Sequence[str], **kwargs: Any) -> Any:
    """``tyro.cli(cls, args=args, **kwargs)`` with a tidier ``--help``: tyro writes an optional
    value's metavar as ``{None}|STR``; the help shows ``STR`` (the "(default: None)" after it
    says the rest). The help is drawn at the terminal's width, as tyro would."""
    import contextlib
    import io
    import os
    import shutil

    import tyro

    if not any(a in ("-h", "--help") for a in args):
        return tyro.cli(cls, args=args, **kwargs)
    columns = os.environ.get("COLUMNS") or str(shutil.get_terminal_size().columns)
    real = sys.stdout
    tty = bool(getattr(real, "isatty", lambda: False)())

    class Buffer(io.TextIOWrapper):  # what tyro's console sees: the real stream's encoding and tty-ness
        def isatty(self) -> bool:
            return tty

    raw = io.BytesIO()
    buffer, code = Buffer(raw, encoding=getattr(real, "encoding", None) or "utf-8"), 0
    with contextlib.redirect_stdout(buffer):
        previous, os.environ["COLUMNS"] = os.environ.get("COLUMNS"), columns
        try:
            tyro.cli(cls, args=args, **kwargs)
        except SystemExit as exited:
            code = exited.code
        finally:
            if previous is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = previous
    buffer.flush()
    real.write(tidy_help(raw.getvalue().decode(buffer.encoding)))
    real.flush()
    raise SystemExit(code)


def tidy_help(text: str) -> str:
    """``{None}|METAVAR`` -> ``METAVAR`` with the width kept (tyro's boxes stay aligned)."""
    import re

    return re.sub(r"\{None\}\|(\S+)", lambda m: m.group(1) + " " * 7, text)


def help_description(doc: str) -> str:
    """A script docstring's first paragraph and its indented example lines, for ``--help``.

    The prose paragraphs stay in the docstring: tyro joins a paragraph's lines into one
    unwrapped line, while lines that start with a space (the examples) are kept as they are."""
    paragraphs = [p.rstrip() for p in doc.strip().split("\n\n") if p.strip()]
    if not paragraphs:
        return ""
    examples = [p for p in paragraphs[1:] if p.startswith(" ")]
    return "\n\n".join([" ".join(paragraphs[0].split()), *examples])


def choices_metavar(choices: Iterable[str]) -> Any:
    """tyro marker that shows a string option's allowed values as ``{a,b,c}`` in ``--help``
    (check the value with :func:`require_one_of`): ``Annotated[str, choices_metavar(NAMES)]``."""
    import tyro

    return tyro.conf.arg(metavar="{" + ",".join(choices) + "}")


# --------------------------------------------------------------------------- value checks


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def require_positive(options: object, *fields: str) -> None:
    """Each named field (None skipped) is an integer >= 1, or, where it holds a float, a finite number > 0."""
    for field in fields:
        value = getattr(options, field)
        if value is None:
            continue
        if isinstance(value, int):
            if value < 1:
                raise InputError(f"{_option(field)}: expected a positive integer, got {value}")
        elif not (math.isfinite(value) and value > 0):
            raise InputError(f"{_option(field)}: expected a number > 0, got {value}")


def require_finite(options: object, *fields: str) -> None:
    """Each named field (None skipped) is a finite number (not nan or inf)."""
    for field in fields:
        value = getattr(options, field)
        if value is not None and not math.isfinite(value):
            raise InputError(f"{_option(field)}: expected a finite number, got {value}")


def require_in_range(options: object, field: str, low: int, high: int) -> None:
    """The named integer field (None skipped) is in [low, high]."""
    value = getattr(options, field)
    if value is not None and not low <= value <= high:
        raise InputError(f"{_option(field)}: expected an integer from {low} to {high}, got {value}")


def require_one_of(options: object, field: str, choices: Iterable[str]) -> None:
    """The named field (None skipped) is one of ``choices``."""
    value = getattr(options, field)
    allowed = list(choices)
    if value is not None and value not in allowed:
        raise InputError(f"{_option(field)}: expected one of {', '.join(allowed)}, got {value!r}")
