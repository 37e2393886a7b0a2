"""Running top-k lists merged one block of scores at a time (the CPU's exact search).

:mod:`trainleak.block_search` scans the database a block at a time; each
block's scores are merged here into every query's best ``k`` so far. Two
layouts: :meth:`RunningTopK.merge` takes a block as ``(queries, rows)``, and
:meth:`RunningTopK.merge_columns` as ``(rows, queries)``, where the maximum
of every group of :data:`GROUP_ROWS` database rows is one vectorised pass
over contiguous memory (0.12 ns a score on this project's 2-core machine,
as cheap as a row maximum) and only the groups whose maximum beats a
query's k-th best are read again. After the first blocks a query has a
handful of such groups or none, so a block costs its product plus about
one pass of ``max``; the comparison pass of the row layout costs 5 times
that (bench/README "Exact search at faiss's pace").

Where the install compiled ``_ctopk.c`` (:func:`native`), :class:`NativeTopK`
merges instead: one compiled pass compares every score with its query's
k-th best and puts the few that beat it into the query's list (kept sorted
up to 64 entries, a heap beyond), with no group maxima and no numpy call per
block; the search then costs its products plus that pass (bench/README
"Compiled merge", session 11). On a processor with AVX2 and FMA
(:func:`fused_product`), :meth:`NativeTopK.product` goes further: it makes
the product itself, a register tile at a time, and compares each tile with
the bars before anything is written to memory (bench/README "One pass",
session 12). :func:`running_topk` picks the one the search uses.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import warnings

import numpy as np

__all__ = [
    "GROUP_ROWS",
    "PREFILTER_BELOW",
    "ROW_SETS",
    "NativeTopK",
    "RunningTopK",
    "fused_product",
    "merge_lists",
    "native",
    "running_topk",
]

#: Queries a tile of :meth:`NativeTopK.product` scores at once (``FUSED_LANES`` in ``_ctopk.c``).
FUSED_LANES = 16
#: Bytes of packed queries :meth:`NativeTopK.product` keeps per pass over a block's rows;
#: 0: three quarters of a core's L2 cache as the C library reports it (else 192 KB).
PASS_BYTES = 0
#: Set to ``0`` to search with the numpy merge even where the compiled kernels are built.
NATIVE_ENV = "TRAINLEAK_NATIVE"


@functools.lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("trainleak._ctopk")
    if spec is None or spec.origin is None:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    try:
        return _bind(lib)
    except AttributeError as err:  # a build left from another version of this file
        warnings.warn(
            f"the compiled search kernels at {spec.origin} are from another version of "
            f"trainleak ({err}); the search merges with numpy until they are rebuilt: "
            "pip install --force-reinstall --no-deps trainleak (or pip install -e . in a checkout)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the kernels' signatures; AttributeError where one is missing."""
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.tl_merge_columns.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, i64, ptr]
    lib.tl_merge_rows.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, i64, ptr]
    lib.tl_rescore.argtypes = [ptr, i64, ptr, i64, i64, ptr, i64, i64, ptr]
    lib.tl_order.argtypes = [ptr, ptr, i64, i64]
    lib.tl_scan_rows.argtypes = [ptr, i64, i64, ptr, i64, i64, i64, i64, ptr, ptr, i64, ptr]
    lib.tl_pack_queries.argtypes = [ptr, i64, i64, i64, ptr]
    lib.tl_product_merge.argtypes = [ptr, i64, i64, ptr, i64, i64, i64, i64, i64, ptr, ptr, i64,
                                     ptr, i64]  # fmt: skip
    for f in (lib.tl_merge_columns, lib.tl_merge_rows, lib.tl_rescore, lib.tl_order,
              lib.tl_scan_rows, lib.tl_pack_queries):  # fmt: skip
        f.restype = None
    lib.tl_product_merge.restype = ctypes.c_int
    lib.tl_gather_product_merge.argtypes = [ptr, i64, ptr, i64, ptr, i64, i64, i64, ptr, ptr, i64,
                                            ptr]  # fmt: skip
    lib.tl_gather_product_merge.restype = ctypes.c_int
    lib.tl_fused_ok.restype = ctypes.c_int
    lib.tl_fused_ok.argtypes = []
    lib.tl_avx512_ok.restype = ctypes.c_int
    lib.tl_avx512_ok.argtypes = []
    return lib


@functools.lru_cache(maxsize=1)
def fused_product() -> bool:
    """Whether :meth:`NativeTopK.product` runs here.

    It needs the compiled kernels and a processor with AVX2 and FMA (x86-64
    only); elsewhere batches go through the BLAS and the compiled merge.
    Where the processor also has AVX-512, its tiles are sixteen lanes wide
    (the same scores, to the bit).
    """
    lib = _load()
    return lib is not None and bool(lib.tl_fused_ok())


def native() -> ctypes.CDLL | None:
    """Return the compiled kernels (``trainleak/_ctopk.c``), or None.

    None where they were not built (the install had no C compiler) or where
    the environment sets ``TRAINLEAK_NATIVE=0``; the search then merges with
    numpy, with the same results in 1.13-1.45x the time at 10,000 x 1,000
    rows (d = 128), 1.1-1.42x at 100,000 rows and 0.92-1.15x at d = 512
    (bench/bench_search_kernels.py, section 5, runs of sessions 11 and 12).
    Their functions run without the GIL, so the search's threads merge at
    once.
    """
    if os.environ.get(NATIVE_ENV, "1") == "0":
        return None
    return _load()


def running_topk(n: int, k: int) -> RunningTopK | NativeTopK:
    """Return empty top-``k`` lists for ``n`` queries: compiled where built, else numpy."""
    lib = native()
    return RunningTopK(n, k) if lib is None else NativeTopK(n, k, lib)


def _addr(a: np.ndarray) -> int:
    return int(a.ctypes.data)


class NativeTopK:
    """Each query's top ``k`` over score blocks, merged by the compiled kernels.

    The same lists as :class:`RunningTopK` (cells tied at the k-th place
    keep the lowest rows), in one pass over each block: every score is
    compared with its query's k-th best, and a cell that beats it replaces
    the query's worst in a heap. Blocks may be views with a row stride
    (``s.strides[1]`` must be 4 bytes); ``queries`` merges a block into a
    range of the queries only, so several threads can merge one block.
    """

    def __init__(self, n: int, k: int, lib: ctypes.CDLL) -> None:
        self.k = k
        self.scores = np.full((n, k), -np.inf, np.float32)
        self.idx = np.full((n, k), -1, np.int64)
        self.kth = np.full(n, -np.inf, np.float32)
        self._lib = lib

    def lists(self) -> tuple[np.ndarray, np.ndarray]:
        """Each query's top ``k`` so far: scores and database rows ``(n, k)``, in no order."""
        return self.scores, self.idx

    def _heaps(self, first: int = 0) -> tuple[int, int, int, int]:
        """Return the kernels' last four arguments: the lists and bars from query ``first`` on."""
        at = first * self.k
        scores, idx, bars = _addr(self.scores) + 4 * at, _addr(self.idx) + 8 * at, _addr(self.kth)
        return scores, idx, self.k, bars + 4 * first

    def merge(self, s: np.ndarray, d0: int, row_max: np.ndarray | None = None) -> None:
        """Merge the scores ``s`` ``(n, width)`` of rows ``d0 ...`` (``row_max``: unused)."""
        if self.k == 0 or s.size == 0:
            return
        s = _rows_contiguous(s)
        self._lib.tl_merge_rows(_addr(s), s.shape[0], s.shape[1], s.strides[0] // 4, d0,
                                *self._heaps())  # fmt: skip

    def scan(self, part: np.ndarray, q: np.ndarray, d0: int) -> None:
        """Score database rows ``part`` (``d0 ...``) against ``q`` and merge them, in one pass.

        Both C-contiguous float32. For a few queries: no score block is
        written, and the database is read once. A NaN score never enters.
        """
        if self.k == 0 or part.size == 0:
            return
        self._lib.tl_scan_rows(_addr(part), part.shape[1], len(part), _addr(q), q.shape[1],
                               len(q), q.shape[1], d0, *self._heaps())  # fmt: skip

    def pack(self, q: np.ndarray) -> np.ndarray:
        """Return the queries ``q`` laid out for :meth:`product` (pack once, use per block)."""
        q = np.ascontiguousarray(q, np.float32)
        panels = -(-len(q) // FUSED_LANES)
        out = np.empty(panels * FUSED_LANES * q.shape[1], np.float32)
        self._lib.tl_pack_queries(_addr(q), q.shape[1], len(q), q.shape[1], _addr(out))
        return out

    def product(self, part: np.ndarray, packed: np.ndarray, d0: int, self0: int | None) -> None:
        """Score database rows ``part`` (``d0 ...``) against the packed queries and merge them.

        The product and the merge in one compiled pass (:func:`fused_product`
        must be true): each tile of 6 rows by 16 queries is compared with the
        queries' k-th best while still in registers, so no score block is
        written. ``self0``: the queries are database rows ``self0 ...``, and a
        query is never its own neighbour; None when they are not.
        """
        if self.k == 0 or part.size == 0:
            return
        d = part.shape[1]
        done = self._lib.tl_product_merge(_addr(part), d, len(part), _addr(packed),
                                          len(self.kth), d, d0, self0 is not None, self0 or 0,
                                          *self._heaps(), PASS_BYTES)  # fmt: skip
        if done != 0:
            raise MemoryError("the compiled product could not allocate its bars")

    def gather_product(self, q: np.ndarray, which: np.ndarray, packed: np.ndarray, rows: int,
                       d0: int) -> None:  # fmt: skip
        """Score the queries ``q[which]`` against packed database rows and merge them.

        ``which``: int64 query numbers, each at most once; ``rows`` database
        rows (numbered ``d0 ...``) in ``packed``, laid out as :meth:`pack` lays
        out queries. The product and the merge in one compiled pass
        (:func:`fused_product` must be true), the queries read in place and
        their lists updated in place: for many small sets of rows, each met by
        its own subset of the queries.
        """
        if self.k == 0 or rows == 0 or len(which) == 0:
            return
        q = np.ascontiguousarray(q, np.float32)
        which = np.ascontiguousarray(which, np.int64)
        d = q.shape[1]
        # The kernel trusts these: a wrong one would write outside the lists.
        if which.min() < 0 or which.max() >= min(len(q), len(self.kth)):
            raise IndexError("gather_product: a query number is outside the queries")
        if packed.dtype != np.float32 or packed.size < -(-rows // FUSED_LANES) * FUSED_LANES * d:
            raise ValueError("gather_product: packed holds fewer rows than `rows` (use pack())")
        done = self._lib.tl_gather_product_merge(_addr(q), d, _addr(which), len(which),
                                                 _addr(packed), rows, d, d0,
                                                 *self._heaps())  # fmt: skip
        if done != 0:
            raise MemoryError("the compiled product could not allocate its rows")

    def merge_columns(self, st: np.ndarray, d0: int, queries: slice | None = None) -> None:
        """Merge the scores ``st`` ``(width, n)`` of database rows ``d0 ...`` into ``queries``."""
        if self.k == 0 or st.size == 0:
            return
        st = _rows_contiguous(st)
        a, b, _ = (queries or slice(None)).indices(st.shape[1])
        self._lib.tl_merge_columns(_addr(st) + 4 * a, st.shape[0], b - a, st.strides[0] // 4, d0,
                                   *self._heaps(a))  # fmt: skip


def _rows_contiguous(s: np.ndarray) -> np.ndarray:
    """``s`` as float32 with unit column stride (a copy only when it has none)."""
    rows, cols = s.strides
    if s.dtype == np.float32 and cols == 4 and rows % 4 == 0 and rows >= 4 * s.shape[1]:
        return s
    return np.ascontiguousarray(s, np.float32)


def merge_lists(
    best: tuple[np.ndarray, np.ndarray], s: np.ndarray, i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return each row's top ``k`` of the lists ``best`` and the cells ``(s, i)``, in no order."""
    cat_s, cat_i = np.concatenate([best[0], s], 1), np.concatenate([best[1], i], 1)
    if cat_s.shape[1] <= k:
        return cat_s, cat_i
    top = np.argpartition(-cat_s, k - 1, axis=1)[:, :k]
    return np.take_along_axis(cat_s, top, 1), np.take_along_axis(cat_i, top, 1)


#: The numpy search finds each query's best score in a block before comparing
#: its cells only once the last block changed fewer than this share of the
#: queries: the extra pass (half the comparison's cost) pays only when most
#: queries can be passed over.
PREFILTER_BELOW = 0.4
#: Database rows per group in :meth:`RunningTopK.merge_columns`: each group's
#: maximum over a query is taken first and its cells read again only when it
#: beats the query's k-th best. Smaller groups read fewer cells again but make
#: the maximum pass dearer (0.155 ns a score at 16 rows, 0.12 at 32-128).
GROUP_ROWS = 16
#: Cells found by :meth:`RunningTopK.merge_columns` wait to be merged until they
#: number this many a query (once the search is under way a block has about
#: one cell a query, or fewer, to merge).
PENDING_PER_QUERY = 8
#: A block whose groups beat the k-th best in more than this share of (group,
#: query) pairs is merged row-wise (:meth:`RunningTopK.merge` of its transpose).
DENSE_SHARE = 0.25
#: Queries with at most this many new cells in a block take them one at a
#: time, each in place of the query's lowest entry; more go through
#: :func:`merge_lists` (a concatenation and a partition of the whole list).
FEW_CELLS = 4


class RunningTopK:
    """Each query's top ``k`` over score blocks, merged one block at a time (numpy).

    A block merges only its cells that beat their query's k-th best so far:
    in :meth:`merge` (blocks laid out queries by rows) found in one
    comparison pass over the block, in :meth:`merge_columns` (rows by
    queries) from the maxima of groups of rows; after the first blocks most
    queries have none or a few. Where a query has more than ``k`` such cells
    (every query in the first block), only those at or above a bar it has at
    least ``k`` cells reaching are ranked (:func:`_row_bar`,
    :func:`_first_bar`). Of cells tied at a query's
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
        self._filled = False  # whether any cell has been merged (by _insert or merge)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_cells = 0

    def lists(self) -> tuple[np.ndarray, np.ndarray]:
        """Each query's top ``k`` so far: scores and database rows ``(n, k)``, in no order."""
        self._flush()
        return self.scores, self.idx

    def merge(self, s: np.ndarray, d0: int, row_max: np.ndarray | None = None) -> None:
        """Merge the scores ``s`` ``(n, width)`` of database rows ``d0 ...``.

        ``row_max``: each row's largest score, when the caller has it cheaper
        (torch's multi-threaded ``amax``); the queries whose best score in the
        block does not beat their k-th best are passed over first, which is
        most of them once the search is well under way.
        """
        self._flush()
        self._filled = True
        if not self.started:  # every query takes its top k of the first block
            self.started = True
            todo, cand_s, cand_i = _top_cells(s, np.arange(len(s)), self.k)
        else:
            if row_max is None and self.hit > PREFILTER_BELOW:
                rows = np.arange(len(s))  # most rows have a cell above: no max pass
            else:
                row_max = s.max(axis=1) if row_max is None else row_max
                # A NaN maximum (a NaN score in the row) does not hide the row's other cells.
                rows = np.flatnonzero(~(row_max <= self.kth))
            if len(rows) < len(s):
                todo, cand_s, cand_i = _above(s[rows], self.kth[rows], self.k)
                todo = rows[todo]
            else:
                todo, cand_s, cand_i = _above(s, self.kth, self.k)
        self.hit = len(todo) / max(1, len(s))
        if len(todo) == 0:
            return
        cols = np.where(cand_i < 0, -1, cand_i + d0)
        got = merge_lists((self.scores[todo], self.idx[todo]), cand_s, cols, self.k)
        self.scores[todo], self.idx[todo] = got
        self.kth[todo] = got[0].min(axis=1)

    def merge_columns(self, st: np.ndarray, d0: int) -> None:
        """Merge the scores ``st`` ``(width, n)`` of database rows ``d0 ...`` (rows by queries).

        The same lists as :meth:`merge` of ``st.T``. Each query's best score in
        every group of :data:`GROUP_ROWS` rows is found first, and only the
        groups that beat its k-th best are read again. In the first block
        the bar is one each query has at least ``k`` cells at or above
        (:func:`_first_bar`), so the groups at or above it hold the query's
        top ``k`` of the block. A group holding a NaN is read again
        (the NaN is never taken), so a NaN hides no other score. The cells
        found are merged once they number :data:`PENDING_PER_QUERY` a query
        (a merge costs about 0.3 ms whatever its size); until then blocks are
        compared with the k-th bests of the last merge, which only lets more
        cells through.
        """
        width, n = st.shape
        groups, top = width // GROUP_ROWS, min(self.k, width)
        if groups < 2 * top:
            self.merge(st.T, d0)  # too few groups to pass any over
            return
        full = groups * GROUP_ROWS
        grouped = st[:full].reshape(groups, GROUP_ROWS, n)
        best = grouped.max(axis=1)  # (groups, n)
        first = not self.started
        if first:
            bar = _first_bar(best, top)
            hit = np.flatnonzero(~(best < bar))
        else:
            bar = self.kth
            hit = np.flatnonzero(~(best <= bar))
        if len(hit) > DENSE_SHARE * best.size:
            self.merge(st.T, d0)
            return
        self.started = True
        g, q = np.divmod(hit, n)
        vals = grouped[g, :, q]  # (hits, GROUP_ROWS)
        if first:
            cells = np.flatnonzero(vals >= bar[q][:, None])
        else:
            cells = np.flatnonzero(vals > bar[q][:, None])
        h, pos = np.divmod(cells, GROUP_ROWS)
        rows, cols, vals = q[h], g[h] * GROUP_ROWS + pos, vals.ravel()[cells]
        if full < width:  # rows past the last whole group: compared one by one
            tail = st[full:]
            cells = np.flatnonzero(tail >= bar if first else tail > bar)
            r, c = np.divmod(cells, n)
            rows = np.concatenate([rows, c])
            cols = np.concatenate([cols, full + r])
            vals = np.concatenate([vals, tail.ravel()[cells]])
        self._pending.append((rows, cols + d0, vals))
        self._pending_cells += len(rows)
        if first or self._pending_cells >= PENDING_PER_QUERY * n:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._insert(*(np.concatenate(part) for part in zip(*self._pending, strict=True)))
            self._pending, self._pending_cells = [], 0

    def _insert(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """Merge cells ``(query, database row, score)``, each above its query's k-th best."""
        if len(rows) == 0:
            return
        empty = not self._filled  # every list is empty: each query takes its best k cells
        self._filled = True
        # By query; into empty lists, each query's best cells first (of tied cells, any).
        order = np.argsort(-vals) if empty else np.arange(len(rows))
        order = order[_by_query(rows[order])]
        rows, cols, vals = rows[order], cols[order], vals[order]
        starts = np.flatnonzero(np.diff(rows, prepend=-1))
        counts = np.diff(starts, append=len(rows))
        if empty:
            rank = np.arange(len(rows)) - np.repeat(starts, counts)
            take = rank < self.k
            self.scores[rows[take], rank[take]] = vals[take]
            self.idx[rows[take], rank[take]] = cols[take]
            self.kth[rows[starts]] = self.scores[rows[starts]].min(axis=1)
            return
        few = counts <= FEW_CELLS
        for j in range(min(FEW_CELLS, int(counts.max()))):
            # Every query's j-th new cell replaces the query's lowest entry if it
            # beats it (in any order of the cells, the lists end as their top k).
            at = starts[few & (counts > j)] + j
            q = rows[at]
            low = self.scores[q].argmin(axis=1)
            beats = vals[at] > self.scores[q, low]
            self.scores[q[beats], low[beats]] = vals[at[beats]]
            self.idx[q[beats], low[beats]] = cols[at[beats]]
        if not few.all():
            many = np.flatnonzero(~few)
            todo = rows[starts[many]]
            cand_s = np.full((len(many), int(counts[many].max())), -np.inf, np.float32)
            cand_i = np.full(cand_s.shape, -1, np.int64)
            at = np.flatnonzero(np.repeat(~few, counts))
            slot = np.repeat(np.arange(len(many)), counts[many])
            pos = at - np.repeat(starts[many], counts[many])
            cand_s[slot, pos], cand_i[slot, pos] = vals[at], cols[at]
            got = merge_lists((self.scores[todo], self.idx[todo]), cand_s, cand_i, self.k)
            self.scores[todo], self.idx[todo] = got
        touched = rows[starts]
        self.kth[touched] = self.scores[touched].min(axis=1)


def _by_query(rows: np.ndarray) -> np.ndarray:
    """Return the stable order of ``rows`` (query numbers): a radix sort of 16- or 32-bit keys.

    numpy sorts 16-bit integers by radix (0.07 ms for 10,000, where a stable
    sort of int64 takes 0.5 ms and ``lexsort`` of a second key 1.4 ms).
    """
    small = np.uint16 if rows.max(initial=0) < 2**16 else np.uint32
    return np.argsort(rows.astype(small), kind="stable")


def _first_bar(best: np.ndarray, top: int) -> np.ndarray:
    """Return a bar each query has at least ``top`` cells at or above, from its group maxima.

    ``best``: ``(groups, n)`` group maxima. The ``top``-th largest maximum of
    ``top`` or more disjoint sets of cells is such a bar. The sets are unions
    of groups, about 3 ``top`` of them, so the partition that finds it sorts
    a few values a query, not one a group; the bar is a little lower than the
    ``top``-th largest group maximum and lets a few more cells through.
    """
    groups = len(best)
    span = max(1, groups // (3 * top))
    sets = groups // span
    if span > 1:
        best = best[: sets * span].reshape(sets, span, -1).max(axis=1)
    finite = np.where(np.isnan(best), -np.inf, best)
    return np.partition(finite, sets - top, axis=0)[sets - top]


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
    """Return ``rows`` with each one's top ``k`` cells of ``s`` (as :func:`_above`).

    Of cells tied at a row's k-th place, the lower columns are kept.
    """
    width = s.shape[1]
    top = min(k, width)
    part = s if len(rows) == len(s) else s[rows]
    bar = _row_bar(part, top)[:, None]
    cells = np.flatnonzero(part >= bar)  # by row, then column; never a NaN
    r = cells // width
    # Each row's best first; lexsort is stable, so ties stay by column.
    cells = cells[np.lexsort((-part.ravel()[cells], r))]
    cnt = np.bincount(r, minlength=len(part))
    local, cand_s, cand_i = _pack(part, cells, cnt, top)
    return rows[local], cand_s, cand_i


#: :func:`_row_bar` takes the maxima of this many disjoint sets of a row's
#: cells (at least 3 k), and partitions those instead of the row.
ROW_SETS = 256


def _row_bar(part: np.ndarray, top: int) -> np.ndarray:
    """Return a bar each row of ``part`` has at least ``top`` cells at or above.

    Rows at least 4 :data:`ROW_SETS` wide: the ``top``-th largest maximum of
    :data:`ROW_SETS` disjoint sets of cells (set ``j`` holds columns ``j, j +
    sets, ...``, so its maximum is an element-wise maximum of contiguous
    runs: 0.1-0.5 ns a cell, where a partition of the row costs 2.7). It lets
    a few more cells than ``top`` through. Narrower rows: the ``top``-th
    largest value itself. NaN counts as no value either way (a partition
    sorts it above every number), so a NaN displaces none of the numbers.
    """
    n, width = part.shape
    sets = max(ROW_SETS, 3 * top)
    if width < 4 * sets:
        bar = np.partition(part, width - top, axis=1)[:, width - top]
        nan = np.flatnonzero(np.isnan(part.max(axis=1)))
        if len(nan):
            clean = np.where(np.isnan(part[nan]), -np.inf, part[nan])
            bar[nan] = np.partition(clean, width - top, axis=1)[:, width - top]
        return bar
    span = width // sets
    item = part.strides[1]
    runs = np.lib.stride_tricks.as_strided(
        part, (n, span, sets), (part.strides[0], sets * item, item), writeable=False
    )
    best = runs.max(axis=1)
    best[np.isnan(best)] = -np.inf
    return np.partition(best, sets - top, axis=1)[:, sets - top]


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
