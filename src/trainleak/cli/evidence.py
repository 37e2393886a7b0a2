"""``trainleak evidence``: "was my data used?" for one person or artist, with an evidence packet."""

from __future__ import annotations

import argparse
from typing import Any, get_args

from trainleak.cli.common import (
    EXIT_LEAK,
    EXIT_OK,
    add_embed_arguments,
    add_output_arguments,
    embed_config,
    finite_float,
    fraction,
    positive_int,
    print_skipped,
)
from trainleak.config import EvidenceConfig, EvidenceStatistic

OUT = "trainleak-evidence"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``evidence``; defaults come from :class:`EvidenceConfig`."""
    d = EvidenceConfig()
    e: argparse.ArgumentParser = sub.add_parser(
        "evidence",
        help="was my data used? one person's photos or one artist's works, with a p-value "
        "and an evidence packet",
        description="Compare how closely the searched images match your images with how "
        "closely they match reference owners' (people or artists never trained on): a rank "
        "test gives a p-value; the packet (evidence.json, evidence.html) records the command "
        "and the SHA-256 of every input so anyone can re-run it. A person: --encoder face; "
        "an artist: --encoder copy (or pixel).",
    )
    e.add_argument("--mine", required=True, help="your photos of yourself, or your works")
    e.add_argument(
        "--against",
        required=True,
        help="where to look: a folder of synthetic or generated images, or a generator "
        "(diffusers:DIR or python:module:function), then --n-samples are drawn",
    )
    e.add_argument(
        "--reference",
        help="other people's photos (other artists' works) never trained on, one sub-folder "
        "each; at least 19 owners for p <= 0.05",
    )
    e.add_argument(
        "--statistic",
        choices=get_args(EvidenceStatistic),
        default=d.statistic,
        help="max: best match; count: matches above the threshold (default: %(default)s)",
    )
    e.add_argument(
        "--threshold",
        type=finite_float,
        default=d.threshold,
        help="match threshold (default: the encoder's)",
    )
    e.add_argument(
        "--alpha", type=fraction, default=d.alpha, help="significance level (default: %(default)s)"
    )
    e.add_argument(
        "--copy-threshold",
        type=finite_float,
        default=d.copy_threshold,
        help="pixel similarity from which a pair is a near-copy (default: the pixel encoder's)",
    )
    e.add_argument(
        "--pairs",
        type=positive_int,
        default=d.pairs,
        help="matched pairs listed (default: %(default)s)",
    )
    e.add_argument(
        "--n-samples",
        type=positive_int,
        default=d.n_samples,
        help="samples drawn from a generator (default: %(default)s)",
    )
    e.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    e.add_argument(
        "--steps",
        type=positive_int,
        default=d.steps,
        help="diffusers: denoising steps (default: the pipeline's)",
    )
    e.add_argument(
        "--gen-batch-size",
        type=positive_int,
        default=d.gen_batch_size,
        help="samples generated at a time (default: %(default)s)",
    )
    e.add_argument(
        "--fail-on-leak",
        action="store_true",
        help="exit 1 when the verdict is 'strong evidence your data was used'",
    )
    add_output_arguments(e, OUT)
    add_embed_arguments(e, d.embed)
    e.set_defaults(func=run)
    return e


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak evidence`` and print the verdict in plain words first."""
    from trainleak import evidence

    config = EvidenceConfig(
        embed=embed_config(args),
        statistic=args.statistic,
        threshold=args.threshold,
        alpha=args.alpha,
        copy_threshold=args.copy_threshold,
        pairs=args.pairs,
        n_samples=args.n_samples,
        seed=args.seed,
        gen_batch_size=args.gen_batch_size,
        steps=args.steps,
    )
    result = evidence(args.mine, args.against, args.reference, config=config, argv=argv)
    paths = result.write(args.out, redact=args.redact)
    report = result.report
    print(report["verdict"]["text"])
    for row in report["pairs"][:5]:
        if row["label"] == "below threshold":
            break
        print(f"  {row['label']}: {row['mine']} ~ {row['against']} (score {row['score']:.4f})")
    print_skipped(report, "files")
    print(f"evidence packet: {paths['html']} and {paths['json']}")
    return EXIT_LEAK if args.fail_on_leak and report["verdict"]["key"] == "used" else EXIT_OK
