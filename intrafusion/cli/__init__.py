"""Command line: ``intrafusion COMMAND ...`` (or ``python -m intrafusion COMMAND ...``).

Results go to stdout (a table, or JSON lines with ``--json``); progress goes to stderr.

Each command is one module of this package with ``register(subparsers)`` (which calls
:func:`._common.add_command`) and its ``cmd_*`` function. To add a command, write ``cli/NAME.py`` and add
its module to :data:`COMMANDS` below; ``--threads`` and error handling come with it.
"""

from __future__ import annotations

import argparse
import sys

from . import groups, models, prune, reproduce, split_data, sweep, train
from ._common import apply_threads

__all__ = ["main", "build_parser", "COMMANDS"]

# The commands, in the order `--help` lists them: one module each, exposing register(subparsers).
COMMANDS = [models, groups, prune, sweep, train, reproduce, split_data]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="python -m intrafusion",
                                     description="Intra-Fusion: prune by fusing neurons with optimal transport.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; problems the user can fix end in one line on stderr and exit status 2."""
    from ..core.groups import UnsupportedLayerError
    from ..data import DatasetUnavailable
    from ..models.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    apply_threads(args)
    try:
        return args.func(args)
    except (CheckpointError, DatasetUnavailable, UnsupportedLayerError, ValueError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
