"""First step of every audit: build the configured embedder, embed a set, refuse an empty one."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

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


#: Above this share of training copies a holdout cannot calibrate anything.
MAX_CONTAMINATION = 0.5


def drop_training_copies(
    holdout: EmbeddingSet, train: EmbeddingSet
) -> tuple[EmbeddingSet, list[dict[str, str]]]:
    """Leave out holdout rows whose file is byte-identical to a training file.

    A training image in the holdout scores as a perfect match and drags the
    calibrated threshold up to 1.0, which silently disables every verdict.
    Files are compared by the content hash the embedding cache already keys
    on, so nothing is read again.

    Returns:
        The holdout without those rows, and ``{"holdout", "train"}`` per row left out.

    Raises:
        AuditInputError: when more than half of the holdout (or all of it) are
            training files: it cannot be a holdout.

    """
    if not holdout.digests or not train.digests:
        return holdout, []
    train_by_digest: dict[str, str] = {}
    for ident, digest in zip(train.ids, train.digests, strict=True):
        train_by_digest.setdefault(digest, ident)
    keep = [d not in train_by_digest for d in holdout.digests]
    dropped = [
        {"holdout": ident, "train": train_by_digest[d]}
        for ident, d, k in zip(holdout.ids, holdout.digests, keep, strict=True)
        if not k
    ]
    if not dropped:
        return holdout, []
    n = len(holdout)
    if len(dropped) > MAX_CONTAMINATION * n or len(dropped) == n:
        raise AuditInputError(
            f"{len(dropped)} of {n} holdout images are byte-identical to training images "
            f"(e.g. {dropped[0]['holdout']!r} = {dropped[0]['train']!r}): a holdout must be "
            "real images that were never trained on; pass a different --holdout"
        )
    log.warning(
        "%d holdout file(s) are identical to training files and are left out of the "
        "calibration (e.g. %s); see 'contaminated' in the report",
        len(dropped),
        dropped[0]["holdout"],
    )
    rows = [i for i, k in enumerate(keep) if k]
    subset = replace(
        holdout,
        ids=[holdout.ids[i] for i in rows],
        labels=[holdout.labels[i] for i in rows],
        vectors=holdout.vectors[rows],
        paths=[holdout.paths[i] for i in rows] if holdout.paths else [],
        digests=[holdout.digests[i] for i in rows],
    )
    return subset, dropped
