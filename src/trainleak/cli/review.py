"""``trainleak review``: confirm or dismiss each candidate of a report in the browser."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sqlite3
from typing import Any

from trainleak.cli.common import EXIT_OK, UsageError, positive_int
from trainleak.cli.serve import read_secret, read_token
from trainleak.config import ReviewConfig

#: Environment variable holding the token (the one ``serve`` reads).
TOKEN_ENV = "TRAINLEAK_TOKEN"  # noqa: S105 - a variable name, not a secret
#: Packages the review server needs (the ``review`` extra).
REVIEW_PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn"}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``review`` to the subcommands ``sub``; defaults come from :class:`ReviewConfig`."""
    defaults = ReviewConfig()
    a: argparse.ArgumentParser = sub.add_parser(
        "review",
        help="confirm or dismiss each candidate of a report in the browser",
        description="Serve a local page where a person judges each candidate pair of audit, "
        "extract, dedup or membership reports, from the keyboard (y leak, n not a leak, "
        "u unsure, arrows move, z undo, ? help). Decisions are kept in decisions.sqlite "
        "beside each report; `audit --decisions` honours them. Every request needs a "
        "reviewer's token, whose reviewer signs the decisions: --reviewers FILE, or one "
        f"reviewer (--reviewer) with --token-file, ${TOKEN_ENV} or a token made and printed "
        "at start.",
    )
    a.add_argument("reports", nargs="+", metavar="REPORT_DIR", help="report folder(s) to review")
    a.add_argument("--host", default=defaults.host, help="address to bind (default: %(default)s)")
    a.add_argument(
        "--port", type=positive_int, default=defaults.port, help="port (default: %(default)s)"
    )
    a.add_argument(
        "--reviewer",
        default=defaults.reviewer,
        help="the one reviewer's name, kept with each decision (default: your login name)",
    )
    a.add_argument(
        "--token-file",
        help=f"file holding that reviewer's token (else ${TOKEN_ENV}, else one is made and "
        "printed); readable by you only",
    )
    a.add_argument(
        "--reviewers",
        metavar="FILE",
        help="several reviewers: one 'NAME TOKEN' per line (the token is the last word; # "
        "comments); each signs decisions with their own token. Readable by you only",
    )
    a.add_argument(
        "--base",
        help="folder that relative image paths in the reports are resolved against "
        "(default: the current folder)",
    )
    a.add_argument(
        "--image-size",
        type=positive_int,
        default=defaults.image_size,
        help="longest side in pixels of the images the page gets (default: %(default)s)",
    )
    a.add_argument(
        "--export",
        metavar="CSV",
        help="write the decisions as CSV (synthetic, train, decision, reviewer, decided_at, ...) "
        "and exit instead of serving; a copy audit's per-pair evidence (PNG + JSON) is "
        "copied beside it, to CSV's name without extension + '-evidence/'",
    )
    a.add_argument(
        "--history", action="store_true", help="with --export: every row, undos included"
    )
    a.set_defaults(func=run)
    return a


def read_reviewers(path: str) -> dict[str, str]:
    """Read ``NAME TOKEN`` lines (the token is the last word; blank and ``#`` lines skipped).

    Raises:
        UsageError: the file cannot be read, others can read it, or a line
            has no name or repeats one.

    """
    tokens: dict[str, str] = {}
    for n, line in enumerate(read_secret(path, "--reviewers").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, _, token = text.rpartition(" ")
        name = name.strip()
        if not name or name in tokens:
            what = "repeats the name " + repr(name) if name else "has no 'NAME TOKEN'"
            raise UsageError(f"{path} line {n} {what}: one 'NAME TOKEN' line per reviewer")
        tokens[name] = token
    if not tokens:
        raise UsageError(f"{path} lists no reviewer: write one 'NAME TOKEN' line per reviewer")
    return tokens


def _reviewers(args: argparse.Namespace, name: str) -> tuple[dict[str, str], bool]:
    """Return the reviewers' tokens and whether the one token was made here (to print it)."""
    if args.reviewers:
        if args.token_file or args.reviewer:
            raise UsageError("--reviewers names every reviewer: leave out --reviewer/--token-file")
        return read_reviewers(args.reviewers), False
    token = read_token(args.token_file, TOKEN_ENV, "token")
    if token is not None:
        return {name: token}, False
    return {name: secrets.token_urlsafe(32)}, True


def require_review() -> None:
    """Fail with the ``pip install`` to run when the ``review`` extra is missing."""
    import importlib.util

    from trainleak.errors import MissingExtraError

    for module, package in REVIEW_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a None entry in sys.modules
            found = False
        if not found:
            raise MissingExtraError(
                f"trainleak review needs {package}: pip install 'trainleak[review]'"
            )


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak review``; return the exit code."""
    from trainleak.decide.decisions import DB_NAME, DecisionsError, DecisionStore, export_csv

    for folder in args.reports:
        if not os.path.isfile(os.path.join(folder, "report.json")):
            raise UsageError(f"{folder} holds no report.json: give the --out folder of a run")
    if args.export:
        try:
            stores = [DecisionStore(os.path.join(f, DB_NAME)) for f in args.reports]
        except sqlite3.DatabaseError as err:
            raise DecisionsError(
                f"a {DB_NAME} of {args.reports} is not a trainleak decisions log ({err}): "
                "restore it from a copy"
            ) from None
        n = export_csv(stores, args.export, history=args.history)
        print(f"wrote {n} decision(s) to {args.export}")
        from trainleak.report.copy_evidence import export_evidence

        # A copy audit's per-pair pictures and edits go beside the CSV, ready to attach.
        folder = os.path.splitext(args.export)[0] + "-evidence"
        files = export_evidence(args.reports, folder)
        if files:
            print(f"wrote {len(files)} copy-evidence file(s) (PNG + JSON per pair) to {folder}")
        return EXIT_OK
    if args.history:
        raise UsageError("--history goes with --export")
    require_review()
    from trainleak.service.review import Review
    from trainleak.service.review_auth import Reviewers
    from trainleak.service.review_routes import run as serve

    config = ReviewConfig(
        host=args.host, port=args.port, reviewer=args.reviewer, image_size=args.image_size
    )
    review = Review(args.reports, config, base=args.base)
    tokens, made = _reviewers(args, review.reviewer)
    try:
        reviewers = Reviewers(tokens)
    except ValueError as err:
        raise UsageError(str(err)) from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port}/?token="
    print(
        f"reviewing {len(review.candidates)} candidates from {len(review.reports)} report(s); "
        + (f"open {url}{tokens[review.reviewer]}" if made else f"each reviewer opens {url}TOKEN")
        + f"  (reviewers: {', '.join(reviewers.names)}; Ctrl-C stops)",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a review ends
        serve(review, reviewers)
    return EXIT_OK
