"""``trainleak demo``: an audit of bundled faces with planted leaks, offline."""

from __future__ import annotations

import argparse
from typing import Any

from trainleak.cli.common import EXIT_OK, add_output_arguments, positive_int
from trainleak.config import EmbedConfig

OUT = "trainleak-demo"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to the subcommands ``sub``."""
    d: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run an audit on bundled faces with planted leaks (offline)"
    )
    d.add_argument(
        "--workers",
        type=positive_int,
        default=EmbedConfig().workers,
        help="embedding processes (default: CPU cores)",
    )
    add_output_arguments(d, OUT, redact=False)
    d.set_defaults(func=run)
    return d


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak demo``; return the exit code."""
    from trainleak.demo import run_demo

    paths, found = run_demo(args.out, workers=args.workers, progress=not args.quiet)
    print(found)
    print(f"report: {paths['html']}")
    return EXIT_OK
