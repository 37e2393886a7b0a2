"""Leak scores of a query set against a training set: one type for ``audit`` and the gate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Neighbours:
    """Top-k training neighbours of queries: ``(n, k)`` similarities and indices (``-1``: none)."""

    sims: np.ndarray
    idx: np.ndarray


@dataclass(frozen=True)
class Scores:
    """Per query: the score compared with the threshold and the training row it points at.

    Attributes:
        score: ``(n,)`` the leak score (the verdict compares it with the threshold).
        best: ``(n,)`` int64 training row the score points at (a global row of
            an index; ``-1`` when the search found none).
        best_sim: ``(n,)`` similarity of the query to that row.
        nn_sim: ``(n,)`` similarity to the nearest training row (equals
            ``best_sim`` for the ``nn`` score).
        neighbours: the top-k neighbours searched (``(n, 1)`` of the best
            row where the score searched no list).
        identity: identity label of the row each query points at, when known.

    """

    score: np.ndarray
    best: np.ndarray
    best_sim: np.ndarray
    nn_sim: np.ndarray
    neighbours: Neighbours
    identity: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.score)

    def label(self, i: int) -> str | None:
        """Return the identity label query ``i`` points at, or ``None``."""
        return None if self.identity is None else self.identity[i]
