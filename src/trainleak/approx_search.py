"""The approximate search: a faiss inverted-file index, tuned and checked by measured recall.

:func:`trainleak.neighbors.knn` with ``search="approx"`` asks this module for
candidates and re-scores them exactly (float64, as the exact search does), so
only *which* rows are found is approximate, never a score.

* Index: ``IndexIVFFlat`` over inner products (cosine rows), ``nlist`` cells
  (``4 * sqrt(n)`` by default, our choice, between 1 and ``n / 39`` so
  k-means has 39 training rows per cell). Chosen over HNSW by measurement
  (bench/bench_approx.py): on 100,000 real 128-d image-crop vectors at
  recall@10 >= 0.99, HNSW (M = 32) took 1.5 times the memory, 1.5 times the
  build time and 1.5 times the search time.
* Search: faiss's per-query scan for few queries; many queries (a self-join)
  are searched grouped by inverted list, one matrix product per list and
  query block (:mod:`trainleak._ivf_join`), which finds the same candidates
  several times faster (bench/README.md: 5x on 1M rows).
* Memory: an index whose rows take more than ``memory_mb`` keeps them in a
  file, memory-mapped (faiss's on-disk inverted lists), built a shard of
  ``memory_mb`` at a time, so building and searching a database of any size
  holds one shard's rows in memory, never the database (bench/README.md:
  10M rows). The file lies in a temporary folder (``workdir`` or the system's)
  that is removed with the run's context.
* Recall is measured, not assumed: a seeded sample of queries (``sample``,
  1,000 by default, or every query when there are fewer) is searched exactly
  as well. A first sample picks ``nprobe``: it doubles until the recall@k on
  that sample reaches ``target_recall``, then is bisected down to within
  1/8 of the least value that does (:func:`least_nprobe`); a second,
  disjoint sample measures the recall of the final results, which is what a report states. A found
  neighbour counts when its exact score reaches the exact k-th score, so a
  tie chosen differently is not a miss.
* Where: :func:`use_search` sets the mode for every search of a run (audit,
  dedup, index build, and so the calibration on the holdout searches the way
  the samples do), and collects one :class:`SearchRecord` per search for the
  report. A search's index is reused by the next search of the same database
  within the run (the mirror rule searches one database twice).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainleak._optional import require
from trainleak.config import SearchMode

log = logging.getLogger(__name__)

__all__ = ["ApproxSettings", "SearchContext", "SearchMode", "SearchRecord", "current",
           "least_nprobe", "recall_at_k", "use_search"]  # fmt: skip

#: Database rows added to the index at a time (a memory-mapped database is never read whole).
ADD_BLOCK = 65536
#: Queries searched at a time (bounds the candidate arrays).
QUERY_BLOCK = 65536
#: faiss threads while training and filling an index. One, so the index (and
#: so which neighbours are found, and the nprobe the tuning reaches) does not
#: depend on the machine's thread count: on 1M real rows, k-means on one and on
#: two threads gave different centroids (rounding in the threaded products
#: grows over the iterations). Speed on the shared 2-core development machine
#: was mixed: the 1M build took 55.9 s on one thread vs 121.0 s on two under
#: load, 56.9 s vs 39.8 s in a quieter moment (bench/README.md).
BUILD_THREADS = 1


@dataclass(frozen=True)
class ApproxSettings:
    """How the approximate search is built and checked.

    Attributes:
        target_recall: recall@k that ``nprobe`` is raised to reach, on the tuning sample.
        sample: queries searched exactly to measure recall (twice: tuning, report).
        nlist: inverted lists; 0 = ``4 * sqrt(n)`` (ours), at most ``n / 39``.
        seed: seeds the k-means training sample and the query samples.
        memory_mb: rows an index keeps in memory, in MiB; a larger database's
            index keeps its rows in a memory-mapped file, built this many MiB
            of rows at a time (ours: 1024).
        workdir: folder for that file (a temporary folder inside it, removed
            with the run's context); empty = the system's temporary folder.

    """

    target_recall: float = 0.99
    sample: int = 1000
    nlist: int = 0
    seed: int = 0
    memory_mb: float = 1024
    workdir: str = ""


@dataclass
class SearchRecord:
    """One search of a run: its sizes, parameters and measured recall."""

    mode: str
    queries: int
    database: int
    k: int
    recall_at_k: float = 1.0
    sampled_queries: int = 0
    nlist: int = 0
    nprobe: int = 0
    seconds: float = 0.0
    #: Of ``seconds``: building the index (0 when reused), and the exact searches
    #: and probes of the recall samples; the rest is the search itself.
    build_seconds: float = 0.0
    check_seconds: float = 0.0


@dataclass
class SearchContext:
    """The search mode of a run, the records of its searches, and its built indexes."""

    mode: SearchMode = "exact"
    settings: ApproxSettings = field(default_factory=ApproxSettings)
    records: list[SearchRecord] = field(default_factory=list)
    indexes: dict[tuple[int, int, int], Any] = field(default_factory=dict)
    #: Seconds the last :func:`index_for` call spent building (0 when it reused one).
    last_build_seconds: float = 0.0
    #: Temporary folders holding the built indexes' memory-mapped rows.
    scratch: list[tempfile.TemporaryDirectory[str]] = field(default_factory=list)

    def drop_indexes(self) -> None:
        """Forget the built indexes and remove their files."""
        self.indexes.clear()
        for folder in self.scratch:
            folder.cleanup()
        self.scratch.clear()

    def summary(self) -> dict[str, Any]:
        """Return the report's ``search`` section: how approximate the run was."""
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode == "approx":
            out["method"] = (
                "faiss IndexIVFFlat (inner product), candidates re-scored exactly in float64; "
                "recall@k measured against the exact search on sampled queries"
            )
            out["target_recall"] = self.settings.target_recall
            approx = [r for r in self.records if r.mode == "approx"]
            if approx:
                out["recall_at_k_min"] = min(r.recall_at_k for r in approx)
            if len(approx) < len(self.records):
                out["note"] = (
                    "searches under a non-cosine rule (tiled_l2) and empty searches ran exactly"
                )
            # Only an approximate run lists its searches: an exact run's answers are the
            # same wherever and in how many blocks it searched (a Ray run shards them), so
            # its report must not depend on that.
            out["searches"] = [asdict(r) for r in self.records]
        return out


_CONTEXT: contextvars.ContextVar[SearchContext] = contextvars.ContextVar("trainleak_search")


def current() -> SearchContext:
    """Return the search context in force (exact, recording nothing, outside :func:`use_search`)."""
    try:
        return _CONTEXT.get()
    except LookupError:
        return SearchContext()


@contextlib.contextmanager
def use_search(
    mode: SearchMode = "exact", settings: ApproxSettings | None = None
) -> Iterator[SearchContext]:
    """Run the searches inside the ``with`` block in ``mode``; yield the context that records them.

    Example:
        >>> with use_search("exact") as ctx:
        ...     pass
        >>> ctx.summary()
        {'mode': 'exact'}

    """
    if mode not in ("exact", "approx"):
        raise ValueError(f"unknown search {mode!r}: use 'exact' or 'approx'")
    ctx = SearchContext(mode, settings or ApproxSettings())
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)
        ctx.drop_indexes()


def default_nlist(n: int) -> int:
    """``4 * sqrt(n)`` inverted lists, at least 1 and at most ``n / 39``."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build_index(
    database: np.ndarray, nlist: int, seed: int, on_disk: Path | None = None, shard_rows: int = 0
) -> Any:
    """Train and fill an inner-product ``IndexIVFFlat`` over ``database`` rows.

    With ``on_disk`` (an existing folder), the lists' rows go to a file there,
    memory-mapped, filled ``shard_rows`` rows at a time (see :func:`_fill_on_disk`).
    """
    faiss = require("faiss", extra="faiss", needed_for="search='approx'")
    n, dim = database.shape
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    # 64 rows per cell train k-means as well as faiss's default 256 here, in a quarter of the time.
    take = min(n, 64 * nlist)
    rows = np.sort(rng.choice(n, take, replace=False)) if take < n else np.arange(n)
    index.cp.seed = seed
    index.cp.niter = 10
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(BUILD_THREADS)
    try:
        t0 = time.perf_counter()
        index.train(np.ascontiguousarray(database[rows], np.float32))
        t1 = time.perf_counter()
        if on_disk is None:
            for d0 in range(0, n, ADD_BLOCK):
                index.add(np.ascontiguousarray(database[d0 : d0 + ADD_BLOCK], np.float32))
        else:
            _fill_on_disk(index, database, on_disk, max(1, shard_rows or n))
    finally:
        faiss.omp_set_num_threads(threads)
    log.info("approx index: k-means on %d rows, %d lists: %.1f s; adding %d rows: %.1f s",
             take, nlist, t1 - t0, n, time.perf_counter() - t1)  # fmt: skip
    return index


def _fill_on_disk(index: Any, database: np.ndarray, folder: Path, shard_rows: int) -> None:
    """Add ``database`` to the empty trained ``index`` with its lists in a memory-mapped file.

    Each shard of ``shard_rows`` rows is added to a copy of the empty index
    and written to ``folder``; faiss then merges the shards' lists (read
    memory-mapped) into ``folder/lists.ivfdata`` and the index uses that
    file. Anonymous memory holds one shard's rows at a time.
    """
    faiss = require("faiss", extra="faiss", needed_for="search='approx'")
    ondisk = require("faiss.contrib.ondisk", extra="faiss", needed_for="search='approx'")

    empty = faiss.serialize_index(index)
    names: list[str] = []
    for s0 in range(0, len(database), shard_rows):
        shard = faiss.deserialize_index(empty)
        end = min(len(database), s0 + shard_rows)
        for d0 in range(s0, end, ADD_BLOCK):
            rows = np.ascontiguousarray(database[d0 : min(d0 + ADD_BLOCK, end)], np.float32)
            shard.add_with_ids(rows, np.arange(d0, d0 + len(rows), dtype=np.int64))
        names.append(str(folder / f"shard-{len(names):05d}.index"))
        faiss.write_index(shard, names[-1])
        del shard
    with _stdout_to_stderr():  # faiss prints the file's resizing to the process's stdout
        ondisk.merge_ondisk(index, names, str(folder / "lists.ivfdata"))
    for name in names:
        Path(name).unlink()


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what C code writes to file descriptor 1 to 2 (stdout may carry a command's output)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # C's buffered stdout, before fd 1 is restored
        os.dup2(saved, 1)
        os.close(saved)


def index_for(ctx: SearchContext, database: np.ndarray) -> Any:
    """Return the run's index of ``database``, building it on first use.

    Rows beyond ``settings.memory_mb`` go to a memory-mapped file in a
    temporary folder that :meth:`SearchContext.drop_indexes` removes.
    """
    key = (id(database), database.shape[0], database.shape[1])
    ctx.last_build_seconds = 0.0
    if key not in ctx.indexes:
        st = ctx.settings
        nlist = st.nlist or default_nlist(len(database))
        ctx.drop_indexes()  # one database's index at a time bounds memory
        t0 = time.perf_counter()
        nlist = min(nlist, max(1, len(database)))
        row_bytes = 4 * database.shape[1] + 8  # a list row: float32 values and an int64 id
        budget = st.memory_mb * 2**20
        on_disk, shard_rows = None, 0
        if len(database) * row_bytes > budget:
            folder = tempfile.TemporaryDirectory(prefix="trainleak-ivf-", dir=st.workdir or None)
            ctx.scratch.append(folder)
            on_disk, shard_rows = Path(folder.name), int(budget // row_bytes)
        ctx.indexes[key] = build_index(database, nlist, st.seed, on_disk, shard_rows)
        ctx.last_build_seconds = time.perf_counter() - t0
        log.info("approx index: %d rows, %d lists, built in %.1f s",
                 len(database), nlist, time.perf_counter() - t0)  # fmt: skip
    return ctx.indexes[key]


def candidates(
    index: Any, queries: np.ndarray, kk: int, nprobe: int, grouped: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return faiss's ``kk`` candidates ``(scores, idx)`` per query at ``nprobe`` (-1 = none).

    Many queries are searched grouped by inverted list
    (:func:`trainleak._ivf_join.grouped_candidates`: the same candidates as
    faiss's per-query scan, ties at the ``kk``-th score aside, at matrix-product
    speed); few queries by faiss itself. ``grouped`` forces one or the other
    (``None``: :func:`trainleak._ivf_join.grouped_pays` decides).
    """
    from trainleak import _ivf_join  # imports torch: only when a search runs

    kk = max(1, min(kk, index.ntotal))
    if grouped is None:
        grouped = _ivf_join.grouped_pays(len(queries), nprobe, index.nlist, index.ntotal)
    if grouped:
        return _ivf_join.grouped_candidates(index, queries, kk, nprobe)
    index.nprobe = nprobe
    out_s = np.empty((len(queries), kk), np.float32)
    out_i = np.empty((len(queries), kk), np.int64)
    for q0 in range(0, len(queries), QUERY_BLOCK):
        q = np.ascontiguousarray(queries[q0 : q0 + QUERY_BLOCK], np.float32)
        out_s[q0 : q0 + len(q)], out_i[q0 : q0 + len(q)] = index.search(q, kk)
    return out_s, out_i


def least_nprobe(reaches: Callable[[int], bool], nlist: int, within: int = 8) -> int:
    """Return the least ``nprobe`` that ``reaches`` the target, to within ``1 / within`` of it.

    Doubles from 1 until the target is reached (or every list is probed),
    then bisects between the last value that fell short and the first that
    reached it, until they are within ``1 / within`` of each other (ours: 8,
    three more samples at most). Recall never falls as ``nprobe`` grows (more
    lists scanned: a superset of candidates), so bisection is sound. Doubling
    alone overshoots by up to 2x, and the search costs in proportion: on 1M
    real crop vectors (bench/README) one run stopped at 512 because 256 gave
    0.9899 against a target of 0.99, and took 26.9 instead of about 14 minutes.

    Example:
        >>> least_nprobe(lambda p: p >= 300, 4000)
        320
        >>> least_nprobe(lambda p: False, 50)
        50

    """
    below, nprobe = 0, 1
    while not reaches(nprobe):
        if nprobe >= nlist:
            return nlist
        below, nprobe = nprobe, min(nlist, 2 * nprobe)
    while nprobe - below > max(1, below // within):
        mid = (below + nprobe) // 2
        if reaches(mid):
            nprobe = mid
        else:
            below = mid
    return nprobe


def samples(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return two disjoint seeded query samples (tuning, report); all queries when ``n <= size``."""
    if n <= size:
        every = np.arange(n)
        return every, every
    order = np.random.default_rng(seed).permutation(n)
    tune = np.sort(order[:size])
    rest = order[size : 2 * size] if n >= 2 * size else order[n - size :]
    return tune, np.sort(rest)


def recall_at_k(
    found_scores: np.ndarray, found_idx: np.ndarray, exact_scores: np.ndarray, exact_idx: np.ndarray
) -> float:
    """Fraction of the exact top-k matched by the found top-k (ties at the k-th score count).

    All four arrays are ``(n, k)``, re-scored in float64 the same way, padded
    with ``-inf`` and ``-1``.

    Example:
        >>> s = np.array([[0.9, 0.5]]); i = np.array([[3, 4]])
        >>> recall_at_k(s, i, s, i), recall_at_k(np.array([[0.9, 0.1]]), i, s, i)
        (1.0, 0.5)

    """
    valid = exact_idx >= 0
    if not valid.any():
        return 1.0
    kth = np.where(valid, exact_scores, np.inf).min(axis=1, keepdims=True)
    hits = ((found_idx >= 0) & (found_scores >= kth)).sum(axis=1)
    return float(np.minimum(hits, valid.sum(axis=1)).sum() / valid.sum())
