"""The fail-closed rule: a score that cannot be trusted never releases.

A verdict compares a leak score with the threshold. When the score is not a
finite number (a damaged vector: one NaN in a training row makes its
similarities NaN), or the search found no training row although the index has
live rows, or the row a score points at cannot be read, nothing was compared:
such an input is blocked with the reason :data:`DAMAGED`, never released. The
audit applies the same rule, so a damaged score is flagged, not passed.
"""

from __future__ import annotations

import numpy as np

#: The reason (start) of a verdict the gate could not score.
DAMAGED = "index damaged"


def undecidable(score: np.ndarray, row: np.ndarray | None = None) -> np.ndarray:
    """Return ``(n,)`` bool: scores that decide nothing (non-finite, or no row found).

    Example:
        >>> undecidable(np.array([0.5, np.nan, 0.9]), np.array([3, 4, -1])).tolist()
        [False, True, True]

    """
    bad = ~np.isfinite(np.asarray(score, np.float64))
    if row is not None:
        bad |= np.asarray(row) < 0
    return bad


def flags(score: np.ndarray, threshold: float, row: np.ndarray | None = None) -> np.ndarray:
    """Return ``(n,)`` bool: what the threshold flags, plus every undecidable score.

    A score strictly above the threshold is flagged; so is a score
    :func:`undecidable` finds (fail closed).

    Example:
        >>> flags(np.array([0.5, 0.95, np.nan]), 0.9).tolist()
        [False, True, True]

    """
    s = np.asarray(score, np.float64)
    with np.errstate(invalid="ignore"):
        return (s > threshold) | undecidable(s, row)


def damaged_reason(what: str) -> str:
    """Return the reason of a verdict blocked because ``what`` went wrong.

    Example:
        >>> damaged_reason("the score is not a number").startswith("index damaged: the score")
        True

    """
    return (
        f"{DAMAGED}: {what}; blocked (fail closed): run 'trainleak index info IDX --verify' "
        "and restore or rebuild the index"
    )
