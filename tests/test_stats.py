"""Oracle tests for the statistics against slow, obviously correct references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from trainleak.stats import (
    auc_score,
    mann_whitney_z,
    meehan_ct,
    threshold_at_fpr,
    wilson_interval,
)


@pytest.mark.parametrize("n", [10, 99, 100, 1000])
@pytest.mark.parametrize("fpr", [0.001, 0.01, 0.05, 0.2])
def test_threshold_is_smallest_with_rate_at_most_fpr(n, fpr):
    rng = np.random.default_rng(n)
    null = np.round(rng.normal(size=n), 2)  # rounding makes ties
    t = threshold_at_fpr(null, fpr)
    assert np.mean(null > t.value) <= fpr or t.value == null.max()
    # brute force: no smaller candidate value also satisfies the rate
    smaller = [v for v in np.unique(null) if v < t.value and np.mean(null > v) <= fpr]
    assert not smaller
    if fpr * n < 1:
        assert t.value == null.max() and "can only resolve" in t.note


def test_threshold_rejects_bad_input():
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_at_fpr(np.ones(3), 1.5)
    with pytest.raises(ValueError, match="no embedded samples"):
        threshold_at_fpr(np.array([]), 0.1)


def test_wilson_matches_reference():
    for k, n in [(0, 10), (3, 10), (10, 10), (45, 150)]:
        lo, hi = wilson_interval(k, n)
        p, z = k / n, 1.959963984540054
        c = (p + z * z / (2 * n)) / (1 + z * z / n)
        h = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert lo == pytest.approx(max(0, c - h), abs=1e-9)
        assert hi == pytest.approx(min(1, c + h), abs=1e-9)


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(1)
    pos, neg = np.round(rng.normal(1, 1, 40), 1), np.round(rng.normal(0, 1, 30), 1)
    pairs = [(p > q) + 0.5 * (p == q) for p in pos for q in neg]
    assert auc_score(pos, neg) == pytest.approx(np.mean(pairs))


def test_mann_whitney_z_matches_scipy():
    rng = np.random.default_rng(2)
    x, y = np.round(rng.normal(0.3, 1, 50), 1), np.round(rng.normal(0, 1, 70), 1)
    res = sps.mannwhitneyu(x, y, alternative="two-sided", use_continuity=False, method="asymptotic")
    z_ref = sps.norm.isf(res.pvalue / 2) * np.sign(res.statistic - len(x) * len(y) / 2)
    assert mann_whitney_z(x, y) == pytest.approx(z_ref, rel=1e-6)


def test_meehan_ct_detects_copying_and_not_fresh_samples():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(300, 8))
    holdout = rng.normal(size=(300, 8))
    fresh = rng.normal(size=(300, 8))
    copies = train[rng.integers(0, 300, 300)] + rng.normal(scale=0.05, size=(300, 8))

    def nn_dist(q):
        return np.sqrt(((q[:, None] - train[None]) ** 2).sum(-1)).min(1)

    ct_copy, used = meehan_ct(train, holdout, nn_dist(holdout), copies, nn_dist(copies))
    ct_fresh, _ = meehan_ct(train, holdout, nn_dist(holdout), fresh, nn_dist(fresh))
    assert used >= 3
    assert ct_copy < -5
    assert abs(ct_fresh) < 3
