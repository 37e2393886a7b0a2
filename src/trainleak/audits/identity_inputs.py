"""Query inputs of the identity attack: people's photo folders and member lists."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from trainleak.embedding import Embedder, EmbeddingSet
from trainleak.errors import AuditInputError
from trainleak.images import SkipRecord, list_records

log = logging.getLogger(__name__)


def read_members(path: str | os.PathLike[str]) -> set[str]:
    """Read member names, one per line; blank lines and ``#`` comments are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise AuditInputError(f"cannot read --members file {os.fspath(path)!r}: {err}") from None
    return {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}


def load_identities(
    embedder: Embedder, root: str | os.PathLike[str], set_name: str
) -> tuple[dict[str, np.ndarray], EmbeddingSet, list[SkipRecord]]:
    """Embed a folder with one sub-folder per person.

    Returns:
        ``(photos, embedded set, bad identities)``: identity -> ``(k, dim)``
        rows; a person whose folder is empty or has no usable photo is a skip
        record (set ``set_name``, path = the folder), never an error.

    Raises:
        AuditInputError: when no identity at all is usable.

    """
    folder = Path(root)
    if not folder.is_dir():
        raise AuditInputError(
            f"--{set_name} {os.fspath(root)!r} is not a folder: give a folder with one "
            "sub-folder of photos per person"
        )
    emb = embedder.embed(root, set_name)
    photos: dict[str, list[np.ndarray]] = {}
    for label, row in zip(emb.labels, emb.vectors, strict=True):
        if label is not None:
            photos.setdefault(label, []).append(row)
    loose = sum(1 for r in list_records(root) if r.label is None)
    bad: list[SkipRecord] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name in photos:
            continue
        reasons = sorted({s.reason for s in emb.skipped if s.path.startswith(str(sub) + os.sep)})
        why = "no usable photo (" + "; ".join(reasons) + ")" if reasons else "empty folder"
        if sub.is_symlink():
            why = "a link to a folder (links to folders are not followed; link the files)"
        bad.append(SkipRecord(set_name, str(sub), f"identity left out: {why}"))
    if not photos:
        raise AuditInputError(
            f"no usable identity in --{set_name} {os.fspath(root)!r}: put each person's photos "
            f"in their own sub-folder ({loose} loose files at the top level are ignored)"
        )
    if loose:
        log.warning("%d files directly under %s belong to no identity and are ignored", loose, root)
    return {k: np.stack(v) for k, v in photos.items()}, emb, bad


def photos_paths(emb: EmbeddingSet) -> dict[str, list[str]]:
    """Identity -> its embedded photo paths, for the report's thumbnails."""
    out: dict[str, list[str]] = {}
    for label, path in zip(emb.labels, emb.paths, strict=True):
        if label is not None:
            out.setdefault(label, []).append(path)
    return out
