"""``trainleak review``: confirm or dismiss each candidate of a report in the browser."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

from trainleak.cli.common import EXIT_OK, UsageError, positive_int
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
        "beside each report; `audit --decisions` honours them.",
    )
    a.add_argument("reports", nargs="+", metavar="REPORT_DIR", help="report folder(s) to review")
    a.add_argument("--host", default=defaults.host, help="address to bind (default: %(default)s)")
    a.add_argument(
        "--port", type=positive_int, default=defaults.port, help="port (default: %(default)s)"
    )
    a.add_argument(
        "--reviewer",
        default=defaults.reviewer,
        help="name kept with each decision (default: your login name)",
    )
    a.add_argument(
        "--token-file",
        help=f"file holding the token every request must carry (else ${TOKEN_ENV}); "
        "required off loopback",
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
        "and exit instead of serving",
    )
    a.add_argument(
        "--history", action="store_true", help="with --export: every row, undos included"
    )
    a.set_defaults(func=run)
    return a


def read_token(path: str | None) -> str | None:
    """Return the token from the file ``path``, else from ``$TRAINLEAK_TOKEN``, else ``None``.

    Raises:
        UsageError: the file cannot be read or is empty.

    """
    if path is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError as err:
        raise UsageError(f"cannot read --token-file {path}: {err.strerror}") from None
    if not token:
        raise UsageError(f"--token-file {path} is empty")
    return token


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
    from trainleak.service.decisions import DB_NAME, DecisionStore, export_csv

    for folder in args.reports:
        if not os.path.isfile(os.path.join(folder, "report.json")):
            raise UsageError(f"{folder} holds no report.json: give the --out folder of a run")
    if args.export:
        stores = [DecisionStore(os.path.join(f, DB_NAME)) for f in args.reports]
        n = export_csv(stores, args.export, history=args.history)
        print(f"wrote {n} decision(s) to {args.export}")
        return EXIT_OK
    if args.history:
        raise UsageError("--history goes with --export")
    require_review()
    from trainleak.service.review import Review, check_bind
    from trainleak.service.review import run as serve

    token = read_token(args.token_file)
    check_bind(args.host, token)
    config = ReviewConfig(
        host=args.host, port=args.port, reviewer=args.reviewer, image_size=args.image_size
    )
    review = Review(args.reports, config, base=args.base)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"reviewing {len(review.candidates)} candidates from {len(review.reports)} report(s) "
        f"as {review.reviewer}: open http://{host}:{args.port}/"
        + ("?token=<your token>" if token else "")
        + "  (Ctrl-C stops)"
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a review ends
        serve(review, token)
    return EXIT_OK
