"""The ``vptsearch`` command line: a thin dispatcher.

Each subsystem adds its own sub-commands through an ``add_commands(subparsers)`` function in a
private ``_cli`` module, so this file never grows with the features. Every command sets
``func`` (called with the parsed namespace, returns an exit code).

The library reports progress through the ``vptsearch`` loggers; while a command runs, their
records are the command's output lines (INFO on stdout, warnings on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from vptsearch._errors import VptsearchError

# Modules that contribute sub-commands; missing ones are skipped so partial installs still work.
_COMMAND_MODULES = (
    "vptsearch.search._cli",  # launch, report, export, predict, ui, doctor
    "vptsearch.data._cli",  # data build-mini | import-vtab | import-fgvc | import-folder | list | info
    "vptsearch._backbones_cli",  # backbones list | info | verify | probe | import-dinov2-s
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vptsearch",
        description="Hyperparameter search for visual prompt tuning on frozen Vision Transformers.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.add_commands(sub)
    return parser


class _LineHandler(logging.Handler):
    """A record as one plain line: INFO and below on stdout (the progress lines a launch or an
    export prints), warnings and errors on stderr (as Python's last-resort handler shows them).
    The streams are looked up per line, so a redirected ``sys.stdout`` gets them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            print(line, file=sys.stdout if record.levelno < logging.WARNING else sys.stderr)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _library_output() -> Iterator[None]:
    """Print the ``vptsearch`` loggers' INFO records while a command runs; restored afterwards."""
    logger, handler = logging.getLogger("vptsearch"), _LineHandler()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _stdout_closed() -> int:
    """The reader of our stdout went away (``vptsearch data list | head -1``): stop quietly.

    Python's recipe (docs of the signal module): point stdout at devnull, so the interpreter's
    last flush of what is still buffered does not print a second BrokenPipeError; exit status 1.
    """
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no file behind stdout: no flush
        fd = sys.stdout.fileno()
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return 1


def _flushed(code: int) -> int:
    """``code``, once what is buffered for stdout is written; a reader that went away
    (``vptsearch --help | head -1``) is no error message at exit, the status stays ``code``."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_closed()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help (0) or a usage error (2): argparse printed it and exits
        _flushed(0)  # here, not at the interpreter's exit, where a closed pipe is a notice
        raise
    if args.version:
        from vptsearch import __version__

        print(__version__)
        return _flushed(0)
    if not getattr(args, "func", None):
        parser.print_help()
        return _flushed(2)
    try:
        with _library_output():
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows up here, not as a traceback at exit
            return code
    except BrokenPipeError:
        return _stdout_closed()
    except OSError as exc:  # a path from the input with a name longer than any folder's: bad input
        if exc.errno != errno.ENAMETOOLONG:
            raise
        name = str(exc.filename)
        shown = f"{name[:120]!r}... ({len(name)} characters)" if len(name) > 120 else repr(name)
        why = f"file name too long: {shown}; accepted: file and folder names of at most 255 bytes"
        print(f"vptsearch: error: {why}", file=sys.stderr)
        return 2
    except VptsearchError as exc:
        print(f"vptsearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vptsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
