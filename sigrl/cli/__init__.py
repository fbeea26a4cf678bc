"""The ``sigrl`` command: train, eval, export, parity, triton-repo, serve, tag (and demo) over one model registry.

Each command group lives in its own module with a ``register(commands)`` function; this module builds
the parser from them and turns user mistakes into one line on stderr.
"""

from __future__ import annotations

import argparse
import sys

from sigrl.cli import bench, demo, deploy, serving, training

COMMAND_GROUPS = (demo, training, deploy, serving, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sigrl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:  # bad paths and inputs: one clear line, no traceback
        print(f"sigrl {args.command}: error: {err}", file=sys.stderr)
        return 2
