"""The exact search's blockwise backends (numpy, torch, faiss) and the score of small sets.

:func:`trainleak.neighbors.knn` scans the database a block at a time with
one of these and merges a running top-k; see its module docstring for the
conventions and the memory bound. They live apart from ``knn`` to keep each
module small; ``pairwise_scores`` is re-exported by :mod:`trainleak.neighbors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from trainleak._optional import require

if TYPE_CHECKING:
    import torch

MetricName = Literal["cosine", "tiled_l2"]
Backend = Literal["auto", "torch", "numpy", "faiss"]

__all__ = ["Backend", "MetricName", "pairwise_scores", "score_at_distance", "score_to_distance"]


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


def _merge_np(
    best: tuple[np.ndarray, np.ndarray], s: np.ndarray, i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    cat_s, cat_i = np.concatenate([best[0], s], 1), np.concatenate([best[1], i], 1)
    if cat_s.shape[1] <= k:
        return cat_s, cat_i
    top = np.argpartition(-cat_s, k - 1, axis=1)[:, :k]
    return np.take_along_axis(cat_s, top, 1), np.take_along_axis(cat_i, top, 1)


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
    top = _RunningTopK(len(q), k)
    for d0 in range(0, len(db), block):
        s = pairwise_scores(q, _db_block(db, d0, block), metric, tiles)
        s[_self_cells(q0, len(q), d0, s.shape[1])] = -np.inf
        top.merge(s, d0)
    return top.scores, top.idx


#: The numpy search finds each query's best score in a block before comparing
#: its cells only once the last block changed fewer than this share of the
#: queries: the extra pass (half the comparison's cost) pays only when most
#: queries can be passed over.
PREFILTER_BELOW = 0.4


class _RunningTopK:
    """Each query's top ``k`` over score blocks, merged one block at a time (numpy).

    A block merges only its cells that beat their query's k-th best so far,
    found in one comparison pass over the block; after the first blocks most
    queries have none or a few. Where a query has more than ``k`` such cells
    (every query in the first block), its k-th largest score in the block is
    found by a partition of the values (3x faster than partitioning indices)
    and only the cells at or above it are kept. Of cells tied at a query's
    k-th place, which are kept is the backend's choice, as documented in
    :mod:`trainleak.neighbors`. A NaN score never beats the k-th best.
    """

    def __init__(self, n: int, k: int) -> None:
        self.k = k
        self.scores = np.full((n, k), -np.inf, np.float32)
        self.idx = np.full((n, k), -1, np.int64)
        self.kth = np.full(n, -np.inf, np.float32)  # each query's k-th best so far
        self.started = False
        self.hit = 1.0  # share of the queries the last block changed

    def merge(self, s: np.ndarray, d0: int, row_max: np.ndarray | None = None) -> None:
        """Merge the scores ``s`` ``(n, width)`` of database rows ``d0 ...``.

        ``row_max``: each row's largest score, when the caller has it cheaper
        (torch's multi-threaded ``amax``); the queries whose best score in the
        block does not beat their k-th best are passed over first, which is
        most of them once the search is well under way.
        """
        if not self.started:  # every query takes its top k of the first block
            self.started = True
            todo, cand_s, cand_i = _top_cells(s, np.arange(len(s)), self.k)
        else:
            if row_max is None and self.hit > PREFILTER_BELOW:
                rows = np.arange(len(s))  # most rows have a cell above: no max pass
            else:
                row_max = s.max(axis=1) if row_max is None else row_max
                rows = np.flatnonzero(row_max > self.kth)
            if len(rows) < len(s):
                todo, cand_s, cand_i = _above(s[rows], self.kth[rows], self.k)
                todo = rows[todo]
            else:
                todo, cand_s, cand_i = _above(s, self.kth, self.k)
        self.hit = len(todo) / max(1, len(s))
        if len(todo) == 0:
            return
        cols = np.where(cand_i < 0, -1, cand_i + d0)
        got = _merge_np((self.scores[todo], self.idx[todo]), cand_s, cols, self.k)
        self.scores[todo], self.idx[todo] = got
        self.kth[todo] = got[0].min(axis=1)


def _above(s: np.ndarray, kth: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the queries with cells above their ``kth``, and up to ``k`` such cells each.

    ``(queries, scores, columns)``: scores and columns ``(len(queries),
    min(k, width))``, padded with ``-inf`` and -1. A query with more than ``k``
    cells above takes its top ``k`` of the block (:func:`_top_cells`).
    """
    n, width = s.shape
    top = min(k, width)
    cells = np.flatnonzero(s > kth[:, None])  # row-major: by query, then column
    cnt = np.bincount(cells // width, minlength=n)
    many = np.flatnonzero(cnt > top)
    if len(many) == 0:
        return _pack(s, cells, cnt, top)
    # Those queries' cells come from _top_cells instead.
    few = cnt.copy()
    few[many] = 0
    cells = cells[np.repeat(cnt <= top, cnt)]
    rows_f, s_f, i_f = _pack(s, cells, few, top)
    rows_m, s_m, i_m = _top_cells(s, many, k)
    order = np.argsort(np.concatenate([rows_f, rows_m]), kind="stable")
    return (
        np.concatenate([rows_f, rows_m])[order],
        np.concatenate([s_f, s_m])[order],
        np.concatenate([i_f, i_m])[order],
    )


def _top_cells(
    s: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``rows`` with each one's top ``k`` cells of ``s`` (as :func:`_above`)."""
    width = s.shape[1]
    top = min(k, width)
    part = s if len(rows) == len(s) else s[rows]
    # The k-th largest value of each row; NaN sorts last, so a row of NaN keeps nothing.
    bar = np.partition(part, width - top, axis=1)[:, width - top, None]
    # Fewer than k cells beat the bar: take them all, then cells tied with it.
    above, tied = np.flatnonzero(part > bar), np.flatnonzero(part == bar)
    cells = np.concatenate([above, tied])
    cells = cells[np.argsort(cells // width, kind="stable")]  # by row, those above first
    cnt = np.bincount(cells // width, minlength=len(rows))
    local, cand_s, cand_i = _pack(part, cells, cnt, top)
    return rows[local], cand_s, cand_i


def _pack(
    s: np.ndarray, cells: np.ndarray, cnt: np.ndarray, top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay flat ``cells`` of ``s`` (``cnt`` per row, grouped by row) out as ``top`` per row.

    Returns the rows with any cell, and their scores and columns ``(rows,
    top)`` padded with ``-inf`` and -1; a row's cells past ``top`` (ties at
    its k-th place) are dropped.
    """
    width = s.shape[1]
    rows = np.flatnonzero(cnt)
    cand_s = np.full((len(rows), top), -np.inf, np.float32)
    cand_i = np.full((len(rows), top), -1, np.int64)
    if len(cells):
        r = cells // width
        pos = np.arange(len(cells)) - (np.cumsum(cnt) - cnt)[r]
        slot = (np.cumsum(cnt > 0) - 1)[r]
        fit = pos < top
        c = cells[fit] - r[fit] * width
        cand_s[slot[fit], pos[fit]] = s[r[fit], c]
        cand_i[slot[fit], pos[fit]] = c
    return rows, cand_s, cand_i


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
        top = _RunningTopK(len(q), k)
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
                top.merge(s.numpy(), d0, s.amax(1).numpy())
                continue
            # On a GPU: a block is merged into the queries whose best score in it
            # beats their k-th best so far, by a top-k of their rows.
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
            return top.scores, top.idx
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
        best = _merge_np(best, s, np.where(i < 0, -1, i + d0), k)
    return best
