"""``trainleak membership``: whether a person (or an image) was in the training set.

Two attacks behind one command: the identity attack (``--generated`` and
``--identities``, :class:`~trainleak.config.MembershipConfig`) and the loss
attack on a diffusion model (``--model`` and ``--candidates``,
:class:`~trainleak.config.LossConfig`).
"""

from __future__ import annotations

import argparse
from typing import Any, get_args

from trainleak.cli.common import (
    EXIT_OK,
    UsageError,
    add_embed_arguments,
    add_output_arguments,
    embed_config,
    positive_int,
    print_skipped,
)
from trainleak.config import Headline, LossConfig, MembershipConfig

OUT = "trainleak-membership"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``membership``; defaults come from :class:`MembershipConfig` and :class:`LossConfig`."""
    defaults, loss = MembershipConfig(), LossConfig()
    m: argparse.ArgumentParser = sub.add_parser(
        "membership",
        help="was this person (or image) in the generator's training set?",
        description="Identity attack: --generated GEN --identities DIR. "
        "Loss attack on a diffusion model: --model diffusers:DIR --candidates PATH.",
    )
    m.add_argument(
        "--generated",
        help="identity attack: folder of generated images, or a generator: "
        "diffusers:DIR or python:module:function",
    )
    m.add_argument("--identities", help="identity attack: one sub-folder of photos per person")
    m.add_argument("--model", help="loss attack: diffusers:DIR, a local diffusion pipeline")
    m.add_argument("--candidates", help="loss attack: images to test (folder, glob or list)")
    m.add_argument(
        "--members",
        help="file of member names, one per line (identity folder names, or candidate "
        "paths relative to --candidates); all other queries are non-members: evaluation",
    )
    m.add_argument(
        "--reference",
        help="known non-members (same layout as the queries): calibrates p-values",
    )
    m.add_argument(
        "--n-samples",
        type=positive_int,
        default=defaults.n_samples,
        help="samples to generate (default: %(default)s)",
    )
    m.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    m.add_argument(
        "--top-m",
        type=positive_int,
        default=defaults.top_m,
        help="samples averaged by topm (default: %(default)s)",
    )
    m.add_argument(
        "--score",
        choices=get_args(Headline),
        default=defaults.score,
        help="headline score (default: %(default)s)",
    )
    m.add_argument(
        "--steps",
        type=positive_int,
        default=defaults.steps,
        help="diffusers: denoising steps (default: the pipeline's)",
    )
    m.add_argument(
        "--gen-batch-size",
        type=positive_int,
        default=defaults.gen_batch_size,
        help="samples generated at a time (default: %(default)s)",
    )
    m.add_argument(
        "--timesteps",
        default=",".join(str(t) for t in loss.timesteps),
        help="loss attack: comma-separated timesteps (default: %(default)s)",
    )
    m.add_argument(
        "--noise-seeds",
        type=positive_int,
        default=loss.noise_seeds,
        help="loss attack: noise draws per timestep (default: %(default)s)",
    )
    m.add_argument(
        "--bootstrap",
        dest="n_boot",
        metavar="N",
        type=positive_int,
        default=defaults.n_boot,
        help="bootstrap replicates (default: %(default)s)",
    )
    add_output_arguments(m, OUT)
    add_embed_arguments(m, defaults.embed)
    m.set_defaults(func=run)
    return m


def parse_timesteps(text: str) -> tuple[int, ...]:
    """Parse ``--timesteps`` such as ``25,50,100``.

    Example:
        >>> parse_timesteps("25, 50,100")
        (25, 50, 100)

    """
    try:
        timesteps = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"--timesteps takes integers such as 25,50,100, got {text!r}") from None
    if not timesteps:
        raise UsageError("--timesteps needs at least one timestep, e.g. --timesteps 50,100")
    return timesteps


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak membership``, the identity attack or the loss attack."""
    from trainleak.audits.identity_inputs import read_members
    from trainleak.report.membership import rows_key

    identity = args.generated is not None or args.identities is not None
    loss = args.model is not None or args.candidates is not None
    if identity == loss:
        raise UsageError(
            "give --generated GEN --identities DIR (identity attack) or --model diffusers:DIR "
            "--candidates PATH (loss attack)" + (", not both" if identity else "")
        )
    members = read_members(args.members) if args.members else None
    if identity:
        if args.generated is None or args.identities is None:
            raise UsageError("the identity attack needs both --generated GEN and --identities DIR")
        result = _identity(args, argv, members)
    else:
        result = _loss(args, argv, members)
    paths = result.write(args.out, redact=args.redact)
    report = result.report
    s = report["summary"]
    key, name = rows_key(report)
    if s["auc"] is not None:
        lo, hi = s["auc_ci95"]
        print(
            f"AUC {s['auc']:.3f} (95% CI {lo:.3f}-{hi:.3f}), TPR at 1% FPR "
            f"{s['tpr_at_fpr']['0.01']:.2f}, at 0.1% FPR {s['tpr_at_fpr']['0.001']:.2f} "
            f"({s['n_members']} members, {s['n_nonmembers']} non-members)"
        )
    for row in report[key][:10]:
        p = "" if row["p_value"] is None else f"  p={row['p_value']:.3g}"
        print(f"  {row[name]}: score {row['score']:.4f}{p}")
    print_skipped(report, "inputs")
    print(f"report: {paths['html']}")
    return EXIT_OK


def _identity(args: argparse.Namespace, argv: list[str], members: set[str] | None) -> Any:
    from trainleak import membership

    config = MembershipConfig(
        embed=embed_config(args),
        n_samples=args.n_samples,
        seed=args.seed,
        gen_batch_size=args.gen_batch_size,
        steps=args.steps,
        top_m=args.top_m,
        score=args.score,
        n_boot=args.n_boot,
    )
    if args.steps is not None and not args.generated.startswith("diffusers:"):
        raise UsageError("--steps applies to a diffusers:DIR generator only")
    return membership(
        args.identities, args.generated, args.reference, members, config=config, argv=argv
    )


def _loss(args: argparse.Namespace, argv: list[str], members: set[str] | None) -> Any:
    from trainleak.audits.loss_attack import loss_membership

    if args.model is None or args.candidates is None:
        raise UsageError("the loss attack needs both --model diffusers:DIR and --candidates PATH")
    if not args.model.startswith("diffusers:"):
        raise UsageError(
            f"--model takes diffusers:DIR (a local pipeline folder), got {args.model!r}"
        )
    config = LossConfig(
        timesteps=parse_timesteps(args.timesteps),
        noise_seeds=args.noise_seeds,
        seed=args.seed,
        n_boot=args.n_boot,
        threads=args.workers,
    )
    return loss_membership(
        args.model, args.candidates, args.reference, members, config=config, argv=argv
    )
