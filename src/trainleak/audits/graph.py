"""Similarity graphs over one set: cliques of near-identical generations (``extract``).

Pure functions over index arrays. ``dedup``'s star clusters live in
:mod:`trainleak.audits.dedup`.
"""

from __future__ import annotations

import numpy as np


def greedy_cliques(adjacency: np.ndarray, min_size: int) -> list[list[int]]:
    """Disjoint cliques of at least ``min_size`` nodes, found greedily.

    Exact maximum-clique search is exponential in the worst case. Instead,
    repeatedly take the node with the most remaining neighbours, and grow a
    clique from it by adding, in order of decreasing degree, each neighbour
    that is adjacent to every member so far. Every set returned is a true
    clique; a graph may hold cliques this misses, never the reverse.
    Cost: O(n^2) for the degrees plus O(d^2) per clique grown from a node of
    degree d; about a second for 5,000 nodes (``bench/bench_cliques.py``).

    Args:
        adjacency: ``(n, n)`` boolean, symmetric; the diagonal is ignored.
        min_size: the smallest clique worth reporting (Carlini et al.: 10).

    Returns:
        Cliques as sorted node lists, largest first.

    Example:
        >>> a = np.ones((4, 4), bool); a[3, :] = a[:, 3] = False
        >>> greedy_cliques(a, 3)
        [[0, 1, 2]]

    """
    adj = np.array(adjacency, dtype=bool, copy=True)
    np.fill_diagonal(adj, False)
    alive = np.ones(len(adj), bool)
    # Degrees among live nodes, updated as nodes die: O(n) per removed node
    # instead of O(n^2) per step.
    degree = adj.sum(1).astype(np.int64)
    cliques: list[list[int]] = []

    def remove(nodes: list[int]) -> None:
        alive[nodes] = False
        degree[:] -= adj[:, nodes].sum(1)

    while alive.any():
        live_degree = np.where(alive, degree, -1)
        seed = int(np.argmax(live_degree))
        if live_degree[seed] + 1 < min_size:
            break
        members = [seed]
        candidates = np.flatnonzero(adj[seed] & alive)
        for c in candidates[np.argsort(-degree[candidates], kind="stable")]:
            if adj[c, members].all():
                members.append(int(c))
        if len(members) >= min_size:
            cliques.append(sorted(members))
            remove(members)
        else:
            remove([seed])
    return sorted(cliques, key=lambda c: (-len(c), c[0]))


def medoid(scores: np.ndarray) -> int:
    """Index of the member with the highest mean score to the others.

    Example:
        >>> medoid(np.array([[1, .9, .5], [.9, 1, .8], [.5, .8, 1]]))
        1

    """
    s = np.array(scores, dtype=np.float64, copy=True)
    np.fill_diagonal(s, 0.0)
    return int(np.argmax(s.sum(1)))
