"""Statistics shared by the audits: thresholds, intervals, ranks, copying tests.

Every function takes plain arrays and returns plain numbers, so it can be
tested against a slow obvious reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Result keys for attack metrics, as the membership literature names them.
AUC = "auc"
TPR_AT_FPR = "tpr_at_fpr"


@dataclass(frozen=True)
class Threshold:
    """A decision threshold: a score strictly above ``value`` is flagged."""

    value: float
    achieved_fpr: float | None
    resolvable_fpr: float | None
    note: str


def threshold_at_fpr(null_scores: np.ndarray, fpr: float) -> Threshold:
    """Smallest threshold that at most ``fpr`` of the null scores exceed.

    The null scores are those of samples known not to leak (a holdout's
    nearest-training-neighbour scores). With ``n`` of them, rates below
    ``1 / n`` cannot be resolved: the threshold is then the largest null score
    (none exceed it) and the note says so.

    Example:
        >>> t = threshold_at_fpr(np.arange(100) / 100, 0.05)
        >>> t.value, t.achieved_fpr
        (0.94, 0.05)

    """
    if not 0 < fpr < 1:
        raise ValueError(f"--fpr must be between 0 and 1 (exclusive), got {fpr}")
    scores = np.sort(np.asarray(null_scores, dtype=np.float64))[::-1]
    n = len(scores)
    if n == 0:
        raise ValueError("the holdout has no embedded samples; cannot calibrate a threshold")
    allowed = int(math.floor(fpr * n + 1e-9))
    value = float(scores[min(allowed, n - 1)])
    achieved = float(np.mean(scores > value))
    resolvable = 1.0 / n
    if allowed == 0:
        note = (
            f"holdout of {n} can only resolve false-positive rates of 1/{n} = {resolvable:.3g} "
            f"or more; target {fpr:g} is finer, so the threshold is the holdout maximum "
            f"(0 of {n} exceed it; the true rate is below {3 / n:.3g} with 95% confidence). "
            f"For {fpr:g}, use at least {math.ceil(1 / fpr)} holdout samples."
        )
    else:
        note = f"{int(round(achieved * n))} of {n} holdout samples exceed the threshold"
    return Threshold(value, achieved, resolvable, note)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Example:
        >>> lo, hi = wilson_interval(5, 10)
        >>> round(lo, 3), round(hi, 3)
        (0.237, 0.763)

    """
    if n == 0:
        return (0.0, 1.0)
    z = _z_for(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _z_for(confidence: float) -> float:
    # Inverse normal CDF by bisection on erf: no scipy needed for one number.
    target = 1 - (1 - confidence) / 2
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def auc_score(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(positive > negative) + P(tie) / 2: the ROC AUC (Mann-Whitney).

    Example:
        >>> auc_score(np.array([3.0, 4.0]), np.array([1.0, 3.0]))
        0.875

    """
    pos = np.asarray(positives, np.float64)
    neg = np.asarray(negatives, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = _midranks(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _midranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mann_whitney_z(x: np.ndarray, y: np.ndarray) -> float:
    """Return the normal z of the Mann-Whitney U of ``x`` over ``y`` (tie-corrected).

    Positive when ``x`` tends to be larger than ``y``.

    Example:
        >>> round(mann_whitney_z(np.arange(10) + 5.0, np.arange(10.0)), 3)
        2.84

    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        return float("nan")
    both = np.concatenate([x, y])
    ranks = _midranks(both)
    u = ranks[:m].sum() - m * (m + 1) / 2
    _, tie_counts = np.unique(both, return_counts=True)
    total = m + n
    tie_term = float(((tie_counts**3) - tie_counts).sum()) / (total * (total - 1))
    var = m * n / 12 * ((total + 1) - tie_term)
    if var <= 0:
        return 0.0
    return float((u - m * n / 2) / math.sqrt(var))


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns the ``(k, dim)`` centres."""
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    k = min(k, len(x))
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        probs = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
        centres.append(x[rng.choice(len(x), p=probs)])
    c = np.array(centres)
    for _ in range(iters):
        assign = assign_cells(x, c)
        new = np.array([x[assign == j].mean(0) if np.any(assign == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c


def assign_cells(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean) for each row of ``x``."""
    d2 = (x**2).sum(1)[:, None] - 2 * x @ centres.T + (centres**2).sum(1)[None]
    return np.argmin(d2, axis=1)


def meehan_ct(
    train: np.ndarray,
    holdout: np.ndarray,
    holdout_dist: np.ndarray,
    synthetic: np.ndarray,
    synthetic_dist: np.ndarray,
    cells: int = 5,
    min_per_cell: int = 5,
    seed: int = 0,
) -> tuple[float, int]:
    """Meehan et al. 2020's C_T data-copying statistic.

    The training embeddings are cut into ``cells`` k-means cells. In each cell
    the distances to the nearest training sample of holdout and of synthetic
    samples are compared with a Mann-Whitney z (synthetic over holdout); C_T
    is the average of the cell z's weighted by the holdout's share of each
    cell. Strongly negative (Meehan et al. use < -3) means synthetic samples
    sit closer to training samples than fresh real data does: copying.
    Cells with fewer than ``min_per_cell`` holdout or synthetic samples are
    left out (the paper's threshold tau is not a fixed number; ours is this).

    Returns:
        ``(C_T, cells used)``; ``(nan, 0)`` when no cell is usable.

    """
    centres = kmeans(train, cells, seed=seed)
    h_cell = assign_cells(np.asarray(holdout, np.float64), centres)
    s_cell = assign_cells(np.asarray(synthetic, np.float64), centres)
    total, weight, used = 0.0, 0.0, 0
    for j in range(len(centres)):
        h = holdout_dist[h_cell == j]
        s = synthetic_dist[s_cell == j]
        if len(h) < min_per_cell or len(s) < min_per_cell:
            continue
        share = len(h) / len(holdout_dist)
        total += share * mann_whitney_z(s, h)
        weight += share
        used += 1
    if used == 0:
        return float("nan"), 0
    return total / weight, used


def summarise(values: np.ndarray) -> dict[str, float]:
    """Mean, median, 5th and 95th percentiles of a score array."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return {
            "n": 0,
            "mean": float("nan"),
            "median": float("nan"),
            "p05": float("nan"),
            "p95": float("nan"),
        }
    return {
        "n": int(len(v)),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p05": float(np.percentile(v, 5)),
        "p95": float(np.percentile(v, 95)),
    }


def roc_curve(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr)`` for "score above threshold = positive", from (0, 0) to (1, 1).

    One point per distinct score, so tied scores move both rates at once.

    Example:
        >>> fpr, tpr = roc_curve(np.array([3.0, 4.0]), np.array([1.0, 3.0]))
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0])

    """
    pos = np.asarray(positives, np.float64)
    neg = np.asarray(negatives, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("a ROC curve needs at least one positive and one negative score")
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
    # Count of scores >= each threshold, by binary search on the sorted arrays.
    tp = len(pos) - np.searchsorted(pos_sorted, thresholds, side="left")
    fp = len(neg) - np.searchsorted(neg_sorted, thresholds, side="left")
    fpr = np.concatenate([[0.0], fp / len(neg)])
    tpr = np.concatenate([[0.0], tp / len(pos)])
    return fpr, tpr


def tpr_at_fpr(positives: np.ndarray, negatives: np.ndarray, fpr: float) -> float:
    """Largest true-positive rate whose false-positive rate is at most ``fpr``.

    With ``n`` negatives, a rate below ``1 / n`` means no negative may pass:
    the threshold sits above the highest negative score, as in LiRA's
    low-FPR reporting.

    Example:
        >>> tpr_at_fpr(np.array([3.0, 4.0, 5.0]), np.array([1.0, 3.5]), 0.01)
        0.6666666666666666

    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be between 0 and 1 (exclusive), got {fpr}")
    rates_f, rates_t = roc_curve(positives, negatives)
    ok = rates_f <= fpr + 1e-12
    return float(rates_t[ok].max())


def bootstrap_interval(
    positives: np.ndarray,
    negatives: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a two-sample statistic (e.g. AUC).

    Positives and negatives are resampled separately (stratified), so every
    replicate keeps both classes at their observed sizes.

    Example:
        >>> lo, hi = bootstrap_interval(np.arange(5.0) + 2, np.arange(5.0), auc_score)
        >>> 0.5 < lo < hi <= 1.0
        True

    """
    pos = np.asarray(positives, np.float64)
    neg = np.asarray(negatives, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            statistic(
                pos[rng.integers(0, len(pos), len(pos))],
                neg[rng.integers(0, len(neg), len(neg))],
            )
            for _ in range(n_boot)
        ]
    )
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return (float(lo), float(hi))


def empirical_p_values(scores: np.ndarray, null_scores: np.ndarray) -> np.ndarray:
    """One-sided p-values of ``scores`` against null scores: ``(1 + #{null >= s}) / (1 + n)``.

    The ``+1`` counts the query itself among the null draws, so the p-value of
    a null score is uniform on ``{1/(n+1), ..., 1}`` and never 0.

    Example:
        >>> empirical_p_values(np.array([0.5, 9.0]), np.arange(4.0)).tolist()
        [0.8, 0.2]

    """
    null = np.sort(np.asarray(null_scores, np.float64))
    s = np.asarray(scores, np.float64)
    at_least = len(null) - np.searchsorted(null, s, side="left")
    return (1.0 + at_least) / (1.0 + len(null))


def leave_one_out_p_values(
    scores: np.ndarray,
    names: Sequence[str],
    null_scores: np.ndarray,
    null_names: Sequence[str],
) -> np.ndarray:
    """Empirical p-values, each leaving the query's own entries out of the null scores.

    A query that is also in the null set (the same name: a reference person
    or image queried too) would otherwise be compared with itself, which
    inflates its p-value; leaving it out keeps a null query's p-value uniform.

    Args:
        scores: ``(n,)`` query scores, higher = less null-like.
        names: ``n`` query names.
        null_scores: ``(m,)`` scores of the null set.
        null_names: ``m`` names of the null set's entries.

    Returns:
        ``(n,)`` float64 p-values, as :func:`empirical_p_values` gives them.

    Example:
        >>> leave_one_out_p_values(
        ...     np.array([3.0, 9.0]), ["a", "x"], np.array([3.0, 1.0, 2.0]), ["a", "b", "c"]
        ... ).tolist()
        [0.3333333333333333, 0.25]

    """
    null = np.asarray(null_scores, np.float64)
    null_names = list(null_names)
    out = np.empty(len(scores))
    for i, name in enumerate(names):
        keep = np.array([n != name for n in null_names], bool)
        out[i] = empirical_p_values(np.asarray(scores[i : i + 1]), null[keep])[0]
    return out


def histogram_counts(
    series: dict[str, np.ndarray], threshold: float | None, bins: int = 40
) -> dict[str, object]:
    """Bin every series on shared edges (spanning the values and the threshold).

    What :func:`svg_counts` draws, small enough for ``report.json`` whatever
    the number of values: ``{"edges": [bins + 1], "counts": {name: [bins]}}``
    (non-finite values are left out).

    Example:
        >>> h = histogram_counts({"a": np.array([0.0, 1.0, 1.0])}, None, bins=2)
        >>> h["counts"]["a"], len(h["edges"])
        ([1, 2], 3)

    """
    finite = {k: v[np.isfinite(v)] for k, v in series.items()}
    lows = [float(v.min()) for v in finite.values() if len(v)]
    highs = [float(v.max()) for v in finite.values() if len(v)]
    if threshold is not None and np.isfinite(threshold):
        lows.append(float(threshold))
        highs.append(float(threshold))
    if not lows:
        return {"edges": [], "counts": {}}
    lo, hi = min(lows), max(highs)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    pad = (hi - lo) * 0.03
    edges = np.linspace(lo - pad, hi + pad, bins + 1)
    counts = {k: np.histogram(v, edges)[0].tolist() for k, v in finite.items()}
    return {"edges": edges.tolist(), "counts": counts}
