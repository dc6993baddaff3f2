"""Shared command-line plumbing: options parsed with tyro, value checks, one-line errors, exit codes.

Every script's ``main(argv)`` runs through :func:`run_main`:

* :class:`~matrix_world.errors.InputError` (bad user input), :class:`~matrix_world.io.OutputError`
  (cannot write) and :class:`~matrix_world.errors.MissingDependencyError` print
  ``error: <one line>`` on stderr and exit with code 2;
* Ctrl-C prints ``error: interrupted`` and exits with 130;
* ``MemoryError`` (a size the checks below let through) prints one line and exits with 2;
* anything else is a bug: one line naming the exception and ``rerun with --debug for the
  traceback``, exit code 1. ``--debug`` (anywhere in the arguments; removed before parsing)
  or ``MATRIX_WORLD_DEBUG=1`` shows the traceback instead.

Options are a dataclass with a docstring per field, parsed by :func:`parse_options` (tyro, so
``--help`` lists every field with its documentation). tyro itself rejects what does not parse
(an unknown option, a missing required one, ``--frames abc``): its box is condensed into one
``error:`` line, exit code 2. Values that parse but are out of range are checked afterwards by the dataclass's
``check()`` method with the ``require_*`` helpers below: an :class:`InputError` naming the
option, which :func:`run_main` prints as one line. (Not in ``__post_init__``: tyro catches
a ``ValueError`` raised while it builds the object and draws its own box around it.)
A script that defines such a dataclass does without ``from __future__ import annotations``:
tests import scripts from their files, and string annotations need the module registered.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from matrix_world.errors import InputError, MissingDependencyError, one_line
from matrix_world.io import OutputError

EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"
DEBUG_ENV = "MATRIX_WORLD_DEBUG"
_debug = False  # inside a run_main call with --debug

T = TypeVar("T")


def note(message: str) -> None:
    """Print ``note: <message>`` on stderr (things the user should know, not errors)."""
    print(f"note: {one_line(message)}", file=sys.stderr, flush=True)


def debug_requested(argv: Sequence[str] | None) -> tuple[bool, Sequence[str] | None]:
    """(debug?, argv without ``--debug``): the flag anywhere in ``argv`` (default ``sys.argv[1:]``)
    or ``MATRIX_WORLD_DEBUG`` set to anything but ``''``/``0``."""
    env = os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    args = list(sys.argv[1:] if argv is None else argv)
    if DEBUG_FLAG not in args:
        return env, argv
    return True, [a for a in args if a != DEBUG_FLAG]


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` and turn every failure into one ``error: ...`` line and an exit code
    (see the module docstring)."""
    global _debug
    debug, argv = debug_requested(argv)
    debug, outer = debug or _debug, _debug  # a script's main that calls run_main again keeps the flag
    _debug = debug
    try:
        code = main(argv)
    except (InputError, OutputError, MissingDependencyError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except MemoryError as exc:
        if debug:
            raise
        print(f"error: out of memory ({one_line(exc) or 'MemoryError'}); expected smaller sizes (--frames, "
              "--resolution, --height) or a machine with more memory", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug: one line, the traceback with --debug
        if debug:
            raise
        text = one_line(exc)
        text = text if len(text) <= 300 else text[:297] + "..."
        print(f"error: internal error, {type(exc).__name__}: {text} (rerun with {DEBUG_FLAG} for the traceback)",
              file=sys.stderr, flush=True)
        return EXIT_BUG
    finally:
        _debug = outer
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
    options = tyro_cli(cls, args, prog=prog, description=help_description(doc or ""),
                       config=(tyro.conf.FlagCreatePairsOff,))
    check = getattr(options, "check", None)
    if callable(check):
        check()
    return options


def tyro_cli(cls: type[T], args: Sequence[str] | None, *, prog: str, description: str, **kwargs: Any) -> T:
    """``tyro.cli`` (the one call of it): what tyro refuses is raised as an :class:`InputError`
    of one line (tyro's box condensed: the problem, the options missing or not recognised);
    ``--help`` prints (tidied: :func:`tidy_help`) and exits with 0 as usual."""
    import tyro

    args = list(sys.argv[1:] if args is None else args)
    if any(a in ("-h", "--help") for a in args):
        return _tyro_help(cls, args, prog=prog, description=description, **kwargs)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            options = tyro.cli(cls, args=args, prog=prog, description=description, **kwargs)
    except SystemExit as exited:
        if not exited.code:
            sys.stderr.write(captured.getvalue())
            raise
        raise InputError(f"{prog}: {condense_tyro_error(captured.getvalue())}; see {prog} --help") from None
    sys.stderr.write(captured.getvalue())  # tyro's warnings, if any
    return options


def condense_tyro_error(text: str) -> str:
    """tyro's error box (drawn with box characters, or plain when stderr is no terminal) -> one
    line: its title and the problem, the option rows of its 'Missing' / 'Unrecognized' lists
    (not their help text), without its help sections."""
    sections: list[list[str]] = []
    current: list[str] = []
    title = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("╭"):
            title = raw.strip().strip("╭╮─ ").strip()
            continue
        line = raw.rstrip().strip("╰╯")
        if line.lstrip().startswith("│"):
            line = line.lstrip()[1:].removesuffix("│").rstrip()
        if not line.strip() or not line.strip("─- "):
            if current:
                sections.append(current)
            current = []
            continue
        current.append(line)
    if current:
        sections.append(current)
    if not title and sections and len(sections[0]) == 1:
        title = sections.pop(0)[0].strip()
    parts = []
    for lines in sections:
        head = lines[0].strip()
        if head.startswith(("Argument helptext", "For full helptext")):
            continue
        if head.endswith(":") and len(lines) > 1:  # a list: keep the rows of its least indented items
            indent = min(len(x) - len(x.lstrip()) for x in lines[1:])
            items = [x.strip() for x in lines[1:] if len(x) - len(x.lstrip()) == indent]
            parts.append(f"{head} {', '.join(items)}")
        else:
            parts.append(" ".join(x.strip() for x in lines if x.strip()))
    body = "; ".join(p for p in parts if p) or one_line(text) or "invalid arguments"
    if title and not body.lower().startswith(title.lower()):
        body = f"{title.lower()}: {body}"
    return one_line(body)


def _tyro_help(cls: Any, args: list[str], **kwargs: Any) -> Any:
    """tyro's ``--help`` tidied: tyro writes an optional value's metavar as ``{None}|STR``; the
    help shows ``STR`` (the "(default: None)" after it says the rest). The help is drawn at the
    terminal's width, as tyro would; exits as tyro does."""
    import shutil

    import tyro

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


def require_seed(options: object, *fields: str) -> None:
    """Each named field (None skipped) is a seed: an integer in [0, 2**63) (the one seed rule,
    :func:`matrix_world.pipeline.config.check_seed`)."""
    from matrix_world.pipeline.config import check_seed

    for field in fields:
        value = getattr(options, field)
        if value is not None:
            check_seed(value, _option(field))


def require_device(options: object, field: str = "device", *, allow_auto: bool = True) -> None:
    """The named field (None skipped) is auto (where allowed), cpu, cuda or cuda:N of a GPU that exists."""
    from matrix_world.runtime import check_device

    check_device(getattr(options, field), _option(field), allow_auto=allow_auto)


def require_new_or_folder(options: object, field: str) -> None:
    """The named path field (None skipped) is a folder or does not exist yet (it is created)."""
    from pathlib import Path

    value = getattr(options, field)
    if value is not None and Path(value).exists() and not Path(value).is_dir():
        raise InputError(f"{_option(field)} {value} is a file; expected a folder (created if missing)")
