"""``index build``: embed a training set and write a new, calibrated index.

The threshold is chosen as ``audit`` chooses it: calibrated on the holdout at
the target false-positive rate (holdout files byte-identical to training files
left out, as ``audit`` leaves them out), else the fixed threshold, else the
encoder's operating point. The holdout's vectors are stored with the index so
that every later change recalibrates on it (see :mod:`trainleak.gate.writer`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from trainleak._version import __version__
from trainleak.config import AuditConfig, IndexConfig
from trainleak.decide.calibration import Calibration, choose_calibration
from trainleak.decide.contamination import drop_training_copies
from trainleak.embedding import EmbeddingSet
from trainleak.errors import AuditInputError
from trainleak.gate import shards as files
from trainleak.gate.writer import commit_change, digest_of, now, row_record
from trainleak.records import clean_json

PathLike = str | os.PathLike[str]


def build_index(
    out: Path,
    train: PathLike | EmbeddingSet,
    holdout: PathLike | EmbeddingSet | None,
    config: IndexConfig,
) -> None:
    """Embed the sets and write a new index at ``out`` (see :meth:`Index.build`)."""
    from trainleak.audits.leak_scores import resolve_score_mode

    if holdout is not None and config.threshold is not None:
        raise AuditInputError(
            "give either a holdout (the threshold is calibrated on it) or a fixed threshold, "
            "not both"
        )
    if config.shard_rows < 1:
        raise AuditInputError(f"shard_rows must be 1 or more, got {config.shard_rows}")
    if (out / files.MANIFEST).exists():
        raise AuditInputError(
            f"{out} already holds an index: add images with 'trainleak index add {out} DIR', "
            "or build into a new folder"
        )
    train_set, hold_set, spec, spec_options = _embed_sets(train, holdout, config)
    contaminated: list[dict[str, str]] = []
    if hold_set is not None:
        hold_set, contaminated = drop_training_copies(hold_set, train_set)
    audit_like = AuditConfig(score=config.score, identity_weight=config.identity_weight)
    mode = resolve_score_mode(audit_like, train_set)
    out.mkdir(parents=True, exist_ok=True)
    info = train_set.info
    with files.writer_lock(out):
        manifest: dict[str, Any] = {
            "format": files.FORMAT,
            "format_version": files.FORMAT_VERSION,
            "generation": 0,
            "created": now(),
            "trainleak_version": __version__,
            "encoder": clean_json(
                {
                    **info.to_dict(),
                    "cache_key": info.cache_key(),
                    "spec": spec,
                    "spec_options": spec_options,
                }
            ),
            "dim": info.dim,
            "metric": info.metric,
            "score": {"mode": mode, "identity_weight": config.identity_weight},
            "settings": clean_json(config.to_dict()),
            "shards": [],
            "tombstones": None,
            "holdout": None,
        }
        step = config.shard_rows
        generation = int(manifest["generation"]) + 1  # the one commit_change commits
        for n, s0 in enumerate(range(0, len(train_set), step)):
            rows = [
                row_record(train_set.ids[j], train_set.labels[j], digest_of(train_set, j))
                for j in range(s0, min(s0 + step, len(train_set)))
            ]
            manifest["shards"].append(
                files.write_shard(out, n, train_set.vectors[s0 : s0 + step], rows, generation)
            )
        if hold_set is not None:
            manifest["holdout"] = _write_holdout(out, hold_set, len(contaminated))
        threshold = None
        if hold_set is None:
            threshold = _fixed_threshold(config, info.default_threshold, info.threshold_note)
        commit_change(out, manifest, threshold, set(train_set.digests), fpr=config.fpr)


def _embed_sets(
    train: PathLike | EmbeddingSet, holdout: PathLike | EmbeddingSet | None, config: IndexConfig
) -> tuple[EmbeddingSet, EmbeddingSet | None, str, dict[str, Any]]:
    from trainleak.audits.inputs import embed_nonempty, make_embedder

    sets: dict[str, EmbeddingSet | None] = {"train": None, "holdout": None}
    named = {"train": train, "holdout": holdout}
    paths = {k: v for k, v in named.items() if v is not None and not isinstance(v, EmbeddingSet)}
    if paths:
        with make_embedder(config.embed) as embedder:
            for key, path in paths.items():
                sets[key] = embed_nonempty(embedder, path, key)
    for key, value in named.items():
        if isinstance(value, EmbeddingSet):
            if len(value) == 0:
                raise AuditInputError(f"the {key} set is empty: nothing to index")
            sets[key] = value
    train_set, hold_set = sets["train"], sets["holdout"]
    assert train_set is not None
    if hold_set is not None and hold_set.info.cache_key() != train_set.info.cache_key():
        raise AuditInputError(
            "the holdout and training sets were embedded with different encoders: embed both "
            "with the same encoder and options"
        )
    if isinstance(train, EmbeddingSet):
        return train_set, hold_set, train_set.info.name, dict(train_set.info.options)
    return train_set, hold_set, config.embed.encoder, dict(config.embed.encoder_options)


def _write_holdout(out: Path, hold: EmbeddingSet, contaminated: int) -> dict[str, Any]:
    rows_entry, _ = files.write_jsonl(
        out,
        "holdout-rows.jsonl",
        [row_record(hold.ids[j], hold.labels[j], digest_of(hold, j)) for j in range(len(hold))],
    )
    vectors = files.write_array(out, "holdout-vectors.npy", np.ascontiguousarray(hold.vectors))
    return {
        "n": len(hold),
        "root": hold.root,
        "files_listed": hold.files,
        "skipped": len(hold.skipped),
        "contaminated_at_build": contaminated,
        "files": {"vectors": vectors, "rows": rows_entry},
    }


def _fixed_threshold(config: IndexConfig, default: float, note: str) -> Calibration:
    """Return the threshold of an index built without a holdout (audit's rule, no holdout)."""
    return choose_calibration(None, config.fpr, config.threshold, default, note)
