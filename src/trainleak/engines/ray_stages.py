"""The functions the Ray engine runs on the cluster: read, embed, search one shard.

Each wraps the function the local engine runs, so both compute the same:

* :func:`read_rows` (Ray Data tasks): :func:`trainleak.archives.iter_inputs`
  on one record (a file, or a shard streamed member by member), hashes the
  bytes, and drops the bytes of inputs the store already holds.
* :class:`EncodeActor` (a Ray Data actor pool): holds one encoder and runs
  :func:`trainleak.workers.encode_chunk` on each batch of misses. On a CPU it
  runs the encoder in one :class:`trainleak.workers.WorkerPool` process of its
  own, so that an image that crashes the encoder (a segfault in a native
  decoder or model) costs that image, as it does locally, not the actor and
  its batch (Ray would retry the batch on a new actor, which crashes again).
* :func:`search_shard` (Ray tasks): :meth:`trainleak.similarity.Similarity.knn`
  of a block of queries against one shard of the database.
* :func:`search_queries` (Ray tasks): the same for a re-scoring rule (local
  features), a block of queries against the whole database and its index.

Rows cross the cluster as plain columns; ids and labels as bytes
(``surrogateescape``), so a file name that is not UTF-8 survives the trip.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from trainleak.archives import iter_inputs
from trainleak.images import Record
from trainleak.similarity import Similarity
from trainleak.store import content_hash
from trainleak.workers import encode_chunk, unavailable_reason


def pack(text: str | None) -> bytes:
    """Return a string, or ``None``, as bytes for a Ray column.

    Never a null: Arrow's nulls do not survive the trip into a numpy batch of bytes.

    Example:
        >>> pack("s1"), unpack(pack("s1")), pack(None), unpack(pack(None)), unpack(pack(""))
        (b'=s1', 's1', b'', None, '')

    """
    return b"" if text is None else b"=" + text.encode("utf-8", "surrogateescape")


def unpack(data: bytes) -> str | None:
    """Return the string (or ``None``) :func:`pack` packed."""
    raw = bytes(data)
    return raw[1:].decode("utf-8", "surrogateescape") if raw else None


def record_row(n: int, rec: Record) -> dict[str, Any]:
    """Return the row of one listed record (file or shard) for :func:`read_rows`."""
    return {"n": n, "id": pack(rec.id), "path": pack(str(rec.path)), "label": pack(rec.label)}


def read_rows(row: dict[str, Any], max_file_mb: float, known: np.ndarray) -> Any:
    """Read one listed record; yield one row per input (a file, or each member of a shard).

    Args:
        row: a :func:`record_row`.
        max_file_mb: the size limit of :func:`trainleak.archives.iter_inputs`.
        known: sorted ``S32`` content hashes already in the store; their bytes
            are not sent on.

    Yields:
        Rows ``n`` (the record's place), ``member`` (a shard member, not the
        record itself), ``id``, ``label``, ``digest`` (``""`` when
        unreadable), ``reason`` (the skip reason, or ``""``), ``hit`` and
        ``data`` (the bytes of a miss, else empty).

    """
    ident, label = unpack(row["id"]), unpack(row["label"])
    assert ident is not None
    path = unpack(row["path"])
    rec = Record(ident, Path(path if path is not None else ident), label)
    for got, reason in iter_inputs([rec], max_file_mb):
        data = got.data or b""
        digest = content_hash(data) if reason is None and got.data is not None else ""
        hit = bool(digest) and _contains(known, digest)
        yield {
            "n": row["n"],
            "member": got.id != rec.id,
            "id": pack(got.id),
            "label": pack(got.label),
            "digest": digest,
            "reason": reason or "",
            "hit": hit,
            "data": b"" if hit or not digest else data,
        }


def _contains(known: np.ndarray, digest: str) -> bool:
    key = np.array(digest, dtype="S32")
    at = int(np.searchsorted(known, key))
    return at < len(known) and bool(known[at] == key)


class EncodeActor:
    """A Ray Data actor that holds one encoder and embeds batches of misses.

    Args:
        spec: the encoder spec (``face``, ``onnx:FILE``...).
        options: its options.
        modules: modules to import first (where a plugin encoder registers).
        max_pixels: the decoding limit of :func:`trainleak.workers.encode_chunk`.

    """

    def __init__(
        self, spec: str, options: dict[str, Any], modules: list[str], max_pixels: int
    ) -> None:
        from trainleak.encoders import get_encoder

        for module in modules:
            importlib.import_module(module)
        self.encoder = get_encoder(spec, **options)
        self.max_pixels = max_pixels
        self.pool: Any = None
        if self.encoder.device == "cpu" and unavailable_reason(spec) is None:
            from trainleak.workers import WorkerPool

            self.pool = WorkerPool(1, spec, options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed the misses of a batch; every row comes back, without its bytes.

        Adds ``vectors`` (float32 rows as bytes, the encoder's ``(m, dim)``
        result) and ``result`` (``""`` when ``vectors`` holds the rows, else
        the skip reason, ``!``-prefixed when it is not to be cached).
        """
        n = len(batch["digest"])
        todo: dict[str, bytes] = {}
        for j in range(n):
            data = batch["data"][j]
            if len(data) and batch["digest"][j] not in todo:
                todo[str(batch["digest"][j])] = bytes(data)
        done: dict[str, Any]
        if self.pool is not None and todo:
            chunk = (list(todo), list(todo.values()))
            done = {key: res for part in self.pool.run(iter([chunk]), self.max_pixels)
                    for key, res in part}  # fmt: skip
        else:
            embedded = encode_chunk(list(todo.values()), self.max_pixels, self.encoder)
            done = dict(zip(todo, embedded, strict=True))
        vectors = np.empty(n, dtype=object)
        result = np.empty(n, dtype=object)
        for j in range(n):
            res = done.get(str(batch["digest"][j]), "")
            if isinstance(res, str):
                vectors[j], result[j] = b"", res
            else:
                vectors[j], result[j] = np.ascontiguousarray(res, np.float32).tobytes(), ""
        out = {key: value for key, value in batch.items() if key != "data"}
        out["vectors"], out["result"] = vectors, result
        return out


def search_shard(
    similarity: Similarity,
    queries: np.ndarray,
    shard: np.ndarray,
    k: int,
    offset: int,
    backend: Any,
    device: str,
    self_start: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a block of queries in one database shard, in global row numbers.

    Args:
        similarity: the comparison rule.
        queries: ``(n, dim)`` query rows.
        shard: ``(m, dim)`` database rows ``offset`` to ``offset + m``.
        k: neighbours per query.
        offset: the shard's first global row.
        backend: the search backend (already resolved from ``auto``).
        device: torch device of the search, or ``auto`` (CUDA when this
            worker's torch sees it and the backend runs there).
        self_start: the global row of the first query when the queries are the
            database itself and each query's own row is to be left out; ``None``
            otherwise.

    Returns:
        ``(scores, idx)`` ``(n, k)``, global indices, ``-inf``/``-1`` padding.

    """
    from trainleak.device import resolve_device

    device = resolve_device(device, backend)
    scores, idx = similarity.knn(
        queries,
        shard,
        k,
        backend=backend,
        device=device,
        exclude_self=self_start is not None,
        self_offset=(self_start or 0) - offset,  # query i is shard row self_start - offset + i
    )
    idx = np.where(idx >= 0, idx + offset, -1)
    return scores.astype(np.float32), idx.astype(np.int64)


def search_queries(
    similarity: Similarity,
    queries: np.ndarray,
    database: np.ndarray,
    state: Any,
    k: int,
    self_start: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a block of queries in the whole database, for a re-scoring rule.

    Args:
        similarity: the comparison rule (local features).
        queries: ``(n, dim)`` query rows.
        database: ``(m, dim)`` the whole database.
        state: the rule's :meth:`~trainleak.similarity.Similarity.search_state`
            of the database (its descriptor index), or ``None`` to build it here.
        k: neighbours per query.
        self_start: the database row of the first query when each query's own
            row is to be left out; ``None`` otherwise.

    Returns:
        ``(scores, idx)`` ``(n, k)``, ``-inf``/``-1`` padding.

    """
    if state is not None:
        similarity.adopt_state(database, state)
    scores, idx = similarity.knn(
        queries, database, k, exclude_self=self_start is not None, self_offset=self_start or 0
    )
    return scores.astype(np.float32), idx.astype(np.int64)
