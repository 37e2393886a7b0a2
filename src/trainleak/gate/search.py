"""Exact top-k over an index's shards, without its tombstoned rows.

Two searches give the same answers:

* :class:`ShardSearch` runs the project's exact search
  (:meth:`trainleak.similarity.Similarity.knn`, with the copy encoders' mirror
  rule and the tiled metric) on each memory-mapped shard and merges the
  shards' lists. Nothing is copied into memory beyond one block at a time.
* :class:`FaissSearch` holds the live rows in a faiss
  ``IndexIDMap2(IndexFlatIP)`` keyed by global row (cosine encoders without a
  mirror rule only). It copies the vectors into memory once, on first use.

Both re-score the pairs they pick one pair at a time in float64, exactly as
:func:`trainleak.neighbors.knn` does, and order ties by the lower row, so their
scores agree to the bit and with a search of the whole training set at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from trainleak._optional import require
from trainleak.errors import AuditInputError, MissingExtraError
from trainleak.neighbors import merge_topk
from trainleak.similarity import Similarity

if TYPE_CHECKING:
    from trainleak.config import CheckConfig

#: Rows added to faiss at a time (bounds the float32 copy of each block).
FAISS_ADD_ROWS = 65536


def choose_search(wanted: str, similarity: Similarity, live_bytes: int, config: CheckConfig) -> str:
    """Resolve ``auto``/``faiss``/``exact`` into the search to use: ``faiss`` or ``exact``.

    ``auto`` is faiss when it is installed, the rule is cosine without a
    mirror, and the live vectors fit ``config.faiss_max_bytes`` (faiss holds a
    copy in memory); otherwise the exact search over the memory-mapped shards.

    Raises:
        AuditInputError: ``faiss`` asked for an encoder it cannot search.
        MissingExtraError: ``faiss`` asked for and not installed.

    Example:
        >>> from trainleak.config import CheckConfig
        >>> choose_search("auto", Similarity("tiled_l2"), 10, CheckConfig())
        'exact'

    """
    eligible = (
        similarity.metric == "cosine" and similarity.mirror is None and not similarity.rescoring
    )
    if wanted == "exact":
        return "exact"
    if wanted == "faiss":
        if not eligible:
            raise AuditInputError(
                "faiss searches cosine encoders without a mirror rule only: use search 'exact'"
            )
        require("faiss", extra="faiss", needed_for="search 'faiss'")
        return "faiss"
    if not eligible or live_bytes > config.faiss_max_bytes:
        return "exact"
    try:
        require("faiss", extra="faiss", needed_for="search 'faiss'")
    except MissingExtraError:
        return "exact"
    return "faiss"


class ShardSearch:
    """The project's exact search over shards, tombstoned rows left out.

    Args:
        shards: ``(n_s, dim)`` float32 arrays (memory-maps), in row order.
        dead: sorted global rows that are tombstoned.
        similarity: the encoder's comparison rule.
        backend: neighbour-search backend (see :func:`trainleak.neighbors.knn`).

    Example:
        >>> sh = [np.eye(3, dtype=np.float32)[:2], np.eye(3, dtype=np.float32)[2:]]
        >>> s, i = ShardSearch(sh, np.array([0]), Similarity()).knn(np.eye(3, dtype=np.float32), 1)
        >>> i.ravel().tolist()
        [1, 1, 2]

    """

    def __init__(
        self,
        shards: list[np.ndarray],
        dead: np.ndarray,
        similarity: Similarity,
        backend: str = "auto",
    ) -> None:
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.dead = np.asarray(dead, np.int64)
        self.similarity = similarity
        self.backend = backend

    def knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` live rows of each query: ``(n, k)`` float32 scores and int64 global rows."""
        queries = np.ascontiguousarray(queries, np.float32)
        parts_s = [np.zeros((len(queries), 0), np.float32)]
        parts_i = [np.zeros((len(queries), 0), np.int64)]
        for shard, start in zip(self.shards, self.starts[:-1], strict=False):
            lo, hi = np.searchsorted(self.dead, [start, start + len(shard)])
            dead_here = self.dead[lo:hi]
            if len(dead_here) >= len(shard):
                continue
            kk = min(len(shard), k + len(dead_here))
            s, i = self.similarity.knn(queries, shard, kk, backend=self.backend)  # type: ignore[arg-type]
            g = np.where(i >= 0, i + start, -1)
            if len(dead_here):
                gone = np.isin(g, dead_here)
                s[gone], g[gone] = -np.inf, -1
            parts_s.append(s)
            parts_i.append(g)
        return merge_topk(np.concatenate(parts_s, 1), np.concatenate(parts_i, 1), k)


class FaissSearch:
    """faiss ``IndexIDMap2(IndexFlatIP)`` over the live rows, re-scored like the exact search.

    Args:
        shards: ``(n_s, dim)`` float32 arrays in row order.
        dead: global rows that are tombstoned (removed from the faiss index).

    Raises:
        MissingExtraError: faiss is not installed.

    """

    def __init__(self, shards: list[np.ndarray], dead: np.ndarray) -> None:
        faiss = require("faiss", extra="faiss", needed_for="the faiss index search")
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        dim = shards[0].shape[1]
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        for shard, start in zip(shards, self.starts[:-1], strict=False):
            for b0 in range(0, len(shard), FAISS_ADD_ROWS):
                block = np.ascontiguousarray(shard[b0 : b0 + FAISS_ADD_ROWS], np.float32)
                ids = np.arange(start + b0, start + b0 + len(block), dtype=np.int64)
                self.index.add_with_ids(block, ids)
        if len(dead):
            self.index.remove_ids(np.ascontiguousarray(dead, np.int64))

    def knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the top-``k`` live rows; the contract of :meth:`ShardSearch.knn`."""
        queries = np.ascontiguousarray(queries, np.float32)
        kk = min(k, int(self.index.ntotal))
        idx = np.full((len(queries), k), -1, np.int64)
        if kk > 0 and len(queries):
            idx[:, :kk] = self.index.search(queries, kk)[1]
        return merge_topk(self._rescore(queries, idx), idx, k)

    def _rescore(self, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
        # The same float64 expression as trainleak.neighbors._rescore, so both
        # searches return identical scores for the same pairs.
        out = np.full(idx.shape, -np.inf, np.float32)
        valid = idx >= 0
        if not valid.any():
            return out
        rows = np.zeros((*idx.shape, queries.shape[1]), np.float64)
        shard_of = np.searchsorted(self.starts, idx, side="right") - 1
        for s, shard in enumerate(self.shards):
            here = valid & (shard_of == s)
            if here.any():
                rows[here] = shard[idx[here] - self.starts[s]]
        vals = (rows * queries[:, None, :].astype(np.float64)).sum(-1)
        out[valid] = vals[valid]
        return out
