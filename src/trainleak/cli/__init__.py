"""Command line: one thin subcommand per audit over the Python API.

Only this package prints and sets exit codes: 0 the audit ran; 1 it ran with
``--fail-on-leak`` and flagged something; 2 a usage error or nothing readable
(every :class:`~trainleak.errors.TrainleakError`, and the ``KeyError``,
``ValueError``, ``FileNotFoundError`` and ``ImportError`` the API raises with
a message for the user); 130 interrupted.

Each command is a module with ``add_parser(sub)`` and ``run(args, argv)``;
their option defaults are read from :mod:`trainleak.config`. Building the
parser imports neither numpy nor an audit, so ``trainleak --help`` is quick.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from trainleak._version import __version__
from trainleak.cli import audit, dedup, demo, extract, invert, membership
from trainleak.cli.common import (
    EXIT_LEAK,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_embed_arguments,
    embed_config,
)
from trainleak.errors import SourceError, TrainleakError

#: The subcommands, in the order ``--help`` lists them.
COMMANDS = (audit, dedup, extract, invert, membership, demo)

__all__ = [
    "COMMANDS",
    "EXIT_LEAK",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "add_embed_arguments",
    "build_parser",
    "embed_config",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    """Return the ``trainleak`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="trainleak",
        description="Find a model's training data in what the model gives away.",
    )
    parser.add_argument("--version", action="version", version=f"trainleak {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trainleak`` console script; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="trainleak: %(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, ["trainleak", *argv]))
    except (UsageError, SourceError, TrainleakError) as err:
        print(f"trainleak: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyError, ValueError, FileNotFoundError, ImportError) as err:
        # str(KeyError) adds quotes around the message; print the message itself.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"trainleak: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "trainleak: interrupted; finished batches are cached, re-run to resume", file=sys.stderr
        )
        return 130
