"""The ``losslab`` command: one sub-command module per area, each adding its parser through ``register``.

Areas are listed in ``_AREAS``; a module ``losslab.cli._<area>`` defines ``register(subparsers)`` and sets
``func(args) -> int`` on its parsers. Errors derived from :class:`losslab.LosslabError` (and unreadable files)
print one line on stderr and exit with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from losslab import __version__
from losslab._errors import LosslabError

__all__ = ["main"]

_AREAS = ("list", "forecast", "scaling", "monitor", "diagnose", "stability")
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="losslab", description="Choose, minimise, watch and predict the training loss of neural networks."
    )
    parser.add_argument("--version", action="version", version=f"losslab {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or chatter")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for area in _AREAS:
        try:
            module = importlib.import_module(f"losslab.cli._{area}")
        except ModuleNotFoundError as exc:
            if exc.name == f"losslab.cli._{area}":
                continue
            raise
        module.register(subparsers)
    return parser


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings of a command as one line, like its errors (``--debug`` keeps Python's format with the source)."""
    print(f"losslab: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet:
        os.environ["LOSSLAB_QUIET"] = "1"
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.showwarning = _warning_line
            return int(func(args) or 0)
    except BrokenPipeError:  # the reader went away (``losslab ... --json | head``): stop quietly, like a Unix tool
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # as if killed by SIGPIPE
    except (LosslabError, OSError) as exc:
        if args.debug:
            raise
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename:
            message = f"cannot read or write {exc.filename!r}: {exc.strerror}"
        print(f"losslab: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("losslab: error: out of memory; use fewer steps, points or runs", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("losslab: interrupted", file=sys.stderr)
        return 130
