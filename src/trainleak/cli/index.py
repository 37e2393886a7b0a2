"""``trainleak index``: build, add to, remove from, inspect and compact a release-gate index."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, get_args

from trainleak.cli.common import (
    EXIT_OK,
    UsageError,
    add_embed_arguments,
    embed_config,
    fraction,
    positive_float,
    positive_int,
)
from trainleak.config import (
    MAX_THRESHOLD_CHANGE,
    CheckConfig,
    IndexConfig,
    ScoreMode,
    SearchMode,
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``index`` and its actions; defaults come from :class:`IndexConfig`."""
    p: argparse.ArgumentParser = sub.add_parser(
        "index",
        help="a persisted, calibrated index of training images for 'check'",
        description="Keep the training set's vectors and calibrated threshold on disk, so that "
        "'trainleak check' answers without re-reading the training set.",
    )
    actions = p.add_subparsers(dest="index_action", metavar="ACTION")
    actions.required = True
    _add_build(actions)
    a = actions.add_parser("add", help="add images whose content is not in the index yet")
    a.add_argument("index", help="the index folder")
    a.add_argument("images", nargs="+", help="folders, globs or .txt/.csv lists of images")
    a.add_argument(
        "--max-threshold-change",
        type=positive_float,
        default=MAX_THRESHOLD_CHANGE,
        help="refuse (exit 2, nothing committed) when recalibrating on the holdout moves the "
        "threshold by more than this, absolute (default: %(default)s)",
    )
    a.add_argument(
        "--accept-threshold-change",
        action="store_true",
        help="commit the addition whatever it does to the calibrated threshold",
    )
    add_embed_arguments(a, CheckConfig().embed, encoder=False, quiet=True)
    a.set_defaults(func=run_add)
    r = actions.add_parser("remove", help="tombstone rows by id: gone from every answer at once")
    r.add_argument("index", help="the index folder")
    r.add_argument("--ids", required=True, help="file with one row id per line ('-' = stdin)")
    r.set_defaults(func=run_remove)
    i = actions.add_parser("info", help="what the index holds")
    i.add_argument("index", help="the index folder")
    i.add_argument("--verify", action="store_true", help="check every file's sha256 (reads all)")
    i.add_argument("--json", action="store_true", help="print the details as JSON")
    i.set_defaults(func=run_info)
    d = actions.add_parser(
        "add-decisions",
        help="store reviewers' decisions in the index, so that check and serve honour them",
        description="Copy the current decisions of trainleak review logs (decisions.sqlite, a "
        "report folder holding one, or a review --export CSV) into IDX/decisions.sqlite. "
        "'check' and 'serve' honour them without --decisions: a pair marked 'not a leak' is "
        "released, one marked 'leak' blocked even below the threshold. Decisions made with "
        "another encoder than the index's are counted and left out; adding a file twice adds "
        "nothing.",
    )
    d.add_argument("index", help="the index folder")
    d.add_argument("decisions", nargs="+", help="decisions.sqlite files, report folders or CSVs")
    d.set_defaults(func=run_add_decisions)
    c = actions.add_parser("compact", help="rewrite shards without removed rows")
    c.add_argument("index", help="the index folder")
    c.set_defaults(func=run_compact)
    return p


def _add_build(actions: Any) -> None:
    defaults = IndexConfig()
    b: argparse.ArgumentParser = actions.add_parser(
        "build",
        help="embed a training set into a new index",
        description="Embed the training images once and store their vectors with the threshold "
        "'audit' would use: calibrated on --holdout at --fpr, or --threshold, or the encoder's "
        "operating point.",
    )
    b.add_argument("--train", required=True, help="training images: folder, glob or .txt/.csv list")
    b.add_argument("--holdout", help="real images NOT used in training, to calibrate the threshold")
    t = b.add_mutually_exclusive_group()
    t.add_argument(
        "--fpr",
        type=fraction,
        default=defaults.fpr,
        help="target false-positive rate on the holdout (default: %(default)s)",
    )
    t.add_argument(
        "--threshold", type=float, default=defaults.threshold, help="fixed threshold (no holdout)"
    )
    b.add_argument(
        "--score",
        choices=get_args(ScoreMode),
        default=defaults.score,
        help="leak score, as in 'audit' (default: %(default)s)",
    )
    b.add_argument(
        "--shard-rows",
        type=positive_int,
        default=defaults.shard_rows,
        help="rows per vector file (default: %(default)s)",
    )
    b.add_argument(
        "--search",
        choices=get_args(SearchMode),
        default=defaults.search,
        help="how the holdout is searched to calibrate: exact, or approx (a faiss inverted-file "
        "index, cosine encoders; recall@k measured and kept in the manifest); checks search "
        "exactly (default: %(default)s)",
    )
    b.add_argument("--out", required=True, help="the new index folder")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_embed_arguments(b, defaults.embed, engines=True)
    b.set_defaults(func=run_build)


def run_build(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak index build``; return the exit code."""
    from trainleak.gate.index import Index

    if args.threshold is not None and args.holdout:
        raise UsageError("give --holdout (calibrated threshold) or --threshold (fixed), not both")
    config = IndexConfig(
        embed=embed_config(args),
        fpr=args.fpr,
        threshold=args.threshold,
        score=args.score,
        shard_rows=args.shard_rows,
        search=args.search,
    )
    with Index.build(args.out, args.train, args.holdout, config=config) as index:
        print_summary(index.info())
    return EXIT_OK


def run_add(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak index add``; return the exit code."""
    from trainleak.gate.index import Index
    from trainleak.gate.output import for_terminal

    config = CheckConfig(embed=embed_config(args, CheckConfig().embed))
    with Index.open(args.index, config=config) as index:
        result = index.add(
            args.images,
            max_threshold_change=args.max_threshold_change,
            accept_threshold_change=args.accept_threshold_change,
        )
        print(
            f"{result['files']} files: added {result['added']} rows, {result['present']} already "
            f"in the index, {result['skipped']} skipped"
        )
        for s in result["skipped_files"][:20]:
            print(f"  skipped {for_terminal(s['path'])}: {for_terminal(s['reason'])}")
        print_summary(index.info())
    return EXIT_OK


def run_add_decisions(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak index add-decisions``; return the exit code."""
    from trainleak.gate.index import Index
    from trainleak.gate.reviewed import add_decisions

    with Index.open(args.index) as index:
        result = add_decisions(index.path, args.decisions, index.encoder_info.cache_key())
        print(
            f"added {result['added']} decisions, {result['present']} already in the index, "
            f"{result['other_encoder']} made with another encoder (left out); the index now "
            f"holds decisions on {result['pairs']} pairs"
        )
        if result["other_encoder"] and not result["added"] + result["present"]:
            print(
                f"none applies: they were made with another encoder than the index's "
                f"({index.encoder_info.cache_key()}); review a report made with it"
            )
        print_summary(index.info())
    return EXIT_OK


def run_remove(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak index remove``; return the exit code."""
    from trainleak.gate.index import Index

    try:
        if args.ids == "-":
            text = sys.stdin.read()
        else:
            with open(args.ids, encoding="utf-8") as fh:
                text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read --ids {args.ids}: {err}") from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    with Index.open(args.index) as index:
        result = index.remove(ids)
        print(f"removed {result['removed']} rows")
        if result["unknown"]:
            shown = ", ".join(result["unknown"][:5])
            print(f"{len(result['unknown'])} ids are not in the index (e.g. {shown})")
        print_summary(index.info())
    return EXIT_OK


def run_info(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak index info``; return the exit code."""
    from trainleak.gate.index import Index

    with Index.open(args.index) as index:
        info = index.info(verify=args.verify)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        print_summary(info)
        if args.verify:
            print(f"verified: every file matches its sha256 ({info['verified_bytes']:,} bytes)")
    return EXIT_OK


def run_compact(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak index compact``; return the exit code."""
    from trainleak.gate.index import Index

    with Index.open(args.index) as index:
        result = index.compact()
        print(f"dropped {result['dropped']} removed rows")
        print_summary(index.info())
    return EXIT_OK


def print_summary(info: dict[str, Any]) -> None:
    """Print what an index holds in a few lines."""
    c, t, e = info["counts"], info["threshold"], info["encoder"]
    print(
        f"index {info['path']}: {c['live']} rows ({c['tombstoned']} removed) in {c['shards']} "
        f"shards, encoder {e['name']} v{e['version']} ({info['dim']}-d {info['metric']}), "
        f"score {info['score']['mode']}, search {info['search']}"
    )
    print(f"threshold {t['value']:.4f} ({t['method']}): {t['note']}")
    dec = info.get("decisions") or {}
    if dec.get("pairs"):
        counts = ", ".join(f"{n} {what}" for what, n in dec["by_decision"].items())
        print(f"reviewers' decisions on {dec['pairs']} pairs ({counts})")
