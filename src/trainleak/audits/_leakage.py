"""``audit``: which synthetic samples copy or re-identify training samples.

Shahreza & Marcel 2024 and Webster et al. 2021 embed both sets with a face
recognition model, search each synthetic sample's nearest training samples
exhaustively and inspect the closest pairs by eye. This module adds what a
reviewer needs to trust a verdict: a threshold calibrated on real holdout
images at a stated false-positive rate, an interval on the flagged rate, the
leaked identities, and two copying statistics (DCR and Meehan's C_T).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from trainleak.approx_search import use_search
from trainleak.audits.inputs import Input, embed_sources
from trainleak.audits.leak_scores import choose_threshold, resolve_score_mode, score_against
from trainleak.audits.leak_table import MatchTable, listed_samples
from trainleak.audits.reviewed import Reviews, find_reviews
from trainleak.config import AuditConfig, TableFormat
from trainleak.decide.calibration import Calibration
from trainleak.decide.contamination import drop_training_copies
from trainleak.decide.decisions import Decisions
from trainleak.decide.failclosed import flags
from trainleak.decide.scores import Scores
from trainleak.embedding import EmbeddingSet
from trainleak.errors import AuditInputError
from trainleak.neighbors import resolve_device
from trainleak.records import report_header
from trainleak.result import Result
from trainleak.stats import auc_score, histogram_counts, meehan_ct, summarise, wilson_interval

log = logging.getLogger(__name__)

__all__ = ["AuditResult", "audit", "audit_embeddings", "build_report"]


def audit(
    train: Input,
    synthetic: Input,
    holdout: Input | None = None,
    *,
    config: AuditConfig | None = None,
    argv: list[str] | None = None,
    decisions: Decisions | str | os.PathLike[str] | None = None,
) -> AuditResult:
    """Find synthetic samples that copy or re-identify training samples.

    The one implementation behind :func:`trainleak.audit` and ``trainleak
    audit``; call it through :func:`trainleak.audit`.

    Args:
        train: the training images (folder, glob or list file), or a set
            already embedded (an :class:`EmbeddingSet`).
        synthetic: the generated or synthetic images to audit.
        holdout: real images of the same kind never used in training; the
            threshold is calibrated on them when given.
        config: settings (defaults from :class:`~trainleak.config.AuditConfig`).
        argv: the command line, recorded in the report.
        decisions: reviewers' decisions (``trainleak review``'s
            ``decisions.sqlite``, its export, or loaded ones): a pair marked
            ``not a leak`` is released, one marked ``leak`` flagged even below
            the threshold (see :mod:`trainleak.audits.reviewed`).

    Returns:
        An :class:`AuditResult`; ``result.write(dir)`` writes the reports.

    Raises:
        AuditInputError: a set has no usable image, or the search device is
            not usable here.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("train", "synth"):
        ...     (d / name).mkdir()
        ...     Image.radial_gradient("L").save(d / name / "a.png")
        >>> cfg = AuditConfig(); cfg.embed.encoder = "pixel"; cfg.embed.workers = 1
        >>> cfg.embed.no_cache = True
        >>> audit(d / "train", d / "synth", config=cfg).report["summary"]["flagged"]
        1

    """
    config = config or AuditConfig()
    _device(config)  # a bad device name fails before anything is embedded
    sets = embed_sources(
        {"train": train, "synthetic": synthetic, "holdout": holdout}, config.embed, probe="train"
    )
    train_set, synth_set, hold_set = sets["train"], sets["synthetic"], sets["holdout"]
    assert train_set is not None and synth_set is not None
    if math.isnan(train_set.info.default_threshold) and hold_set is None and (
        config.threshold is None
    ):
        raise AuditInputError(
            "vectors given as arrays have no operating point: pass holdout= or threshold="
        )
    return audit_embeddings(
        train_set, synth_set, hold_set, config=config, argv=argv, decisions=decisions
    )


def _device(config: AuditConfig) -> str:
    try:
        return resolve_device(config.search_device, config.search_backend)
    except ValueError as err:
        raise AuditInputError(str(err)) from None


def audit_embeddings(
    train_set: EmbeddingSet,
    synth_set: EmbeddingSet,
    hold_set: EmbeddingSet | None = None,
    *,
    config: AuditConfig | None = None,
    argv: list[str] | None = None,
    decisions: Decisions | str | os.PathLike[str] | None = None,
) -> AuditResult:
    """Audit sets already embedded: the array-level core of :func:`audit`, same verdicts.

    Of ``config.embed`` only ``engine`` is used, for where the searches run
    (the sets carry their encoder's :class:`~trainleak.encoders.base.EncoderInfo`);
    the sets must share it.

    Raises:
        AuditInputError: an empty set, or sets made by different encoders.

    """
    config = config or AuditConfig()
    device = _device(config)
    for name, es in (("synthetic", synth_set), ("holdout", hold_set)):
        if es is not None and es.info.cache_key() != train_set.info.cache_key():
            raise AuditInputError(
                f"the {name} set was embedded with {es.info.name} and the training set with "
                f"{train_set.info.name}: embed every set with the same encoder and options"
            )
    for name, es in (("train", train_set), ("synthetic", synth_set), ("holdout", hold_set)):
        if es is not None and len(es) == 0:
            raise AuditInputError(f"the {name} set is empty: nothing to audit")
    contaminated: list[dict[str, str]] = []
    if hold_set is not None:
        hold_set, contaminated = drop_training_copies(hold_set, train_set)
    if config.search == "approx" and config.embed.engine != "local":
        raise AuditInputError(
            "--search approx runs on the local engine: leave out --engine ray, or use the exact "
            "search, which Ray shards"
        )
    mode = resolve_score_mode(config, train_set)
    # One search mode for samples and holdout, so the calibration searches as the samples do.
    with use_search(config.search) as searched:
        synth = score_against(synth_set, train_set, mode, config, device)
        hold = None
        if hold_set is not None:
            hold = score_against(hold_set, train_set, mode, config, device)
    threshold = choose_threshold(
        config, hold, train_set.info.default_threshold, train_set.info.threshold_note,
        hold_set.labels if hold_set is not None else None,
    )  # fmt: skip
    reviews = None if decisions is None else find_reviews(decisions, train_set, synth_set, synth)
    report, table = build_report(
        config, train_set, synth_set, hold_set, synth, hold, threshold, mode, argv, device, reviews,
    )  # fmt: skip
    report["contaminated"] = contaminated
    report["search"] = searched.summary()
    if contaminated:
        report.setdefault("warnings", []).append(
            f"{len(contaminated)} holdout file(s) are byte-identical to training files and were "
            "left out of the calibration (listed under 'contaminated')"
        )
    return AuditResult(report, train_set, synth_set, hold_set, table)


def build_report(
    config: AuditConfig,
    train: EmbeddingSet,
    synth_set: EmbeddingSet,
    hold_set: EmbeddingSet | None,
    synth: Scores,
    hold: Scores | None,
    threshold: Calibration,
    mode: str,
    argv: list[str] | None,
    device: str = "cpu",
    reviews: Reviews | None = None,
) -> tuple[dict[str, Any], MatchTable]:
    """Assemble ``report.json`` (the DESIGN.md contract plus extra keys) and the full table.

    ``matches`` lists the rows of at most ``config.report_samples`` samples
    (flagged first, then by score, plus those a reviewer decided); the
    :class:`MatchTable` holds every sample's rows, as arrays.
    """
    # The gate's rule: above the threshold, or a score that decides nothing (fail closed).
    flagged = flags(synth.score, threshold.value, synth.best)
    if reviews is not None:
        flagged, synth = reviews.apply(flagged, synth)
    n = len(flagged)
    n_flagged = int(flagged.sum())
    table = MatchTable(train, synth_set, synth, flagged)
    decided = {i for i, _ in reviews.pairs} if reviews is not None else set()
    listed = listed_samples(synth.score, flagged, config.report_samples, decided)
    matches = table.rows(listed)
    summary: dict[str, Any] = {
        "n_synthetic": n,
        "flagged": n_flagged,
        "flagged_rate": n_flagged / n,
        "flagged_rate_ci95": list(wilson_interval(n_flagged, n)),
        # Counted apart by what the encoder finds: the same picture, or the same person.
        "flagged_as": "same person" if train.info.kind == "identity" else "copy",
        "score": mode,
        "score_note": _SCORE_NOTES[mode].format(w=config.identity_weight),
        "leaked_identities": _leaked_identities(train, synth_set, synth, flagged),
        "identities_in_train": len(set(train.labels)) if train.has_labels else None,
        "dcr": None,
        "meehan_ct": None,
    }
    holdout_rows: list[dict[str, Any]] = []
    if hold is not None and hold_set is not None:
        summary["dcr"] = {
            "synthetic": summarise(synth.nn_sim),
            "holdout": summarise(hold.nn_sim),
            "auc_synthetic_closer": auc_score(synth.nn_sim, hold.nn_sim),
            "note": (
                "similarity of each sample to its nearest training sample (DCR as a "
                "similarity); auc_synthetic_closer = P(a synthetic sample is closer to "
                "training than a holdout sample): 0.5 = no closer than fresh real data"
            ),
        }
        summary["meehan_ct"] = _meehan(config, train, hold_set, hold, synth_set, synth)
        no_flags = np.zeros(len(hold_set), bool)
        holdout_rows = [
            {
                "holdout": hold_set.ids[i],
                "train": train.ids[int(hold.best[i])],
                "score": float(hold.score[i]),
                "similarity": float(hold.best_sim[i]),
            }
            for i in listed_samples(hold.score, no_flags, config.report_samples).tolist()
        ]
    series = {"synthetic": synth.score.astype(np.float64)}
    if hold is not None:
        series["holdout (not in training)"] = hold.score.astype(np.float64)
    sets = [es for es in (train, synth_set, hold_set) if es is not None]
    skipped = [s.to_dict() for es in sets for s in es.skipped]
    report = {
        **report_header("audit", argv, config.to_dict(), device),
        "encoder": train.info.to_dict(),
        "inputs": {
            "train": train.counts(),
            "synthetic": synth_set.counts(),
            "holdout": hold_set.counts() if hold_set is not None else None,
        },
        "threshold": threshold.to_dict(),
        "summary": summary,
        "score_histogram": histogram_counts(series, threshold.value),
        "holdout_scores": holdout_rows,
        "matches": matches,
        "listed": {
            "synthetic": len(listed),
            "of_synthetic": n,
            "holdout": len(holdout_rows),
            "of_holdout": len(hold_set) if hold_set is not None else 0,
            "cap": config.report_samples,
            "note": (
                "'matches' lists these synthetic samples' neighbour rows (flagged first, then by "
                "score, plus any a reviewer decided) and 'holdout_scores' the highest-scoring "
                "holdout samples; the table file ('table') holds every sample's top-k rows"
            ),
        },
        "skipped": skipped,
    }
    if reviews is not None:
        reviews.annotate(report, train, synth_set, flagged)
    return report, table


_SCORE_NOTES = {
    "nn": "leak score = similarity to the nearest training sample",
    "identity": (
        "leak score = best over training identities of {w} x (similarity to the identity's "
        "nearest photo) + (1 - {w}) x (similarity to the identity's mean embedding); "
        "trainleak's addition to nearest-photo matching"
    ),
}


def _leaked_identities(
    train: EmbeddingSet, synth_set: EmbeddingSet, synth: Scores, flagged: np.ndarray
) -> list[dict[str, Any]]:
    if not train.has_labels:
        return []
    per: dict[str, dict[str, Any]] = {}
    for i in np.flatnonzero(flagged):
        j = int(synth.best[i])
        name = str(train.labels[j])
        entry = per.setdefault(name, {"identity": name, "n_flagged": 0, "worst": None})
        entry["n_flagged"] += 1
        if entry["worst"] is None or synth.score[i] > entry["worst"]["score"]:
            entry["worst"] = {
                "synthetic": synth_set.ids[i],
                "train": train.ids[j],
                "score": float(synth.score[i]),
                "similarity": float(synth.best_sim[i]),
            }
    return sorted(per.values(), key=lambda e: (-e["n_flagged"], -e["worst"]["score"]))


def _meehan(
    config: AuditConfig,
    train: EmbeddingSet,
    hold_set: EmbeddingSet,
    hold: Scores,
    synth_set: EmbeddingSet,
    synth: Scores,
) -> dict[str, Any]:
    if train.info.metric == "local":
        # Packed keypoints are no vector space: k-means cells over them mean nothing.
        return {
            "value": None,
            "cells": 0,
            "note": "not computed: this encoder's rows are "
            "local features (compared by verified matches), not points to cluster",
        }
    value, used = meehan_ct(
        train.vectors,
        hold_set.vectors,
        1.0 - hold.nn_sim,
        synth_set.vectors,
        1.0 - synth.nn_sim,
        cells=config.ct_cells,
        seed=config.seed,
    )
    return {
        "value": None if math.isnan(value) else value,
        "cells": used,
        "note": (
            f"Meehan et al. 2020 C_T over {config.ct_cells} k-means cells of the training "
            "embeddings (cells with < 5 holdout or synthetic samples left out); well below 0 "
            "(< -3) = synthetic samples are closer to training than fresh data: copying"
        ),
    }


class AuditResult(Result):
    """What :func:`audit` found: the report dict, the embedded sets and the full table.

    ``report["matches"]`` lists the rows of the samples ``report.json`` lists
    (see ``AuditConfig.report_samples``); ``table`` holds every sample's rows
    as arrays (``table.blocks()`` yields them as columns) and :meth:`write`
    streams it to ``matches.parquet`` or ``matches.csv``.
    """

    def __init__(
        self,
        report: dict[str, Any],
        train: EmbeddingSet,
        synthetic: EmbeddingSet,
        holdout: EmbeddingSet | None,
        table: MatchTable,
    ) -> None:
        super().__init__(report)
        self.train = train
        self.synthetic = synthetic
        self.holdout = holdout
        self.table = table

    @property
    def verdict(self) -> str:
        """E.g. ``3 of 150 synthetic samples flagged (threshold 0.9562, holdout)``."""
        s, t = self.report["summary"], self.report["threshold"]
        return (
            f"{s['flagged']} of {s['n_synthetic']} synthetic samples flagged "
            f"(threshold {t['value']:.4f}, {t['method']})"
        )

    @property
    def flagged(self) -> list[str]:
        """Ids of the flagged synthetic samples."""
        return self.table.flagged_ids()

    def write(
        self,
        out: str | os.PathLike[str],
        redact: bool = False,
        *,
        table: TableFormat | None = None,
    ) -> dict[str, str]:
        """Write ``report.json``, ``report.html`` and the full table into ``out``.

        Args:
            out: output folder (created).
            redact: leave every image out of the HTML.
            table: the table's format (default: the audit's ``table`` setting):
                ``matches.parquet`` or ``matches.csv``, written a block at a time.

        Returns:
            The written paths by kind: ``json``, ``html``, ``table`` (and ``csv``
            when the table is CSV).

        """
        return self._write(out, redact, {"table": table})
