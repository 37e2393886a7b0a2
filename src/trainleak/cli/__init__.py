"""Command line: one thin subcommand per audit over the Python API.

Only this package prints and sets exit codes: 0 the audit ran; 1 it ran with
``--fail-on-leak`` and flagged something; 2 a usage error or nothing readable
(every :class:`~trainleak.errors.TrainleakError`, and the ``KeyError``,
``ValueError``, ``FileNotFoundError`` and ``ImportError`` the API raises with
a message for the user); 3 an internal error (any other exception: a bug,
reported in one line with the path of the traceback file, so a CI gate never
mistakes a crash for a leak); 130 interrupted.

Each command is a module with ``add_parser(sub)`` and ``run(args, argv)``;
their option defaults are read from :mod:`trainleak.config`. Building the
parser imports neither numpy nor an audit, so ``trainleak --help`` is quick.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from trainleak._version import __version__
from trainleak.cli import (
    audit,
    check,
    dedup,
    demo,
    evidence,
    extract,
    index,
    invert,
    membership,
    review,
    serve,
)
from trainleak.cli.common import (
    EXIT_INTERNAL,
    EXIT_LEAK,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_embed_arguments,
    check_output_paths,
    embed_config,
)
from trainleak.errors import SourceError, TrainleakError

#: Shown under every ``--help``.
EXIT_CODES = (
    "exit codes: 0 ran (whatever it found); 1 ran with --fail-on-leak and found a leak (check: "
    "an image was blocked); 2 usage or input error; 3 internal error (traceback file named on "
    "stderr); 141 the reader of stdout went away (e.g. '| head')"
)
#: Exit code when stdout's reader closed the pipe: 128 + SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 141

#: The subcommands, in the order ``--help`` lists them.
COMMANDS = (audit, evidence, dedup, extract, invert, membership, index, check, serve, review, demo)

__all__ = [
    "COMMANDS",
    "EXIT_INTERNAL",
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
    parser.epilog = EXIT_CODES
    for sub_parser in sub.choices.values():
        sub_parser.epilog = EXIT_CODES
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trainleak`` console script; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="trainleak: %(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_output_paths(args)
        code = int(args.func(args, ["trainleak", *argv]))
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
        return code
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
    except BrokenPipeError:
        # The reader went away (``trainleak check ... | head``): not a bug. Point
        # stdout at /dev/null so that the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as err:  # noqa: BLE001 - the last resort: a bug must not read as a leak
        where = _save_traceback()
        print(
            f"trainleak: internal error: {type(err).__name__}: {err} "
            f"(traceback in {where}; please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _save_traceback() -> str:
    """Write the current exception's traceback to a new file in the temp folder."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="trainleak-crash-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
        fh.write(f"trainleak {__version__}: {' '.join(sys.argv)}\n")
        traceback.print_exc(file=fh)
    return path
