"""An opened index: its state, its search and its scores (the reading half of the gate).

:class:`OpenedIndex` holds what an index folder says and answers searches
and scores; :class:`trainleak.gate.index.Index` adds building, changes and
checks on top of it. The helpers that change or check an index take an
``OpenedIndex``, so none of them imports the facade that calls them.

The folder's format and how it is opened: :mod:`trainleak.gate.reader`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from trainleak.audits.inputs import make_embedder
from trainleak.audits.scoring import match_identities
from trainleak.config import CheckConfig
from trainleak.decide.calibration import Calibration, CalibrationError
from trainleak.decide.scores import Neighbours, Scores
from trainleak.embedding import Embedder
from trainleak.encoders import get_encoder
from trainleak.encoders.base import EncoderInfo
from trainleak.errors import EncoderMismatchError, IndexFormatError
from trainleak.gate import reader
from trainleak.gate import shards as files
from trainleak.gate.reader import nonfinite_rows
from trainleak.gate.reviewed import IndexDecisions
from trainleak.gate.search import FaissSearch, ShardSearch, choose_search
from trainleak.similarity import Similarity

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
_Opened = TypeVar("_Opened", bound="OpenedIndex")


class OpenedIndex:
    """An opened index folder: state, search and scores; see the module docstring.

    Open one with :meth:`open` (or :meth:`trainleak.gate.index.Index.open`).
    Use it as a context manager (or call :meth:`close`) to stop the embedding workers.
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

    @classmethod
    def open(
        cls: type[_Opened],
        path: PathLike,
        *,
        encoder: str | EncoderInfo | None = None,
        config: CheckConfig | None = None,
        verify: bool = False,
    ) -> _Opened:
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

    def reload(self) -> None:
        """Re-read the manifest after a change (ours or another process's)."""
        fresh = type(self).open(self.path, config=self.config)
        embedder, self._embedder = self._embedder, None
        self.close()
        self.__dict__.update(fresh.__dict__)
        self._embedder = embedder

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

    def _expect_encoder(self, encoder: str | EncoderInfo) -> None:
        if isinstance(encoder, str):
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

    # -- embedding -----------------------------------------------------------------

    def embedder(self) -> Embedder:
        """Return the index's encoder with this index's embedding settings (made on first use)."""
        if self._embedder is None:
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

    def warm(self: _Opened) -> _Opened:
        """Build the search structure and start the encoder now rather than on first use.

        A service calls this once at start-up, so that no request pays for
        loading faiss or the model, and no two threads build them at once.
        """
        self.knn(np.zeros((1, self.encoder_info.dim), np.float32), 1)
        with contextlib.suppress(EncoderMismatchError):  # built from vectors: checks vectors
            self.embedder()
        return self

    def close(self) -> None:
        """Stop the embedding workers, if any were started."""
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None

    def __enter__(self: _Opened) -> _Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Index({str(self.path)!r}, {len(self)} rows, encoder={self.encoder_info.name!r}, "
            f"threshold={self.threshold:.4f} ({self.manifest['threshold']['method']}))"
        )



def damaged_shards(index: OpenedIndex, every: bool = False) -> list[str]:
    """Return one line per live shard (every shard with ``every``) holding non-finite values."""
    out = []
    for s, shard in enumerate(index.shards):
        lo, hi = int(index.starts[s]), int(index.starts[s + 1])
        if not every and _all_dead(index, lo, hi):
            continue
        bad = nonfinite_rows(shard)
        if len(bad):
            name = index.manifest["shards"][s]["files"]["vectors"]["name"]
            first = lo + int(bad[0])
            out.append(f"{name} holds NaN or infinite values in {len(bad)} row(s), e.g. {first}")
    return out


def _all_dead(index: OpenedIndex, lo: int, hi: int) -> bool:
    a, b = np.searchsorted(index.dead, [lo, hi])
    return int(b - a) >= hi - lo


def score_queries(index: OpenedIndex, queries: np.ndarray) -> Scores:
    """Score query vectors against an index as ``audit`` scores synthetic samples.

    ``best`` holds global rows (``-1`` where the search found none) and
    ``identity`` the matched rows' labels.

    ``nn``: the nearest live row's similarity. ``identity``: the audit's own
    :func:`~trainleak.audits.scoring.match_identities` over the live rows
    (held in memory once per opened index: identity sets are labelled
    photo collections, far below the sizes the memory-mapped ``nn`` search serves).
    """
    q = np.ascontiguousarray(queries, np.float32)
    if q.ndim != 2 or q.shape[1] != index.encoder_info.dim:
        raise ValueError(
            f"queries must be (n, {index.encoder_info.dim}) for this index, got {q.shape}: "
            "embed them with the index's encoder"
        )
    if index.score_mode == "identity" and len(index):
        rows, vectors, labels = _live_rows(index)
        weight = float(index.manifest["score"]["identity_weight"])
        ids = match_identities(q, vectors, labels, weight, index.config.search_backend)
        found: list[str | None] = list(ids.identity)
        best = rows[ids.train_index]
        near = Neighbours(ids.similarity[:, None], best[:, None])
        return Scores(ids.score, best, ids.similarity, ids.similarity, near, found)
    s, i = index.knn(q)
    row = i[:, 0].copy()
    named: list[str | None] = [r.get("label") if r else None for r in index.rows(row)]
    return Scores(s[:, 0].copy(), row, s[:, 0].copy(), s[:, 0].copy(), Neighbours(s, i), named)


def _live_rows(index: OpenedIndex) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Live global rows, their vectors (in memory) and labels, cached on the index."""
    if index.live_cache is None:
        alive = np.ones(index.rows_total, bool)
        alive[index.dead] = False
        rows = np.flatnonzero(alive)
        parts = [s[alive[a : a + len(s)]] for s, a in zip(index.shards, index.starts, strict=False)]
        labels = [str(r["label"]) for r in index.iter_rows() if alive[r["row"]]]
        index.live_cache = (rows, np.ascontiguousarray(np.concatenate(parts), np.float32), labels)
    return index.live_cache


def _calibration(path: Path, manifest: dict[str, Any]) -> Calibration:
    """Read the manifest's threshold; one that cannot decide anything refuses to open."""
    try:
        return Calibration.from_dict(manifest.get("threshold") or {})
    except CalibrationError as err:
        raise IndexFormatError(
            f"{path / files.MANIFEST}: its threshold cannot be used ({err}); the manifest is "
            "damaged: restore the index from a copy or rebuild it"
        ) from None
