"""The gate's verdict record, defined once.

:class:`Verdict` is the one definition: the CSV columns and JSON-lines keys
(:data:`COLUMNS`, :mod:`trainleak.gate.output`) and the HTTP model of
``serve`` (:mod:`trainleak.service.serve`) are derived from its fields, and
``tests/gate/test_verdict_fields.py`` ties them together. A new field is one
line here (with its docstring entry).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

from trainleak.embedding import EmbeddingSet

VerdictName = Literal["release", "block", "skip"]
#: What a block's evidence shows: a copy of the training image, or the same person in
#: another photo (see :attr:`Verdict.match`).
MatchKind = Literal["copy", "same person"]
PathLike = str | os.PathLike[str]
#: What ``check`` accepts: paths (folders, globs, list files, files), vectors, or a set.
Inputs = PathLike | Sequence[PathLike] | np.ndarray | EmbeddingSet


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one input (or, with ``identity=True``, one person).

    Attributes:
        path: the input as found (a file path, the upload's name, the row
            number of a vector, or the person).
        verdict: ``release``, ``block`` or ``skip``.
        nearest: id of the training image the block points at (``None``
            unless blocked).
        similarity: the leak score compared with the threshold (the nearest
            training image's similarity, or the identity score of an index
            that scores by identity); ``None`` for a skip.
        threshold: the index's threshold; blocked when ``similarity > threshold``.
        identity: identity label of the matched training image, when blocked
            and the training set has labels.
        reason: one line saying why.
        reviewed: the reviewer's decision that set this verdict, as
            ``not a leak by ana at 2026-...`` (see :mod:`trainleak.gate.reviewed`);
            ``None`` when the threshold alone decided.
        match: what a block that points at a training image shows, from the
            evidence the index holds: ``copy`` for an index of a copy encoder
            (pixel, tiled, copy, ...) or an input whose bytes equal the
            training file's; ``same person`` for an identity (face) index,
            which cannot tell a copy of a photo from another photo of the
            person. ``None`` for releases, skips and blocks that point at
            nothing (a damaged index).

    """

    path: str
    verdict: VerdictName
    nearest: str | None = None
    similarity: float | None = None
    threshold: float | None = None
    identity: str | None = None
    reason: str = ""
    reviewed: str | None = None
    match: MatchKind | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the verdict as a dict with the keys of :data:`COLUMNS`."""
        return asdict(self)


#: Columns of verdicts.csv and keys of each ``--jsonl`` line, in order: the fields of
#: :class:`Verdict`.
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Verdict))

__all__ = ["COLUMNS", "Inputs", "MatchKind", "PathLike", "Verdict", "VerdictName"]
