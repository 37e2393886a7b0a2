"""A persisted, calibrated index of training vectors: the release gate's memory.

``index build`` embeds the training set once and keeps the vectors with the
threshold ``audit`` would use; ``check`` and ``serve`` open the folder instead
of re-reading the training set.

The folder's format and how it is opened: :mod:`trainleak.gate.reader`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainleak.config import MAX_THRESHOLD_CHANGE, CheckConfig, IndexConfig
from trainleak.decide.calibration import Calibration, CalibrationError
from trainleak.encoders.base import EncoderInfo
from trainleak.errors import EncoderMismatchError, IndexFormatError
from trainleak.gate import reader
from trainleak.gate import shards as files
from trainleak.gate.reviewed import IndexDecisions
from trainleak.gate.search import FaissSearch, ShardSearch, choose_search, score_queries
from trainleak.gate.status import damaged_shards, health, public_manifest
from trainleak.similarity import Similarity

if TYPE_CHECKING:
    from trainleak.decide.scores import Scores
    from trainleak.embedding import Embedder, EmbeddingSet
    from trainleak.gate.check import Inputs, Verdict

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class Index:
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

    def __init__(self, path: Path, manifest: dict[str, Any], config: CheckConfig) -> None:
        self.path = path
        self.manifest = manifest
        self.config = config
        self.encoder_info = reader.encoder_info(path, manifest)
        self.calibration = _calibration(path, manifest)
        self.shards, self._offsets, self.dead, self._rows = reader.open_shards(path, manifest)
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.similarity = Similarity.of(self.encoder_info)
        self._search: ShardSearch | FaissSearch | None = None
        self._embedder: Embedder | None = None
        self.live_cache: tuple[np.ndarray, np.ndarray, list[str]] | None = None
        #: Why no verdict of this index can be trusted (a shard holds a NaN), once searched.
        self.damage: str | None = None
        self._damage_checked = False
        self.decisions = IndexDecisions(path, self.encoder_info.cache_key(), config.decisions)

    # -- opening and making ----------------------------------------------------

    @classmethod
    def open(
        cls,
        path: PathLike,
        *,
        encoder: str | EncoderInfo | None = None,
        config: CheckConfig | None = None,
        verify: bool = False,
    ) -> Index:
        """Open an index folder, memory-mapped (nothing is read whole).

        Args:
            path: the index folder.
            encoder: when given (a registry name or an ``EncoderInfo``), the
                index must have been built with exactly this encoder.
            config: search and embedding settings for checks.
            verify: also check every file's sha256 (reads every byte).

        Raises:
            IndexFormatError: not an index, a newer format, or a missing,
                truncated or corrupted file.
            EncoderMismatchError: built with another encoder than ``encoder``.

        """
        folder = Path(path)
        for attempt in range(3):
            manifest = files.read_manifest(folder)
            try:
                index = cls(folder, manifest, config or CheckConfig())
                break
            except IndexFormatError:
                # A writer may have replaced the manifest (and removed old
                # files) between our reads; only a changed manifest is a retry.
                if attempt == 2 or files.read_manifest(folder) == manifest:
                    raise
        if encoder is not None:
            index._expect_encoder(encoder)
        if verify:
            index.verify()
        return index

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
        from trainleak.gate.build import build_index

        build_index(Path(out), train, holdout, config or IndexConfig())
        index = cls.open(out, config=check_config)
        # E.g. the copy encoder's descriptor index, written beside each shard.
        index.similarity.prepare(index.shards)
        return index

    def reload(self) -> None:
        """Re-read the manifest after a change (ours or another process's)."""
        fresh = Index.open(self.path, config=self.config)
        embedder, self._embedder = self._embedder, None
        self.close()
        self.__dict__.update(fresh.__dict__)
        self._embedder = embedder

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
        from trainleak.gate.writer import add_to_index

        guard = None if accept_threshold_change else max_threshold_change
        return add_to_index(self, source, guard)

    def remove(self, ids: Iterable[str]) -> dict[str, Any]:
        """Tombstone the rows with these ids: gone from every answer at once.

        Returns:
            ``removed`` rows and the ``unknown`` ids (not live in the index).

        """
        from trainleak.gate.writer import remove_from_index

        return remove_from_index(self, ids)

    def compact(self) -> dict[str, Any]:
        """Rewrite the shards without tombstoned rows (renumbers the rows)."""
        from trainleak.gate.writer import compact_index

        return compact_index(self)

    # -- state -------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        """The calibrated threshold: a score strictly above it blocks."""
        return self.calibration.value

    @property
    def score_mode(self) -> str:
        """``nn`` (nearest training sample) or ``identity`` (see ``audit``)."""
        return str(self.manifest["score"]["mode"])

    @property
    def rows_total(self) -> int:
        """Rows in the shards, tombstoned ones included (global rows are ``0..rows_total-1``)."""
        return int(self.starts[-1])

    def __len__(self) -> int:
        return self.rows_total - len(self.dead)

    def verify(self) -> int:
        """Check every file's sha256 and every vector's finiteness; return the bytes checked.

        Raises:
            IndexFormatError: listing every file that does not match.

        """
        entries = files.listed_files(self.manifest)
        problems = files.verify_files(self.path, entries)
        problems += [f"{self.path}: {why}" for why in damaged_shards(self, every=True)]
        if problems:
            raise IndexFormatError(
                "the index is damaged: " + "; ".join(problems) + " (restore it or rebuild it)"
            )
        return sum(int(e["bytes"]) for e in entries)

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

    def _expect_encoder(self, encoder: str | EncoderInfo) -> None:
        if isinstance(encoder, str):
            from trainleak.encoders import get_encoder

            encoder = get_encoder(encoder).info
        if encoder.cache_key() != self.encoder_info.cache_key():
            raise EncoderMismatchError(
                f"the index {self.path} was built with encoder {self.encoder_info.name!r} "
                f"({self.encoder_info.cache_key()}), not {encoder.name!r} ({encoder.cache_key()}): "
                "check with the index's own encoder, or build an index with this one"
            )

    # -- search and scores ---------------------------------------------------------

    def search_kind(self) -> str:
        """``faiss`` or ``exact``: the search :meth:`score` uses under ``config.search``."""
        if self.score_mode == "identity":
            return "exact"  # identity scores need every row of a candidate identity
        live_bytes = 4 * len(self) * self.encoder_info.dim
        return choose_search(self.config.search, self.similarity, live_bytes, self.config)

    def knn(self, queries: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k live training rows of ``(n, dim)`` queries: float32 scores, int64 global rows."""
        if self._search is None:
            if self.search_kind() == "faiss" and len(self):
                self._search = FaissSearch(self.shards, self.dead)
            else:
                backend = self.config.search_backend
                self._search = ShardSearch(self.shards, self.dead, self.similarity, backend)
        return self._search.knn(queries, k or self.config.k)

    def score(self, queries: np.ndarray) -> Scores:
        """Score ``(n, dim)`` query vectors exactly as ``audit`` scores synthetic samples.

        The first call also checks every live shard for NaN (the search reads
        every row anyway); a damaged shard sets :attr:`damage` and every
        verdict blocks (see :mod:`trainleak.decide.failclosed`).
        """
        if self.damage is None and not self._damage_checked:
            found = damaged_shards(self)
            self.damage = "; ".join(found) if found else None
            self._damage_checked = True
        return score_queries(self, queries)

    # -- rows --------------------------------------------------------------------

    def rows(self, global_rows: Sequence[int] | np.ndarray) -> list[dict[str, Any] | None]:
        """Return the row records (``id``, ``label``, ``digest``, ``row``) of global rows.

        ``None`` stands for ``-1`` (no row).
        """
        wanted = np.asarray(global_rows, np.int64).ravel()
        return reader.lookup_rows(self._rows, self._offsets, self.starts, wanted)

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Yield every row record in global order (tombstoned ones too), with its ``row``."""
        return reader.iter_all_rows(self._rows)

    # -- checks (see trainleak.gate.check) ---------------------------------------------

    def embedder(self) -> Embedder:
        """Return the index's encoder with this index's embedding settings (made on first use)."""
        if self._embedder is None:
            from trainleak.audits.inputs import make_embedder

            enc = self.manifest["encoder"]
            spec = replace(
                self.config.embed, encoder=enc["spec"], encoder_options=dict(enc["spec_options"])
            )
            try:
                embedder = make_embedder(spec)
            except (KeyError, ValueError) as err:
                raise EncoderMismatchError(
                    f"cannot rebuild the index's encoder {enc['spec']!r} ({err}); an index built "
                    "from vectors can check vectors only"
                ) from None
            self._expect_encoder(embedder.info)
            self._embedder = embedder
        return self._embedder

    def warm(self) -> Index:
        """Build the search structure and start the encoder now rather than on first use.

        A service calls this once at start-up, so that no request pays for
        loading faiss or the model, and no two threads build them at once.
        """
        self.knn(np.zeros((1, self.encoder_info.dim), np.float32), 1)
        with contextlib.suppress(EncoderMismatchError):  # built from vectors: checks vectors
            self.embedder()
        return self

    def check(self, inputs: Inputs) -> list[Verdict]:
        """One verdict per input; see :func:`trainleak.gate.check.check`."""
        return list(self.iter_check(inputs))

    def iter_check(self, inputs: Inputs) -> Iterator[Verdict]:
        """Verdicts one at a time, images read a batch at a time (bounded memory)."""
        from trainleak.gate.check import iter_verdicts

        return iter_verdicts(self, inputs)

    def check_encoded(self, items: Sequence[tuple[str, bytes]]) -> list[Verdict]:
        """Verdicts for in-memory encoded images ``(name, bytes)`` (uploads)."""
        from trainleak.gate.check import encoded_verdicts

        return encoded_verdicts(self, items)

    def check_identity(self, inputs: Inputs) -> list[Verdict]:
        """Per-person answers to "is my face in there?"; see :func:`trainleak.gate.check.check`."""
        from trainleak.gate.check import identity_verdicts

        return identity_verdicts(self, inputs)

    def close(self) -> None:
        """Stop the embedding workers, if any were started."""
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Index({str(self.path)!r}, {len(self)} rows, encoder={self.encoder_info.name!r}, "
            f"threshold={self.threshold:.4f} ({self.manifest['threshold']['method']}))"
        )


def _calibration(path: Path, manifest: dict[str, Any]) -> Calibration:
    """Read the manifest's threshold; one that cannot decide anything refuses to open."""
    try:
        return Calibration.from_dict(manifest.get("threshold") or {})
    except CalibrationError as err:
        raise IndexFormatError(
            f"{path / files.MANIFEST}: its threshold cannot be used ({err}); the manifest is "
            "damaged: restore the index from a copy or rebuild it"
        ) from None
