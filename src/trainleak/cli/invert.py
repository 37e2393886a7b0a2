"""``trainleak invert``: rebuild inputs from a split model's features."""

from __future__ import annotations

import argparse
from typing import Any, get_args

from trainleak.cli.common import (
    EXIT_OK,
    UsageError,
    add_output_arguments,
    finite_float,
    positive_float,
    positive_int,
    print_skipped,
)
from trainleak.config import InvertConfig, InvertMethod

OUT = "trainleak-invert"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``invert`` to the subcommands ``sub``; defaults come from :class:`InvertConfig`."""
    defaults = InvertConfig()
    v: argparse.ArgumentParser = sub.add_parser(
        "invert", help="rebuild inputs from a split model's features"
    )
    v.add_argument("--model", required=True, help="TorchScript file or python:module:factory")
    v.add_argument("--weights", help="python: models: .safetensors or torch.save state dict")
    v.add_argument("--trust-pickle", action="store_true", help="allow pickled model files")
    v.add_argument("--split", required=True, help="module name(s), comma-separated")
    v.add_argument("--images", required=True, help="inputs to invert: folder, glob or list")
    v.add_argument(
        "--method",
        choices=get_args(InvertMethod),
        default=defaults.method,
        help="default: %(default)s",
    )
    v.add_argument(
        "--dci-inputs",
        choices=("noise", "generator"),
        default=defaults.dci_inputs,
        help="dci's synthesised block inputs: random images, or a generator fitted to the "
        "batch-norm statistics (default: %(default)s)",
    )
    v.add_argument(
        "--dci-gen-steps",
        type=positive_int,
        default=defaults.dci_gen_steps,
        help="training steps of that generator (default: %(default)s)",
    )
    v.add_argument("--aux", help="attacker's own images (needed by --method decoder)")
    v.add_argument(
        "--defense", default=defaults.defense, help="noise:SIGMA or quantize:BITS at the split"
    )
    v.add_argument(
        "--steps",
        type=positive_int,
        default=defaults.steps,
        help="optimisation/training steps (default: %(default)s)",
    )
    v.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    v.add_argument(
        "--size",
        default=defaults.size,
        help="model input HEIGHT,WIDTH (default: first image's size)",
    )
    v.add_argument(
        "--mean",
        type=finite_float,
        default=defaults.mean,
        help="input normalisation mean (default: %(default)s)",
    )
    v.add_argument(
        "--std",
        type=positive_float,
        default=defaults.std,
        help="input normalisation divisor (default: %(default)s)",
    )
    v.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.batch_size,
        help="images inverted together (default: %(default)s)",
    )
    v.add_argument(
        "--device",
        metavar="DEVICE",
        default=defaults.device,
        help="where the model runs and the inversion is optimised: auto (a CUDA GPU if torch "
        "sees one), cpu, cuda or cuda:N (default: %(default)s)",
    )
    v.add_argument(
        "--no-identity",
        dest="identity",
        action="store_false",
        default=defaults.identity,
        help="skip the face-identity metric",
    )
    add_output_arguments(v, OUT)
    v.set_defaults(func=run)
    return v


def parse_size(text: str | None) -> tuple[int, int] | None:
    """Parse ``--size`` ``HEIGHT,WIDTH`` (or ``HxW``); ``None`` stays ``None``.

    Example:
        >>> parse_size("28,23"), parse_size("32x32")
        ((28, 23), (32, 32))

    """
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        raise UsageError(f"--size takes HEIGHT,WIDTH such as 28,23, got {text!r}") from None
    return parts[0], parts[-1]


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``trainleak invert``; return the exit code."""
    from trainleak.audits.inversion import invert

    size = parse_size(args.size)
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    if not splits:
        raise UsageError("--split needs at least one module name")
    config = InvertConfig(
        method=args.method,
        steps=args.steps,
        seed=args.seed,
        size=size,
        mean=args.mean,
        std=args.std,
        defense=args.defense,
        batch_size=args.batch_size,
        identity=args.identity,
        dci_inputs=args.dci_inputs,
        dci_gen_steps=args.dci_gen_steps,
        device=args.device,
    )
    result = invert(
        args.model,
        splits,
        args.images,
        aux=args.aux,
        weights=args.weights,
        trust_pickle=args.trust_pickle,
        config=config,
        argv=argv,
    )
    paths = result.write(args.out, redact=args.redact)
    base = result.report["summary"]["baseline"]
    print(f"mean-image baseline: PSNR {base['psnr']:.2f} dB, SSIM {base['ssim']:.3f}")
    for e in result.report["splits"]:
        print(split_line(e))
    print_skipped(result.report)
    print(f"report: {paths['html']}")
    return EXIT_OK


def split_line(e: dict[str, Any]) -> str:
    """One line per split point: reconstruction quality, and with the defence if any."""
    sim = e["identity_similarity"]
    line = (
        f"{e['split']} (depth {e['depth']}, {e['method']}): PSNR {e['psnr']:.2f} dB, "
        f"SSIM {e['ssim']:.3f}, identity {'n/a' if sim is None else f'{sim:.3f}'}"
    )
    if e["defense"]:
        d = e["defense"]
        line += f"; with {d['spec']}: PSNR {d['psnr']:.2f} dB, SSIM {d['ssim']:.3f}"
        if d["accuracy"] is not None:
            line += f", accuracy {d['accuracy_clean']:.3f} -> {d['accuracy']:.3f}"
    return line
