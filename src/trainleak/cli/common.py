"""What the commands share: exit codes, value parsers, the embedding options.

Nothing here imports numpy or an audit: ``trainleak --help`` and the parser
are built from :mod:`trainleak.config` alone, and each command imports what
it runs inside its ``run``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any

from trainleak.config import EmbedConfig

EXIT_OK, EXIT_LEAK, EXIT_USAGE = 0, 1, 2

#: Title of the argument group :func:`add_embed_arguments` adds; options in it
#: take their defaults from the command config's ``embed`` field.
EMBEDDING_GROUP = "embedding"


class UsageError(Exception):
    """A flag combination or value the user must fix."""


def fraction(text: str) -> float:
    """Parse a number strictly between 0 and 1 (a rate such as ``--fpr``).

    Example:
        >>> fraction("0.01")
        0.01

    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.01, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def positive_int(text: str) -> int:
    """Parse a whole number of at least 1.

    Example:
        >>> positive_int("16")
        16

    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def encoder_option(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE``; the value as a Python literal when it is one, else the text.

    Example:
        >>> encoder_option("size=112"), encoder_option("mode=fast")
        (('size', 112), ('mode', 'fast'))

    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. size=112), got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.replace("-", "_"), value


def add_output_arguments(p: argparse.ArgumentParser, out: str, *, redact: bool = True) -> None:
    """Add ``--out`` (default ``out``), ``--redact`` and ``--quiet``."""
    p.add_argument("--out", default=out, help="output folder (default: %(default)s)")
    if redact:
        p.add_argument("--redact", action="store_true", help="no images in the HTML report")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_embed_arguments(p: argparse.ArgumentParser, defaults: EmbedConfig) -> None:
    """Add the flags every audit shares: encoder, workers, cache, limits.

    Args:
        p: the command's parser.
        defaults: the command config's ``embed`` field, the source of every default.

    """
    g = p.add_argument_group(EMBEDDING_GROUP)
    g.add_argument(
        "--encoder",
        default=defaults.encoder,
        help="face, pixel, tiled, onnx:FILE or torchscript:FILE (default: %(default)s)",
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
        type=encoder_option,
        default=[],
        metavar="KEY=VALUE",
        help="an encoder option, e.g. -O size=112 (repeatable)",
    )
    g.add_argument(
        "--workers",
        type=positive_int,
        default=defaults.workers,
        help="embedding processes (default: CPU cores)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.batch_size,
        help="images embedded at a time (default: %(default)s)",
    )
    g.add_argument(
        "--cache",
        default=defaults.cache,
        help="embedding cache folder (default: $TRAINLEAK_CACHE or ~/.cache/trainleak)",
    )
    g.add_argument(
        "--no-cache",
        action="store_true",
        default=defaults.no_cache,
        help="do not read or write the cache",
    )
    g.add_argument(
        "--max-pixels",
        type=positive_int,
        default=defaults.max_pixels,
        help="skip images with more pixels than this, decompression bombs (default: %(default)s)",
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


def print_skipped(report: dict[str, Any], what: str = "files") -> None:
    """Print how many inputs were skipped, when any were."""
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} {what} (reasons in the report)")
