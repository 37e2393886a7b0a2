"""First step of every audit: build the configured embedder, embed a set, refuse an empty one."""

from __future__ import annotations

import logging
import os

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
