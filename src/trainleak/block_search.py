"""The exact search's blockwise backends (numpy, torch, faiss) and the score of small sets.

:func:`trainleak.neighbors.knn` scans the database a block at a time with
one of these and merges a running top-k; see its module docstring for the
conventions and the memory bound. They live apart from ``knn`` to keep each
module small; ``pairwise_scores`` is re-exported by :mod:`trainleak.neighbors`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np

from trainleak._optional import require
from trainleak._topk import NativeTopK, fused_product, merge_lists, running_topk
from trainleak.device import cpu_threads, one_blas_thread, search_pool

if TYPE_CHECKING:
    import torch

MetricName = Literal["cosine", "tiled_l2"]
Backend = Literal["auto", "torch", "numpy", "faiss"]

__all__ = [
    "Backend",
    "MetricName",
    "pairwise_scores",
    "score_at_distance",
    "score_to_distance",
    "thread_shares",
]


def score_to_distance(scores: np.ndarray | float, metric: str) -> np.ndarray | float:
    """Return the distance a score stands for: ``1/s - 1`` for ``tiled_l2``, else ``1 - s``.

    ``tiled_l2`` scores are ``1 / (1 + d)`` of the tiled l2 distance ``d``: in
    ``(0, 1]``, 1 for identical rows, ordered exactly as ``-d`` (a monotone
    map, so searches rank as by distance); ``cosine`` scores are ``1 - d``.

    Example:
        >>> score_to_distance(0.8, "tiled_l2"), score_to_distance(0.8, "cosine")
        (0.25, 0.19999999999999996)

    """
    x = np.asarray(scores, np.float64)
    d = 1.0 / x - 1.0 if metric == "tiled_l2" else 1.0 - x
    return float(d) if d.ndim == 0 else d


def score_at_distance(distance: float, metric: str) -> float:
    """Return the score of a distance (the inverse of :func:`score_to_distance`).

    Example:
        >>> round(score_at_distance(0.15, "tiled_l2"), 4)  # Carlini et al.'s delta
        0.8696

    """
    return 1.0 / (1.0 + float(distance)) if metric == "tiled_l2" else 1.0 - float(distance)


def _check(
    queries: np.ndarray, database: np.ndarray, k: int, metric: str, tiles: int, backend: str
) -> None:
    if k < 1:
        raise ValueError(f"k must be 1 or more, got {k}: ask for at least one neighbour")
    if queries.ndim != 2 or database.ndim != 2:
        raise ValueError(
            f"queries and database must be 2-d (n, dim), got shapes {queries.shape} and "
            f"{database.shape}: reshape single rows with x[None]"
        )
    if queries.shape[1] != database.shape[1]:
        raise ValueError(
            f"queries have dim {queries.shape[1]} but the database has dim {database.shape[1]}: "
            "embed both with the same encoder"
        )
    if metric not in ("cosine", "tiled_l2"):
        raise ValueError(f"unknown metric {metric!r}: use 'cosine' or 'tiled_l2'")
    if backend not in ("auto", "torch", "numpy", "faiss"):
        raise ValueError(f"unknown backend {backend!r}: use auto, torch, numpy or faiss")
    if backend == "faiss" and metric != "cosine":
        raise ValueError("the faiss backend supports the cosine metric only: use backend='torch'")
    if metric == "tiled_l2" and (tiles < 1 or queries.shape[1] % tiles):
        raise ValueError(
            f"row length {queries.shape[1]} is not a multiple of tiles={tiles}: pass the "
            "number of tiles the images were cut into"
        )


def pairwise_scores(
    a: np.ndarray, b: np.ndarray, metric: MetricName = "cosine", tiles: int = 16
) -> np.ndarray:
    """Return the full score matrix of two small sets.

    Args:
        a: rows ``(n_a, dim)``.
        b: rows ``(n_b, dim)``.
        metric: ``cosine`` (inner product) or ``tiled_l2`` (``1 / (1 + d)`` of the tiled
            distance ``d``).
        tiles: tiles per row for ``tiled_l2``.

    Returns:
        ``(n_a, n_b)`` float32 scores, higher is more similar.

    Example:
        >>> pairwise_scores(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
        array([[1., 0.],
               [0., 1.]], dtype=float32)

    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    _check(a, b, 1, metric, tiles, "numpy")
    if metric == "cosine":
        return a @ b.T
    td = a.shape[1] // tiles
    an = np.einsum("ntd,ntd->nt", *(a.reshape(len(a), tiles, td),) * 2)
    bn = np.einsum("ntd,ntd->nt", *(b.reshape(len(b), tiles, td),) * 2)
    worst = np.full((len(a), len(b)), -np.inf, np.float32)
    for t in range(tiles):
        d2 = a[:, t * td : (t + 1) * td] @ b[:, t * td : (t + 1) * td].T
        d2 *= -2
        d2 += an[:, t, None]
        d2 += bn[None, :, t]
        np.maximum(worst, d2, out=worst)
    # Clamping once after the max is the same as clamping every tile.
    # 1 / (1 + d): in (0, 1], ordered as -d (see score_to_distance).
    return (1.0 / (1.0 + np.sqrt(np.maximum(worst, 0) / td))).astype(np.float32)


def _db_block(database: np.ndarray, d0: int, block: int, writeable: bool = False) -> np.ndarray:
    part = np.ascontiguousarray(database[d0 : d0 + block], np.float32)
    # torch.from_numpy warns on read-only arrays such as a read-only memmap;
    # numpy and faiss read a read-only block in place (no copy per block).
    return part.copy() if writeable and not part.flags.writeable else part


def _self_cells(q0: int | None, n: int, d0: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a (query block x database block) where query i meets row i."""
    if q0 is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    r = np.arange(max(q0, d0), min(q0 + n, d0 + m))
    return r - q0, r - d0


def _knn_numpy(
    q: np.ndarray,
    db: np.ndarray,
    k: int,
    metric: MetricName,
    block: int,
    tiles: int,
    q0: int | None,
    device: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Search with numpy: one scan per thread, each with a single-threaded BLAS.

    Threads (as many as numpy's BLAS would use, see :func:`cpu_threads`) each
    scan a slice of the queries, or with few queries a share of the
    database; each makes its own products and merges them into its own
    lists while its scores are still in its core's cache, where a
    multi-threaded product followed by a one-thread merge leaves the other
    cores idle during the merge.
    """
    shares = thread_shares(len(q), len(db), q.shape[1])
    if len(shares) == 1:
        # One pass of the compiled kernel for a few queries only where the BLAS
        # would also run on one thread: a two-thread product beats it.
        fuse = len(q) <= FUSED_QUERIES and cpu_threads() == 1
        return _scan(q, db, k, metric, block, tiles, q0, 0, len(db), fuse)
    pool = search_pool(len(shares))
    with one_blas_thread():
        jobs = [
            pool.submit(
                _scan,
                q[rows],
                db,
                k,
                metric,
                block,
                tiles,
                None if q0 is None else q0 + rows.start,
                start,
                stop,
            )
            for rows, start, stop in shares
        ]
        parts = [job.result() for job in jobs]
    if shares[0][1:] == (0, len(db)):  # each thread had a slice of the queries
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    best = parts[0]  # each had a share of the database
    for part in parts[1:]:
        best = merge_lists(best, *part, k)
    return best


def thread_shares(n_query: int, n_database: int, dim: int) -> list[tuple[slice, int, int]]:
    """Return how the numpy search splits between its threads: ``(queries, start, stop)`` each.

    As many threads as :func:`cpu_threads` for searches of at least
    :data:`THREAD_ABOVE_MACS` multiply-adds, else one; each takes a slice of
    the queries against the whole database, or, with fewer than
    :data:`COLUMN_QUERIES` queries a thread, all the queries against
    database rows ``start:stop``.

    Example:
        >>> thread_shares(10, 1000, 8)
        [(slice(0, 10, None), 0, 1000)]

    """
    macs = n_query * n_database * dim
    threads = cpu_threads() if macs >= THREAD_ABOVE_MACS else 1
    if threads > 1 and n_query >= threads * COLUMN_QUERIES:
        cut = [n_query * t // threads for t in range(threads + 1)]
        return [(slice(a, b), 0, n_database) for a, b in zip(cut[:-1], cut[1:], strict=True)]
    cut = [n_database * t // threads for t in range(threads + 1)]
    return [(slice(0, n_query), a, b) for a, b in zip(cut[:-1], cut[1:], strict=True)]


#: A slice of at least this many queries has its score blocks laid out as
#: (database rows, queries), merged by :meth:`~trainleak._topk.RunningTopK.merge_columns`;
#: fewer are laid out (queries, rows), where a query's maximum is one pass.
COLUMN_QUERIES = 64
#: With the compiled merge (:class:`~trainleak._topk.NativeTopK`), a thread's
#: (rows, queries) block is at most this many bytes of scores, and at least
#: :data:`CACHED_ROWS` rows: the product writes it to the cache and the merge
#: reads it back from there. One thread's product of 500 queries by 10,000
#: rows at d = 128 took 15.6 ms in blocks of 512 or 1,024 rows, 16.7 ms in
#: blocks of 2,048, 18.0 ms as one block (bench/README, session 11).
CACHED_SCORE_BYTES = 2 * 2**20
CACHED_ROWS = 512
#: The same bound for queries of more than :data:`TILED_MAX_DIM` dimensions.
#: A score there costs ``d`` multiply-adds, so the merge's read of it matters
#: less than the product's speed, which smaller blocks cost (each product
#: call packs its queries again). Two threads, whole ``knn``, seven shapes
#: at d = 384-3,072, 11 paired rounds on an Intel Xeon with a 2 MiB L2 a
#: core (bench/README, session 14; not measured on a smaller L2): 8 MiB took
#: 0.94-1.00x the time of 2 MiB (100,000 x 2,000 at d = 1,024, k = 1:
#: 0.94x); 16 MiB was no faster than 8.
WIDE_SCORE_BYTES = 8 * 2**20
#: With the compiled kernels, a slice of at most this many queries (and no
#: ``exclude_self``) is scored and merged in one pass over the database
#: (:meth:`~trainleak._topk.NativeTopK.scan`), not by a matrix product. One
#: thread, 100,000 rows (bench/bench_search_kernels.py): d = 128, one query
#: 3.21 ms (product and merge 4.67, faiss 3.68), two queries 5.37 ms (11.52;
#: faiss 7.98); d = 512, one query 12.07 ms (14.89; faiss 13.59). Beyond
#: two, the product's FMA wins. From d = 768 the kernel reads eight rows at a
#: time (AVX2 and FMA): one query x 15,000 rows at d = 3072 7.75 ms (one row
#: at a time 14.24, product and merge 8.09, faiss 11.55; bench/README,
#: session 13).
FUSED_QUERIES = 2
#: With the compiled kernels on a processor with AVX2 and FMA, a thread's
#: slice of at least ``TILED_MIN_QUERIES`` queries of at most
#: ``TILED_MAX_DIM`` dimensions is scored and merged in one compiled pass
#: (:meth:`~trainleak._topk.NativeTopK.product`), not by the BLAS and a
#: merge. One thread, 500 queries x 10,000 rows, median of paired rounds
#: against the BLAS and the compiled merge: 0.87-0.97x the time at d = 128
#: (1.03x in one run), 0.97x at d = 256, 1.02x at d = 384, 1.0-1.1x at
#: d = 512; with passes sized to the L2 cache 0.84x, 0.96x, 0.91x and 1.06x.
#: Its tiles hold 16 queries: 12 queries x 100,000 rows took 1.05x the
#: BLAS's time, 8 took 1.18x, 16 took 0.76x (bench/bench_search_kernels.py,
#: section 6; bench/README, session 12). Where the processor has AVX-512,
#: the kernel's tiles are sixteen lanes wide, as the BLAS's are there:
#: two threads, whole ``knn`` on an Intel Xeon (session 14), 0.67-0.92x
#: faiss's time at d = 128 and 256 (the BLAS and the merge 0.76-0.98x), but
#: 0.98-1.02x at d = 512 (the BLAS 0.94-0.97x).
TILED_MAX_DIM = 256
TILED_MIN_QUERIES = 16
#: Searches of fewer multiply-adds run on one thread: a pool and the BLAS
#: limit cost about 0.2 ms, a few percent of a search this size.
THREAD_ABOVE_MACS = 2**26


def _scan(
    q: np.ndarray,
    db: np.ndarray,
    k: int,
    metric: MetricName,
    block: int,
    tiles: int,
    q0: int | None,
    start: int,
    stop: int,
    fuse: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of database rows ``start:stop`` for every query, a block at a time.

    ``fuse``: up to :data:`FUSED_QUERIES` queries may be scored and merged in
    one compiled pass instead of a matrix product.
    """
    top = running_topk(len(q), k)
    if isinstance(top, NativeTopK) and metric == "cosine":
        if fuse and len(q) <= FUSED_QUERIES and q0 is None:
            rows = np.ascontiguousarray(q, np.float32)
            for d0, part in _blocks(db, start, stop, block):  # one pass, no product
                top.scan(part, rows, d0)
            return top.lists()
        if len(q) >= TILED_MIN_QUERIES and q.shape[1] <= TILED_MAX_DIM and fused_product():
            packed = top.pack(q)  # the product and the merge in one pass, no score block
            for d0, part in _blocks(db, start, stop, block):
                top.product(part, packed, d0, q0)
            return top.lists()
    columns = len(q) >= COLUMN_QUERIES
    if columns and isinstance(top, NativeTopK):  # a block's scores stay in cache for the merge
        cached = _cached_bytes(q.shape[1]) // (4 * len(q)) // CACHED_ROWS * CACHED_ROWS
        block = min(block, max(CACHED_ROWS, cached))
    width = min(block, max(1, stop - start))
    buf = np.empty((width, len(q)) if columns else (len(q), width), np.float32)
    for d0, part in _blocks(db, start, stop, block):
        rows, cols = _self_cells(q0, len(q), d0, len(part))
        if columns:
            st = _scores(part, q, metric, tiles, buf)
            st[cols, rows] = -np.inf
            top.merge_columns(st, d0)
        else:
            s = _scores(q, part, metric, tiles, buf)
            s[rows, cols] = -np.inf
            top.merge(s, d0)
    return top.lists()


def _cached_bytes(dim: int) -> int:
    """Bytes of a thread's (rows, queries) score block with the compiled merge, by query length.

    Example:
        >>> _cached_bytes(128) == CACHED_SCORE_BYTES, _cached_bytes(512) == WIDE_SCORE_BYTES
        (True, True)

    """
    return CACHED_SCORE_BYTES if dim <= TILED_MAX_DIM else WIDE_SCORE_BYTES


def _blocks(
    db: np.ndarray, start: int, stop: int, block: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Database rows ``start:stop`` a block at a time: ``(first row, float32 rows)``."""
    for d0 in range(start, stop, block):
        yield d0, _db_block(db, d0, min(block, stop - d0))


def _scores(
    a: np.ndarray, b: np.ndarray, metric: MetricName, tiles: int, buf: np.ndarray
) -> np.ndarray:
    """:func:`pairwise_scores` of ``a`` and ``b``; a cosine product is written into ``buf``."""
    if metric != "cosine":
        return pairwise_scores(a, b, metric, tiles)
    return np.matmul(a, b.T, out=buf[: len(a), : len(b)])


def _knn_torch(
    q: np.ndarray,
    db: np.ndarray,
    k: int,
    metric: MetricName,
    block: int,
    tiles: int,
    q0: int | None,
    device: str,
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    dev = torch.device(device)
    with torch.inference_mode():
        qt = torch.from_numpy(q).to(dev)
        qn = _tile_norms(qt, tiles) if metric == "tiled_l2" else None
        best_s = torch.full((len(q), k), -torch.inf, device=dev)
        best_i = torch.full((len(q), k), -1, dtype=torch.int64, device=dev)
        # Each query's k-th best score so far: a block whose best score for a
        # query does not beat it cannot change that query's list.
        kth = best_s[:, 0].clone()
        out = torch.empty((len(q), min(block, len(db))), device=dev)  # scores, reused
        on_cpu = dev.type == "cpu"
        top = running_topk(len(q), k)
        for d0 in range(0, len(db), block):
            part = torch.from_numpy(_db_block(db, d0, block, writeable=True))
            part = part.to(dev, non_blocking=True)
            if qn is None:
                s = torch.mm(qt, part.T, out=out[:, : len(part)])
            else:
                s = _tiled_torch(qt, qn, part, tiles, out[:, : len(part)])
            rows, cols = _self_cells(q0, len(q), d0, len(part))
            s[torch.from_numpy(rows).to(dev), torch.from_numpy(cols).to(dev)] = -torch.inf
            if on_cpu:  # numpy's comparison and flatnonzero beat torch's here
                # The numpy merge takes torch's threaded row maxima; the compiled one needs none.
                row_max = None if isinstance(top, NativeTopK) else s.amax(1).numpy()
                top.merge(s.numpy(), d0, row_max)
                continue
            # On a GPU: a block is merged into the queries whose best score in it
            # beats their k-th best so far, by a top-k of their rows. A NaN would
            # be the row's maximum and, to topk, its largest score: it becomes
            # -inf, which neither hides the row's numbers nor enters a list.
            torch.nan_to_num(s, nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf, out=s)
            todo = torch.nonzero(s.amax(1) > kth).squeeze(1)
            if len(todo) == 0:
                continue
            if len(todo) < len(q):
                s = s.index_select(0, todo)
            top_s, top_i = torch.topk(s, min(k, s.shape[1]), dim=1, sorted=False)
            cat_s = torch.cat([best_s.index_select(0, todo), top_s], 1)
            cat_i = torch.cat([best_i.index_select(0, todo), top_i + d0], 1)
            new_s, pos = torch.topk(cat_s, k, dim=1, sorted=False)
            best_s.index_copy_(0, todo, new_s)
            best_i.index_copy_(0, todo, torch.gather(cat_i, 1, pos))
            kth.index_copy_(0, todo, new_s.amin(1))
        if on_cpu:
            return top.lists()
        return best_s.cpu().numpy(), best_i.cpu().numpy()


def _tile_norms(x: torch.Tensor, tiles: int) -> torch.Tensor:
    """Squared L2 norm of every tile, ``(n, tiles)``."""
    t = x.reshape(len(x), tiles, -1)
    return (t * t).sum(-1)


def _tiled_torch(
    a: torch.Tensor, an: torch.Tensor, b: torch.Tensor, tiles: int, out: torch.Tensor
) -> torch.Tensor:
    """Tiled-l2 scores of ``a`` against ``b``, written into ``out`` ``(len(a), len(b))``."""
    import torch

    td = a.shape[1] // tiles
    bn = _tile_norms(b, tiles)
    worst = out.fill_(-torch.inf)
    d2 = torch.empty_like(worst)
    for t in range(tiles):
        # ||a||^2 + ||b||^2 - 2ab per tile; two (n, m) buffers, whatever the tile count.
        at, bt = a[:, t * td : (t + 1) * td], b[:, t * td : (t + 1) * td]
        torch.addmm(bn[None, :, t], at, bt.T, alpha=-2, out=d2)
        d2 += an[:, t, None]
        torch.maximum(worst, d2, out=worst)
    return worst.clamp_(min=0).div_(td).sqrt_().add_(1).reciprocal_()


def _knn_faiss(
    q: np.ndarray, db: np.ndarray, k: int, block: int, q0: int | None
) -> tuple[np.ndarray, np.ndarray]:
    faiss = require("faiss", extra="faiss", needed_for="backend='faiss' (use 'numpy' without it)")
    index = faiss.IndexFlatIP(db.shape[1])
    best = (np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64))
    for d0 in range(0, len(db), block):
        index.reset()
        index.add(_db_block(db, d0, block))
        # One extra neighbour per block stands in for a masked self match.
        s, i = index.search(q, min(k + (q0 is not None), index.ntotal))
        if q0 is not None:
            s[i + d0 == np.arange(q0, q0 + len(q))[:, None]] = -np.inf
        best = merge_lists(best, s, np.where(i < 0, -1, i + d0), k)
    return best
