"""How ``audit`` scores a query set against the training set, and picks its threshold.

The set-level layer over :mod:`trainleak.audits.scoring` (which works on
arrays): which score an audit uses (``nn`` or ``identity``) and each query's
score against the training set, as :class:`~trainleak.decide.scores.Scores`;
the threshold rule is :func:`trainleak.decide.calibration.choose_calibration`,
shared with the release gate. :mod:`trainleak.audits._leakage` runs the audit
and builds its report from these.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from trainleak.audits.scoring import match_identities, nearest
from trainleak.config import AuditConfig
from trainleak.decide.calibration import Calibration, choose_calibration
from trainleak.decide.scores import Scores
from trainleak.embedding import EmbeddingSet
from trainleak.errors import AuditInputError
from trainleak.similarity import Similarity

log = logging.getLogger(__name__)


def score_against(
    queries: EmbeddingSet, train: EmbeddingSet, mode: str, config: AuditConfig, device: str = "cpu"
) -> Scores:
    """Score each query row against the training set (see :mod:`.scoring`) on ``device``.

    The searches run on the engine ``config.embed`` names (see :mod:`trainleak.engines`).
    """
    from trainleak.engines import engine_for

    backend = config.search_backend
    engine = engine_for(config.embed)
    sim = Similarity.of(train.info)
    nb = nearest(queries.vectors, train.vectors, config.k, sim, backend, device, engine)
    nn_sim = nb.sims[:, 0].astype(np.float32)
    if mode == "identity":
        ids = match_identities(
            queries.vectors,
            train.vectors,
            [str(lab) for lab in train.labels],
            config.identity_weight,
            backend,
            device,
            engine,
        )
        return Scores(ids.score, ids.train_index, ids.similarity, nn_sim, nb)
    return Scores(nn_sim, nb.idx[:, 0].copy(), nn_sim, nn_sim, nb)


def resolve_score_mode(config: AuditConfig, train: EmbeddingSet) -> str:
    """Turn ``auto`` into ``identity`` or ``nn``; reject impossible choices."""
    if config.score == "identity":
        if not train.has_labels:
            raise AuditInputError(
                "--score identity needs identity labels on every training sample: "
                "put each person's images in their own sub-folder, or give a CSV "
                "with an 'identity' column"
            )
        if train.info.metric != "cosine":
            raise AuditInputError(
                f"--score identity needs a cosine encoder (not {train.info.name!r}): "
                "use --score nn, or an identity encoder such as --encoder face"
            )
        return "identity"
    if config.score == "auto":
        missing = sum(lab is None or lab == "" for lab in train.labels)
        if 0 < missing < len(train.labels):
            log.warning(
                "%d of %d training samples have no identity label (images directly in the "
                "training folder, or empty 'identity' cells), so --score auto uses nn; label "
                "every sample for the identity score, or pass --score nn",
                missing,
                len(train.labels),
            )
        # A copy encoder (pixel, tiled, copy, sscd, dinov2) looks for the same
        # picture: one folder per person does not make its score an identity score.
        usable = (
            train.has_labels and train.info.metric == "cosine" and train.info.kind == "identity"
        )
        return "identity" if usable and len(set(train.labels)) > 1 else "nn"
    return "nn"


def choose_threshold(
    config: AuditConfig,
    holdout: Scores | None,
    default: float,
    default_note: str,
    groups: Sequence[str | None] | None = None,
) -> Calibration:
    """Holdout calibration first, then a fixed value, then the encoder default.

    The rule is :func:`~trainleak.decide.calibration.choose_calibration`, the
    one ``index build`` uses too. ``groups``, the holdout's person labels,
    make the calibration count people when every holdout image has one.
    """
    null = None if holdout is None else holdout.score
    return choose_calibration(
        null, config.fpr, config.threshold, default, default_note, groups=groups
    )
