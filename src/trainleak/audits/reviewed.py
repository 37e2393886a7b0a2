"""People's decisions in an ``audit``: what a reviewer marked overrides the threshold, per pair.

``trainleak review`` keeps a decision per pair of images, keyed by the two
files' content hashes and the encoder (:mod:`trainleak.decide.decisions`).
``audit --decisions FILE`` looks up every listed pair of each synthetic
sample and applies the gate's rule (:func:`trainleak.decide.reviewed.apply_decisions`):
a pair marked ``leak`` flags the sample even below the threshold (and
becomes the pair the report names); a flagged sample whose pair is marked
``not a leak`` is released and reported as ``reviewed: not a leak`` with who
and when. ``unsure`` changes nothing but is counted. The rows of a decided pair
carry ``reviewed``; ``summary.review`` counts reviewed and unreviewed
candidates (samples the threshold or a reviewer flags).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from trainleak.decide.decisions import Decision, Decisions, load_decisions
from trainleak.decide.failclosed import undecidable
from trainleak.decide.reviewed import apply_decisions
from trainleak.decide.scores import Scores
from trainleak.embedding import EmbeddingSet

log = logging.getLogger(__name__)


@dataclass
class Reviews:
    """The decisions found for an audit's pairs, and what they changed.

    Attributes:
        source: the decisions file.
        pairs: ``(synthetic row, training row) -> decision`` for every listed
            pair someone decided.
        by_threshold: which samples the threshold alone flags (set by :meth:`apply`).

    """

    source: str
    pairs: dict[tuple[int, int], Decision] = field(default_factory=dict)
    by_threshold: np.ndarray | None = None

    def apply(self, flagged: np.ndarray, synth: Scores) -> tuple[np.ndarray, Scores]:
        """Return the flags and scores after the decisions: ``leak`` flags, ``not a leak`` releases.

        Args:
            flagged: ``(n,)`` bool, the threshold's flags.
            synth: the synthetic samples' scores; a ``leak`` pair that is not
                the sample's best becomes its best (so the report names it).

        """
        self.by_threshold = flagged.copy()
        flagged = flagged.copy()
        best, best_sim = synth.best.copy(), synth.best_sim.copy()
        # A score that decides nothing points at no training row a reviewer cleared.
        unknown = undecidable(synth.score, synth.best)
        for i in sorted({i for i, _ in self.pairs}):
            decided = {j: d for (ii, j), d in self.pairs.items() if ii == i}
            target = None if unknown[i] else int(best[i])
            ruling = apply_decisions(bool(flagged[i]), target, decided)
            flagged[i] = ruling.flagged
            if ruling.target is not None and ruling.target != best[i]:
                j = ruling.target
                best[i], best_sim[i] = j, _similarity(synth, i, j, best_sim[i])
        return flagged, replace(synth, best=best, best_sim=best_sim)

    def annotate(
        self,
        report: dict[str, Any],
        train: EmbeddingSet,
        synth: EmbeddingSet,
        flagged: np.ndarray,
    ) -> None:
        """Mark the decided rows of ``report["matches"]`` and add ``summary["review"]``.

        Args:
            report: the audit's report (its ``matches`` may list only some samples).
            train: the training set.
            synth: the synthetic set.
            flagged: ``(n,)`` bool, every sample's flag after the decisions
                (counts are over all samples, not only those listed).

        """
        rows_of = {synth.ids[i]: i for i in range(len(synth))}
        train_of = {train.ids[j]: j for j in range(len(train))}
        for m in report["matches"]:
            d = self.pairs.get((rows_of[m["synthetic"]], train_of[m["train"]]))
            if d is not None:
                m["reviewed"] = d.summary()
        flagged = np.asarray(flagged, bool)
        by_threshold = self.by_threshold if self.by_threshold is not None else flagged
        decided = {i: d for (i, _), d in self.pairs.items() if d.decision != "unsure"}
        unsure = {i for (i, _), d in self.pairs.items() if d.decision == "unsure"}
        candidates = set(np.flatnonzero(by_threshold | flagged).tolist()) | set(decided)
        released = [
            {"synthetic": synth.ids[i], "train": train.ids[j], **d.summary()}
            for (i, j), d in sorted(self.pairs.items())
            if d.decision == "not a leak" and by_threshold[i] and not flagged[i]
        ]
        report["summary"]["review"] = {
            "decisions": self.source,
            "candidates": len(candidates),
            "reviewed": len(candidates & set(decided)),
            "unreviewed": len(candidates - set(decided)),
            "unsure": len(unsure - set(decided)),
            "released": released,
            "flagged_by_reviewer": sorted(
                synth.ids[i] for i in np.flatnonzero(flagged & ~by_threshold)
            ),
            "note": (
                "candidates = synthetic samples the threshold or a reviewer flags; reviewed = "
                "those with a 'leak' or 'not a leak' decision on a listed pair ('unsure' is "
                "counted apart); a 'not a leak' pair is released, a 'leak' pair flagged even "
                "below the threshold"
            ),
        }


def _similarity(synth: Scores, i: int, j: int, fallback: float) -> float:
    where = np.flatnonzero(synth.neighbours.idx[i] == j)
    return float(synth.neighbours.sims[i, where[0]]) if len(where) else float(fallback)


def find_reviews(
    decisions: Decisions | str | os.PathLike[str],
    train: EmbeddingSet,
    synth_set: EmbeddingSet,
    synth: Scores,
) -> Reviews:
    """Look up a decision for every listed pair (the top k and the best) of each sample.

    Args:
        decisions: what :func:`~trainleak.decide.decisions.load_decisions`
            returns, or the file to load it from.
        train: the training set (its content hashes and encoder key the lookup).
        synth_set: the synthetic set.
        synth: the synthetic samples' scores (which pairs are listed).

    Returns:
        The decided pairs; none when the sets carry no content hashes (vectors
        given without files), with a warning.

    """
    if not isinstance(decisions, Decisions):
        decisions = load_decisions(decisions)
    reviews = Reviews(decisions.source)
    if not train.digests or not synth_set.digests:
        log.warning("the sets were given without files: no content hashes to match decisions on")
        return reviews
    encoder = train.info.cache_key()
    for i, digest in enumerate(synth_set.digests):
        listed = {int(j) for j in synth.neighbours.idx[i] if j >= 0} | {int(synth.best[i])}
        for j in sorted(listed):
            d = decisions.decision_for(digest, train.digests[j], encoder)
            if d is not None:
                reviews.pairs[(i, j)] = d
    return reviews
