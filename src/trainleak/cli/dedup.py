"""``trainleak dedup``: near-duplicate clusters in one set, and a keep-list."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, get_args

from trainleak.cli.common import (
    EXIT_OK,
    UsageError,
    add_embed_arguments,
    add_output_arguments,
    embed_config,
    finite_float,
    positive_int,
    print_skipped,
)
from trainleak.config import DedupConfig, SearchMode

OUT = "trainleak-dedup"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``dedup`` to the subcommands ``sub``; defaults come from :class:`DedupConfig`."""
    defaults = DedupConfig()
    u: argparse.ArgumentParser = sub.add_parser(
        "dedup",
        help="find near-duplicate clusters in one set; write a keep-list",
        description="Find near-duplicate pictures (re-encoded, resized, noisy or brightened "
        "copies) in one set and keep one per cluster. The copy encoders tiled (default) and "
        "pixel have safe default thresholds that join no two distinct photos of ORL. "
        "--encoder face groups photos of the same PERSON (identity dedup, not near-duplicate "
        "removal) and needs an explicit --threshold.",
    )
    u.add_argument("path", help="images: folder, glob or .txt/.csv list")
    u.add_argument(
        "--threshold",
        type=finite_float,
        default=defaults.threshold,
        help="similarity above which images are near-duplicates (default: the copy "
        "encoder's operating point; required for face/onnx/torchscript)",
    )
    u.add_argument(
        "--k",
        type=positive_int,
        default=defaults.k,
        help="neighbours searched per image (default: %(default)s)",
    )
    u.add_argument(
        "--search",
        choices=get_args(SearchMode),
        default=defaults.search,
        help="neighbour search: exact, or approx (a faiss inverted-file index for cosine "
        "encoders, candidates re-scored exactly, recall@k measured on 1,000 sampled queries and "
        "written in the report; the tiled and pixel rules stay exact) (default: %(default)s)",
    )
    u.add_argument("--copy-kept", metavar="DIR", help="copy the deduplicated set to DIR")
    add_output_arguments(u, OUT)
    add_embed_arguments(u, defaults.embed, engines=True)
    u.set_defaults(func=run)
    return u


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak dedup``; return the exit code."""
    from trainleak import dedup

    config = DedupConfig(
        embed=embed_config(args), threshold=args.threshold, k=args.k, search=args.search
    )
    if args.copy_kept and Path(args.path).is_dir():
        source, dest = Path(args.path).resolve(), Path(args.copy_kept).resolve()
        if dest == source or source in dest.parents:
            raise UsageError(
                f"--copy-kept {args.copy_kept} is inside the input {args.path}: the copies "
                "would mix with the images they came from; choose a folder outside it"
            )
    result = dedup(args.path, config=config, argv=argv)
    paths = result.write(args.out, redact=args.redact)
    s, t = result.report["summary"], result.report["threshold"]
    how = f"{args.encoder} threshold {t['value']:.4f}, {t['method']}"
    if s["mode"] == "identity":
        print("identity dedup: clusters are photos of the same person, not copies")
    if not s["clusters"]:
        print(f"{s['images']} images: no near-duplicates found ({how})")
    else:
        print(
            f"{s['images']} images, {s['clusters']} near-duplicate clusters: keep {s['kept']}, "
            f"remove {s['removed']} ({how})"
        )
    print_skipped(result.report)
    if args.copy_kept:
        from trainleak.gate.output import for_terminal

        n = result.copy_kept(args.copy_kept)
        print(f"copied {n} kept images to {args.copy_kept}")
        for skip in result.copy_skipped:
            print(f"  not copied {for_terminal(skip.path)}: {for_terminal(skip.reason)}")
    print(f"keep-list: {paths['csv']}\nreport: {paths['html']}")
    return EXIT_OK
