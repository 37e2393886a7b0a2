"""How two embedded images are compared: one object per encoder, used by every audit.

An encoder's rows are compared with its metric (``cosine`` or ``tiled_l2``),
over its tiles, and, for the mirror-blind copy encoders, as the better of the
image and its mirror image against the other row. Building this once from the
encoder's :class:`~trainleak.encoders.base.EncoderInfo` keeps the grid-to-tiles
rule and the mirror rule in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from trainleak.encoders.base import EncoderInfo
from trainleak.neighbors import Backend, MetricName, knn, pairwise_scores
from trainleak.registry import COMPARISON_RULES

#: Query rows mirrored at a time (the mirror search copies one block, not every query).
MIRROR_BLOCK = 16384


class SearchRunner(Protocol):
    """An engine that runs a :class:`Similarity`'s search, here or elsewhere.

    The engine (:mod:`trainleak.engines`, a layer above) is built once per run
    and calls :meth:`Similarity.knn` for its part of the work; layers below the
    engines that take one (``outofcore``) type it with this protocol, and this
    module never imports the engines.
    """

    name: str

    def knn(
        self,
        similarity: Similarity,
        queries: np.ndarray,
        database: np.ndarray,
        k: int,
        *,
        backend: Backend = "auto",
        exclude_self: bool = False,
        device: str = "cpu",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of ``similarity``; shapes as :func:`trainleak.neighbors.knn`."""
        ...


@dataclass(frozen=True)
class Similarity:
    """A comparison rule: ``metric``, ``tiles`` per row, optional ``mirror`` columns.

    ``mirror`` is the column order that turns a row into its mirror image's row;
    with it, ``score(a, b) = max(s(a, b), s(mirror(a), b))``, which is symmetric
    because mirroring is its own inverse.

    Example:
        >>> sim = Similarity("cosine", mirror=np.array([1, 0]))
        >>> a = np.array([[1, 0]], np.float32); b = np.array([[0, 1]], np.float32)
        >>> sim.pairwise(a, b).tolist(), Similarity("cosine").pairwise(a, b).tolist()
        ([[1.0]], [[0.0]])

    """

    metric: MetricName = "cosine"
    tiles: int = 1
    mirror: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: True for rules that re-score candidates themselves (local features
    #: verified pair by pair): a plain vector search cannot stand in for them.
    rescoring: ClassVar[bool] = False

    @classmethod
    def of(cls, info: EncoderInfo) -> Similarity:
        """Build the rule of one encoder: the tiles and mirror columns it declares.

        A metric registered in :data:`trainleak.registry.COMPARISON_RULES` gets
        its own rule (``local``: :class:`trainleak.local_search.LocalSimilarity`,
        descriptor votes, then geometric verification of the shortlist).
        """
        if info.metric in COMPARISON_RULES:
            rule = COMPARISON_RULES.get(info.metric)(info)
            if not isinstance(rule, Similarity):
                raise TypeError(f"the {info.metric!r} comparison rule is not a Similarity")
            return rule

        if info.metric == "local":  # a rule no vector search can stand in for
            raise ValueError("no comparison rule is registered for 'local': import trainleak")
        return cls(info.metric, info.tiles, info.mirror)

    def prepare(self, databases: list[np.ndarray]) -> None:
        """Build whatever the search of these arrays needs ahead of the first query.

        Nothing for a plain vector rule; a re-scoring rule (local features)
        builds and persists its descriptor index here.
        """

    def search_state(self, database: np.ndarray) -> Any:
        """Return what a search of ``database`` in another process needs besides its rows.

        ``None`` for a plain vector rule; a re-scoring rule returns its built
        index of ``database`` as a picklable value, so that an engine builds
        it once, not once per task (see :meth:`adopt_state`).
        """
        return None

    def adopt_state(self, database: np.ndarray, state: Any) -> None:
        """Use a :meth:`search_state` for ``database`` (a copy of the rows it was made for)."""

    def pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(n_a, n_b)`` float32 scores of two small sets, higher is more similar."""
        a = np.asarray(a, np.float32)
        scores = pairwise_scores(a, b, self.metric, self.tiles)
        if self.mirror is not None:
            np.maximum(
                scores, pairwise_scores(a[:, self.mirror], b, self.metric, self.tiles), out=scores
            )
        return scores

    def near_graph(self, vectors: np.ndarray, min_score: float, block: int = 1024) -> np.ndarray:
        """Boolean ``(n, n)`` graph of the pairs of ``vectors`` scoring above ``min_score``.

        Every pair is scored, ``block`` rows at a time: memory is the ``n^2``
        booleans plus one ``block x n`` float block. A re-scoring rule may
        verify only the pairs its own retrieval puts forward.
        """
        n = len(vectors)
        graph = np.zeros((n, n), bool)
        for r0 in range(0, n, block):
            scores = self.pairwise(vectors[r0 : r0 + block], vectors)
            graph[r0 : r0 + len(scores)] = scores > min_score
        return graph

    def knn(
        self,
        queries: np.ndarray,
        database: np.ndarray,
        k: int,
        *,
        backend: Backend = "auto",
        exclude_self: bool = False,
        device: str = "cpu",
        self_offset: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k under this rule; same shapes and padding as :func:`trainleak.neighbors.knn`.

        With a mirror the true top-k is inside the union of the two searches'
        top-k lists (a row outside both has k rows above it in either), so
        merging them, keeping each row's better score, is exact.

        ``self_offset`` is :func:`~trainleak.neighbors.knn`'s (query ``i`` is
        database row ``self_offset + i`` when leaving out its own row).

        The search runs here; an engine (:mod:`trainleak.engines`, e.g. sharded
        over a Ray cluster) calls this for its part of the work, with the same results.
        """

        def search(rows: np.ndarray, offset: int = self_offset) -> tuple[np.ndarray, np.ndarray]:
            return knn(
                rows,
                database,
                k,
                metric=self.metric,
                tiles=self.tiles,
                backend=backend,
                exclude_self=exclude_self,
                device=device,
                self_offset=offset,
            )

        s1, i1 = search(queries)
        if self.mirror is None:
            return s1, i1
        rows = np.asarray(queries, np.float32)
        # A block of mirror images at a time, not a second copy of every query.
        parts = [search(rows[b0 : b0 + MIRROR_BLOCK][:, self.mirror], self_offset + b0)
                 for b0 in range(0, len(rows), MIRROR_BLOCK)]  # fmt: skip
        s2 = np.concatenate([p[0] for p in parts]) if parts else s1[:0]
        i2 = np.concatenate([p[1] for p in parts]) if parts else i1[:0]
        return _merge_best(np.concatenate([s1, s2], 1), np.concatenate([i1, i2], 1), k)


def _merge_best(scores: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: each index once with its best score, top ``k`` by score then index."""
    out_s = np.full((len(scores), k), -np.inf, np.float32)
    out_i = np.full((len(scores), k), -1, np.int64)
    for r in range(len(scores)):
        order = np.lexsort((idx[r], -scores[r]))
        seen: set[int] = set()
        col = 0
        for j in order:
            i = int(idx[r, j])
            if i < 0 or i in seen:
                continue
            seen.add(i)
            out_s[r, col], out_i[r, col] = scores[r, j], i
            col += 1
            if col == k:
                break
    return out_s, out_i
