"""First step of every audit: build the configured embedder, embed a set, refuse an empty one."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from trainleak.config import EmbedConfig
from trainleak.embedding import Embedder, EmbeddingSet
from trainleak.errors import AuditInputError

log = logging.getLogger(__name__)


def make_embedder(e: EmbedConfig) -> Embedder:
    """Build the :class:`Embedder` an :class:`EmbedConfig` describes, on its engine."""
    from trainleak.engines import engine_for

    return Embedder(
        e.encoder,
        encoder_options=e.encoder_options,
        workers=e.workers,
        batch_size=e.batch_size,
        cache=e.cache_arg(),
        max_pixels=e.max_pixels,
        max_file_mb=e.max_file_mb,
        identity_depth=e.identity_depth,
        progress=e.progress,
        engine=engine_for(e),
    )


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
