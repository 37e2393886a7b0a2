"""First step of every audit: build the configured embedder, embed a set, refuse an empty one."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from trainleak.config import EmbedConfig
from trainleak.embedding import Embedder, EmbeddingSet
from trainleak.errors import AuditInputError

log = logging.getLogger(__name__)

#: A settings dataclass (AuditConfig, DedupConfig...).
C = TypeVar("C")


def make_embedder(e: EmbedConfig) -> Embedder:
    """Build the :class:`Embedder` an :class:`EmbedConfig` describes, on the engine it names."""
    from trainleak.engines import engine_for

    return Embedder.from_config(e, engine=engine_for(e))


#: Training images the probe of an identity encoder embeds first.
PROBE_IMAGES = 20
#: Share of them without a face above which the run stops (most: the wrong encoder).
PROBE_NO_FACE = 0.75


def probe_identity_encoder(embedder: Embedder, train: str | os.PathLike[str]) -> None:
    """Stop before embedding a whole set with a face encoder when its first images have no face.

    An identity encoder (``kind == "identity"``) skips every image without a
    face; run on paintings or photos of things it would embed for long and
    then report on the few false "faces" it found. The first
    :data:`PROBE_IMAGES` training files are embedded first (through the cache,
    so nothing is done twice); when more than :data:`PROBE_NO_FACE` of them
    have no face the audit stops and names the encoder to use.

    Raises:
        AuditInputError: most of the first training images have no face.

    """
    from trainleak.archives import is_archive
    from trainleak.images import list_records

    if embedder.info.kind != "identity":
        return
    try:
        records = list_records(train, embedder.identity_depth)
    except (OSError, ValueError):
        return  # the full embedding reports what is wrong with the source
    first = [r for r in records[:PROBE_IMAGES] if not is_archive(r.path)]
    if len(first) < 10:
        return
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "probe.txt"
        listing.write_text("".join(f"{os.path.abspath(r.path)}\n" for r in first))
        probe = embedder.embed(listing, "train")
    no_face = sum("no face" in s.reason for s in probe.skipped)
    if no_face > PROBE_NO_FACE * len(first):
        raise AuditInputError(
            f"{no_face} of the first {len(first)} training images have no face for the "
            f"{embedder.info.name!r} encoder, which compares people: for artworks, photos of "
            "things or any picture that is not a face, use --encoder copy (copies, even "
            "cropped, rotated or recoloured); for near-exact copies --encoder pixel or tiled"
        )


def embed_nonempty(embedder: Embedder, path: str | os.PathLike[str], name: str) -> EmbeddingSet:
    """Embed one set; raise :class:`AuditInputError` when nothing in it is usable."""
    emb = embedder.embed(path, name)
    if len(emb) == 0:
        reasons = sorted({s.reason for s in emb.skipped})
        raise AuditInputError(
            f"no usable image in {name} set {os.fspath(path)!r} "
            f"({emb.files} files; reasons: {'; '.join(reasons) or 'no files'})"
        )
    return emb


#: One input of an audit: a source of images (folder, glob, list file) or a set already embedded.
Input = str | os.PathLike[str] | EmbeddingSet


def embed_sources(
    named: dict[str, Input | None], embed: EmbedConfig, *, probe: str | None = None
) -> dict[str, EmbeddingSet | None]:
    """Embed the path inputs with one embedder; pass embedded sets (and ``None``) through.

    Args:
        named: set name (``train``, ``synthetic``...) -> its input.
        embed: how the paths are embedded.
        probe: the set whose first images are probed for faces when the encoder
            compares people (:func:`probe_identity_encoder`), if it is a path.

    Raises:
        AuditInputError: an input is neither a path nor an :class:`EmbeddingSet`,
            or a path holds no usable image.

    """
    out: dict[str, EmbeddingSet | None] = {}
    paths: dict[str, str | os.PathLike[str]] = {}
    for key, value in named.items():
        if value is None or isinstance(value, EmbeddingSet):
            out[key] = value
        elif isinstance(value, (str, os.PathLike)):
            paths[key] = value
        else:
            raise AuditInputError(
                f"{key}: expected a path, an EmbeddingSet or an array, got {type(value).__name__}"
            )
    if paths:
        with make_embedder(embed) as embedder:
            if probe is not None and probe in paths:  # a face encoder on paintings stops here
                probe_identity_encoder(embedder, paths[probe])
            for key, path in paths.items():
                out[key] = embed_nonempty(embedder, path, key)
    # The embedder's store keeps a copy of every vector it read or wrote (1 kB
    # per image at d = 256): it is let go here, before the search, the audit's peak.
    return {key: out[key] for key in named}


def _flat(settings: dict[str, Any], prefix: str = "config.") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and key != "encoder_options":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def one_way(config: C | None, from_keywords: C, defaults: C) -> C:
    """Return ``config``, or ``from_keywords`` when no config was given: settings come one way.

    The keywords left at their defaults build ``defaults``: any setting the
    keywords changed must then agree with ``config``, never be silently
    dropped (``tl.audit(config=c, fpr=0.01)`` used to ignore ``fpr``).

    Raises:
        AuditInputError: a keyword disagrees with ``config=``; the message
            names the setting and how to give it.

    """
    if config is None:
        return from_keywords
    given, kw = _flat(asdict(config)), _flat(asdict(from_keywords))  # type: ignore[call-overload]
    default = _flat(asdict(defaults))  # type: ignore[call-overload]
    clashes = [
        f"{name} is {given[name]!r} but a keyword says {kw[name]!r}"
        for name in kw
        if kw[name] != default[name] and kw[name] != given[name]
    ]
    if clashes:
        raise AuditInputError(
            "settings given twice, as keywords and in config=, and they disagree: "
            f"{'; '.join(clashes)}. Give them one way: set them on the config "
            "(e.g. config.fpr = 0.01) or leave out config="
        )
    return config
