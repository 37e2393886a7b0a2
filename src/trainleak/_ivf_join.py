"""Many queries against an inverted-file index, grouped by inverted list.

faiss's ``IndexIVFFlat.search`` scans each query's probed lists one query at a
time: every scanned row is read from memory for one inner product, so a large
self-join runs at memory speed (about 1 GFLOP/s on the development machine).
When many queries probe each list, :func:`grouped_candidates` turns the work
around: for a block of queries it finds the probes faiss's quantiser gives
(the lists of highest centroid score, :func:`_probes`), then for each list
takes the queries of the block that probe it and scores them against the
list's rows in one float32 product, so each list row is read once per block
and the work runs at matrix-product speed. Where the compiled kernels run
(AVX2 and FMA), the product and the top-k are one compiled pass over the
queries in place (:class:`_Compiled`); elsewhere torch makes the product and
the top-k.

The candidates are the ones faiss's IVF-flat search would return at the same
``nprobe`` (same probes, same lists, top ``kk`` by float32 score); only
rounding in the float32 sums differs, which can swap rows (or lists) within
about 1e-6 of each other at the last place. Callers re-score candidates in
float64 anyway.

Memory is bounded by the query block: the probes of one block, one list's
scores at a time, and a running top-``kk`` per query of the block; the list
rows are read in place from the index (no copy of the database).

Each query's nearest list is scanned first and keeps its whole top ``kk``, so
the running ``kk``-th score is a good bar from the start; after that a list
only merges into the queries whose best score in it beats their bar (most
probed lists improve nothing), so selection costs little beside the products.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from trainleak._optional import require
from trainleak._topk import NativeTopK, fused_product, native
from trainleak.device import one_blas_thread

log = logging.getLogger(__name__)

__all__ = ["MIN_LIST_ROWS", "MIN_PAIRS_PER_LIST", "grouped_candidates", "grouped_pays"]

#: Queries searched per block: bounds the probes (``block x nprobe`` int64) and the running top-k.
BLOCK = 32768
#: The grouped search is used when one list's product (the queries of a block
#: that probe it x the rows in it) has at least this many pairs on average and
#: the lists hold at least :data:`MIN_LIST_ROWS` rows: below that the per-list
#: overhead (about 0.2 ms, and gathering the list's queries) outweighs the
#: faster products. Measured in bench/bench_approx.py (bench/README.md): on
#: 100,000 real 128-d rows (1,264 lists of ~80 rows, nprobe 256) the grouped
#: search was 0.85x faiss's time at 250 queries (4,000 pairs per list), 1.5x
#: faster at 1,000 (16,000 pairs); on 20,000 rows (lists of ~40 rows) it was
#: slower up to 4,000 queries.
MIN_PAIRS_PER_LIST = 10_000
MIN_LIST_ROWS = 64
#: Score and merge each list with the compiled one-pass product (product and
#: top-k in registers, :meth:`~trainleak._topk.NativeTopK.gather_product`)
#: where it runs (AVX2 and FMA); else, or when False, with torch's product
#: and top-k.
COMPILED = True
#: Bytes of float32 scores (queries x every centroid) the probe search
#: (:func:`_probes`) holds at a time: 1,024 queries at 4,000 lists. Its
#: partition takes about three times as much again.
PROBE_SCORE_BYTES = 16 * 2**20
#: :data:`MIN_LIST_ROWS` for the compiled product, whose per-list cost is
#: smaller: on 20,000 rows (512 lists of ~39 rows, nprobe 96) it took 0.76x
#: faiss's time at 4,000 queries (29,000 pairs per list) and 0.49x at 16,000
#: (bench/bench_approx.py --crossover, bench/README, session 13).
MIN_LIST_ROWS_COMPILED = 32


def grouped_pays(n_queries: int, nprobe: int, nlist: int, ntotal: int) -> bool:
    """Whether :func:`grouped_candidates` should beat faiss's per-query scan for this search.

    Example:
        >>> grouped_pays(250, 256, 4000, 1_000_000), grouped_pays(1_000_000, 256, 4000, 1_000_000)
        (False, True)

    """
    nlist = max(1, nlist)
    pairs = min(n_queries, BLOCK) * nprobe / nlist * (ntotal / nlist)
    rows = MIN_LIST_ROWS_COMPILED if COMPILED and fused_product() else MIN_LIST_ROWS
    return pairs >= MIN_PAIRS_PER_LIST and ntotal / nlist >= rows


def _lists(index: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(row ids, rows)`` of every inverted list, as views of the index's own memory."""
    faiss = require("faiss", extra="faiss", needed_for="search='approx'")

    inv = index.invlists
    d = index.d
    if index.code_size != 4 * d:
        raise TypeError("grouped search needs an IndexIVFFlat (float32 rows in its lists)")
    out = []
    for li in range(index.nlist):
        size = inv.list_size(li)
        if size == 0:
            out.append((torch.empty(0, dtype=torch.int64), torch.empty((0, d))))
            continue
        ids = faiss.rev_swig_ptr(inv.get_ids(li), size)
        codes = faiss.rev_swig_ptr(inv.get_codes(li), size * index.code_size)
        out.append(
            (torch.from_numpy(ids), torch.from_numpy(codes.view(np.float32).reshape(size, d)))
        )
    return out


def grouped_candidates(
    index: Any,
    queries: np.ndarray,
    kk: int,
    nprobe: int,
    block: int = BLOCK,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``kk`` candidates of each query among its ``nprobe`` probed lists, grouped by list.

    Args:
        index: a trained, filled faiss ``IndexIVFFlat`` (inner product).
        queries: ``(n, d)`` float32 rows (a memory-mapped array is read a block at a time).
        kk: candidates per query (capped at the rows in the index).
        nprobe: lists probed per query, as in faiss.
        block: queries per block (memory: about ``block x nprobe x 32`` bytes per worker).
        workers: threads, each searching its own query blocks; 0 = torch's thread count.

    Returns:
        ``(scores, idx)``, ``(n, kk)`` float32 and int64, each row by descending
        float32 score; ``-inf`` and ``-1`` where the probed lists hold fewer than
        ``kk`` rows.

    """
    faiss = require("faiss", extra="faiss", needed_for="search='approx'")

    nprobe = max(1, min(nprobe, index.nlist))
    kk = max(1, min(kk, index.ntotal))
    workers = max(1, workers or torch.get_num_threads())
    block = max(1, min(block, -(-len(queries) // workers)))
    lists = _lists(index)
    compiled = _Compiled(lists) if COMPILED and fused_product() else None
    centroids = _centroids(index)
    out_s = np.empty((len(queries), kk), np.float32)
    out_i = np.empty((len(queries), kk), np.int64)

    def run(q0: int) -> tuple[np.ndarray, np.ndarray]:
        faiss.omp_set_num_threads(1)  # OpenMP's thread count is per calling thread
        q = np.ascontiguousarray(queries[q0 : q0 + block], np.float32)
        if not q.flags.writeable:  # a read-only memory map's rows (torch wants its own)
            q = q.copy()
        if centroids is not None:
            probes = _probes(centroids, q, nprobe)
        else:
            _, probes = index.quantizer.search(q, nprobe)
        if compiled is not None:
            return compiled.block(q, probes, kk)
        s, i = _block(torch.from_numpy(q), probes, lists, kk)
        return s.numpy(), i.numpy()

    # One thread per worker, each on its own query blocks: the per-list products
    # are small, and splitting each across threads cost more than it gained on
    # the shared development machine (OpenMP wake-ups of ~1 ms per operation
    # under load, against ~40 us for the operation itself).
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with one_blas_thread(), ThreadPoolExecutor(workers) as pool:
            starts = range(0, len(queries), block)
            t0 = time.perf_counter()
            for q0, (s, i) in zip(starts, pool.map(run, starts), strict=True):
                out_s[q0 : q0 + len(s)], out_i[q0 : q0 + len(s)] = s, i
                log.debug("grouped search: %d of %d queries in %.1f s",
                          q0 + len(s), len(queries), time.perf_counter() - t0)  # fmt: skip
    finally:
        torch.set_num_threads(torch_threads)
    return out_s, out_i


class _Compiled:
    """The lists scored and merged by the compiled one-pass product.

    For each list, its rows are packed (a few dozen kB) and scored against
    the block's queries that probe it, read in place, by
    :meth:`~trainleak._topk.NativeTopK.gather_product`: the product and the
    top-k in one pass, no score block, each query's list updated in place.
    The running lists hold each row's position in the lists' concatenation,
    turned into its id at the end (the ids are read in place from the index:
    no copy of them); of rows tied at a query's last place, the one met
    first is kept (faiss keeps either).
    """

    def __init__(self, lists: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        lib = native()
        assert lib is not None
        self.lib = lib
        self.rows = [r.numpy() for _, r in lists]
        self.ids = [i.numpy() for i, _ in lists]
        self.sizes = [len(r) for r in self.rows]
        self.base = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    def _ids(self, at: np.ndarray) -> np.ndarray:
        """Return the row id at each position (``-1`` stays ``-1``), list by list."""
        flat = at.ravel()
        out = np.full(flat.shape, -1, np.int64)
        pos = np.flatnonzero(flat >= 0)
        li = np.searchsorted(self.base, flat[pos], side="right") - 1
        order = np.argsort(li, kind="stable")
        pos, li = pos[order], li[order]
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(li)) + 1, [len(li)]])
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            if a < b:
                p, lst = pos[a:b], li[a]
                out[p] = self.ids[lst][flat[p] - self.base[lst]]
        return out.reshape(at.shape)

    def block(self, q: np.ndarray, probes: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the top ``kk`` of one query block over its probed lists, sorted, as ids."""
        top = NativeTopK(len(q), kk, self.lib)
        # Each query's nearest list first: its whole top kk, a good bar for the rest.
        for part in (probes[:, :1], probes[:, 1:]):
            if part.shape[1] == 0:
                continue
            for li, qs in _probing(part, self.sizes):
                rows = self.rows[li]
                top.gather_product(q, qs, top.pack(rows), len(rows), int(self.base[li]))
        s, at = top.lists()
        i = self._ids(at)
        self.lib.tl_order(s.ctypes.data, i.ctypes.data, s.shape[0], s.shape[1])
        return s, i


def _centroids(index: Any) -> np.ndarray | None:
    """Return the coarse quantiser's centroids ``(nlist, d)`` if it is a flat IP index."""
    faiss = require("faiss", extra="faiss", needed_for="search='approx'")

    quantizer = faiss.downcast_index(index.quantizer)
    if not isinstance(quantizer, faiss.IndexFlat):
        return None
    if quantizer.metric_type != faiss.METRIC_INNER_PRODUCT or quantizer.ntotal != index.nlist:
        return None
    return np.ascontiguousarray(quantizer.reconstruct_n(0, quantizer.ntotal), np.float32)


def _probes(centroids: np.ndarray, q: np.ndarray, nprobe: int) -> np.ndarray:
    """Each query's ``nprobe`` lists of highest centroid score, the highest first.

    The lists faiss's flat quantiser gives, by a float32 product and a
    partition instead of its heap of ``nprobe`` a query: about half its time
    at nprobe 288 of 4,000 lists (32,768 queries: 1.2 s against 2.3-2.4 s, one
    thread). Both round float32 sums, so a list tied with the last probed one
    to the last bit may be swapped for it (3 queries in 10,000 with 4,000
    centroids drawn from real crops, some of them duplicates that tie
    exactly). Lists after the first come in no order (the search needs only
    the nearest first). A query whose scores are not all finite gets no list
    (-1), as faiss gives a NaN query.
    """
    nlist = len(centroids)
    out = np.empty((len(q), nprobe), np.int64)
    chunk = max(1, PROBE_SCORE_BYTES // (4 * max(1, nlist)))
    for a in range(0, len(q), chunk):
        s = q[a : a + chunk] @ centroids.T
        if nprobe < nlist:
            p = np.argpartition(-s, nprobe - 1, axis=1)[:, :nprobe]
        else:
            p = np.tile(np.arange(nlist), (len(s), 1))
        rows, at = np.arange(len(p)), np.argmax(np.take_along_axis(s, p, 1), axis=1)
        near = p[rows, at]  # the nearest list goes first, the first to its place
        p[rows, at] = p[:, 0]
        p[:, 0] = near
        p[~np.isfinite(s).all(axis=1)] = -1
        out[a : a + len(p)] = p
    return out


def _by_list(probes: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the queries of ``probes`` (``(m, p)`` list numbers) by list, and each list's start."""
    # A probe of -1 (faiss found no list: a query with a NaN) becomes nlist: it
    # sorts after every list and no list's range takes it.
    keys = np.where(probes < 0, nlist, probes)
    # Stable radix sort on 16-bit keys where the lists fit (numpy's stable sort of small ints).
    keys = keys.astype(np.uint16 if nlist < 65535 else np.int64).ravel()
    order = np.argsort(keys, kind="stable")
    starts = np.zeros(nlist + 1, np.int64)
    np.cumsum(np.bincount(keys, minlength=nlist + 1)[:nlist], out=starts[1:])
    return order // probes.shape[1], starts


def _probing(probes: np.ndarray, sizes: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield each list that holds rows and that queries probe: its number, and those queries."""
    qid, starts = _by_list(probes, len(sizes))
    for li, size in enumerate(sizes):
        a, b = starts[li], starts[li + 1]
        if a < b and size:
            yield li, qid[a:b]


def _list_scores(
    q: torch.Tensor, probes: np.ndarray, lists: list[tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield, list by list, the queries probing it, its row ids, and their scores against it."""
    for li, which in _probing(probes, [len(ids) for ids, _ in lists]):
        ids, rows = lists[li]
        qs = torch.from_numpy(which)
        yield qs, ids, torch.mm(q.index_select(0, qs), rows.T)


def _block(
    q: torch.Tensor, probes: np.ndarray, lists: list[tuple[torch.Tensor, torch.Tensor]], kk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the top ``kk`` of one query block over its probed lists."""
    m = len(q)
    best_s = torch.full((m, kk), -torch.inf)
    best_i = torch.full((m, kk), -1, dtype=torch.int64)
    # Pass 1: each query's nearest list fills its top kk (a good bar before pass 2).
    for qs, ids, scores in _list_scores(q, probes[:, :1], lists):
        top = min(kk, len(ids))
        s, j = torch.topk(scores, top, dim=1)
        best_s[qs, :top], best_i[qs, :top] = s, ids[j]
    if probes.shape[1] == 1:
        return _sorted(best_s, best_i)
    # Pass 2: the other probes; a list merges only into the queries it improves.
    bar = best_s[:, -1].clone()
    for qs, ids, scores in _list_scores(q, probes[:, 1:], lists):
        hit = scores.amax(dim=1) > bar.index_select(0, qs)
        if not bool(hit.any()):
            continue
        qs, scores = qs[hit], scores[hit]
        cand_s = torch.cat((best_s.index_select(0, qs), scores), dim=1)
        cand_i = torch.cat((best_i.index_select(0, qs), ids.expand(len(qs), -1)), dim=1)
        s, j = torch.topk(cand_s, kk, dim=1)
        best_s.index_copy_(0, qs, s)
        best_i.index_copy_(0, qs, torch.gather(cand_i, 1, j))
        bar.index_copy_(0, qs, s[:, -1])
    return _sorted(best_s, best_i)


def _sorted(s: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows by descending score; unfilled places (``-inf``) carry index ``-1``."""
    s, j = torch.sort(s, dim=1, descending=True)
    i = torch.gather(i, 1, j)
    return s, torch.where(torch.isneginf(s), torch.full_like(i, -1), i)
