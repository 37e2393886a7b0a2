"""A persisted, calibrated index of training vectors: the release gate's memory.

``index build`` embeds the training set once and keeps the vectors with the
threshold ``audit`` would use; ``check`` and ``serve`` open the folder instead
of re-reading the training set.

:class:`Index` is the facade: it is an :class:`~trainleak.gate.opened.OpenedIndex`
(state, search, scores) with building (:mod:`trainleak.gate.build`), atomic
changes (:mod:`trainleak.gate.writer`) and checks (:mod:`trainleak.gate.answers`).
The folder's format and how it is opened: :mod:`trainleak.gate.reader`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from trainleak.config import MAX_THRESHOLD_CHANGE, CheckConfig, IndexConfig
from trainleak.embedding import EmbeddingSet
from trainleak.gate import shards as files
from trainleak.gate.answers import encoded_verdicts, identity_verdicts, iter_verdicts
from trainleak.gate.build import build_index
from trainleak.gate.opened import OpenedIndex
from trainleak.gate.status import health, public_manifest
from trainleak.gate.verdict import Inputs, Verdict
from trainleak.gate.writer import add_to_index, compact_index, remove_from_index

PathLike = str | os.PathLike[str]


class Index(OpenedIndex):
    """An opened index folder: search, verdicts, and atomic changes.

    Open one with :meth:`open`, make one with :meth:`build`. Use it as a
    context manager (or call :meth:`close`) to stop the embedding workers.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> (d / "train").mkdir(); Image.radial_gradient("L").save(d / "train" / "a.png")
        >>> from trainleak.config import EmbedConfig
        >>> cfg = IndexConfig(embed=EmbedConfig("pixel", workers=1, no_cache=True))
        >>> with Index.build(d / "idx", d / "train", config=cfg) as index:
        ...     [v.verdict for v in index.check(d / "train")]
        ['block']
        >>> (d / "more").mkdir(); Image.linear_gradient("L").save(d / "more" / "b.png")
        >>> index = Index.open(d / "idx", config=CheckConfig(embed=cfg.embed))
        >>> index.add(d / "more")["added"], len(index)
        (1, 2)
        >>> index.remove([str(d / "more" / "b.png")])["removed"], index.info()["counts"]["live"]
        (1, 1)

    """

    # -- making ----------------------------------------------------------------

    @classmethod
    def build(
        cls,
        out: PathLike,
        train: PathLike | EmbeddingSet,
        holdout: PathLike | EmbeddingSet | None = None,
        *,
        config: IndexConfig | None = None,
        check_config: CheckConfig | None = None,
    ) -> Index:
        """Embed a training set into a new index folder, calibrated as ``audit`` calibrates.

        Args:
            out: the new index folder (created; must not hold an index yet).
            train: training images (folder, glob, list file) or an ``EmbeddingSet``.
            holdout: real images never trained on; the threshold is calibrated
                on them at ``config.fpr``. Without one, ``config.threshold`` or
                the encoder's default operating point is used.
            config: build settings.
            check_config: settings of the returned, opened index.

        Returns:
            The opened index.

        """
        build_index(Path(out), train, holdout, config or IndexConfig())
        index = cls.open(out, config=check_config)
        # E.g. the copy encoder's descriptor index, written beside each shard.
        index.similarity.prepare(index.shards)
        return index

    # -- changes (atomic; see trainleak.gate.writer) ----------------------------

    def add(
        self,
        source: PathLike | Sequence[PathLike] | EmbeddingSet,
        *,
        max_threshold_change: float = MAX_THRESHOLD_CHANGE,
        accept_threshold_change: bool = False,
    ) -> dict[str, Any]:
        """Add images whose content is not in the index yet, as one atomic change.

        Args:
            source: images (folders, globs, list files) or an ``EmbeddingSet``.
            max_threshold_change: the largest absolute change of a calibrated
                threshold the addition may make without ``accept_threshold_change``.
            accept_threshold_change: commit even when the recalibrated
                threshold moves further than that.

        Returns:
            Counts: ``files``, ``added`` rows, ``present`` (content already in
            the index), ``skipped`` (with reasons under ``skipped_files``).

        Raises:
            ThresholdChangeError: the threshold would move too far; nothing is committed.

        """
        guard = None if accept_threshold_change else max_threshold_change
        return add_to_index(self, source, guard)

    def remove(self, ids: Iterable[str]) -> dict[str, Any]:
        """Tombstone the rows with these ids: gone from every answer at once.

        Returns:
            ``removed`` rows and the ``unknown`` ids (not live in the index).

        """
        return remove_from_index(self, ids)

    def compact(self) -> dict[str, Any]:
        """Rewrite the shards without tombstoned rows (renumbers the rows)."""
        return compact_index(self)

    # -- what it holds ---------------------------------------------------------------

    def info(self, verify: bool = False) -> dict[str, Any]:
        """Return what the index holds: the manifest's summary, live counts, the search used."""
        m = self.manifest
        return {
            "path": str(self.path),
            "format_version": m["format_version"],
            "generation": m["generation"],
            "created": m["created"],
            "updated": m["updated"],
            "trainleak_version": m["trainleak_version"],
            "encoder": m["encoder"],
            "dim": m["dim"],
            "metric": m["metric"],
            "score": m["score"],
            "threshold": self.calibration.to_dict(),
            "counts": m["counts"],
            "bytes": sum(int(e["bytes"]) for e in files.listed_files(m)),
            "search": self.search_kind(),
            "decisions": self.decisions.current().summary(),
            "verified_bytes": self.verify() if verify else None,
        }

    def health(self) -> dict[str, Any]:
        """Say whether uploads can get verdicts now (see :func:`trainleak.gate.status.health`)."""
        return health(self)

    def public_manifest(self) -> dict[str, Any]:
        """Return the manifest without local paths (see :func:`.status.public_manifest`)."""
        return public_manifest(self)

    # -- checks (see trainleak.gate.check) ---------------------------------------------

    def check(self, inputs: Inputs) -> list[Verdict]:
        """One verdict per input; see :func:`trainleak.gate.check.check`."""
        return list(self.iter_check(inputs))

    def iter_check(self, inputs: Inputs) -> Iterator[Verdict]:
        """Verdicts one at a time, images read a batch at a time (bounded memory)."""
        return iter_verdicts(self, inputs)

    def check_encoded(self, items: Sequence[tuple[str, bytes]]) -> list[Verdict]:
        """Verdicts for in-memory encoded images ``(name, bytes)`` (uploads)."""
        return encoded_verdicts(self, items)

    def check_identity(self, inputs: Inputs) -> list[Verdict]:
        """Per-person answers to "is my face in there?"; see :func:`trainleak.gate.check.check`."""
        return identity_verdicts(self, inputs)
