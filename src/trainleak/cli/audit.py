"""``trainleak audit``: synthetic samples that copy or re-identify training samples."""

from __future__ import annotations

import argparse
from typing import Any, get_args

from trainleak.cli.common import (
    EXIT_LEAK,
    EXIT_OK,
    UsageError,
    add_embed_arguments,
    add_output_arguments,
    embed_config,
    finite_float,
    fraction,
    positive_int,
    print_skipped,
)
from trainleak.config import AuditConfig, ScoreMode, SearchMode, TableFormat

OUT = "trainleak-report"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``audit`` to the subcommands ``sub``; defaults come from :class:`AuditConfig`."""
    defaults = AuditConfig()
    a: argparse.ArgumentParser = sub.add_parser(
        "audit", help="find synthetic samples that copy or re-identify training samples"
    )
    a.add_argument("--train", required=True, help="training images: folder, glob or .txt/.csv list")
    a.add_argument("--synthetic", required=True, help="synthetic/generated images to audit")
    a.add_argument("--holdout", help="real images NOT used in training, to calibrate the threshold")
    t = a.add_mutually_exclusive_group()
    t.add_argument(
        "--fpr",
        type=fraction,
        default=defaults.fpr,
        help="target false-positive rate for the holdout-calibrated threshold "
        "(default: %(default)s)",
    )
    t.add_argument(
        "--threshold",
        type=finite_float,
        default=defaults.threshold,
        help="fixed similarity threshold (no holdout)",
    )
    a.add_argument(
        "--k",
        type=positive_int,
        default=defaults.k,
        help="neighbours per sample (default: %(default)s)",
    )
    a.add_argument(
        "--score",
        choices=get_args(ScoreMode),
        default=defaults.score,
        help="leak score: nearest photo (nn) or identity-aware (needs labels); "
        "default: %(default)s",
    )
    a.add_argument(
        "--search",
        choices=get_args(SearchMode),
        default=defaults.search,
        help="neighbour search: exact, or approx (a faiss inverted-file index for cosine "
        "encoders, candidates re-scored exactly, recall@k measured on 1,000 sampled queries and "
        "written in the report; for a million images and more) (default: %(default)s)",
    )
    a.add_argument(
        "--device",
        dest="search_device",
        metavar="DEVICE",
        default=defaults.search_device,
        help="where the neighbour search runs: auto (a CUDA GPU if torch sees one), cpu, "
        "cuda or cuda:N (default: %(default)s)",
    )
    a.add_argument(
        "--decisions",
        metavar="FILE",
        help="reviewers' decisions (decisions.sqlite of trainleak review, its report folder, or "
        "its --export CSV): 'not a leak' pairs are released, 'leak' pairs flagged even below "
        "the threshold",
    )
    add_output_arguments(a, OUT)
    a.add_argument(
        "--report-samples",
        type=positive_int,
        default=defaults.report_samples,
        metavar="N",
        help="synthetic samples listed in report.json with their neighbours, flagged first, "
        "then by score; every sample's top k is in the table file (default: %(default)s)",
    )
    a.add_argument(
        "--table",
        choices=get_args(TableFormat),
        default=defaults.table,
        help="format of the full neighbour table matches.parquet / matches.csv: auto = "
        "parquet when pyarrow is installed (default: %(default)s)",
    )
    a.add_argument("--fail-on-leak", action="store_true", help="exit 1 if anything is flagged")
    add_embed_arguments(a, defaults.embed, engines=True)
    a.set_defaults(func=run)
    return a


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak audit``; return the exit code."""
    from trainleak import audit

    if args.threshold is not None and args.holdout:
        raise UsageError("give --holdout (calibrated threshold) or --threshold (fixed), not both")
    config = AuditConfig(
        embed=embed_config(args),
        fpr=args.fpr,
        threshold=args.threshold,
        k=args.k,
        score=args.score,
        search=args.search,
        search_device=args.search_device,
        report_samples=args.report_samples,
        table=args.table,
    )
    decisions = None
    if args.decisions is not None:
        from trainleak.decide.decisions import load_decisions

        decisions = load_decisions(args.decisions)  # a bad file fails before any embedding
    result = audit(
        args.train, args.synthetic, args.holdout, config=config, argv=argv, decisions=decisions
    )
    paths = result.write(args.out, redact=args.redact)
    print_summary(result.report, paths)
    flagged = result.report["summary"]["flagged"]
    return EXIT_LEAK if args.fail_on_leak and flagged else EXIT_OK


def print_summary(report: dict[str, Any], paths: dict[str, str]) -> None:
    """Print the verdict of an audit report and where it was written."""
    s, t = report["summary"], report["threshold"]
    lo, hi = s["flagged_rate_ci95"]
    print(
        f"flagged {s['flagged']} of {s['n_synthetic']} synthetic samples "
        f"({100 * s['flagged_rate']:.1f}%, 95% CI {100 * lo:.1f}-{100 * hi:.1f}%) "
        f"at threshold {t['value']:.4f} ({t['method']})"
    )
    if s["leaked_identities"]:
        names = ", ".join(e["identity"] for e in s["leaked_identities"][:10])
        more = len(s["leaked_identities"]) - 10
        print(f"leaked identities: {names}" + (f" and {more} more" if more > 0 else ""))
    print(f"threshold: {t['note']}")
    review = s.get("review")
    if review:
        print(
            f"reviewed: {review['reviewed']} of {review['candidates']} candidates "
            f"({len(review['released'])} released as not a leak, "
            f"{len(review['flagged_by_reviewer'])} flagged by a reviewer below the threshold); "
            f"{review['unreviewed']} unreviewed"
        )
    print_skipped(report)
    print(f"report: {paths['html']}")
    if "table" in paths:
        print(f"every sample's neighbours: {paths['table']}")
