"""Command line: one thin subcommand per audit over the Python API.

Only this module prints and sets exit codes: 0 the audit ran; 1 it ran with
``--fail-on-leak`` and flagged something; 2 a usage error or nothing readable.
"""

from __future__ import annotations

import argparse
import ast
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainleak._version import __version__
from trainleak.config import AuditConfig, DedupConfig, EmbedConfig
from trainleak.errors import TrainleakError
from trainleak.generators import is_generator_spec
from trainleak.images import DEFAULT_MAX_PIXELS, SourceError

EXIT_OK, EXIT_LEAK, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("trainleak")


class UsageError(Exception):
    """A flag combination or value the user must fix."""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.01, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. size=112), got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.replace("-", "_"), value


def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    """Add the flags every audit shares: encoder, workers, cache, limits."""
    g = p.add_argument_group("embedding")
    g.add_argument(
        "--encoder",
        default=EmbedConfig.encoder,
        help="face (default), pixel, tiled, onnx:FILE or torchscript:FILE",
    )
    g.add_argument(
        "--aligned",
        action="store_true",
        help="face encoder: images are already face crops, skip detection",
    )
    g.add_argument(
        "--all-faces",
        action="store_true",
        help="face encoder: every face of an image becomes its own record path#k",
    )
    g.add_argument(
        "--encoder-option",
        "-O",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="an encoder option, e.g. -O size=112 (repeatable)",
    )
    g.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="embedding processes (default: CPU cores)",
    )
    g.add_argument("--batch-size", type=_positive_int, default=EmbedConfig.batch_size)
    g.add_argument(
        "--cache",
        default=None,
        help="embedding cache folder (default: $TRAINLEAK_CACHE or ~/.cache/trainleak)",
    )
    g.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    g.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="skip images with more pixels than this (decompression bombs)",
    )


def embed_config(args: argparse.Namespace) -> EmbedConfig:
    """Resolve the shared embedding flags into an :class:`EmbedConfig`."""
    options = dict(args.encoder_option)
    if args.aligned or args.all_faces:
        if args.encoder != "face":
            raise UsageError("--aligned and --all-faces apply to the face encoder only")
        options.setdefault("aligned", args.aligned)
        options.setdefault("all_faces", args.all_faces)
    return EmbedConfig(
        encoder=args.encoder,
        encoder_options=options,
        workers=args.workers,
        batch_size=args.batch_size,
        cache=args.cache,
        no_cache=args.no_cache,
        max_pixels=args.max_pixels,
        progress=not args.quiet and sys.stderr.isatty(),
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the ``trainleak`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="trainleak",
        description="Find a model's training data in what the model gives away.",
    )
    parser.add_argument("--version", action="version", version=f"trainleak {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    a = sub.add_parser(
        "audit", help="find synthetic samples that copy or re-identify training samples"
    )
    a.add_argument("--train", required=True, help="training images: folder, glob or .txt/.csv list")
    a.add_argument("--synthetic", required=True, help="synthetic/generated images to audit")
    a.add_argument("--holdout", help="real images NOT used in training, to calibrate the threshold")
    t = a.add_mutually_exclusive_group()
    t.add_argument(
        "--fpr",
        type=_fraction,
        default=AuditConfig.fpr,
        help="target false-positive rate for the holdout-calibrated threshold",
    )
    t.add_argument("--threshold", type=float, help="fixed similarity threshold (no holdout)")
    a.add_argument("--k", type=_positive_int, default=AuditConfig.k, help="neighbours per sample")
    a.add_argument(
        "--score",
        choices=["auto", "nn", "identity"],
        default=AuditConfig.score,
        help="leak score: nearest photo (nn) or identity-aware (needs labels)",
    )
    a.add_argument(
        "--device",
        default=AuditConfig.search_device,
        help="where the neighbour search runs: auto (a CUDA GPU if torch sees one), cpu, "
        "cuda or cuda:N",
    )
    a.add_argument("--out", default="trainleak-report", help="output folder")
    a.add_argument("--redact", action="store_true", help="no images in the HTML report")
    a.add_argument("--fail-on-leak", action="store_true", help="exit 1 if anything is flagged")
    a.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_embed_arguments(a)
    a.set_defaults(func=run_audit)

    u = sub.add_parser(
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
        type=float,
        default=None,
        help="similarity above which images are near-duplicates (default: the copy "
        "encoder's operating point; required for face/onnx/torchscript)",
    )
    u.add_argument("--k", type=_positive_int, default=16, help="neighbours searched per image")
    u.add_argument("--out", default="trainleak-dedup", help="output folder")
    u.add_argument("--copy-kept", metavar="DIR", help="copy the deduplicated set to DIR")
    u.add_argument("--redact", action="store_true", help="no images in the HTML report")
    u.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_embed_arguments(u)
    u.set_defaults(func=run_dedup, encoder=DedupConfig().embed.encoder)

    x = sub.add_parser("extract", help="find training images a generator regurgitates")
    x.add_argument(
        "--generated",
        required=True,
        help="folder of generated images (sub-folders = one group per prompt), "
        "or a generator: python:module:function or diffusers:DIR",
    )
    x.add_argument("--train", required=True, help="training images")
    x.add_argument("--prompts", help="text file, one prompt per line (conditional generators)")
    x.add_argument("--samples-per-prompt", type=_positive_int, default=500)
    x.add_argument(
        "--distance",
        default="tiled",
        help="tiled (default), pixel, or any encoder name (sets --encoder)",
    )
    x.add_argument("--delta", type=float, default=0.15, help="distance threshold (paper: 0.15)")
    x.add_argument("--min-clique", type=_positive_int, default=10, help="paper: 10")
    x.add_argument(
        "--relative",
        action="store_true",
        help="relative criterion: d / mean(d to 50 nearest) < 0.5 (small images)",
    )
    x.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="diffusers: denoising steps (default: the pipeline's)",
    )
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--out", default="trainleak-extract", help="output folder")
    x.add_argument("--redact", action="store_true")
    x.add_argument(
        "--fail-on-leak", action="store_true", help="exit 1 when a training image is extracted"
    )
    x.add_argument("--quiet", "-q", action="store_true")
    add_embed_arguments(x)
    x.set_defaults(func=run_extract)

    v = sub.add_parser("invert", help="rebuild inputs from a split model's features")
    v.add_argument("--model", required=True, help="TorchScript file or python:module:factory")
    v.add_argument("--weights", help="python: models: .safetensors or torch.save state dict")
    v.add_argument("--trust-pickle", action="store_true", help="allow pickled model files")
    v.add_argument("--split", required=True, help="module name(s), comma-separated")
    v.add_argument("--images", required=True, help="inputs to invert: folder, glob or list")
    v.add_argument("--method", choices=["optimize", "dci", "decoder"], default="optimize")
    v.add_argument("--aux", help="attacker's own images (needed by --method decoder)")
    v.add_argument("--defense", help="noise:SIGMA or quantize:BITS applied at the split")
    v.add_argument("--steps", type=_positive_int, default=None, help="optimisation/training steps")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--size", help="model input HEIGHT,WIDTH (default: first image's size)")
    v.add_argument("--mean", type=float, default=0.5, help="input normalisation mean")
    v.add_argument("--std", type=float, default=0.5, help="input normalisation divisor")
    v.add_argument("--batch-size", type=_positive_int, default=64)
    v.add_argument("--no-identity", action="store_true", help="skip the face-identity metric")
    v.add_argument("--out", default="trainleak-invert", help="output folder")
    v.add_argument("--redact", action="store_true", help="no images in the HTML report")
    v.add_argument("--quiet", "-q", action="store_true")
    v.set_defaults(func=run_invert)

    m = sub.add_parser(
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
    m.add_argument("--n-samples", type=_positive_int, default=1000, help="samples to generate")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--top-m", type=_positive_int, default=5, help="samples averaged by topm")
    m.add_argument("--score", choices=["topm", "max"], default="topm", help="headline score")
    m.add_argument("--steps", type=_positive_int, default=None, help="diffusers: denoising steps")
    m.add_argument(
        "--gen-batch-size", type=_positive_int, default=32, help="samples generated at a time"
    )
    m.add_argument(
        "--timesteps", default="25,50,100,200", help="loss attack: comma-separated timesteps"
    )
    m.add_argument("--noise-seeds", type=_positive_int, default=8, help="loss attack: draws")
    m.add_argument("--bootstrap", type=_positive_int, default=1000, help="bootstrap replicates")
    m.add_argument("--out", default="trainleak-membership", help="output folder")
    m.add_argument("--redact", action="store_true", help="no images in the HTML report")
    m.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_embed_arguments(m)
    m.set_defaults(func=run_membership)

    d = sub.add_parser("demo", help="run an audit on bundled faces with planted leaks (offline)")
    d.add_argument("--out", default="trainleak-demo", help="output folder")
    d.add_argument("--workers", type=_positive_int, default=None)
    d.add_argument("--quiet", "-q", action="store_true")
    d.set_defaults(func=run_demo)
    return parser


def run_audit(args: argparse.Namespace, argv: list[str]) -> int:
    """``trainleak audit``."""
    from trainleak.audits.leakage import audit

    if args.threshold is not None and args.holdout:
        raise UsageError("give --holdout (calibrated threshold) or --threshold (fixed), not both")
    config = AuditConfig(
        embed=embed_config(args),
        fpr=args.fpr,
        threshold=args.threshold,
        k=args.k,
        score=args.score,
        search_device=args.device,
    )
    result = audit(args.train, args.synthetic, args.holdout, config=config, argv=argv)
    paths = result.write(args.out, redact=args.redact)
    _print_summary(result.report, paths)
    flagged = result.report["summary"]["flagged"]
    return EXIT_LEAK if args.fail_on_leak and flagged else EXIT_OK


def _print_summary(report: dict[str, Any], paths: dict[str, str]) -> None:
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
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} files (reasons in the report)")
    print(f"report: {paths['html']}")


def run_dedup(args: argparse.Namespace, argv: list[str]) -> int:
    """``trainleak dedup``."""
    from trainleak.audits.dedup import dedup

    config = DedupConfig(embed=embed_config(args), threshold=args.threshold, k=args.k)
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
    if result.report["skipped"]:
        print(f"skipped {len(result.report['skipped'])} files (reasons in the report)")
    if args.copy_kept:
        n = result.copy_kept(args.copy_kept)
        print(f"copied {n} kept images to {args.copy_kept}")
    print(f"keep-list: {paths['csv']}\nreport: {paths['html']}")
    return EXIT_OK


def run_extract(args: argparse.Namespace, argv: list[str]) -> int:
    """``trainleak extract``."""
    from trainleak.audits.extraction import ExtractConfig, extract

    args.encoder = args.distance if args.encoder == EmbedConfig.encoder else args.encoder
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
        generated = _generate(args, config.seed)
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
    return EXIT_LEAK if s["n_extracted"] and getattr(args, "fail_on_leak", False) else EXIT_OK


def _generate(args: argparse.Namespace, seed: int) -> str:
    """Materialise a generator's samples under ``--out/generated`` (resumable)."""
    from tqdm import tqdm

    from trainleak.generators import get_generator, materialise

    options = {"steps": args.steps} if args.generated.startswith("diffusers:") else {}
    generator = get_generator(args.generated, **options)
    prompts: list[str | None] = [None]
    if args.prompts:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
        prompts = [ln.strip() for ln in lines if ln.strip()]
        if not prompts:
            raise UsageError(f"{args.prompts} has no prompts (one per line)")
    root = Path(args.out) / "generated"
    for g, prompt in enumerate(prompts):
        folder = root / f"prompt_{g:04d}"
        if prompt is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder.parent / f"prompt_{g:04d}.txt").write_text(prompt, encoding="utf-8")
        bar = tqdm(
            total=args.samples_per_prompt,
            desc=f"generate {folder.name}",
            disable=args.quiet or not sys.stderr.isatty(),
            leave=False,
        )
        for done in materialise(generator, folder, args.samples_per_prompt, seed, prompt):
            bar.n = done
            bar.refresh()
        bar.close()
    return str(root)


def run_invert(args: argparse.Namespace, argv: list[str]) -> int:
    """``trainleak invert``."""
    from trainleak.audits.inversion import InvertConfig, invert

    size = None
    if args.size:
        try:
            parts = [int(v) for v in args.size.replace("x", ",").split(",")]
        except ValueError:
            message = f"--size takes HEIGHT,WIDTH such as 28,23, got {args.size!r}"
            raise UsageError(message) from None
        size = (parts[0], parts[-1])
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    if not splits:
        raise UsageError("--split needs at least one module name")
    config = InvertConfig(
        method=args.method,
        seed=args.seed,
        size=size,
        mean=args.mean,
        std=args.std,
        defense=args.defense,
        batch_size=args.batch_size,
        identity=not args.no_identity,
    )
    if args.steps:
        config.steps = args.steps
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
        print(line)
    if result.report["skipped"]:
        print(f"skipped {len(result.report['skipped'])} files (reasons in the report)")
    print(f"report: {paths['html']}")
    return EXIT_OK


def run_membership(args: argparse.Namespace, argv: list[str]) -> int:
    """``trainleak membership``: the identity attack or the loss attack."""
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
        result = _membership_identity(args, argv, members)
    else:
        result = _membership_loss(args, argv, members)
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
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} inputs (reasons in the report)")
    print(f"report: {paths['html']}")
    return EXIT_OK


def _membership_identity(
    args: argparse.Namespace, argv: list[str], members: set[str] | None
) -> Any:
    from trainleak.audits.membership import MembershipConfig, membership

    config = MembershipConfig(
        embed=embed_config(args),
        n_samples=args.n_samples,
        seed=args.seed,
        gen_batch_size=args.gen_batch_size,
        steps=args.steps,
        top_m=args.top_m,
        score=args.score,
        n_boot=args.bootstrap,
    )
    if args.steps is not None and not args.generated.startswith("diffusers:"):
        raise UsageError("--steps applies to a diffusers:DIR generator only")
    return membership(
        args.generated, args.identities, args.reference, members, config=config, argv=argv
    )


def _membership_loss(args: argparse.Namespace, argv: list[str], members: set[str] | None) -> Any:
    from trainleak.audits.loss_attack import LossConfig, loss_membership

    if args.model is None or args.candidates is None:
        raise UsageError("the loss attack needs both --model diffusers:DIR and --candidates PATH")
    if not args.model.startswith("diffusers:"):
        raise UsageError(
            f"--model takes diffusers:DIR (a local pipeline folder), got {args.model!r}"
        )
    try:
        timesteps = tuple(int(t) for t in args.timesteps.split(",") if t.strip())
    except ValueError:
        raise UsageError(
            f"--timesteps takes integers such as 25,50,100, got {args.timesteps!r}"
        ) from None
    if not timesteps:
        raise UsageError("--timesteps needs at least one timestep, e.g. --timesteps 50,100")
    config = LossConfig(
        timesteps=timesteps,
        noise_seeds=args.noise_seeds,
        seed=args.seed,
        n_boot=args.bootstrap,
        threads=args.workers,
    )
    return loss_membership(
        args.model, args.candidates, args.reference, members, config=config, argv=argv
    )


def run_demo(args: argparse.Namespace, argv: list[str]) -> int:
    """``trainleak demo``."""
    from trainleak.demo import run_demo as demo

    paths, found = demo(args.out, workers=args.workers, progress=not args.quiet)
    print(found)
    print(f"report: {paths['html']}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trainleak`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="trainleak: %(levelname)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, ["trainleak", *argv]))
    except (UsageError, SourceError, TrainleakError) as err:
        print(f"trainleak: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyError, ValueError, FileNotFoundError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"trainleak: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "trainleak: interrupted; finished batches are cached, re-run to resume", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
