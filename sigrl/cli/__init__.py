"""The sigrl command: train and evaluate SigRL models, export, compile, serve and deploy them, tag images, measure.

Each command group lives in its own module with a ``register(commands)`` function; this module builds
the parser from them and turns user mistakes into one line on stderr with exit status 2 (``--debug``
or ``SIGRL_DEBUG=1`` shows the traceback instead). Command modules import torch inside their
commands, so ``sigrl tag`` and ``sigrl --help`` start without it.
"""

from __future__ import annotations

import argparse
import os
import sys

from sigrl import __version__
from sigrl.cli import bench, calibrate, cluster, demo, deploy, engines, serving, training

COMMAND_GROUPS = (demo, training, deploy, engines, serving, cluster, calibrate, bench)

# What a user can fix: bad values (UsageError is a ValueError), missing, unreadable or unwritable files,
# an address in use or without a server (OSError covers FileNotFoundError, PermissionError, ConnectionError).
USER_ERRORS = (ValueError, OSError)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (the usage text stays in ``--help``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _CommandParser(_Parser):
    """Parser of one command: every command accepts ``--debug``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show the full traceback of an error (also: SIGRL_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sigrl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sigrl {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: SIGRL_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def describe(err: BaseException) -> str:
    """One line for a user error: OSError as 'reason: file', anything else its message's first line."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.strerror}: {err.filename}"
    else:
        text = str(err) or type(err).__name__
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("SIGRL_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"sigrl {args.command}: error: {describe(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"sigrl {args.command}: interrupted", file=sys.stderr)
        return 130
