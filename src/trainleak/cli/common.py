"""What the commands share: exit codes, value parsers, the embedding options.

Nothing here imports numpy or an audit: ``trainleak --help`` and the parser
are built from :mod:`trainleak.config` alone, and each command imports what
it runs inside its ``run``.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

from trainleak.config import EmbedConfig, EngineName

#: 0 the command ran; 1 it ran, --fail-on-leak was given and something leaked
#: (or ``check`` blocked an image); 2 a usage or input error; 3 an internal
#: error (a bug: the traceback is written to a file and its path printed).
EXIT_OK, EXIT_LEAK, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

#: Title of the argument group :func:`add_embed_arguments` adds; options in it
#: take their defaults from the command config's ``embed`` field.
EMBEDDING_GROUP = "embedding"


class UsageError(Exception):
    """A flag combination or value the user must fix."""


#: ``--decisions`` of ``check`` and ``serve``.
DECISIONS_HELP = (
    "reviewers' decisions to honour (trainleak review's decisions.sqlite, its report folder, or "
    "a review --export CSV), on top of those 'index add-decisions' stored in the index: a pair "
    "marked 'not a leak' is released, one marked 'leak' blocked even below the threshold"
)


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


def finite_float(text: str) -> float:
    """Parse a finite number (``nan`` and ``inf`` are refused: they silently disable a test).

    Example:
        >>> finite_float("0.93")
        0.93

    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.9, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """Parse a finite number above 0 (a distance such as ``--delta``).

    Example:
        >>> positive_float("0.15")
        0.15

    """
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
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


def add_embed_arguments(
    p: argparse.ArgumentParser,
    defaults: EmbedConfig,
    *,
    encoder: bool = True,
    engines: bool = False,
    quiet: bool = False,
) -> None:
    """Add the embedding flags, declared here once for every command.

    Args:
        p: the command's parser.
        defaults: the command config's ``embed`` field, the source of every
            default. Where it keeps no cache (``serve``: uploads are other
            people's photos) ``--cache FOLDER`` turns one on and there is no
            ``--no-cache``.
        encoder: add the flags that choose the encoder and read the inputs
            (``--encoder``, ``-O``, ``--identity-depth``...); leave out for
            commands whose encoder comes from an index (``check``, ``serve``).
        engines: add ``--engine`` and ``--ray-address`` too (commands that run
            on an engine: see :mod:`trainleak.engines`).
        quiet: add ``--quiet`` (commands without :func:`add_output_arguments`).

    """
    g = p.add_argument_group(EMBEDDING_GROUP)
    if encoder:
        _add_encoder_flags(g, defaults)
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
    if defaults.no_cache:
        g.add_argument(
            "--cache",
            default=defaults.cache,
            help="keep embeddings in this cache folder (default: none, uploads are not kept)",
        )
    else:
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
    if encoder:
        g.add_argument(
            "--identity-depth",
            type=int,
            default=defaults.identity_depth,
            help="which sub-folder level names the person: 1 = root/alice/x.jpg, "
            "2 = root/batch/alice/x.jpg, -1 = each image's own folder (default: %(default)s)",
        )
        g.add_argument(
            "--max-file-mb",
            type=positive_int,
            default=defaults.max_file_mb,
            help="skip files larger than this many MB before reading them (default: %(default)s)",
        )
    if quiet:
        g.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    if engines:
        g.add_argument(
            "--engine",
            choices=get_args(EngineName),
            default=defaults.engine,
            help="where embedding and search run: this machine, or a Ray cluster "
            "(pip install 'trainleak[ray]'); --workers is then the encoder actors "
            "(default: %(default)s)",
        )
        g.add_argument(
            "--ray-address",
            default=defaults.ray_address,
            metavar="auto|HOST:PORT",
            help="the Ray cluster for --engine ray: auto (the one this machine belongs to), "
            "HOST:PORT of its head, or ray://HOST:PORT (default: start one here)",
        )


def _add_encoder_flags(g: Any, defaults: EmbedConfig) -> None:
    g.add_argument(
        "--encoder",
        default=defaults.encoder,
        help="face, pixel, tiled, onnx:FILE, torchscript:FILE, or a named model: arcface, "
        "adaface, sface (faces), sscd, dinov2-s14 (copies) (default: %(default)s)",
    )
    g.add_argument(
        "--weights",
        metavar="FILE",
        help="named models: the weights file (default: the published file name in the folder "
        "$TRAINLEAK_MODELS); the same as -O weights=FILE",
    )
    g.add_argument(
        "--allow-download",
        action="store_true",
        help="named models: fetch missing weights once from the publisher, only where "
        "trainleak pins their SHA-256",
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


def embed_config(args: argparse.Namespace, defaults: EmbedConfig | None = None) -> EmbedConfig:
    """Resolve the flags of :func:`add_embed_arguments` into an :class:`EmbedConfig`.

    Args:
        args: the parsed command line.
        defaults: the command config's ``embed`` field; the settings a command
            has no flag for keep its values (for ``check`` and ``serve`` the
            encoder, which comes from the index).

    """
    config = replace(
        defaults or EmbedConfig(),
        **{name: getattr(args, name) for name in _FLAG_FIELDS if hasattr(args, name)},
    )
    if not hasattr(args, "no_cache"):  # no cache unless --cache names one (serve)
        config.no_cache = config.no_cache and args.cache is None
    config.progress = not getattr(args, "quiet", True) and sys.stderr.isatty()
    if hasattr(args, "encoder"):
        config.encoder_options = _encoder_options(args)
    if config.ray_address is not None and config.engine != "ray":
        raise UsageError("--ray-address is for --engine ray: add --engine ray")
    return config


#: EmbedConfig fields set by a flag of the same name (where the command has it).
_FLAG_FIELDS = (
    "encoder", "workers", "batch_size", "cache", "no_cache", "max_pixels", "max_file_mb",
    "identity_depth", "engine", "ray_address",
)  # fmt: skip


def _encoder_options(args: argparse.Namespace) -> dict[str, Any]:
    options = dict(args.encoder_option)
    if args.weights is not None or args.allow_download:
        from trainleak.encoders.cards import CARDS

        if args.encoder not in CARDS:
            raise UsageError(
                f"--weights and --allow-download apply to the named models ({', '.join(CARDS)}); "
                "for another model give its file in the name: --encoder onnx:FILE"
            )
        if args.weights is not None:
            options.setdefault("weights", args.weights)
        if args.allow_download:
            options.setdefault("allow_download", True)
    if args.aligned or args.all_faces:
        # The encoder declares its options; the flags are two of the face encoder's.
        from trainleak.encoders import encoder_factory

        declared = getattr(encoder_factory(args.encoder.partition(":")[0]), "defaults", {})
        if not {"aligned", "all_faces"} <= set(declared):
            raise UsageError(
                "--aligned and --all-faces are options of encoders that find faces (the face "
                f"encoder only); --encoder {args.encoder} has: {', '.join(sorted(declared))}"
            )
        options.setdefault("aligned", args.aligned)
        options.setdefault("all_faces", args.all_faces)
    return options


def writable_dir(path: str, flag: str) -> None:
    """Fail now, before any work, if ``path`` cannot become a folder we write into.

    A file in the way, a missing drive or a read-only folder used to surface
    as a traceback after all the embedding was done.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder: give a folder path")
    probe = target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {path}: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UsageError(
            f"{flag} {path} is not writable ({err.strerror}): choose a folder you can write to"
        ) from None


def check_output_paths(args: argparse.Namespace) -> None:
    """Check every folder a command will write (``--out``, ``--cache``, ``--copy-kept``)."""
    if getattr(args, "out", None) and not getattr(args, "out_is_file", False):
        writable_dir(args.out, "--out")
    if getattr(args, "cache", None) and not getattr(args, "no_cache", False):
        writable_dir(args.cache, "--cache")
    if getattr(args, "copy_kept", None):
        writable_dir(args.copy_kept, "--copy-kept")


def print_skipped(report: dict[str, Any], what: str = "files") -> None:
    """Print how many inputs were skipped, when any were."""
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} {what} (reasons in the report)")
