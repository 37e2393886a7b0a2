"""``trainleak extract``: training images a generator regurgitates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trainleak.cli.common import (
    EXIT_LEAK,
    EXIT_OK,
    UsageError,
    add_embed_arguments,
    add_output_arguments,
    embed_config,
    positive_float,
    positive_int,
)
from trainleak.config import ExtractConfig

OUT = "trainleak-extract"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``extract`` to the subcommands ``sub``; defaults come from :class:`ExtractConfig`."""
    defaults = ExtractConfig()
    x: argparse.ArgumentParser = sub.add_parser(
        "extract", help="find training images a generator regurgitates"
    )
    x.add_argument(
        "--generated",
        required=True,
        help="folder of generated images (sub-folders = one group per prompt), "
        "or a generator: python:module:function or diffusers:DIR",
    )
    x.add_argument("--train", required=True, help="training images")
    x.add_argument("--prompts", help="text file, one prompt per line (conditional generators)")
    x.add_argument(
        "--samples-per-prompt",
        type=positive_int,
        default=defaults.samples_per_prompt,
        help="generations per prompt from a generator (default: %(default)s)",
    )
    # Another name for --encoder, as the paper speaks of distances; the last one given wins.
    x.add_argument(
        "--distance",
        dest="encoder",
        metavar="DISTANCE",
        default=defaults.embed.encoder,
        help="tiled, pixel, or any encoder name; the same as --encoder (default: %(default)s)",
    )
    x.add_argument(
        "--delta",
        type=positive_float,
        default=defaults.delta,
        help="distance threshold (default: %(default)s, the paper's)",
    )
    x.add_argument(
        "--min-clique",
        type=positive_int,
        default=defaults.min_clique,
        help="generations a clique needs (default: %(default)s, the paper's)",
    )
    x.add_argument(
        "--relative",
        action="store_true",
        default=defaults.relative,
        help=f"relative criterion: d / mean(d to {defaults.relative_n} nearest) "
        f"< {defaults.alpha} (small images)",
    )
    x.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="diffusers: denoising steps (default: the pipeline's)",
    )
    x.add_argument(
        "--seed", type=int, default=defaults.seed, help="seeds generation (default: %(default)s)"
    )
    add_output_arguments(x, OUT)
    x.add_argument(
        "--fail-on-leak", action="store_true", help="exit 1 when a training image is extracted"
    )
    add_embed_arguments(x, defaults.embed)
    x.set_defaults(func=run)
    return x


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak extract``; return the exit code."""
    from trainleak.audits.extraction import extract
    from trainleak.generators import is_generator_spec

    config = ExtractConfig(
        embed=embed_config(args),
        delta=args.delta,
        min_clique=args.min_clique,
        relative=args.relative,
        samples_per_prompt=args.samples_per_prompt,
        seed=args.seed,
    )
    generated = args.generated
    if is_generator_spec(generated):
        generated = generate(args, config.seed)
    result = extract(generated, args.train, config=config, argv=argv)
    paths = result.write(args.out, redact=args.redact)
    s = result.report["summary"]
    print(
        f"{s['candidates']} cliques of near-identical generations; "
        f"{s['n_extracted']} training images extracted"
    )
    for path in s["extracted"][:20]:
        print(f"  extracted: {path}")
    print(f"report: {paths['html']}")
    return EXIT_LEAK if s["n_extracted"] and args.fail_on_leak else EXIT_OK


def generate(args: argparse.Namespace, seed: int) -> str:
    """Materialise a generator's samples under ``--out/generated`` (resumable, manifest-checked)."""
    from tqdm import tqdm

    from trainleak.audits.generate import generate_groups

    prompts: list[str] | None = None
    if args.prompts:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
        prompts = [ln.strip() for ln in lines if ln.strip()]
        if not prompts:
            raise UsageError(f"{args.prompts} has no prompts (one per line)")
    bars: dict[str, tqdm] = {}
    quiet = args.quiet or not sys.stderr.isatty()

    def progress(group: str, done: int, total: int) -> None:
        bar = bars.setdefault(
            group, tqdm(total=total, desc=f"generate {group}", disable=quiet, leave=False)
        )
        bar.n = done
        bar.refresh()

    root = generate_groups(
        args.generated,
        Path(args.out) / "generated",
        samples_per_prompt=args.samples_per_prompt,
        seed=seed,
        prompts=prompts,
        steps=args.steps,
        progress=progress,
    )
    for bar in bars.values():
        bar.close()
    return str(root)
