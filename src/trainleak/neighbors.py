"""Exact k-nearest-neighbour search with memory bounded by the block size.

Conventions (as in faiss): :func:`knn` returns ``(scores, idx)`` of shape
``(n_query, k)``, float32 and int64, each row by descending score, where a
higher score means more similar.

* ``cosine``: rows are L2-normalised float32 embeddings and the score is their
  inner product. Inputs are not renormalised, so unnormalised rows give plain
  inner products.
* ``tiled_l2``: rows are images with pixels in ``[0, 1]``, laid out as
  ``tiles`` contiguous tiles of equal length. The distance ``d`` of Carlini et
  al. (2023, "Extracting training data from diffusion models") is the largest,
  over tiles, of the RMS difference between corresponding tiles, and the score
  is ``1 / (1 + d)``, in ``(0, 1]`` (1 for identical images, ordered as ``-d``):
  their threshold ``delta = 0.15`` is a score of ``1 / 1.15 = 0.8696``.

The database is scanned ``block_size`` rows at a time (each block converted to
float32 on its own, so a ``np.memmap`` database is never read whole) against
as many queries as keep one score block under :data:`SCORE_BLOCK_BYTES`, and a
running top-k is merged block by block. On the CPU (``auto`` is numpy there)
each thread scans a slice of the queries with a one-thread BLAS, and merges
its own blocks while they are in its core's cache: with the compiled kernels
(:func:`trainleak._topk.native`, built at install where a C compiler exists)
one comparison of every score with its query's k-th best, into a short
sorted list (or, past 64 entries, a heap) per query; on a processor with
AVX2 and FMA, a slice of 16 or more queries of at most 256 dimensions skips
the BLAS: each tile of 6 rows by 16 queries is multiplied and compared in
registers, and no score block is written (:meth:`trainleak._topk.NativeTopK.product`).
Without the kernels, only the cells of groups of 16 database rows whose
maximum beats that k-th best are compared (:class:`trainleak._topk.RunningTopK`).
Either way the search costs its matrix products plus about one pass over
each score block, or less. On a GPU a block merges into the queries whose best score in it
beats their k-th best, by a top-k.
The search ranks with float32 matrix products and keeps
:data:`RESCORE_MARGIN` more candidates than asked; their scores are then
recomputed one pair at a time in float64 and the top ``k`` by those scores
returned, so neither the scores nor which rows are chosen depend
on block size, query block, backend or device (float32 rounding, which does
depend on them, can order two rows within about 1e-7 of each other either way;
the float64 scores decide). Returned rows are ordered by score, then by lower
database index. Only when more than the margin of rows tie exactly at the k-th
place is which of them are kept up to the backend.
When the database has fewer than ``k`` rows (after ``exclude_self``), each row
is padded with score ``-inf`` and index ``-1``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

import numpy as np

from trainleak import approx_search
from trainleak._topk import native
from trainleak.approx_search import SearchRecord
from trainleak.block_search import (
    Backend,
    MetricName,
    _check,
    _knn_faiss,
    _knn_numpy,
    _knn_torch,
    pairwise_scores,
)
from trainleak.device import cpu_threads, pick_backend, resolve_device, search_pool

logger = logging.getLogger(__name__)

#: ``default`` = the mode of the run (:func:`trainleak.approx_search.use_search`), else exact.
Search = Literal["default", "exact", "approx"]

#: Bytes one block of float32 scores (query block x database block) may take.
#: The numpy backend's peak grows by about this much: 60k x 6k pixel rows with
#: the mirror rule grew 241 MB at 256 MB blocks and 53 MB at 64 MB, in 12-13 s
#: (torch: 316 MB at 64 MB, 15.5 s; bench/bench_search_memory.py). Its row
#: merge of earlier sessions peaked at 5 times the block (1,411 and 356 MB).
SCORE_BLOCK_BYTES = 64 * 2**20
#: Database rows scored at a time when ``block_size`` is not given (the fastest of
#: 256-4,096 at 2,000 queries, bench/README.md "Exact search vs faiss").
BLOCK_ROWS = 2048
#: With few queries (fewer than ``FEW_QUERY_SCORES / BLOCK_ROWS``, 128) and no
#: ``block_size`` given, a block takes more rows, up to this many scores and
#: ``SCORE_BLOCK_BYTES`` of float32 rows: one query against 100,000 rows is
#: then one product, not 49 (each with a few torch or numpy calls around it).
FEW_QUERY_SCORES = 2**18
#: Candidates kept beyond ``k`` by the float32 search, for the float64 re-scoring to rank.
RESCORE_MARGIN = 8
#: Row values (pairs x dim) the float64 re-scoring reads at a time: 1 MB of
#: float32 rows, which stay in cache (2.5x faster than 16 MB at d = 512).
RESCORE_CELLS = 2**18

# resolve_device lives in trainleak.device; callers of the search import it here too.
__all__ = ["Backend", "MetricName", "knn", "pairwise_scores", "pick_backend", "resolve_device"]


def knn(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    metric: MetricName = "cosine",
    backend: Backend = "auto",
    block_size: int | None = None,
    tiles: int = 16,
    exclude_self: bool = False,
    device: str = "cpu",
    self_offset: int = 0,
    search: Search = "default",
) -> tuple[np.ndarray, np.ndarray]:
    """Find the top-k database rows of every query: exactly, or approximately with measured recall.

    Args:
        queries: ``(n_query, dim)`` rows (unit rows for ``cosine``).
        database: ``(n_database, dim)`` rows; may be a ``np.memmap``.
        k: neighbours per query.
        metric: ``cosine`` (inner product) or ``tiled_l2`` (``1 / (1 + d)`` of the
            tiled distance ``d``).
        backend: ``torch``, ``numpy``, ``faiss`` (``IndexFlatIP``, cosine
            only, needs ``pip install 'trainleak[faiss]'``), or ``auto``: see
            :func:`pick_backend`.
        block_size: database rows scored at a time; bounds memory. ``None``:
            :data:`BLOCK_ROWS`, more for few queries (:data:`FEW_QUERY_SCORES`).
        tiles: tiles per row for ``tiled_l2``.
        exclude_self: queries are the database itself; leave out database row
            ``i`` from the results of query ``i``.
        device: torch device for the ``torch`` backend, e.g. ``"cuda"``; never
            chosen implicitly.
        self_offset: with ``exclude_self``, query ``i`` is database row
            ``self_offset + i`` (a block of the database's own rows, or a
            database that is a shard of the queries' set); it may lie partly
            or wholly outside the database.
        search: ``exact``; ``approx`` (cosine only: a faiss inverted-file
            index proposes candidates, re-scored exactly, its recall@k
            measured on sampled queries and recorded in the run's
            :class:`~trainleak.approx_search.SearchContext`, see
            :mod:`trainleak.approx_search`); or ``default``, the run's mode
            (exact outside :func:`~trainleak.approx_search.use_search`;
            a ``tiled_l2`` search stays exact).

    Returns:
        ``(scores, idx)``, ``(n_query, k)`` float32 and int64, rows by descending
        score, padded with ``-inf`` and ``-1`` past the database size.

    Raises:
        ValueError: for ``k < 1``, mismatched dims, or an unsupported option.
        ImportError: for ``backend="faiss"`` without faiss installed.

    Example:
        >>> db = np.eye(3, dtype=np.float32)
        >>> s, i = knn(db[:1], db, k=2)
        >>> s.tolist(), i.tolist()
        ([[1.0, 0.0]], [[0, 1]])

    """
    queries = np.ascontiguousarray(queries, np.float32)
    _check(queries, database, k, metric, tiles, backend)
    if block_size is None:
        block_size = _auto_block(len(queries), len(database), queries.shape[1])
    elif block_size < 1:
        raise ValueError(f"block_size must be 1 or more, got {block_size}")
    if search not in ("default", "exact", "approx"):
        raise ValueError(f"unknown search {search!r}: use 'exact' or 'approx'")
    if search == "approx" and metric != "cosine":
        raise ValueError("search='approx' supports the cosine metric only: use search='exact'")
    ctx = approx_search.current()
    mode = ctx.mode if search == "default" else search
    if mode == "approx" and metric == "cosine" and len(queries) and len(database):
        return _knn_approx(queries, database, k, exclude_self, self_offset, ctx)
    ctx.records.append(SearchRecord("exact", len(queries), len(database), k))
    return _knn_exact(
        queries, database, k, metric, backend, block_size, tiles, exclude_self, device, self_offset
    )


def _auto_block(n_query: int, n_database: int, dim: int) -> int:
    """Database rows per block: :data:`BLOCK_ROWS`, more for few queries or a small database.

    A database whose scores against all the queries fit in one score block
    is one block: each query's list is then merged once, where blocks of
    :data:`BLOCK_ROWS` would merge the many new entries of the first few
    blocks one block at a time (10,000 rows x 1,000 queries: 1.58x faiss's
    time, not 1.78x, at d = 128; 1.21x, not 1.36x, at d = 512; faster in 27
    of 41 and 24 of 25 interleaved rounds).

    Example:
        >>> _auto_block(2000, 10**6, 128), _auto_block(1, 10**6, 128), _auto_block(1, 5000, 3072)
        (2048, 131072, 5000)
        >>> _auto_block(1000, 10_000, 128), _auto_block(2000, 10_000, 128)
        (10000, 2048)

    """
    if max(n_query, dim) * n_database * 4 <= SCORE_BLOCK_BYTES:
        return max(1, n_database)
    if n_query * BLOCK_ROWS >= FEW_QUERY_SCORES:
        return BLOCK_ROWS
    rows = min(FEW_QUERY_SCORES // max(1, n_query), SCORE_BLOCK_BYTES // (4 * dim))
    return max(BLOCK_ROWS, min(n_database, rows))


def _knn_exact(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    metric: MetricName,
    backend: Backend,
    block_size: int,
    tiles: int,
    exclude_self: bool,
    device: str,
    self_offset: int,
) -> tuple[np.ndarray, np.ndarray]:
    n, m = len(queries), len(database)
    if backend == "auto":
        backend = pick_backend(n, m, queries.shape[1], device)
    search = {"torch": _knn_torch, "numpy": _knn_numpy}.get(backend)
    kk, k = min(k + RESCORE_MARGIN, max(k, m)), k
    scores = np.full((n, kk), -np.inf, np.float32)
    idx = np.full((n, kk), -1, np.int64)
    qb = max(1, SCORE_BLOCK_BYTES // (4 * max(1, min(block_size, m))))
    logger.debug("knn %s/%s: %d x %d, blocks %d x %d", backend, metric, n, m, qb, block_size)
    for q0 in range(0, n if m else 0, qb):
        q = queries[q0 : q0 + qb]
        if search is None:
            own = self_offset + q0 if exclude_self else None
            s, i = _knn_faiss(q, database, kk, block_size, own)
        else:
            self_q0 = self_offset + q0 if exclude_self else None
            s, i = search(q, database, kk, metric, block_size, tiles, self_q0, device)
        scores[q0 : q0 + len(q), : s.shape[1]] = s
        idx[q0 : q0 + len(q), : s.shape[1]] = i
    idx[np.isneginf(scores)] = -1  # masked self matches
    scores, idx = _tie_order(_rescore(queries, database, idx, metric, tiles), idx)
    return np.ascontiguousarray(scores[:, :k]), np.ascontiguousarray(idx[:, :k])


def _knn_approx(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    exclude_self: bool,
    self_offset: int,
    ctx: approx_search.SearchContext,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k (see :mod:`trainleak.approx_search`), recorded with its measured recall."""
    t0 = time.perf_counter()
    st = ctx.settings
    index = approx_search.index_for(ctx, database)
    tune, report = approx_search.samples(len(queries), st.sample, st.seed)

    def exact(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, i = _knn_exact(queries[rows], database, k + exclude_self, "cosine", "auto", 2048,
                          1, False, "cpu", 0)  # fmt: skip
        return _cut(s, i, rows, k, exclude_self, self_offset)

    def found(rows: np.ndarray | slice, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        q = queries[rows]
        _, i = approx_search.candidates(index, q, k + RESCORE_MARGIN + exclude_self, nprobe)
        s = _rescore(q, database, i, "cosine", 1)
        at = np.arange(len(queries))[rows]
        return _cut(*_tie_order(s, i), at, k, exclude_self, self_offset)

    t1 = time.perf_counter()
    want = exact(tune)
    nprobe = approx_search.least_nprobe(
        lambda p: approx_search.recall_at_k(*found(tune, p), *want) >= st.target_recall,
        int(index.nlist),
    )
    t2 = time.perf_counter()
    scores, idx = found(slice(None), nprobe)
    t3 = time.perf_counter()
    truth = want if report is tune else exact(report)
    recall = approx_search.recall_at_k(scores[report], idx[report], *truth)
    t4 = time.perf_counter()
    record = SearchRecord("approx", len(queries), len(database), k, recall, len(report),
                          int(index.nlist), nprobe, t4 - t0, ctx.last_build_seconds,
                          (t2 - t1) + (t4 - t3))  # fmt: skip
    ctx.records.append(record)
    logger.info("approx knn: %s", record)
    return scores, idx


def _cut(
    s: np.ndarray, i: np.ndarray, rows: np.ndarray, k: int, exclude_self: bool, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop each query's own row (``exclude_self``), keep the top ``k``, pad to ``k`` columns."""
    if exclude_self:
        own = i == (offset + np.asarray(rows))[:, None]
        s, i = _tie_order(np.where(own, -np.inf, s), np.where(own, -1, i))
    s, i = s[:, :k], i[:, :k]
    if s.shape[1] < k:
        pad = k - s.shape[1]
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return np.ascontiguousarray(s, np.float32), np.ascontiguousarray(i, np.int64)


def _rescore(
    q: np.ndarray, db: np.ndarray, idx: np.ndarray, metric: MetricName, tiles: int
) -> np.ndarray:
    """Score the found pairs one pair at a time in float64 (padding stays ``-inf``).

    A blocked matrix product rounds differently with the block shape; scoring
    the chosen pairs the same way every time makes results independent of
    block size and backend, to the bit, and more accurate than float32 sums.
    Cosine pairs of float32 rows go to the compiled kernel where it is built
    (:func:`trainleak._topk.native`: eight float64 partial sums in a fixed
    order, in AVX2 where the processor has it, with the same bits);
    otherwise the pairs are scored :data:`RESCORE_CELLS` row values at a
    time (their float32 rows stay in cache while einsum widens them to
    float64). Either runs on the CPU search's threads when there are many.
    The two round differently in the last bits of a float64, so a float32
    score can differ by one unit between an install with the kernels and one
    without; within an install, scores do not depend on the search.
    """
    out = np.full(idx.shape, -np.inf, np.float32)
    if len(db) == 0 or idx.size == 0:
        return out
    lib = native()
    if lib is not None and metric == "cosine" and _flat(db) and _flat(q):
        idx = np.ascontiguousarray(idx, np.int64)
        n, kk, d = idx.shape[0], idx.shape[1], q.shape[1]

        def kernel(s0: int) -> None:
            rows = min(step, n - s0)
            at_q, at_i, at_out = 4 * s0 * d, 8 * s0 * kk, 4 * s0 * kk
            lib.tl_rescore(db.ctypes.data, d, q.ctypes.data + at_q, d, d,
                           idx.ctypes.data + at_i, rows, kk, out.ctypes.data + at_out)  # fmt: skip

        threads = _threads(idx.size * d)
        step = -(-n // threads)
        _each(kernel, range(0, n, step), threads)
        return out
    step = max(1, RESCORE_CELLS // max(1, idx.shape[1] * q.shape[1]))

    def score(s0: int) -> None:
        part = idx[s0 : s0 + step]
        valid = part >= 0
        rows = db[np.where(valid, part, 0)]
        if metric == "cosine":
            # float32 rows widened inside einsum: exact products, float64 sums, no copy.
            vals = np.einsum("nkd,nd->nk", rows, q[s0 : s0 + step], dtype=np.float64)
        else:
            diff = (np.asarray(rows, np.float64) - q[s0 : s0 + step, None, :]).reshape(
                *part.shape, tiles, -1
            )
            vals = 1.0 / (1.0 + np.sqrt((diff * diff).mean(-1).max(-1)))
        out[s0 : s0 + step] = np.where(valid, vals, -np.inf)

    _each(score, range(0, len(q), step), _threads(idx.size * q.shape[1]))
    return out


def _flat(a: np.ndarray) -> bool:
    """Whether ``a`` is C-contiguous float32 (what the compiled re-score reads)."""
    return a.dtype == np.float32 and a.flags.c_contiguous


#: A re-score of at least this many row values (pairs x dim) runs on the CPU search's threads.
THREAD_CELLS = 2**22


def _threads(cells: int) -> int:
    """Return the threads for a re-score of ``cells`` row values (:data:`THREAD_CELLS`)."""
    return cpu_threads() if cells >= THREAD_CELLS else 1


def _each(job: Callable[[int], None], starts: range, threads: int) -> None:
    """Run ``job`` on each start, on ``threads`` of the CPU search's threads."""
    if threads == 1 or len(starts) == 1:
        for s0 in starts:
            job(s0)
    else:
        list(search_pool(threads).map(job, starts))


#: Lists of at most this many cells are ordered by the compiled kernel (an insertion sort).
NATIVE_ORDER_CELLS = 64


def _tie_order(scores: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by descending score, then ascending index (padding last)."""
    lib = native()
    if lib is not None and 0 < scores.shape[1] <= NATIVE_ORDER_CELLS:
        s = np.array(scores, np.float32, order="C")
        i = np.array(idx, np.int64, order="C")
        lib.tl_order(s.ctypes.data, i.ctypes.data, s.shape[0], s.shape[1])
        return s, i
    key_i = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((key_i, -scores), axis=1) if scores.size else np.zeros(idx.shape, np.intp)
    return (
        np.take_along_axis(scores, order, 1).astype(np.float32),
        np.take_along_axis(idx, order, 1).astype(np.int64),
    )


def merge_topk(scores: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` per row by descending score, then ascending index; ``-1`` padding last.

    Example:
        >>> s, i = merge_topk(np.array([[0.5, 0.9, 0.9]]), np.array([[4, 7, 2]]), 2)
        >>> s.tolist(), i.tolist()
        ([[0.8999999761581421, 0.8999999761581421]], [[2, 7]])

    """
    n = len(scores)
    out_s = np.full((n, k), -np.inf, np.float32)
    out_i = np.full((n, k), -1, np.int64)
    if scores.shape[1] == 0:
        return out_s, out_i
    key_i = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((key_i, -scores), axis=1)[:, :k]
    w = order.shape[1]
    out_s[:, :w] = np.take_along_axis(scores, order, 1)
    out_i[:, :w] = np.take_along_axis(idx, order, 1)
    out_i[np.isneginf(out_s)] = -1
    return out_s, out_i
