"""Leak scores: how strongly each query resembles the training set.

Pure functions over arrays. ``nn`` is the nearest training sample's
similarity (Webster et al. 2021; Shahreza & Marcel 2024). ``identity`` uses
identity labels of the training set, which neither paper had: a query is
compared with each candidate training identity through both its nearest photo
of that identity and the identity's mean embedding, and the best identity
wins. The mean embedding averages out pose and expression, the nearest photo
keeps what a mean blurs. On ORL (train s1-s20 photos 1-5) it found 0.86 of the
same-identity leaks at 1% holdout FPR where ``nn`` found 0.82.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from trainleak.decide.scores import Neighbours
from trainleak.encoders.base import l2_normalise
from trainleak.engines.local import LocalEngine
from trainleak.neighbors import Backend
from trainleak.similarity import Similarity

if TYPE_CHECKING:
    from trainleak.engines import Engine

#: Candidate identities per query from the nearest photos and nearest means.
CANDIDATE_PHOTOS = 20
CANDIDATE_MEANS = 5

COSINE = Similarity("cosine")


def nearest(
    queries: np.ndarray,
    train: np.ndarray,
    k: int,
    similarity: Similarity = COSINE,
    backend: Backend = "auto",
    device: str = "cpu",
    engine: Engine | None = None,
) -> Neighbours:
    """Top-k training neighbours (at most the training set's size), searched on ``engine``."""
    k = max(1, min(k, len(train)))
    runner = engine if engine is not None else LocalEngine()
    sims, idx = runner.knn(similarity, queries, train, k, backend=backend, device=device)
    return Neighbours(sims, idx)


@dataclass(frozen=True)
class IdentityMatches:
    """Per query: the training identity it matches best, that match's score and nearest photo.

    One row per query sample (a synthetic image asking "whom do I look
    like?"), unlike :class:`trainleak.audits.membership_scores.IdentityScores`,
    which has one row per person asking "how close do generated samples come
    to me?".
    """

    score: np.ndarray
    identity: list[str]
    train_index: np.ndarray
    similarity: np.ndarray


def match_identities(
    queries: np.ndarray,
    train: np.ndarray,
    labels: list[str],
    weight: float = 0.5,
    backend: Backend = "auto",
    device: str = "cpu",
    engine: Engine | None = None,
) -> IdentityMatches:
    """Score queries against labelled training identities (cosine embeddings).

    For each candidate identity ``c`` the score is
    ``weight * max_photo_sim(c) + (1 - weight) * cos(query, mean(c))``, where the
    mean is of the identity's unit embeddings, renormalised. Candidates are the
    identities among the query's 20 nearest photos and 5 nearest means, so the
    cost does not grow with the number of identities squared.

    Args:
        queries: ``(n, d)`` unit rows.
        train: ``(m, d)`` unit rows.
        labels: ``m`` identity labels.
        weight: weight of the nearest photo, in [0, 1].
        backend: neighbour-search backend.
        device: torch device of the search.
        engine: where the searches run (``None``: here).

    Example:
        >>> t = np.eye(3, dtype=np.float32)
        >>> s = match_identities(t[:1], t, ["a", "a", "b"])
        >>> s.identity, s.train_index.tolist()
        (['a'], [0])

    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"identity weight must be in [0, 1], got {weight}")
    names = sorted(set(labels))
    label_idx = _index(labels, names)
    members = [np.flatnonzero(label_idx == j) for j in range(len(names))]
    means = l2_normalise(np.stack([train[m].mean(0) for m in members]))
    photo = nearest(queries, train, CANDIDATE_PHOTOS, COSINE, backend, device, engine)
    mean_nb = nearest(queries, means, CANDIDATE_MEANS, COSINE, backend, device, engine)
    n = len(queries)
    score = np.full(n, -np.inf, np.float64)
    best_id = np.zeros(n, np.int64)
    best_photo = np.zeros(n, np.int64)
    best_sim = np.zeros(n, np.float64)
    for i in range(n):
        cands = set(label_idx[photo.idx[i]].tolist()) | set(mean_nb.idx[i].tolist())
        q = queries[i].astype(np.float64)
        for c in sorted(cands):
            sims = train[members[c]].astype(np.float64) @ q
            j = int(np.argmax(sims))
            s = weight * sims[j] + (1 - weight) * float(means[c].astype(np.float64) @ q)
            if s > score[i]:
                score[i], best_id[i] = s, c
                best_photo[i], best_sim[i] = members[c][j], sims[j]
    return IdentityMatches(
        score.astype(np.float32),
        [names[c] for c in best_id],
        best_photo,
        best_sim.astype(np.float32),
    )


def _index(labels: list[str], names: list[str]) -> np.ndarray:
    lookup = {name: j for j, name in enumerate(names)}
    return np.array([lookup[lab] for lab in labels])
