"""The embedded inputs of one source, and how every engine assembles them.

:class:`EmbeddingSet` is what the embedding stage gives every audit;
:func:`assemble` builds it from the records read and their results, the same
way whichever engine (:mod:`trainleak.engines`) ran the stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainleak.encoders import EncoderInfo
from trainleak.images import Record, SkipRecord


@dataclass
class EmbeddingSet:
    """Embedded inputs of one source.

    Attributes:
        ids: one per row, the path as found under the root (``path#k`` for the
            k-th face when an encoder returns several per image).
        labels: identity label per row, or ``None``.
        vectors: ``(n, dim)`` float32 (unit rows for cosine encoders).
        skipped: files (or faces) left out, with reasons; a list-file entry
            that names a file listed already is one (``duplicate entry: ...``).
        files: how many files (or list-file entries) the source listed.
        info: the encoder that made the vectors.
        root: the source as the user gave it.
        paths: the file behind each row.
        digests: the content hash of the file behind each row (empty for
            vectors that came without files).

    """

    ids: list[str]
    labels: list[str | None]
    vectors: np.ndarray
    skipped: list[SkipRecord]
    files: int
    info: EncoderInfo
    root: str = ""
    paths: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_labels(self) -> bool:
        """Whether every row carries an identity label."""
        return bool(self.labels) and all(lab is not None for lab in self.labels)

    def repeated_content(self) -> list[list[str]]:
        """Return groups of ids whose files have the same bytes under different paths.

        Such files are separate records (that is the data as given) but are one
        image; an audit may count them. Faces of one file (``path#k``) count once.

        Returns:
            Groups of two or more ids, each sorted, in order of their first id.

        """
        by_digest: dict[str, list[str]] = {}
        seen: set[str] = set()
        for ident, path, digest in zip(self.ids, self.paths, self.digests, strict=True):
            if path not in seen:
                seen.add(path)
                by_digest.setdefault(digest, []).append(ident)
        return sorted(sorted(g) for g in by_digest.values() if len(g) > 1)

    def counts(self) -> dict[str, Any]:
        """Return the ``inputs`` entry of a report.

        ``repeated_content`` is the number of embedded files whose bytes repeat
        another embedded file of the set (see :meth:`repeated_content`).
        """
        groups = self.repeated_content() if self.paths and self.digests else []
        return {
            "root": self.root,
            "files": self.files,
            "embedded": len(self.ids),
            "skipped": len(self.skipped),
            "repeated_content": sum(len(g) - 1 for g in groups),
        }


def assemble(
    records: list[Record],
    digests: list[str | None],
    results: dict[str, np.ndarray | str],
    skipped: list[SkipRecord],
    set_name: str,
    info: EncoderInfo,
    root: str,
) -> EmbeddingSet:
    """Build the set of embedded inputs (rows in ``records`` order) from their results.

    Every engine ends with it, so sets come out the same whichever engine ran.
    """
    ids: list[str] = []
    labels: list[str | None] = []
    paths: list[str] = []
    row_digests: list[str] = []
    rows: list[np.ndarray] = []
    for rec, digest in zip(records, digests, strict=True):
        if digest is None:
            continue
        res = results[digest]
        if isinstance(res, str):
            skipped.append(SkipRecord(set_name, rec.id, res.lstrip("!")))
            continue
        many = len(res) > 1 or bool(info.options.get("all_faces"))
        for k, row in enumerate(res, start=1):
            ids.append(f"{rec.id}#{k}" if many else rec.id)
            labels.append(rec.label)
            paths.append(str(rec.path))
            row_digests.append(digest)
            rows.append(row)
    vectors = np.stack(rows).astype(np.float32) if rows else np.zeros((0, info.dim), np.float32)
    skipped.sort(key=lambda s: s.path)
    return EmbeddingSet(ids, labels, vectors, skipped, len(records), info, root, paths, row_digests)
