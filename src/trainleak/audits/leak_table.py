"""The full neighbour table of an ``audit``, kept as arrays and written a block at a time.

Every synthetic sample's top-k training neighbours (and its verdict's pair
when the identity score points past the top k) make one row each. At a
million samples that is millions of rows: as Python dicts in ``report.json``
they would not fit in memory, so :class:`MatchTable` keeps them as the
search's arrays, hands out column blocks for the streaming writers of
:mod:`trainleak.report.table`, and builds dict rows only for the few samples
``report.json`` lists (:func:`listed_samples`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainleak.decide.scores import Scores
from trainleak.embedding import EmbeddingSet
from trainleak.records import Coded

#: Synthetic samples per block of the table (rows = about ``k`` times as many).
BLOCK_SAMPLES = 16_384
#: Samples whose similarities to every training row are computed at once, to
#: rank a verdict pair past the top k (bounds that step to 32 x n_train floats).
_RANK_CHUNK = 32


@dataclass
class MatchTable:
    """Every synthetic sample's listed pairs, as arrays.

    Attributes:
        train: the training set.
        synthetic: the synthetic set.
        scored: the synthetic samples' scores and top-k neighbours.
        flagged: ``(n,)`` bool, the final flags (after reviewers' decisions).

    """

    train: EmbeddingSet
    synthetic: EmbeddingSet
    scored: Scores
    flagged: np.ndarray

    def __len__(self) -> int:
        return len(self.synthetic)

    def block(self, start: int, stop: int) -> dict[str, Any]:
        """Return the rows of samples ``start:stop`` as columns (see :meth:`take`)."""
        return self.take(np.arange(start, stop))

    def take(self, samples: np.ndarray) -> dict[str, Any]:
        """Return the rows of the given samples as columns (``MATCH_COLUMNS``).

        Rows come sample by sample in the order given, each sample's neighbours
        by rank, then its verdict's pair when that is not among them (with its
        true rank among all training samples). Numeric columns are arrays,
        text columns :class:`~trainleak.report.table.Coded` (distinct values
        and a code per row).
        """
        s = self.scored
        samples = np.asarray(samples, np.int64)
        idx = s.neighbours.idx[samples]
        n, k = idx.shape
        pos = np.repeat(np.arange(n), k)
        rank = np.tile(np.arange(1, k + 1), n)
        j = idx.reshape(-1).astype(np.int64)
        sim = s.neighbours.sims[samples].reshape(-1).astype(np.float64)
        best = s.best[samples].astype(np.int64)
        extra = np.flatnonzero(~(idx == best[:, None]).any(axis=1))
        if len(extra):
            pos = np.concatenate([pos, extra])
            rank = np.concatenate([rank, self._true_ranks(samples[extra])])
            j = np.concatenate([j, best[extra]])
            sim = np.concatenate([sim, s.best_sim[samples[extra]].astype(np.float64)])
            order = np.argsort(pos, kind="stable")
            pos, rank, j, sim = pos[order], rank[order], j[order], sim[order]
        keep = j >= 0
        pos, rank, j, sim = pos[keep], rank[keep], j[keep], sim[keep]
        sample = samples[pos]
        rows, at = np.unique(j, return_inverse=True)
        train_ids, labels, synth_ids = self.train.ids, self.train.labels, self.synthetic.ids
        return {
            "synthetic": Coded([synth_ids[i] for i in samples.tolist()], pos),
            "train": Coded([train_ids[t] for t in rows.tolist()], at.reshape(-1)),
            "train_identity": Coded([labels[t] for t in rows.tolist()], at.reshape(-1)),
            "rank": rank.astype(np.int32),
            "similarity": sim,
            "score": s.score[sample].astype(np.float64),
            "flagged": self.flagged[sample] & (j == s.best[sample]),
        }

    def blocks(self, samples: int = BLOCK_SAMPLES) -> Iterator[dict[str, Any]]:
        """Yield :meth:`block` over all samples, ``samples`` at a time."""
        for start in range(0, len(self), samples):
            yield self.block(start, min(start + samples, len(self)))

    def rows(self, samples: Iterable[int]) -> list[dict[str, Any]]:
        """Return the rows of the given samples (in that order) as ``report.json`` dicts."""
        cols = self.take(np.fromiter(samples, np.int64))
        names = list(cols)
        lists = [cols[c].tolist() for c in names]
        return [dict(zip(names, values, strict=True)) for values in zip(*lists, strict=True)]

    def _true_ranks(self, rows: np.ndarray) -> np.ndarray:
        ranks = np.empty(len(rows), np.int64)
        for a in range(0, len(rows), _RANK_CHUNK):
            chunk = rows[a : a + _RANK_CHUNK]
            sims = self.train.vectors @ self.synthetic.vectors[chunk].T
            above = sims > self.scored.best_sim[chunk]
            # the pair itself never counts, whatever float32 rounding says
            above[self.scored.best[chunk], np.arange(len(chunk))] = False
            ranks[a : a + len(chunk)] = above.sum(axis=0) + 1
        return ranks

    def flagged_ids(self) -> list[str]:
        """Return the ids of the flagged samples, sorted."""
        return sorted(self.synthetic.ids[i] for i in np.flatnonzero(self.flagged))


def listed_samples(
    score: np.ndarray, flagged: np.ndarray, cap: int, also: Iterable[int] = ()
) -> np.ndarray:
    """Pick the samples ``report.json`` lists: flagged first, then by score, at most ``cap``.

    Args:
        score: ``(n,)`` leak scores.
        flagged: ``(n,)`` bool.
        cap: how many samples at most (``also`` comes on top).
        also: samples listed whatever their rank (those a reviewer decided).

    Returns:
        Sample indices in ascending order (the sets' own order).

    Example:
        >>> listed_samples(np.array([0.1, 0.9, 0.5, 0.2]), np.array([1, 0, 0, 0], bool), 2)
        array([0, 1])

    """
    order = np.lexsort((-np.nan_to_num(score, nan=-np.inf), ~flagged))[: max(cap, 0)]
    chosen = set(order.tolist()) | {int(i) for i in also}
    return np.array(sorted(chosen), np.int64)
