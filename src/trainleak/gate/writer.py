"""Changes to an index, each one atomic: add, remove (tombstones), compact.

Every change holds the writer lock, writes its new files, makes an in-memory
:class:`~trainleak.gate.index.Index` of the new state to recalibrate the
threshold on the stored holdout (so the false-positive rate still holds for
the changed training set), and then commits the new manifest in one
``os.replace`` (see :mod:`trainleak.gate.shards`). ``add`` refuses to commit
a recalibration that moves the threshold further than allowed
(:func:`trainleak.decide.calibration.check_change`). New files are named
with the generation they commit, so no file name is used twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from trainleak.approx_search import use_search
from trainleak.config import CheckConfig
from trainleak.decide.calibration import Calibration, check_change, choose_calibration
from trainleak.decide.contamination import contaminated_rows
from trainleak.embedding import EmbeddingSet
from trainleak.errors import AuditInputError
from trainleak.gate import shards as files
from trainleak.gate.opened import OpenedIndex
from trainleak.records import clean_json

PathLike = str | os.PathLike[str]


def now() -> str:
    """Return the current UTC time as the manifest writes it."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def row_record(ident: str, label: str | None, digest: str | None) -> dict[str, Any]:
    """Return one row of a ``rows-NNNNN.jsonl`` file."""
    return {"id": ident, "label": label, "digest": digest}


def digest_of(es: EmbeddingSet, j: int) -> str | None:
    """Return the content hash of row ``j`` of a set (``None`` for vectors without files)."""
    return es.digests[j] if es.digests else None


def _calibrate(index: OpenedIndex, live_digests: set[str], fpr: float) -> Calibration:
    """Calibrate on the stored holdout against ``index``, as ``audit`` calibrates."""
    hold = index.manifest["holdout"]
    dim = int(index.manifest["dim"])
    vectors = np.load(
        _small_file(index.path, hold["files"]["vectors"]), allow_pickle=False
    ).reshape(-1, dim)
    text = files.read_small(index.path, hold["files"]["rows"])
    rows = [json.loads(line) for line in text.splitlines()]
    fix = "the holdout cannot calibrate this index any more; rebuild it with a new --holdout"
    gone = contaminated_rows([r["digest"] for r in rows], live_digests, fix)
    keep = ~gone
    details = {"holdout_used": int(keep.sum()), "holdout_contaminated": int(gone.sum())}
    # Person labels (stored with the holdout rows) make it count people, as audit does.
    labels = [rows[i].get("label") for i in np.flatnonzero(keep)]
    scores = index.score(vectors[keep]).score
    return choose_calibration(scores, fpr, None, float("nan"), "", groups=labels).with_details(
        **details
    )


def _target_fpr(manifest: dict[str, Any]) -> float:
    """Return the false-positive rate the index is calibrated at (threshold's, else build's)."""
    old = manifest.get("threshold")
    if old and old.get("target_fpr") is not None:
        return float(old["target_fpr"])
    return float(manifest["settings"]["fpr"])  # an index built before the record kept it


def _small_file(folder: Path, entry: dict[str, Any]) -> Any:
    import io

    return io.BytesIO(files.read_small(folder, entry))


def commit_change(
    folder: Path,
    manifest: dict[str, Any],
    threshold: Calibration | None,
    live_digests: set[str],
    *,
    fpr: float | None = None,
    max_change: float | None = None,
    what: str = "this change",
) -> None:
    """Count, recalibrate (``threshold=None``: on the holdout), and commit ``manifest``.

    Args:
        folder: the index folder (the caller holds its writer lock).
        manifest: the new manifest (its ``threshold`` still the old one, if any).
        threshold: the threshold to keep, or ``None`` to recalibrate.
        live_digests: content hashes of the live training rows (contamination).
        fpr: the target rate of a recalibration (default: the index's).
        max_change: refuse a recalibration that moves the threshold further.
        what: the change, for that refusal's message.

    Raises:
        ThresholdChangeError: the threshold would move more than ``max_change``;
            nothing is committed, and the new files are removed.

    """
    old = manifest.get("threshold")

    total = sum(int(s["rows"]) for s in manifest["shards"])
    dead = int(manifest["tombstones"]["count"]) if manifest["tombstones"] else 0
    manifest["counts"] = {
        "rows": total,
        "live": total - dead,
        "tombstoned": dead,
        "shards": len(manifest["shards"]),
    }
    manifest["generation"] = int(manifest["generation"]) + 1
    manifest["updated"] = now()
    if threshold is None:
        rate = fpr if fpr is not None else _target_fpr(manifest)
        # The draft only scores the holdout; its placeholder threshold is never committed.
        manifest["threshold"] = Calibration(1.0, "fixed", note="draft").to_dict()
        draft = OpenedIndex(folder, manifest, CheckConfig(search="exact"))
        # index build --search approx: the holdout is searched approximately, its
        # recall measured and kept. Checks search exactly; a missed neighbour only
        # lowers a holdout score, so the threshold can only err toward blocking.
        with use_search(manifest.get("settings", {}).get("search", "exact")) as searched:
            threshold = _calibrate(draft, live_digests, rate).with_details(
                rows_at_calibration=total - dead
            )
        manifest["search"] = searched.summary()
        if old and max_change is not None:
            try:
                check_change(Calibration.from_dict(old), threshold, max_change, what)
            except AuditInputError:
                files.remove_unlisted(folder, files.read_manifest(folder))
                raise
    manifest["threshold"] = threshold.to_dict()
    files.commit(folder, clean_json(manifest))
    files.remove_unlisted(folder, manifest)


def _locked_manifest(index: OpenedIndex) -> dict[str, Any]:
    """Return a copy of the current manifest, bringing ``index`` up to date first."""
    manifest = files.read_manifest(index.path)
    if manifest["generation"] != index.manifest["generation"]:
        index.reload()
    return json.loads(json.dumps(index.manifest))


def _live_state(index: OpenedIndex) -> tuple[set[str], set[str]]:
    """Return the live rows' content hashes and ids (one pass over the rows files)."""
    dead = set(index.dead.tolist())
    digests: set[str] = set()
    ids: set[str] = set()
    for r in index.iter_rows():
        if r["row"] not in dead:
            ids.add(str(r["id"]))
            if r["digest"]:
                digests.add(r["digest"])
    return digests, ids


def add_to_index(
    index: OpenedIndex,
    source: PathLike | Sequence[PathLike] | EmbeddingSet,
    max_change: float | None = None,
) -> dict[str, Any]:
    """Embed what is new in ``source`` and append it as new shards (see :meth:`Index.add`).

    ``max_change``: refuse (commit nothing) when the recalibrated threshold
    moves further than this; ``None`` accepts any move.
    """
    with files.writer_lock(index.path):
        manifest = _locked_manifest(index)
        # Content hashes of the live rows: to leave out content already present,
        # and holdout files that are now training files; ids: each names one row.
        live, ids = _live_state(index)
        counts: dict[str, Any] = {"files": 0, "added": 0, "present": 0, "skipped": 0}
        skipped: list[dict[str, str]] = []
        vectors: list[np.ndarray] = []
        rows: list[dict[str, Any]] = []
        generation = int(manifest["generation"]) + 1
        number = max((int(s["number"]) for s in manifest["shards"]), default=-1) + 1
        step = int(manifest["settings"]["shard_rows"])
        for block_rows, block in _new_blocks(index, source, (live, ids), counts, skipped):
            rows.extend(block_rows)
            if block is not _END:
                vectors.append(block)
            while len(rows) >= step or (rows and block is _END):
                stacked = np.concatenate(vectors)
                shard = files.write_shard(
                    index.path, number, stacked[:step], rows[:step], generation
                )
                manifest["shards"].append(shard)
                number, rows, vectors = number + 1, rows[step:], [stacked[step:]]
        counts["added"] = sum(int(s["rows"]) for s in manifest["shards"]) - index.rows_total
        if counts["added"]:
            what = f"adding {counts['added']} row(s)"
            commit_change(
                index.path, manifest, _kept_threshold(manifest), live, max_change=max_change,
                what=what,
            )  # fmt: skip
            index.reload()
        counts.update(generation=index.manifest["generation"], threshold=index.threshold)
        counts["skipped_files"] = skipped
        return counts


#: The last block :func:`_new_blocks` yields: no rows; flushes what is pending.
_END = np.zeros((0, 0), np.float32)


def _new_blocks(
    index: OpenedIndex,
    source: PathLike | Sequence[PathLike] | EmbeddingSet,
    state: tuple[set[str], set[str]],
    counts: dict[str, Any],
    skipped: list[dict[str, str]],
) -> Iterable[tuple[list[dict[str, Any]], np.ndarray]]:
    """Yield ``(row records, (n, dim) vectors)`` of content not in the index (which grows).

    ``state`` is the live content hashes and ids. A row whose id is already
    live, or whose vector is not finite, is skipped with the reason. The last
    block is :data:`_END`.
    """
    live, ids = state
    from trainleak.gate.ingest import embed_items, iter_records

    identity = index.score_mode == "identity"
    dim = index.encoder_info.dim

    def labelled(ident: str, label: str | None) -> None:
        if identity and label is None:
            raise AuditInputError(
                "this index scores by identity, so every image needs an identity label; "
                f"{ident} has none: put each person's photos in their own sub-folder"
            )

    def new(digest: str | None) -> bool:
        if digest is None:
            return True
        if digest in live:
            counts["present"] += 1
            return False
        live.add(digest)
        return True

    def usable(ident: str, vec: np.ndarray) -> bool:
        """Whether a new row may be added: a unique id and a finite vector (else a skip)."""
        reason = None
        if ident in ids:
            reason = (
                "another image with this id is in the index already: remove it first "
                "('trainleak index remove') or give this file another name"
            )
        elif not np.isfinite(vec).all():
            reason = "the encoder gave NaN or infinite values for it: the index never stores them"
        if reason is not None:
            counts["skipped"] += 1
            skipped.append({"path": ident, "reason": reason})
            return False
        ids.add(ident)
        return True

    if isinstance(source, EmbeddingSet):
        if source.info.cache_key() != index.encoder_info.cache_key():
            raise AuditInputError(
                f"the set was embedded with {source.info.cache_key()}, the index with "
                f"{index.encoder_info.cache_key()}: embed it with the index's encoder"
            )
        counts["files"] = source.files
        counts["skipped"] = len(source.skipped)
        skipped.extend({"path": s.path, "reason": s.reason} for s in source.skipped)
        for s0 in range(0, len(source), 65536):
            keep = [j for j in range(s0, min(s0 + 65536, len(source))) if new(digest_of(source, j))]
            keep = [j for j in keep if usable(source.ids[j], source.vectors[j])]
            for j in keep:
                labelled(source.ids[j], source.labels[j])
            rows = [row_record(source.ids[j], source.labels[j], digest_of(source, j)) for j in keep]
            yield rows, np.asarray(source.vectors[keep], np.float32).reshape(-1, dim)
        yield [], _END
        return

    def count(records: Iterable[Any]) -> Iterable[Any]:
        for rec in records:
            counts["files"] += 1
            yield rec

    many = bool(index.encoder_info.options.get("all_faces"))

    def drop(digest: str) -> bool:
        return not new(digest)

    for batch in embed_items(
        index.embedder(), count(iter_records(source)), index.config.batch, drop
    ):
        rows, vecs = [], []
        for item in batch:
            if item.rows is None:
                counts["skipped"] += 1
                skipped.append({"path": item.record.id, "reason": item.reason})
                continue
            labelled(item.record.id, item.record.label)
            for k, vec in enumerate(item.rows, 1):
                ident = f"{item.record.id}#{k}" if many or len(item.rows) > 1 else item.record.id
                if usable(ident, vec):
                    rows.append(row_record(ident, item.record.label, item.digest))
                    vecs.append(vec)
        yield rows, np.asarray(vecs, np.float32).reshape(-1, dim)
    yield [], _END


def _kept_threshold(manifest: dict[str, Any]) -> Calibration | None:
    """Return the threshold to keep, or ``None`` to recalibrate on the holdout."""
    return None if manifest.get("holdout") else Calibration.from_dict(manifest["threshold"])


def remove_from_index(index: OpenedIndex, ids: Iterable[str]) -> dict[str, Any]:
    """Tombstone rows by id (see :meth:`Index.remove`)."""
    wanted = {str(i).strip() for i in ids if str(i).strip()}
    with files.writer_lock(index.path):
        manifest = _locked_manifest(index)
        dead = set(index.dead.tolist())
        old_ids: list[str] = []
        if manifest["tombstones"]:
            old_ids = json.loads(files.read_small(index.path, manifest["tombstones"]))["ids"]
        found: set[str] = set()
        new_rows: list[int] = []
        new_ids: list[str] = []
        live: set[str] = set()
        for r in index.iter_rows():
            if r["row"] in dead:
                continue
            if r["id"] in wanted:
                found.add(r["id"])
                new_rows.append(r["row"])
                new_ids.append(r["id"])
            elif r["digest"]:
                live.add(r["digest"])
        result: dict[str, Any] = {"removed": len(new_rows), "unknown": sorted(wanted - found)}
        if new_rows:
            rows = sorted(dead | set(new_rows))
            name = f"tombstones-{int(manifest['generation']) + 1:05d}.json"
            payload = json.dumps({"rows": rows, "ids": old_ids + new_ids})
            entry = files.write_file(index.path, name, lambda fh: fh.write(payload.encode()))
            manifest["tombstones"] = dict(entry, count=len(rows))
            commit_change(index.path, manifest, _kept_threshold(manifest), live)
            index.reload()
        result.update(generation=index.manifest["generation"], threshold=index.threshold)
        return result


def compact_index(index: OpenedIndex) -> dict[str, Any]:
    """Rewrite shards that hold tombstoned rows without them (see :meth:`Index.compact`)."""
    with files.writer_lock(index.path):
        manifest = _locked_manifest(index)
        if not manifest["tombstones"]:
            return {"dropped": 0, "generation": manifest["generation"]}
        alive = np.ones(index.rows_total, bool)
        alive[index.dead] = False
        number = max(int(s["number"]) for s in manifest["shards"]) + 1
        generation = int(manifest["generation"]) + 1
        kept: list[dict[str, Any]] = []
        for s, shard in enumerate(manifest["shards"]):
            lo, hi = int(index.starts[s]), int(index.starts[s + 1])
            mask = alive[lo:hi]
            if mask.all():
                kept.append(shard)
                continue
            if mask.any():
                listed = files.iter_jsonl(index.path, shard["files"]["rows"])
                rows = [r for r, m in zip(listed, mask, strict=True) if m]
                vectors = index.shards[s][mask]
                kept.append(files.write_shard(index.path, number, vectors, rows, generation))
                number += 1
        manifest["shards"], manifest["tombstones"] = kept, None
        dropped = len(index.dead)
        commit_change(index.path, manifest, index.calibration, set())
        index.reload()
        return {"dropped": dropped, "generation": index.manifest["generation"]}
