"""Thresholds and error rates that count people, not photos.

Photos of one person are not independent: when one unseen person's photo
matches a training person, their other photos tend to match too, so a rate
counted over photos (and an interval that treats photos as independent)
promises less than it delivers. When the holdout's images carry identities,
a person is *flagged* if any of their photos scores above the threshold, the
threshold is chosen so that at most the target share of holdout people are
flagged, and the interval of the false-flag rate is exact over people
(Clopper-Pearson): ``k`` flagged of ``n`` people is a binomial draw whatever
the dependence between one person's photos.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainleak.stats import threshold_at_fpr


def person_maxima(scores: np.ndarray, groups: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Each person's highest score: a person is flagged when any of their photos is.

    Args:
        scores: ``(n,)`` one score per image.
        groups: ``n`` person labels, one per image.

    Returns:
        ``(people, maxima)``: people sorted by name, ``(n_people,)`` float64.

    Example:
        >>> person_maxima(np.array([0.1, 0.9, 0.3]), ["a", "b", "a"])
        (['a', 'b'], array([0.3, 0.9]))

    """
    s = np.asarray(scores, np.float64)
    if len(s) != len(groups):
        raise ValueError(f"{len(s)} scores but {len(groups)} person labels")
    people = sorted(set(groups))
    where = {p: i for i, p in enumerate(people)}
    out = np.full(len(people), -np.inf)
    np.maximum.at(out, np.array([where[g] for g in groups], np.int64), s)
    return people, out


def _binom_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``, summed in log space."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion; never too narrow.

    Example:
        >>> lo, hi = clopper_pearson(0, 30)
        >>> lo, round(hi, 4)
        (0.0, 0.1157)
        >>> [round(x, 4) for x in clopper_pearson(5, 10)]
        [0.1871, 0.8129]

    """
    if n == 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    tail = (1 - confidence) / 2

    def solve(f: Any) -> float:
        # f is monotone in p: bisect to far below any rate a report prints.
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) else (lo, mid)
        return (lo + hi) / 2

    upper = 1.0 if successes == n else solve(lambda p: _binom_cdf(successes, n, p) > tail)
    lower = 0.0 if successes == 0 else solve(lambda p: 1 - _binom_cdf(successes - 1, n, p) < tail)
    return (lower, upper)


@dataclass(frozen=True)
class PeopleThreshold:
    """A threshold chosen over people, with its rate and interval counted over people."""

    value: float
    achieved_fpr: float
    resolvable_fpr: float
    interval: tuple[float, float]
    note: str
    counts: dict[str, int]


def threshold_over_people(
    null_scores: np.ndarray, groups: Sequence[str], fpr: float
) -> PeopleThreshold:
    """Choose the threshold so that at most ``fpr`` of the holdout *people* are flagged.

    A person's score is the highest of their photos' scores; the threshold is
    :func:`~trainleak.stats.threshold_at_fpr` over these per-person scores,
    and the interval is :func:`clopper_pearson` over people. ``counts`` holds
    the people and photo counts, and how many of each exceed the threshold.

    Args:
        null_scores: ``(n,)`` finite scores of holdout images (known not to leak).
        groups: ``n`` person labels.
        fpr: target share of people flagged.

    Example:
        >>> s = np.array([0.9, 0.8, 0.2, 0.1, 0.3, 0.35])
        >>> t = threshold_over_people(s, ["a", "a", "b", "b", "c", "c"], 0.34)
        >>> t.value, t.achieved_fpr, t.counts["people_above"], t.counts["images_above"]
        (0.35, 0.3333333333333333, 1, 2)

    """
    scores = np.asarray(null_scores, np.float64)
    people, maxima = person_maxima(scores, groups)
    t = threshold_at_fpr(maxima, fpr)
    n = len(people)
    above = int(np.count_nonzero(maxima > t.value))
    photos_above = int(np.count_nonzero(scores > t.value))
    lo, hi = clopper_pearson(above, n)
    note = (
        f"{above} of {n} holdout people have a photo above the threshold ({photos_above} of "
        f"{len(scores)} photos); a person counts once however many photos match, and the "
        f"interval (exact, Clopper-Pearson) counts people: the false-flag rate over unseen "
        f"people is below {hi:.3g} with 95% confidence"
    )
    if fpr < 1 / n:
        note += f"; {n} people resolve rates of 1/{n} or more, for {fpr:g} use {math.ceil(1 / fpr)}"
    counts = {
        "n_people": n,
        "people_above": above,
        "n_images": len(scores),
        "images_above": photos_above,
    }
    return PeopleThreshold(t.value, float(above / n), 1.0 / n, (lo, hi), note, counts)


#: Appended to an image-counted holdout calibration's note.
INDEPENDENT_IMAGES = (
    "; the interval counts images and assumes they are independent, which photos of one "
    "person are not: put each holdout person's photos in their own sub-folder (or give an "
    "'identity' column) to count people"
)


__all__ = [
    "INDEPENDENT_IMAGES",
    "PeopleThreshold",
    "clopper_pearson",
    "person_maxima",
    "threshold_over_people",
]
