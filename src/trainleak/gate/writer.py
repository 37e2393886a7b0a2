"""Changes to an index, each one atomic: add, remove (tombstones), compact.

Every change holds the writer lock, writes its new files, makes an in-memory
:class:`~trainleak.gate.index.Index` of the new state to recalibrate the
threshold on the stored holdout (so the false-positive rate still holds for
the changed training set), and then commits the new manifest in one
``os.replace`` (see :mod:`trainleak.gate.shards`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainleak.audits.inputs import MAX_CONTAMINATION
from trainleak.embedding import EmbeddingSet
from trainleak.errors import AuditInputError
from trainleak.gate import shards as files
from trainleak.report import clean_json
from trainleak.stats import threshold_at_fpr

if TYPE_CHECKING:
    from trainleak.gate.index import Index

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


def _calibrate(index: Index, live_digests: set[str]) -> dict[str, Any]:
    """Calibrate on the stored holdout against ``index``, as ``audit`` calibrates."""
    hold = index.manifest["holdout"]
    fpr = float(index.manifest["settings"]["fpr"])
    dim = int(index.manifest["dim"])
    vectors = np.load(
        _small_file(index.path, hold["files"]["vectors"]), allow_pickle=False
    ).reshape(-1, dim)
    text = files.read_small(index.path, hold["files"]["rows"])
    rows = [json.loads(line) for line in text.splitlines()]
    keep = np.array([r["digest"] is None or r["digest"] not in live_digests for r in rows], bool)
    dropped = int((~keep).sum())
    if dropped and (dropped > MAX_CONTAMINATION * len(rows) or dropped == len(rows)):
        raise AuditInputError(
            f"{dropped} of {len(rows)} holdout images are now byte-identical to training images: "
            "the holdout cannot calibrate this index any more; rebuild it with a new --holdout"
        )
    t = threshold_at_fpr(index.score(vectors[keep]).score, fpr)
    return {
        "value": t.value,
        "method": "holdout",
        "target_fpr": fpr,
        "achieved_fpr": t.achieved_fpr,
        "resolvable_fpr": t.resolvable_fpr,
        "calibrated": True,
        "note": t.note,
        "holdout_used": int(keep.sum()),
        "holdout_contaminated": dropped,
    }


def _small_file(folder: Path, entry: dict[str, Any]) -> Any:
    import io

    return io.BytesIO(files.read_small(folder, entry))


def commit_change(
    folder: Path,
    manifest: dict[str, Any],
    threshold: dict[str, Any] | None,
    live_digests: set[str],
) -> None:
    """Count, recalibrate (``threshold=None``: on the holdout), and commit ``manifest``."""
    from trainleak.config import CheckConfig
    from trainleak.gate.index import Index

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
        manifest["threshold"] = {"value": float("nan")}
        draft = Index(folder, manifest, CheckConfig(search="exact"))
        threshold = dict(_calibrate(draft, live_digests), rows_at_calibration=total - dead)
    manifest["threshold"] = threshold
    files.commit(folder, clean_json(manifest))
    files.remove_unlisted(folder, manifest)


def _locked_manifest(index: Index) -> dict[str, Any]:
    """Return a copy of the current manifest, bringing ``index`` up to date first."""
    manifest = files.read_manifest(index.path)
    if manifest["generation"] != index.manifest["generation"]:
        index.reload()
    return json.loads(json.dumps(index.manifest))


def _live_digests(index: Index) -> set[str]:
    dead = set(index.dead.tolist())
    return {r["digest"] for r in index.iter_rows() if r["row"] not in dead and r["digest"]}


def add_to_index(
    index: Index, source: PathLike | Sequence[PathLike] | EmbeddingSet
) -> dict[str, Any]:
    """Embed what is new in ``source`` and append it as new shards (see :meth:`Index.add`)."""
    with files.writer_lock(index.path):
        manifest = _locked_manifest(index)
        # Content hashes of the live rows (one pass over the rows files): to leave
        # out content already present, and holdout files that are now training files.
        vectors_only = isinstance(source, EmbeddingSet) and not source.digests
        live = set() if vectors_only and not manifest["holdout"] else _live_digests(index)
        counts: dict[str, Any] = {"files": 0, "added": 0, "present": 0, "skipped": 0}
        skipped: list[dict[str, str]] = []
        vectors: list[np.ndarray] = []
        rows: list[dict[str, Any]] = []
        number = max((int(s["number"]) for s in manifest["shards"]), default=-1) + 1
        step = int(manifest["settings"]["shard_rows"])
        for block_rows, block in _new_blocks(index, source, live, counts, skipped):
            rows.extend(block_rows)
            if block is not _END:
                vectors.append(block)
            while len(rows) >= step or (rows and block is _END):
                stacked = np.concatenate(vectors)
                shard = files.write_shard(index.path, number, stacked[:step], rows[:step])
                manifest["shards"].append(shard)
                number, rows, vectors = number + 1, rows[step:], [stacked[step:]]
        counts["added"] = sum(int(s["rows"]) for s in manifest["shards"]) - index.rows_total
        if counts["added"]:
            commit_change(index.path, manifest, _kept_threshold(manifest), live)
            index.reload()
        counts.update(generation=index.manifest["generation"], threshold=index.threshold)
        counts["skipped_files"] = skipped
        return counts


#: The last block :func:`_new_blocks` yields: no rows; flushes what is pending.
_END = np.zeros((0, 0), np.float32)


def _new_blocks(
    index: Index,
    source: PathLike | Sequence[PathLike] | EmbeddingSet,
    live: set[str],
    counts: dict[str, Any],
    skipped: list[dict[str, str]],
) -> Iterable[tuple[list[dict[str, Any]], np.ndarray]]:
    """Yield ``(row records, (n, dim) vectors)`` of content not in ``live`` (which grows).

    The last block is :data:`_END`.
    """
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
                rows.append(row_record(ident, item.record.label, item.digest))
                vecs.append(vec)
        yield rows, np.asarray(vecs, np.float32).reshape(-1, dim)
    yield [], _END


def _kept_threshold(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Return the threshold record to keep, or ``None`` to recalibrate on the holdout."""
    return None if manifest.get("holdout") else manifest["threshold"]


def remove_from_index(index: Index, ids: Iterable[str]) -> dict[str, Any]:
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


def compact_index(index: Index) -> dict[str, Any]:
    """Rewrite shards that hold tombstoned rows without them (see :meth:`Index.compact`)."""
    with files.writer_lock(index.path):
        manifest = _locked_manifest(index)
        if not manifest["tombstones"]:
            return {"dropped": 0, "generation": manifest["generation"]}
        alive = np.ones(index.rows_total, bool)
        alive[index.dead] = False
        number = max(int(s["number"]) for s in manifest["shards"]) + 1
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
                kept.append(files.write_shard(index.path, number, index.shards[s][mask], rows))
                number += 1
        manifest["shards"], manifest["tombstones"] = kept, None
        dropped = len(index.dead)
        commit_change(index.path, manifest, manifest["threshold"], set())
        index.reload()
        return {"dropped": dropped, "generation": index.manifest["generation"]}
