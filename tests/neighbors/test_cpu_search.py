"""Oracle: the CPU search's threads and its (rows x queries) merge equal a float64 brute force.

``knn(backend="numpy")`` scans with one thread per slice of the queries (or
share of the database) and merges blocks laid out (database rows, queries),
with the compiled kernels (:class:`trainleak._topk.NativeTopK`) or, where
they are not built, group by group with numpy
(:meth:`trainleak._topk.RunningTopK.merge_columns`). Each path is forced
here on sets small enough to check against every score.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from threadpoolctl import threadpool_info

import trainleak.block_search as bs
from trainleak._topk import GROUP_ROWS, NATIVE_ENV, RunningTopK, _row_bar, _top_cells, native
from trainleak.neighbors import RESCORE_MARGIN, knn

from conftest import COIL


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(q: np.ndarray, db: np.ndarray, k: int, exclude_self: bool = False):
    full = q.astype(np.float64) @ db.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(full, -np.inf)
    full[np.isnan(full)] = -np.inf
    return full, -np.sort(-full, axis=1)[:, :k]


def _check(s, i, q, db, k, exclude_self=False):
    full, ref = _brute(q, db, k, exclude_self)
    np.testing.assert_allclose(s, ref, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(full, i, 1), s, atol=1e-6)
    assert all(len(set(row)) == k for row in i.tolist())


@pytest.fixture(params=["native", "native merge", "numpy"])
def threads(request, monkeypatch):
    """Thread every search, on 3 threads whatever the machine (an uneven split).

    Each test runs three times: by the compiled kernels (the product and the
    merge in one pass where the processor has AVX2 and FMA), by the compiled
    merge after a BLAS product (``TILED_MAX_DIM = 0``, what other
    processors run), and by numpy (``TRAINLEAK_NATIVE=0``, what an install
    without a C compiler runs).
    """
    monkeypatch.setattr(bs, "THREAD_ABOVE_MACS", 0)
    monkeypatch.setattr(bs, "cpu_threads", lambda: 3)
    if request.param == "numpy":
        monkeypatch.setenv(NATIVE_ENV, "0")
    else:
        assert native() is not None, "the compiled kernels are not built"
    if request.param == "native merge":
        monkeypatch.setattr(bs, "TILED_MAX_DIM", 0)


@pytest.fixture(scope="module")
def coil() -> np.ndarray:
    """The 1,000 real COIL-20 views (near-identical turntable neighbours) as 256-d unit rows."""
    paths = sorted(Path(COIL).glob("*.png"))
    x = np.stack([np.asarray(Image.open(p).convert("L").resize((16, 16)), np.float32).ravel()
                  for p in paths])  # fmt: skip
    x -= x.mean(axis=1, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("block", [None, 1000, 777])
def test_threads_and_column_merge_match_brute_force(threads, k, block):
    rng = np.random.default_rng(k)
    q, db = _unit(rng, 200, 32), _unit(rng, 3001, 32)  # 3 slices of 66-67 queries
    s, i = knn(q, db, k, backend="numpy", block_size=block)
    _check(s, i, q, db, k)


def test_few_queries_split_the_database_between_threads(threads):
    rng = np.random.default_rng(3)
    q, db = _unit(rng, 5, 32), _unit(rng, 2000, 32)
    s, i = knn(q, db, 7, backend="numpy", block_size=300)
    _check(s, i, q, db, 7)


@pytest.mark.parametrize("block", [None, 250])
def test_real_neighbours_with_self_excluded_match_brute_force(threads, coil, block):
    # COIL's views of one object 5 degrees apart: many close scores per query.
    s, i = knn(coil, coil, 10, backend="numpy", block_size=block, exclude_self=True)
    _check(s, i, coil, coil, 10, exclude_self=True)
    plain = knn(coil, coil, 10, backend="torch", exclude_self=True)  # no threads, row merge
    np.testing.assert_array_equal(i, plain[1])
    np.testing.assert_array_equal(s, plain[0])


def test_results_do_not_depend_on_threads(coil, monkeypatch):
    ref = knn(coil[:300], coil, 5, backend="numpy", block_size=640)
    monkeypatch.setattr(bs, "THREAD_ABOVE_MACS", 0)
    for n in (2, 3, 4):
        monkeypatch.setattr(bs, "cpu_threads", lambda n=n: n)
        got = knn(coil[:300], coil, 5, backend="numpy", block_size=640)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_blocks_that_beat_every_list_or_none(threads, order):
    """Every group of a block beating the lists falls back to the row merge, with the same lists."""
    rng = np.random.default_rng(4)
    q = _unit(rng, 200, 16)
    db = _unit(rng, 4000, 16)
    sims = db @ q.mean(axis=0)
    db = db[np.argsort(sims if order == "ascending" else -sims)]
    s, i = knn(q, db, 5, backend="numpy", block_size=800)
    _check(s, i, q, db, 5)


@pytest.mark.parametrize("copies", [6, 40])
def test_tied_rows(threads, copies):
    rng = np.random.default_rng(5)
    base = _unit(rng, 70, 16)
    db = np.repeat(base, copies, axis=0)
    s, i = knn(base, db, 3, backend="numpy", block_size=1000)
    _check(s, i, base, db, 3)
    if copies <= 3 + RESCORE_MARGIN:  # ties within the margin: the lowest rows, in order
        assert i.tolist() == [[copies * r + j for j in range(3)] for r in range(70)]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("n_query", [200, 5])
@pytest.mark.parametrize("nan_rows", [[1003], list(range(990, 1030))])
def test_nan_rows_hide_no_other_row(threads, backend, n_query, nan_rows):
    # 40 NaN rows: more NaN scores in a query's block than its list holds.
    rng = np.random.default_rng(6)
    q, db = _unit(rng, n_query, 16), _unit(rng, 2000, 16)
    bad = db.copy()
    bad[nan_rows] = np.nan  # inside a group of every block layout used below
    keep = np.delete(np.arange(len(db)), nan_rows)
    for block in (None, 500, 1003):  # 1003: the NaN row opens a block
        s, i = knn(q, bad, 5, backend=backend, block_size=block)
        ref_s, ref_i = knn(q, db[keep], 5, backend=backend, block_size=block)
        np.testing.assert_array_equal(i, keep[ref_i])
        np.testing.assert_array_equal(s, ref_s)


def test_column_merge_equals_row_merge_block_by_block():
    """Both layouts of RunningTopK keep the same lists after every block, masked cells included."""
    rng = np.random.default_rng(7)
    k = 4 + RESCORE_MARGIN
    rows, cols = RunningTopK(150, k), RunningTopK(150, k)
    row_merges = []  # blocks the column layout hands to the row merge (dense ones)
    cols.merge = lambda s, d0: row_merges.append(d0) or RunningTopK.merge(cols, s, d0)
    width = 80 * GROUP_ROWS + 5  # a tail of 5 rows past the last whole group
    for b in range(6):
        s = rng.normal(size=(150, width)).astype(np.float32) + (0.1 * b if b < 5 else 9)
        s[:, 7] = -np.inf  # a masked self match
        s[3, 100:140] = np.nan
        rows.merge(s.copy(), b * width)
        cols.merge_columns(np.ascontiguousarray(s.T), b * width)
        got_r, got_c = rows.lists(), cols.lists()
        order_r, order_c = np.argsort(-got_r[0], 1), np.argsort(-got_c[0], 1)
        np.testing.assert_array_equal(np.take_along_axis(got_r[0], order_r, 1),
                                      np.take_along_axis(got_c[0], order_c, 1))  # fmt: skip
        np.testing.assert_array_equal(np.take_along_axis(got_r[1], order_r, 1),
                                      np.take_along_axis(got_c[1], order_c, 1))  # fmt: skip
    # The first block is merged by groups; the last, which beats every list, row by row.
    assert 0 not in row_merges and row_merges[-1] == 5 * width


@pytest.mark.parametrize("width", [300, 5000])  # the exact k-th value; maxima of sets
def test_row_bar_is_a_lower_bound_of_the_kth_value(width):
    rng = np.random.default_rng(8)
    part = rng.normal(size=(40, width)).astype(np.float32)
    part[3, ::7] = np.nan  # NaN in many sets
    part[5, :] = np.nan
    part[5, 10:13] = 1.0  # fewer numbers than the list holds
    part[6, : width // 2] = 2.0  # ties everywhere
    bar = _row_bar(part, 12)
    clean = np.where(np.isnan(part), -np.inf, part)
    kth = -np.sort(-clean, axis=1)[:, 11]
    assert np.all(bar <= kth)
    assert np.all((part >= bar[:, None]).sum(axis=1)[np.arange(40) != 5] >= 12)
    if width < 4 * 256:
        np.testing.assert_array_equal(bar, kth)
    else:  # a bar, not the whole row: a few cells more than the list
        assert np.median((part >= bar[:, None]).sum(axis=1)) < 3 * 12


@pytest.mark.parametrize("width", [300, 5000])
def test_top_cells_keep_each_rows_best_and_lower_columns_among_ties(width):
    rng = np.random.default_rng(9)
    s = np.round(rng.normal(size=(30, width)), 1).astype(np.float32)  # many ties
    s[4, 100:200] = np.nan
    rows, got_s, got_i = _top_cells(s, np.arange(30), 7)
    assert rows.tolist() == list(range(30))
    clean = np.where(np.isnan(s), -np.inf, s)
    want = np.lexsort((np.broadcast_to(np.arange(width), s.shape), -clean), axis=1)[:, :7]
    order = np.lexsort((got_i, -got_s), axis=1)
    np.testing.assert_array_equal(np.take_along_axis(got_i, order, 1), want)


def test_overlapping_searches_share_the_blas_limit_and_restore_it(monkeypatch):
    """Searches from several threads at once (a served gate) agree and leave the BLAS as found."""
    monkeypatch.setattr(bs, "THREAD_ABOVE_MACS", 0)
    monkeypatch.setattr(bs, "cpu_threads", lambda: 2)
    rng = np.random.default_rng(10)
    q, db = _unit(rng, 300, 32), _unit(rng, 5000, 32)
    before = {lib["filepath"]: lib["num_threads"] for lib in threadpool_info()}
    ref = knn(q, db, 5, backend="numpy")
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: knn(q, db, 5, backend="numpy"), range(8)))
    for s, i in got:
        np.testing.assert_array_equal(i, ref[1])
        np.testing.assert_array_equal(s, ref[0])
    after = {lib["filepath"]: lib["num_threads"] for lib in threadpool_info()}
    assert {p: after[p] for p in before} == before


def test_thread_count_follows_the_blas_setting_of_a_new_process():
    code = "from trainleak.device import cpu_threads; print(cpu_threads())"
    for env_threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": env_threads, "OPENBLAS_NUM_THREADS": env_threads}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        assert int(out) == min(int(env_threads), os.cpu_count() or 1)
