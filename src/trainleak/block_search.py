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


class _RunningTopK:
    """Each query's top ``k`` over score blocks, merged one block at a time (numpy).

    The first block gives every query its top ``k`` (a partition of each
    row). After that a block merges only the cells above their query's k-th
    best so far, found in one comparison pass over the block (most queries
    have none or a few after the first blocks); a query with more than ``k``
    such cells takes its top ``k`` of the block. A cell equal to the k-th best
    is not merged (ties at the k-th place are the backend's choice, see
    :mod:`trainleak.neighbors`). A query whose scores are NaN keeps ``-inf``
    or NaN (never a NaN beats the k-th best), as the torch search does.
    """

    def __init__(self, n: int, k: int) -> None:
        self.k = k
        self.scores = np.full((n, k), -np.inf, np.float32)
        self.idx = np.full((n, k), -1, np.int64)
        self.kth = np.full(n, -np.inf, np.float32)  # each query's k-th best so far
        self.started = False

    def merge(self, s: np.ndarray, d0: int) -> None:
        """Merge the scores ``s`` ``(n, width)`` of database rows ``d0 ...``."""
        k = self.k
        if not self.started:
            self.started = True
            todo = np.flatnonzero(s.max(axis=1) > self.kth)
            s = s[todo]
            if s.shape[1] > k:
                part = np.argpartition(-s, k - 1, axis=1)[:, :k]
                s, cols = np.take_along_axis(s, part, 1), part
            else:
                cols = np.broadcast_to(np.arange(s.shape[1]), s.shape)
        else:
            todo, s, cols = _above_np(s, self.kth, k)
        if len(todo) == 0:
            return
        cols = cols + d0
        got = _merge_np((self.scores[todo], self.idx[todo]), s, np.where(cols < d0, -1, cols), k)
        self.scores[todo], self.idx[todo] = got
        self.kth[todo] = got[0].min(axis=1)


def _above_np(s: np.ndarray, kth: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the cells of a score block that beat their query's k-th best so far, up to k each.

    Returns the queries with any such cell, and for each their cells' scores
    and columns ``(len(queries), min(k, width))`` (padded with ``-inf``, -1).
    One comparison pass finds them: after the first blocks most queries have
    none or a few, so the block is not partitioned row by row (a query with
    more than ``k`` takes its top ``k``).
    """
    n, width = s.shape
    cells = np.flatnonzero(s > kth[:, None])  # row-major: by query, then column
    r = cells // width
    cnt = np.bincount(r, minlength=n)
    todo = np.flatnonzero(cnt)
    top = min(k, width)
    cand_s = np.full((len(todo), top), -np.inf, np.float32)
    cand_i = np.full((len(todo), top), -1, np.int64)
    slot = np.cumsum(cnt > 0) - 1  # a query's row in cand_s
    many = cnt[todo] > top
    if many.any():
        rows = todo[many]
        part = np.argpartition(-s[rows], top - 1, axis=1)[:, :top]
        cand_s[many], cand_i[many] = np.take_along_axis(s[rows], part, 1), part
        keep = cnt[r] <= top
        cells, r = cells[keep], r[keep]
        cnt[rows] = 0
    if len(cells):
        pos = np.arange(len(cells)) - (np.cumsum(cnt) - cnt)[r]
        c = cells - r * width
        cand_s[slot[r], pos], cand_i[slot[r], pos] = s[r, c], c
    return todo, cand_s, cand_i


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
                top.merge(s.numpy(), d0)
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
