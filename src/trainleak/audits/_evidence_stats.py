"""The test behind ``evidence``, on arrays: one owner's matches against reference owners'.

An *owner* is a person (their photos of themself) or an artist (their
works). For each owner the statistic summarises how closely the searched
images (a synthetic dataset, a generator's samples) match the owner's images:
``max`` is the best match score of any searched image to any of the owner's
images, ``count`` the number of searched images matching at or above a
threshold.

The test is a rank test over owners. Reference owners are people (or
artists) whose images are of the same kind and were never trained on. Under
the null hypothesis (the owner's data was not used either) the owner is one
more reference owner: the ``R + 1`` statistics are exchangeable, so the
owner's rank among them is uniform and

    p = (1 + #{reference owners with statistic >= the owner's}) / (R + 1)

is a valid p-value (``P(p <= a) <= a`` for every ``a``). Ties count against
the owner, so the test is conservative. The smallest p a reference of ``R``
owners can give is ``1 / (R + 1)``: with fewer than ``1 / alpha - 1``
reference owners no outcome reaches ``alpha``, and the verdict says so.

What exchangeability asks of the data: reference owners are drawn like the
owner (same kind of images, similar number of images each, same capture
conditions) and none of them was trained on. An owner with many more images
than the reference owners has more chances at a high ``max``; the packet
records each owner's image count so a reader can check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from trainleak.similarity import Similarity

#: The verdicts, as keys of the packet; the page words them (see :data:`VERDICT_WORDS`).
VerdictKey = Literal["used", "not_found", "cannot_tell"]

#: How each verdict reads, with ``{noun}`` = photos / works / images.
VERDICT_WORDS: dict[str, str] = {
    "used": "strong evidence your {noun} were used",
    "not_found": "no evidence found",
    "cannot_tell": "cannot tell: reference too small",
}


@dataclass
class OwnerMatches:
    """How the searched images match one owner.

    Attributes:
        best: the best match score of any searched image (the ``max`` statistic).
        count: searched images whose best match is at or above the threshold.
        n_images: the owner's embedded images.
        score: ``(n_searched,)`` each searched image's best score against the owner.
        photo: ``(n_searched,)`` the owner's row that gives that score.

    """

    best: float
    count: int
    n_images: int
    score: np.ndarray
    photo: np.ndarray

    def statistic(self, which: Literal["max", "count"]) -> float:
        """Return the ``max`` or ``count`` statistic."""
        return self.best if which == "max" else float(self.count)


#: Nearest searched images kept per owner image. The best match is exact
#: whatever the value; ``count`` counts matches among these (a setting where
#: one owner image could match more searched images than this).
NEIGHBOURS = 50


def owner_matches(
    owner: np.ndarray,
    searched: np.ndarray,
    similarity: Similarity,
    threshold: float,
    k: int = NEIGHBOURS,
) -> OwnerMatches:
    """Score the searched images nearest to each of one owner's images.

    The owner's images are the queries and the searched set the database, so
    a rule that indexes its database (the copy encoder's descriptor index)
    builds that index once for every owner when given the same array.

    Args:
        owner: ``(k_i, dim)`` rows of the owner's images.
        searched: ``(n, dim)`` rows of the searched images.
        similarity: the encoder's comparison rule.
        threshold: a match is a score at or above it.
        k: nearest searched images per owner image (see :data:`NEIGHBOURS`).

    Returns:
        :class:`OwnerMatches`; a searched image near none of the owner's
        images has score ``-inf`` and photo ``-1``.

    Example:
        >>> from trainleak.similarity import Similarity
        >>> e = np.eye(3, dtype=np.float32)
        >>> m = owner_matches(e[:1], e, Similarity("cosine"), 0.5)
        >>> m.best, m.count, m.score.tolist()
        (1.0, 1, [1.0, 0.0, 0.0])

    """
    if len(owner) == 0 or len(searched) == 0:
        raise ValueError("owner_matches needs at least one owner image and one searched image")
    scores, idx = similarity.knn(owner, searched, k=min(k, len(searched)))
    score = np.full(len(searched), -np.inf)
    photo = np.full(len(searched), -1, np.int64)
    for row in range(len(owner)):
        cols = idx[row] >= 0
        j, s = idx[row][cols], scores[row][cols].astype(np.float64)
        better = s > score[j]
        score[j[better]] = s[better]
        photo[j[better]] = row
    return OwnerMatches(
        best=float(score.max()),
        count=int(np.count_nonzero(score >= threshold)),
        n_images=len(owner),
        score=score,
        photo=photo,
    )


def rank_p_value(statistic: float, reference: np.ndarray) -> float:
    """``(1 + #{reference >= statistic}) / (R + 1)``: the owner's rank among the reference.

    Example:
        >>> rank_p_value(0.9, np.array([0.5, 0.6, 0.9]))
        0.5
        >>> rank_p_value(0.99, np.array([0.5, 0.6, 0.9]))
        0.25
        >>> rank_p_value(0.5, np.array([]))
        1.0

    """
    ref = np.asarray(reference, np.float64)
    return float((1 + np.count_nonzero(ref >= statistic)) / (len(ref) + 1))


def smallest_p(n_reference: int) -> float:
    """Return the smallest p-value a reference of ``n_reference`` owners can give: ``1 / (R + 1)``.

    Example:
        >>> smallest_p(24)
        0.04

    """
    return 1.0 / (n_reference + 1)


def reference_needed(alpha: float) -> int:
    """Return the fewest reference owners for which ``1 / (R + 1) <= alpha``.

    Example:
        >>> reference_needed(0.05), reference_needed(0.01)
        (19, 99)

    """
    # Rounded before the ceiling so that 1 / 0.05 - 1 = 19.000000000000004 gives 19.
    return max(0, int(np.ceil(round(1.0 / alpha - 1.0, 9))))


def decide(p_value: float, n_reference: int, alpha: float) -> VerdictKey:
    """Return the verdict: ``cannot_tell`` when no p-value could reach ``alpha``.

    Example:
        >>> decide(0.04, 24, 0.05), decide(0.5, 24, 0.05), decide(0.1, 9, 0.05)
        ('used', 'not_found', 'cannot_tell')

    """
    if smallest_p(n_reference) > alpha:
        return "cannot_tell"
    return "used" if p_value <= alpha else "not_found"


def verdict_text(key: str, summary: dict[str, Any], noun: str) -> str:
    """Return the verdict as a sentence a non-expert can read, with the numbers behind it.

    Example:
        >>> s = {"p_value": 0.04, "alpha": 0.05, "n_reference": 24, "smallest_p": 0.04,
        ...      "reference_needed": 19, "n_near_copies": 1}
        >>> verdict_text("used", s, "photos")  # doctest: +NORMALIZE_WHITESPACE
        'Strong evidence your photos were used: p = 0.04 (alpha 0.05; 24 reference owners,
        the smallest p they allow is 0.04). 1 searched image is a near-copy of your photos.'

    """
    p, alpha, n_ref = summary["p_value"], summary["alpha"], summary["n_reference"]
    head = VERDICT_WORDS[key].format(noun=noun)
    head = head[0].upper() + head[1:]
    owners = f"{n_ref} reference owner{'' if n_ref == 1 else 's'}"
    if key == "cannot_tell":
        text = (
            f"{head}: {owners} allow no p below {summary['smallest_p']:.3g}; at least "
            f"{summary['reference_needed']} are needed to reach alpha {alpha:g} "
            f"(this run's p = {p:.3g})."
        )
    elif key == "used":
        text = (
            f"{head}: p = {p:.3g} (alpha {alpha:g}; {owners}, the smallest p they allow is "
            f"{summary['smallest_p']:.3g})."
        )
    else:
        text = (
            f"{head}: p = {p:.3g} with {owners} (alpha {alpha:g}). This does not show that "
            f"your {noun} were not used, only that they match no better than strangers' do."
        )
    near = summary.get("n_near_copies", 0)
    if near:
        text += (
            f" {near} searched image{' is a near-copy' if near == 1 else 's are near-copies'}"
            f" of your {noun}."
        )
    return text


__all__ = [
    "VERDICT_WORDS",
    "NEIGHBOURS",
    "OwnerMatches",
    "VerdictKey",
    "decide",
    "owner_matches",
    "rank_p_value",
    "reference_needed",
    "smallest_p",
    "verdict_text",
]
