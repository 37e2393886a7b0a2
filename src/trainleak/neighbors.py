"""Exact k-nearest-neighbour search with memory bounded by the block size.

Conventions (as in faiss): ``knn`` returns ``(scores, idx)`` of shape
``(n_query, k)``, float32 and int64, each row by descending score, where a
higher score means more similar. ``cosine`` scores are inner products of unit
rows (inputs are not renormalised). ``tiled_l2`` scores are ``1 - d`` with
``d`` Carlini et al.'s tiled distance: the largest, over tiles, of the RMS
difference between corresponding tiles. When the database holds fewer than
``k`` rows, rows are padded with score ``-inf`` and index ``-1``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

MetricName = Literal["cosine", "tiled_l2"]
Backend = Literal["auto", "torch", "numpy", "faiss"]

#: Bytes one block of scores may take.
SCORE_BLOCK_BYTES = 256 * 2**20


def _check(queries: np.ndarray, database: np.ndarray, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be 1 or more, got {k}")
    if queries.ndim != 2 or database.ndim != 2:
        raise ValueError("queries and database must be 2-d arrays (n, dim)")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(
            f"queries have dim {queries.shape[1]} but the database has dim {database.shape[1]}: "
            "embed both with the same encoder"
        )


def pairwise_scores(
    a: np.ndarray, b: np.ndarray, metric: MetricName = "cosine", tiles: int = 16
) -> np.ndarray:
    """Full ``(n_a, n_b)`` score matrix; for small sets and tests.

    Example:
        >>> pairwise_scores(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
        array([[1., 0.],
               [0., 1.]], dtype=float32)
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if metric == "cosine":
        return a @ b.T
    return _tiled_scores_np(a, b, tiles)


def _tiled_scores_np(a: np.ndarray, b: np.ndarray, tiles: int) -> np.ndarray:
    if a.shape[1] % tiles:
        raise ValueError(f"row length {a.shape[1]} is not a multiple of tiles={tiles}")
    td = a.shape[1] // tiles
    worst = np.zeros((len(a), len(b)), np.float32)
    for t in range(tiles):
        at, bt = a[:, t * td : (t + 1) * td], b[:, t * td : (t + 1) * td]
        d2 = (at * at).sum(1)[:, None] + (bt * bt).sum(1)[None] - 2 * at @ bt.T
        np.maximum(worst, np.maximum(d2, 0) / td, out=worst)
    return (1.0 - np.sqrt(worst)).astype(np.float32)


def knn(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    metric: MetricName = "cosine",
    backend: Backend = "auto",
    block_size: int = 16384,
    tiles: int = 16,
    exclude_self: bool = False,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k search of ``queries`` ``(n, d)`` in ``database`` ``(m, d)``.

    Args:
        queries: query rows, float32.
        database: database rows, float32.
        k: neighbours per query.
        metric: ``cosine`` (unit rows) or ``tiled_l2`` (tile-major pixel rows).
        backend: ``torch`` (default for ``auto``), ``numpy`` or ``faiss``
            (``IndexFlatIP``, cosine only).
        block_size: database rows scored at a time.
        tiles: tiles per row for ``tiled_l2``.
        exclude_self: queries are the database; drop each query's own row.
        device: torch device, e.g. ``"cuda"``; never chosen implicitly.

    Returns:
        ``(scores, idx)``, ``(n, k)`` float32 and int64.

    Example:
        >>> db = np.eye(3, dtype=np.float32)
        >>> s, i = knn(db[:1], db, k=2)
        >>> s.tolist(), i.tolist()
        ([[1.0, 0.0]], [[0, 1]])
    """
    queries = np.ascontiguousarray(queries, np.float32)
    database = np.ascontiguousarray(database, np.float32)
    _check(queries, database, k)
    if backend == "faiss":
        if metric != "cosine":
            raise ValueError("the faiss backend supports the cosine metric only; use torch")
        if exclude_self:
            raise ValueError("exclude_self is not supported by the faiss backend; use torch")
        return _knn_faiss(queries, database, k)
    kk = k + 1 if exclude_self else k
    if backend in ("auto", "torch"):
        scores, idx = _knn_torch(queries, database, kk, metric, block_size, tiles, device)
    elif backend == "numpy":
        scores, idx = _knn_numpy(queries, database, kk, metric, block_size, tiles)
    else:
        raise ValueError(f"unknown backend {backend!r}: use auto, torch, numpy or faiss")
    scores = _rescore(queries, database, idx, metric, tiles)
    scores, idx = _tie_order(scores, idx)
    if exclude_self:
        scores, idx = _drop_self(scores, idx, k)
    return scores, idx


def _rescore(
    q: np.ndarray, db: np.ndarray, idx: np.ndarray, metric: MetricName, tiles: int
) -> np.ndarray:
    """Recompute the found pairs' scores one pair at a time, in float64.

    A blocked matrix product rounds differently with the block shape; scoring
    the chosen pairs the same way every time makes results independent of
    block size and backend, to the bit.
    """
    out = np.full(idx.shape, -np.inf, np.float32)
    step = max(1, 2**22 // max(1, idx.shape[1] * q.shape[1]))
    for s0 in range(0, len(q), step):
        part = idx[s0 : s0 + step]
        valid = part >= 0
        rows = db[np.where(valid, part, 0)].astype(np.float64)
        qs = q[s0 : s0 + step, None, :].astype(np.float64)
        if metric == "cosine":
            vals = (rows * qs).sum(-1)
        else:
            diff = (rows - qs).reshape(rows.shape[0], rows.shape[1], tiles, -1)
            vals = 1.0 - np.sqrt((diff * diff).mean(-1).max(-1))
        out[s0 : s0 + step] = np.where(valid, vals, -np.inf)
    return out


def _drop_self(scores: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    own = idx == np.arange(len(idx))[:, None]
    # Rows that did not find themselves (ties) drop their last entry instead.
    own[~own.any(1), -1] = True
    keep = ~own
    return (
        scores[keep].reshape(len(idx), -1)[:, :k],
        idx[keep].reshape(len(idx), -1)[:, :k],
    )


def _query_block(n_db_block: int) -> int:
    return max(1, SCORE_BLOCK_BYTES // (4 * max(1, n_db_block)))


def _knn_torch(
    q: np.ndarray, db: np.ndarray, k: int, metric: MetricName, block: int, tiles: int, device: str
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    n, m = len(q), len(db)
    out_s = np.full((n, k), -np.inf, np.float32)
    out_i = np.full((n, k), -1, np.int64)
    if n == 0 or m == 0:
        return out_s, out_i
    dev = torch.device(device)
    qb = _query_block(min(block, m))
    with torch.inference_mode():
        dbt = torch.from_numpy(db).to(dev)
        for q0 in range(0, n, qb):
            qt = torch.from_numpy(q[q0 : q0 + qb]).to(dev)
            best_s = torch.full((len(qt), 0), -np.inf, device=dev)
            best_i = torch.zeros((len(qt), 0), dtype=torch.int64, device=dev)
            for d0 in range(0, m, block):
                part = dbt[d0 : d0 + block]
                s = qt @ part.T if metric == "cosine" else _tiled_torch(qt, part, tiles)
                kk = min(k, s.shape[1])
                top_s, top_i = torch.topk(s, kk, dim=1)
                cat_s = torch.cat([best_s, top_s], 1)
                cat_i = torch.cat([best_i, top_i + d0], 1)
                keep = min(k, cat_s.shape[1])
                best_s, pos = torch.topk(cat_s, keep, dim=1)
                best_i = torch.gather(cat_i, 1, pos)
            w = best_s.shape[1]
            out_s[q0 : q0 + len(qt), :w] = best_s.cpu().numpy()
            out_i[q0 : q0 + len(qt), :w] = best_i.cpu().numpy()
    return _tie_order(out_s, out_i)


def _tiled_torch(a, b, tiles: int):  # type: ignore[no-untyped-def]
    import torch

    if a.shape[1] % tiles:
        raise ValueError(f"row length {a.shape[1]} is not a multiple of tiles={tiles}")
    td = a.shape[1] // tiles
    worst = torch.zeros((a.shape[0], b.shape[0]), device=a.device)
    for t in range(tiles):
        at, bt = a[:, t * td : (t + 1) * td], b[:, t * td : (t + 1) * td]
        d2 = (at * at).sum(1)[:, None] + (bt * bt).sum(1)[None] - 2 * at @ bt.T
        worst = torch.maximum(worst, d2.clamp_min(0) / td)
    return 1.0 - worst.sqrt()


def _knn_numpy(
    q: np.ndarray, db: np.ndarray, k: int, metric: MetricName, block: int, tiles: int
) -> tuple[np.ndarray, np.ndarray]:
    n, m = len(q), len(db)
    out_s = np.full((n, k), -np.inf, np.float32)
    out_i = np.full((n, k), -1, np.int64)
    if n == 0 or m == 0:
        return out_s, out_i
    qb = _query_block(min(block, m))
    for q0 in range(0, n, qb):
        qs = q[q0 : q0 + qb]
        best_s = np.full((len(qs), 0), -np.inf, np.float32)
        best_i = np.zeros((len(qs), 0), np.int64)
        for d0 in range(0, m, block):
            s = pairwise_scores(qs, db[d0 : d0 + block], metric, tiles)
            cat_s = np.concatenate([best_s, s], 1)
            cat_i = np.concatenate([best_i, np.arange(d0, d0 + s.shape[1])[None].repeat(len(qs), 0)], 1)
            keep = min(k, cat_s.shape[1])
            part = np.argpartition(-cat_s, keep - 1, axis=1)[:, :keep]
            best_s = np.take_along_axis(cat_s, part, 1)
            best_i = np.take_along_axis(cat_i, part, 1)
        w = best_s.shape[1]
        out_s[q0 : q0 + len(qs), :w] = best_s
        out_i[q0 : q0 + len(qs), :w] = best_i
    return _tie_order(out_s, out_i)


def _tie_order(scores: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by descending score, then ascending index (padding last)."""
    key_i = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((key_i, -scores), axis=1) if scores.size else np.zeros_like(idx)
    return (
        np.take_along_axis(scores, order, 1).astype(np.float32),
        np.take_along_axis(idx, order, 1).astype(np.int64),
    )


def _knn_faiss(q: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import faiss
    except ImportError:
        raise ImportError("the faiss backend needs faiss: pip install 'trainleak[faiss]'") from None
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    scores, idx = index.search(q, k)
    scores = np.where(idx < 0, -np.inf, scores).astype(np.float32)
    return _tie_order(scores, idx.astype(np.int64))
