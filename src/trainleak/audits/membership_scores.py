"""The identity membership attack on arrays: scores, p-values and their evaluation.

Pure functions and an estimator over embeddings, below both the audit
(:mod:`trainleak.audits.membership`, which embeds and generates) and its
report (:mod:`trainleak.audits.membership_report`), which both use them.

The identity score (our choice; Webster et al. 2021 inspect nearest
neighbours): for each generated sample, its similarity to the person is the
best over the person's photos; the ``max`` score is the highest of these, the
``topm`` score the mean of the ``top_m`` highest. ``max`` is the headline by
default, chosen from a principle: a person the generator memorised may appear
in one sample among many, and must be caught as well as one who appears often;
``topm`` averages that one sample with strangers' and misses them (issue 24:
p = 0.84 with ``topm`` for a person seen once, AUC 0.99 with ``max``; both
cases are tested in ``tests/audits/test_membership_default.py``). The price:
one lucky look-alike sample decides ``max`` for a stranger too, which the
reference people's p-values account for. Measured: on the tests' pixel-space
KDE of 10 ORL people (300 samples, pixel encoder) the AUCs were 0.987
(``max``) and 0.967 (``topm``, m = 5); the ORL DDPM experiment reports both.

:class:`IdentityScores` has one row per *person* ("how close do generated
samples come to me?"); :class:`trainleak.audits.scoring.IdentityMatches`, used
by ``audit``, has one row per *query sample* ("which training person do I look
like?"). They answer different questions and are computed differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trainleak.config import Headline
from trainleak.errors import AuditInputError
from trainleak.neighbors import knn
from trainleak.stats import (
    auc_score,
    bootstrap_interval,
    leave_one_out_p_values,
    roc_curve,
    tpr_at_fpr,
)

#: False-positive rates reported, as the ``tpr_at_fpr`` keys of ``report.json``.
FPRS = ("0.01", "0.001")


@dataclass
class IdentityScores:
    """Scores of identities against generated samples: one row per person, in ``names`` order."""

    names: list[str]
    max: np.ndarray  # (n_identities,)
    topm: np.ndarray  # (n_identities,)
    nearest: np.ndarray  # (n_identities, m) generated-row index, -1 past the end
    nearest_sim: np.ndarray  # (n_identities, m)

    def headline(self, which: Headline) -> np.ndarray:
        """Return the ``max`` or ``topm`` scores."""
        return self.max if which == "max" else self.topm


def identity_scores(
    photos: dict[str, np.ndarray], samples: np.ndarray, top_m: int = 5
) -> IdentityScores:
    """Score each identity by its photos' similarity to the nearest generated samples.

    A sample's similarity to a person is its best cosine similarity over the
    person's photos; ``max`` is the highest over samples, ``topm`` the mean of
    the ``top_m`` highest (fewer when there are fewer samples).

    Args:
        photos: identity -> ``(k_i, dim)`` unit rows of that person's photos.
        samples: ``(n, dim)`` unit rows of the generated samples.
        top_m: how many nearest samples ``topm`` averages.

    Returns:
        :class:`IdentityScores`; ``nearest`` holds the ``top_m`` closest samples.

    Example:
        >>> g = np.eye(3, dtype=np.float32)
        >>> s = identity_scores({"a": g[:1], "b": (g[1:2] + g[2:3]) / 2**0.5}, g, top_m=2)
        >>> s.max.round(3).tolist(), s.topm.round(3).tolist()
        ([1.0, 0.707], [0.5, 0.707])

    """
    if top_m < 1:
        raise ValueError(f"top_m must be 1 or more, got {top_m}")
    names = list(photos)
    m = min(top_m, len(samples))
    if m == 0:
        raise AuditInputError("no generated sample could be embedded; nothing to compare with")
    stacked = np.concatenate([photos[n] for n in names]).astype(np.float32)
    _, idx = knn(stacked, samples, k=m)
    maxes, topms = np.zeros(len(names)), np.zeros(len(names))
    nearest = np.full((len(names), top_m), -1, np.int64)
    nearest_sim = np.full((len(names), top_m), np.nan, np.float32)
    start = 0
    for row, name in enumerate(names):
        k = len(photos[name])
        # The global top-m by best-photo similarity is inside the union of the
        # photos' top-m lists, so scoring that union exactly is enough.
        cand = np.unique(idx[start : start + k])
        cand = cand[cand >= 0]
        best = (photos[name] @ samples[cand].T).max(axis=0)
        order = np.argsort(-best, kind="stable")[:m]
        maxes[row] = best[order[0]]
        topms[row] = best[order].mean()
        nearest[row, :m] = cand[order]
        nearest_sim[row, :m] = best[order]
        start += k
    return IdentityScores(names, maxes, topms, nearest, nearest_sim)


class IdentityMembership:
    """Identity membership attack (Webster et al. 2021) as an estimator.

    Args:
        samples: ``(n, dim)`` unit embeddings of the generator's samples: the
            target, as a model is for other attacks.
        top_m: nearest samples averaged by the ``topm`` score.
        score: which score :meth:`score` returns.

    ``higher_is_better`` is True: a higher score means more likely a member.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
        >>> people = {f"p{i}": unit(rng.normal(size=(2, 8))) for i in range(6)}
        >>> samples = unit(people["p0"] + 0.1)  # the generator learned p0
        >>> attack = IdentityMembership(samples, top_m=1)
        >>> attack = attack.fit({k: v for k, v in people.items() if k != "p0"})
        >>> float(attack.p_values({"p0": people["p0"]})[0]) <= 1 / 6
        True

    """

    higher_is_better = True

    def __init__(self, samples: np.ndarray, *, top_m: int = 5, score: Headline = "max") -> None:
        self.samples = samples
        self.top_m = top_m
        self.which: Headline = score
        self.reference_: IdentityScores | None = None

    def fit(self, reference: dict[str, np.ndarray]) -> IdentityMembership:
        """Score reference identities (known non-members): the null distribution."""
        if not reference:
            raise AuditInputError("the reference has no usable identity to calibrate p-values on")
        self.reference_ = identity_scores(reference, self.samples, self.top_m)
        return self

    def details(self, queries: dict[str, np.ndarray]) -> IdentityScores:
        """Return both scores and the nearest samples of each query identity."""
        return identity_scores(queries, self.samples, self.top_m)

    def score(self, queries: dict[str, np.ndarray]) -> np.ndarray:
        """Return the headline score of each query identity, ``(n_queries,)`` float64."""
        return self.details(queries).headline(self.which)

    def p_values(self, queries: dict[str, np.ndarray]) -> np.ndarray:
        """One-sided p-values against the reference scores.

        A query identity with the same name as a reference identity is left
        out of its own null distribution (leave-one-out), so the reference
        people can be queried too.
        """
        if self.reference_ is None:
            raise RuntimeError("call fit(reference) before p_values()")
        null = self.reference_.headline(self.which)
        return leave_one_out_p_values(
            self.score(queries), list(queries), null, self.reference_.names
        )


def evaluate(
    scores: np.ndarray, member: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """ROC AUC and TPR at 1% / 0.1% FPR with bootstrap 95% intervals.

    Args:
        scores: ``(n,)`` attack scores, higher = more likely a member.
        member: ``(n,)`` bool ground truth.
        n_boot: bootstrap replicates (members and non-members resampled apart).
        seed: seeds the bootstrap.

    Returns:
        The evaluation entries of a report's ``summary``.

    Raises:
        AuditInputError: when members or non-members are missing.

    Example:
        >>> out = evaluate(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 1, 0, 0], bool), 50)
        >>> out["auc"], out["tpr_at_fpr"]["0.01"]
        (1.0, 1.0)

    """
    member = np.asarray(member, bool)
    pos, neg = scores[member], scores[~member]
    if len(pos) == 0 or len(neg) == 0:
        raise AuditInputError(
            f"--members gives {len(pos)} members and {len(neg)} non-members among the queries; "
            "evaluation needs both: list member names one per line, and query non-members too"
        )
    fpr, tpr = roc_curve(pos, neg)
    rates, intervals = {}, {}
    for key in FPRS:
        rates[key] = tpr_at_fpr(pos, neg, float(key))
        intervals[key] = list(
            bootstrap_interval(pos, neg, _tpr_stat(float(key)), n_boot, seed=seed)
        )
    return {
        "auc": auc_score(pos, neg),
        "auc_ci95": list(bootstrap_interval(pos, neg, auc_score, n_boot, seed=seed)),
        "tpr_at_fpr": rates,
        "tpr_at_fpr_ci95": intervals,
        "n_members": int(len(pos)),
        "n_nonmembers": int(len(neg)),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        "fpr_note": (
            f"{len(neg)} non-members resolve false-positive rates down to 1/{len(neg)}; "
            "at finer rates the threshold sits above every non-member score"
        ),
    }


def _tpr_stat(rate: float) -> Any:
    return lambda p, n: tpr_at_fpr(p, n, rate)
