"""Holdout contamination: holdout files byte-identical to training files calibrate nothing.

A training image in the holdout scores as a perfect match and drags the
calibrated threshold up to 1.0, which silently disables every verdict. Files
are compared by the content hash the embedding cache and the index already
key on, so nothing is read again. ``audit`` and ``index build`` drop such rows
before calibrating (:func:`drop_training_copies`); every later change to an
index checks its stored holdout against the live training rows
(:func:`contaminated_rows`).
"""

from __future__ import annotations

import logging
from collections.abc import Container, Sequence
from dataclasses import replace

import numpy as np

from trainleak.embedding import EmbeddingSet
from trainleak.errors import AuditInputError

log = logging.getLogger(__name__)

#: Above this share of training copies a holdout cannot calibrate anything.
MAX_CONTAMINATION = 0.5


def contaminated_rows(
    holdout_digests: Sequence[str | None], train_digests: Container[str], fix: str
) -> np.ndarray:
    """Return ``(n,)`` bool: the holdout rows whose content is a training file's.

    Args:
        holdout_digests: the holdout rows' content hashes (``None``: no file).
        train_digests: the training rows' content hashes.
        fix: what the error message tells the user to do.

    Raises:
        AuditInputError: more than :data:`MAX_CONTAMINATION` of the holdout
            (or all of it) are training files: it cannot be a holdout.

    Example:
        >>> contaminated_rows(["a", "b", "c"], {"c"}, "pass another holdout").tolist()
        [False, False, True]

    """
    dropped = np.array([d is not None and d in train_digests for d in holdout_digests], bool)
    n, k = len(dropped), int(dropped.sum())
    if k and (k > MAX_CONTAMINATION * n or k == n):
        raise AuditInputError(
            f"{k} of {n} holdout images are byte-identical to training images: a holdout must "
            f"be real images that were never trained on; {fix}"
        )
    return dropped


def drop_training_copies(
    holdout: EmbeddingSet, train: EmbeddingSet
) -> tuple[EmbeddingSet, list[dict[str, str]]]:
    """Leave out holdout rows whose file is byte-identical to a training file.

    Returns:
        The holdout without those rows, and ``{"holdout", "train"}`` per row left out.

    Raises:
        AuditInputError: when more than half of the holdout (or all of it) are
            training files.

    """
    if not holdout.digests or not train.digests:
        return holdout, []
    train_by_digest: dict[str, str] = {}
    for ident, digest in zip(train.ids, train.digests, strict=True):
        train_by_digest.setdefault(digest, ident)
    first = next((d for d in holdout.digests if d in train_by_digest), None)
    example = (
        ""
        if first is None
        else (f"e.g. {holdout.ids[holdout.digests.index(first)]!r} = {train_by_digest[first]!r}; ")
    )
    gone = contaminated_rows(
        holdout.digests, train_by_digest, example + "pass a different --holdout"
    )
    if not gone.any():
        return holdout, []
    dropped = [
        {"holdout": holdout.ids[i], "train": train_by_digest[holdout.digests[i]]}
        for i in np.flatnonzero(gone)
    ]
    log.warning(
        "%d holdout file(s) are identical to training files and are left out of the "
        "calibration (e.g. %s); see 'contaminated' in the report",
        len(dropped),
        dropped[0]["holdout"],
    )
    rows = np.flatnonzero(~gone).tolist()
    subset = replace(
        holdout,
        ids=[holdout.ids[i] for i in rows],
        labels=[holdout.labels[i] for i in rows],
        vectors=holdout.vectors[rows],
        paths=[holdout.paths[i] for i in rows] if holdout.paths else [],
        digests=[holdout.digests[i] for i in rows],
    )
    return subset, dropped
