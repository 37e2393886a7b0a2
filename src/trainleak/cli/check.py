"""``trainleak check``: a verdict per image against an index, before anything is released."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from typing import IO, Any, get_args

from trainleak.cli.common import (
    DECISIONS_HELP,
    EXIT_LEAK,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_embed_arguments,
    embed_config,
    positive_int,
)
from trainleak.config import CheckConfig, IndexSearch


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``check`` to the subcommands ``sub``; defaults come from :class:`CheckConfig`."""
    defaults = CheckConfig()
    c: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="release, block or skip each image against an index",
        description="One verdict per image: 'block' when it resembles a training image beyond the "
        "index's calibrated threshold (the rule 'audit' flags by), else 'release'; 'skip' with "
        "the reason for unreadable input. Exit 0: nothing blocked; 1: something blocked (or "
        "skipped, with --fail-on-skip); 2: usage error or nothing readable.",
    )
    c.add_argument("--index", required=True, help="the index folder ('trainleak index build')")
    c.add_argument("images", nargs="+", help="images: folders, globs, .txt/.csv lists or files")
    c.add_argument("--out", help="write verdicts to this file (CSV, or JSON lines with --jsonl)")
    c.add_argument("--jsonl", action="store_true", help="JSON lines (on stdout without --out)")
    c.add_argument(
        "--identity",
        action="store_true",
        help="answer per person ('is my face in there?'): each sub-folder is one person",
    )
    c.add_argument(
        "--decisions",
        default=defaults.decisions,
        help=DECISIONS_HELP,
    )
    c.add_argument("--fail-on-skip", action="store_true", help="exit 1 when any input is skipped")
    c.add_argument(
        "--verify", action="store_true", help="check every index file's sha256 first (reads all)"
    )
    c.add_argument(
        "--search",
        choices=get_args(IndexSearch),
        default=defaults.search,
        help="faiss (cosine encoders), exact, or auto (default: %(default)s); same verdicts",
    )
    c.add_argument(
        "--batch",
        type=positive_int,
        default=defaults.batch,
        help="images read and embedded at a time; bounds memory (default: %(default)s)",
    )
    add_embed_arguments(c, defaults.embed, encoder=False, quiet=True)
    c.set_defaults(func=run, out_is_file=True)  # --out is the verdicts file
    return c


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak check``; return the exit code."""
    from trainleak.gate.index import Index
    from trainleak.gate.output import VerdictWriter, for_terminal

    config = CheckConfig(
        embed=embed_config(args, CheckConfig().embed),
        batch=args.batch,
        search=args.search,
        decisions=args.decisions,
    )
    counts = {"release": 0, "block": 0, "skip": 0}
    reviewed = 0
    jsonl_stdout = args.jsonl and not args.out
    say = sys.stderr if jsonl_stdout else sys.stdout
    with ExitStack() as stack:
        index = stack.enter_context(Index.open(args.index, config=config, verify=args.verify))
        stream: IO[str] = sys.stdout
        if args.out:
            try:
                stream = stack.enter_context(open(args.out, "w", newline="", encoding="utf-8"))
            except OSError as err:
                raise UsageError(f"cannot write --out {args.out}: {err}") from None
        writer = None
        if args.out or args.jsonl:
            writer = VerdictWriter(stream, "jsonl" if args.jsonl else "csv")
        if args.identity:
            verdicts = iter(index.check_identity(args.images))
        else:
            verdicts = index.iter_check(args.images)
        for v in verdicts:
            counts[v.verdict] += 1
            reviewed += v.reviewed is not None
            if writer is not None:
                writer.write(v)
            if not jsonl_stdout and (args.identity or v.verdict != "release"):
                # Names come from whoever made the files: one line per input, no escapes run.
                print("\t".join(map(for_terminal, (v.verdict, v.path, v.reason))), file=say)
        t = index.manifest["threshold"]
    n = sum(counts.values())
    one, many = ("person", "people") if args.identity else ("input", "inputs")
    what = one if n == 1 else many
    print(
        f"checked {n} {what}: {counts['release']} released, "
        f"{counts['block']} blocked, {counts['skip']} skipped "
        f"(threshold {t['value']:.4f}, {t['method']}"
        + (f"; {reviewed} set by a reviewer's decision)" if reviewed else ")"),
        file=say,
    )
    if counts["release"] + counts["block"] == 0:
        print("trainleak: error: no input could be checked", file=sys.stderr)
        return EXIT_USAGE
    if counts["block"] or (args.fail_on_skip and counts["skip"]):
        return EXIT_LEAK
    return EXIT_OK
