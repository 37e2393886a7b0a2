"""The compiled kernels of the CPU search (trainleak/_ctopk.c) against their numpy twins.

Every kernel has a numpy path that an install without a C compiler runs
(``TRAINLEAK_NATIVE=0`` forces it): the lists kept, the float64 re-score
and the final order must agree, block by block and in a whole search run
as a new process.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import trainleak.neighbors as nb
from trainleak._topk import (
    NATIVE_ENV,
    NativeTopK,
    RunningTopK,
    fused_product,
    native,
    running_topk,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lib():
    got = native()
    assert got is not None, "the compiled kernels are not built (is a C compiler installed?)"
    return got


def _sorted(lists: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    s, i = lists
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -s), axis=1)
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def _same_lists(a, b) -> None:
    (sa, ia), (sb, ib) = _sorted(a), _sorted(b)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(sa, sb)


@contextlib.contextmanager
def _switch(lib, name: str, value: int) -> Iterator[None]:
    """Set one of the kernels' int switches (a path, a threshold) for the block, then restore it."""
    flag = ctypes.c_int.in_dll(lib, name)
    old, flag.value = flag.value, value
    try:
        yield
    finally:
        flag.value = old


def test_the_install_builds_the_kernels_and_the_search_uses_them(lib, monkeypatch):
    assert isinstance(running_topk(3, 2), NativeTopK)
    monkeypatch.setenv(NATIVE_ENV, "0")
    assert native() is None and isinstance(running_topk(3, 2), RunningTopK)


@pytest.mark.parametrize("layout", ["rows", "columns", "columns in 3 query ranges"])
def test_native_lists_equal_the_numpy_lists_after_every_block(lib, layout):
    rng = np.random.default_rng(1)
    n, k, width = 150, 12, 333
    ref, got = RunningTopK(n, k), NativeTopK(n, k, lib)
    for b in range(7):
        s = rng.normal(size=(n, width)).astype(np.float32) + 0.2 * b
        s[:, 5] = -np.inf  # a masked self match
        s[3, 40:90] = np.nan  # NaN cells are never kept
        s[8] = np.nan
        s[9, :] = 0.5  # ties: the lowest rows are kept
        ref.merge(s.copy(), b * width)
        s[10, :] = 0.5  # ties, then 3 higher cells a block that push out the highest tied rows
        s[10, 100:103] = 0.9 if b else 0.5
        if layout == "rows":
            got.merge(s, b * width)
        else:
            st = np.ascontiguousarray(s.T)
            parts = [slice(0, 40), slice(40, 41), slice(41, n)] if "ranges" in layout else [None]
            for part in parts:
                got.merge_columns(st, b * width, part)
        keep = np.arange(n) != 10  # which of row 10's ties numpy keeps is its own choice
        _same_lists(tuple(x[keep] for x in got.lists()), tuple(x[keep] for x in ref.lists()))
        higher = [c * width + r for c in range(1, b + 1) for r in range(100, 103)][:k]
        assert sorted(got.lists()[1][10].tolist()) == sorted(higher + list(range(k - len(higher))))
    assert got.lists()[1][8].tolist() == [-1] * k  # an all-NaN query keeps nothing
    assert sorted(got.lists()[1][9].tolist()) == list(range(k))


@pytest.mark.parametrize(("n", "kk"), [(150, 12), (16, 1), (37, 70)])
def test_avx512_merge_keeps_the_lists_and_bars_of_the_sse2_merge(lib, n, kk):
    """Sixteen queries a compare where the processor has AVX-512: the same cells, in the same
    order, as SSE2's eight; NaN and -inf never enter, ties keep the lowest rows, and a
    query count that is not a multiple of 16 takes the scalar tail."""
    if not lib.tl_avx512_ok():
        pytest.skip("no AVX-512 here: the merge runs SSE2 only")
    rng = np.random.default_rng(n + kk)
    blocks = []
    for b in range(5):
        st = np.round(rng.normal(size=(300, n)), 1).astype(np.float32) + 0.1 * b  # many ties
        st[::7, ::3] = np.nan
        st[5] = -np.inf
        st[:, 2] = np.nan
        blocks.append(st)
    got = []
    for flag in (1, 0):
        with _switch(lib, "tl_wide_merge", flag):
            top = NativeTopK(n, kk, lib)
            for b, st in enumerate(blocks):
                top.merge_columns(st, b * 300)
        got.append((top.lists(), top.kth.copy()))
    (s1, i1), bar1 = got[0]
    (s0, i0), bar0 = got[1]
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_array_equal(s1, s0)
    np.testing.assert_array_equal(bar1, bar0)
    assert (i1[2] == -1).all()  # an all-NaN query keeps nothing


def test_strided_and_non_float32_blocks_merge_as_copies(lib):
    rng = np.random.default_rng(2)
    s = rng.normal(size=(20, 400))
    a, b = NativeTopK(20, 5, lib), NativeTopK(20, 5, lib)
    a.merge(s[:, ::2], 0)  # float64, every other column: copied first
    b.merge(np.ascontiguousarray(s[:, ::2], np.float32), 0)
    _same_lists(a.lists(), b.lists())
    c = NativeTopK(20, 5, lib)
    wide = np.ascontiguousarray(s.T, np.float32)
    c.merge_columns(wide[::2], 0)  # a row stride of two rows
    _same_lists(c.lists(), b.lists())


def test_fewer_rows_than_the_list_leave_padding(lib):
    got = NativeTopK(2, 6, lib)
    got.merge(np.array([[0.1, 0.3, 0.2], [np.nan, -np.inf, 1.0]], np.float32), 10)
    s, i = _sorted(got.lists())
    assert i.tolist() == [[11, 12, 10, -1, -1, -1], [12, -1, -1, -1, -1, -1]]
    assert np.isneginf(s[0, 3:]).all() and np.isneginf(s[1, 1:]).all()


@pytest.mark.parametrize("d", [1, 7, 128, 515])
def test_rescore_agrees_with_numpy_and_does_not_depend_on_the_batch(lib, monkeypatch, d):
    rng = np.random.default_rng(d)
    db = rng.normal(size=(500, d)).astype(np.float32)
    q = rng.normal(size=(60, d)).astype(np.float32)
    idx = rng.integers(-1, 500, size=(60, 9))
    got = nb._rescore(q, db, idx, "cosine", 1)
    exact = np.einsum("nkd,nd->nk", db[np.maximum(idx, 0)].astype(np.float64), q.astype(np.float64))
    exact = np.where(idx < 0, -np.inf, exact).astype(np.float32)
    np.testing.assert_array_max_ulp(got, exact, maxulp=1)
    part = nb._rescore(q[17:29], db, idx[17:29], "cosine", 1)  # another batch: the same bits
    np.testing.assert_array_equal(part, got[17:29])
    monkeypatch.setenv(NATIVE_ENV, "0")
    np.testing.assert_array_max_ulp(nb._rescore(q, db, idx, "cosine", 1), got, maxulp=1)


def test_order_equals_the_numpy_order_with_ties_padding_and_nan(lib, monkeypatch):
    rng = np.random.default_rng(3)
    s = np.round(rng.normal(size=(300, 18)), 1).astype(np.float32)  # many ties
    i = rng.permutation(300 * 18).reshape(300, 18).astype(np.int64)
    s[::7, -3:], i[::7, -3:] = -np.inf, -1  # padding
    s[5, 2] = s[6, 0] = np.nan
    s[9, :4] = -np.inf  # real -inf scores, before the padding
    got = nb._tie_order(s, i)
    monkeypatch.setenv(NATIVE_ENV, "0")
    ref = nb._tie_order(s, i)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])


def test_kernels_from_another_version_warn_and_the_search_merges_with_numpy(monkeypatch):
    """A shared library without this version's kernels (a build left from an older checkout):
    a warning that says how to rebuild, and the numpy merge finds the same rows."""
    import importlib.util
    import types

    import trainleak._topk as tk

    rng = np.random.default_rng(13)
    q, db = rng.normal(size=(40, 24)).astype(np.float32), rng.normal(size=(900, 24)).astype(
        np.float32)  # fmt: skip
    want = nb.knn(q, db, 4)
    # Not a library of kernels: numpy's own C extension stands in for the old build.
    stale = str(next(Path(np.__file__).parent.glob("*/_multiarray_umath*.so")))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: types.SimpleNamespace(
        origin=stale) if name == "trainleak._ctopk" else find_spec(name, *a))  # fmt: skip
    for cached in (tk._load, tk.fused_product):
        cached.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="another version of trainleak.*pip install"):
            assert tk.native() is None
        assert isinstance(running_topk(3, 2), RunningTopK) and not tk.fused_product()
        got = nb.knn(q, db, 4)
    finally:
        monkeypatch.undo()
        for cached in (tk._load, tk.fused_product):
            cached.cache_clear()
    np.testing.assert_array_equal(got[1], want[1])
    assert tk.native() is not None  # the real build again


def test_a_search_without_the_kernels_finds_the_same_rows_in_a_new_process(tmp_path):
    rng = np.random.default_rng(4)
    q = rng.normal(size=(300, 64)).astype(np.float32)
    copies = np.repeat(q[:20], 3, axis=0)  # rows 6000-6059: each of the first 20 queries 3 times
    db = np.concatenate([rng.normal(size=(6000, 64)), copies]).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "db.npy", db)
    code = (
        "import json, sys, numpy as np; from trainleak.neighbors import knn; "
        f"q = np.load({str(tmp_path / 'q.npy')!r}); db = np.load({str(tmp_path / 'db.npy')!r}); "
        "s, i = knn(q, db, 5); json.dump([s.tolist(), i.tolist()], sys.stdout)"
    )
    runs = {}
    for flag in ("1", "0"):
        env = {**os.environ, NATIVE_ENV: flag}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        runs[flag] = [np.array(x) for x in json.loads(out)]
    np.testing.assert_array_equal(runs["1"][1], runs["0"][1])
    np.testing.assert_array_max_ulp(runs["1"][0].astype(np.float32),
                                    runs["0"][0].astype(np.float32), maxulp=1)  # fmt: skip
    want = [[6000 + 3 * r + j for j in range(3)] for r in range(20)]
    assert runs["1"][1][:20, :3].tolist() == want


@pytest.mark.slow
def test_a_plain_pip_wheel_carries_the_compiled_kernels(tmp_path):
    """``pip install trainleak`` from source compiles the kernels into the package."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("trainleak-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("trainleak/_ctopk.") and n.endswith((".so", ".pyd")) for n in names)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("n_query", [1, 2])
def test_one_pass_for_a_few_queries_matches_brute_force_and_numpy(lib, monkeypatch, threads,
                                                                  n_query):  # fmt: skip
    """One or two queries: scored and merged in one compiled pass (NaN rows and ties too)."""
    import trainleak.block_search as bs

    rng = np.random.default_rng(5 + n_query)
    db = rng.normal(size=(3001, 40)).astype(np.float32)
    db[100] = np.nan
    db[2000:2004] = db[7]  # exact copies of row 7: ties, the lowest rows first
    q = np.concatenate([db[7:8] * 0.5 + 0.1, rng.normal(size=(1, 40))]).astype(np.float32)
    q = q[:n_query]
    monkeypatch.setattr(bs, "THREAD_ABOVE_MACS", 0 if threads > 1 else 2**62)
    monkeypatch.setattr(bs, "cpu_threads", lambda: threads)
    passes = []
    scan = NativeTopK.scan
    monkeypatch.setattr(NativeTopK, "scan", lambda self, *a: passes.append(1) or scan(self, *a))
    s, i = nb.knn(q, db, 6, block_size=700)
    assert len(passes) >= 5  # every block went through the one-pass kernel
    full = q.astype(np.float64) @ np.nan_to_num(db, nan=0).astype(np.float64).T
    full[:, 100] = -np.inf
    ref = np.lexsort((np.broadcast_to(np.arange(len(db)), full.shape), -full), axis=1)[:, :6]
    np.testing.assert_array_equal(i, ref)
    np.testing.assert_allclose(s, np.take_along_axis(full, ref, 1), rtol=1e-6)
    monkeypatch.setenv(NATIVE_ENV, "0")
    s0, i0 = nb.knn(q, db, 6, block_size=700)
    np.testing.assert_array_equal(i0, i)
    np.testing.assert_array_max_ulp(s0, s, maxulp=1)


def test_one_pass_keeps_the_lists_of_the_product_and_merge_with_ties(lib):
    """Small whole numbers: every float32 sum is exact, so both ways see the same scores."""
    rng = np.random.default_rng(6)
    db = rng.integers(-3, 4, size=(2500, 40)).astype(np.float32)  # many tied scores
    q = rng.integers(-3, 4, size=(2, 40)).astype(np.float32)
    one, two = NativeTopK(2, 9, lib), NativeTopK(2, 9, lib)
    for d0 in range(0, len(db), 600):
        part = db[d0 : d0 + 600]
        one.scan(part, q, d0)
        two.merge(q @ part.T, d0)
        _same_lists(one.lists(), two.lists())
    s, i = _sorted(one.lists())
    full = q @ db.T
    want = np.lexsort((np.broadcast_to(np.arange(len(db)), full.shape), -full), axis=1)[:, :9]
    np.testing.assert_array_equal(i, want)  # of tied rows, the lowest are kept


@pytest.mark.parametrize("group_from", [768, 8, 10**9])
@pytest.mark.parametrize("dim", [40, 1029, 3072])
def test_one_pass_over_long_rows_keeps_the_lists_of_the_product_and_merge(lib, dim, group_from):
    """Rows of >= ``tl_scan_group_dim`` dimensions (768) are scored eight at a time with
    AVX2; whole numbers keep every float32 sum exact, so both ways of scanning must keep the
    lists of the product and merge: ties, NaN rows, a dimension that is not a multiple of 8
    and blocks whose rows are not a multiple of 8 (each way forced at every d here)."""
    assert ctypes.c_int.in_dll(lib, "tl_scan_group_dim").value == 768
    rng = np.random.default_rng(dim)
    db = rng.integers(-3, 4, size=(1203, dim)).astype(np.float32)
    db[[5, 602]] = np.nan  # one in a group of eight, one in a block's last rows
    db[900:903] = db[11]  # ties with row 11: the lowest rows are kept
    q = rng.integers(-3, 4, size=(2, dim)).astype(np.float32)
    q[1] = db[11]
    one, two = NativeTopK(2, 7, lib), NativeTopK(2, 7, lib)
    with _switch(lib, "tl_scan_group_dim", group_from):
        for d0 in range(0, len(db), 603):
            part = db[d0 : d0 + 603]
            one.scan(part, q, d0)
            two.merge(q @ part.T, d0)
            _same_lists(one.lists(), two.lists())
    s, i = _sorted(one.lists())
    full = q @ np.nan_to_num(db, nan=0).T
    full[:, [5, 602]] = -np.inf
    want = np.lexsort((np.broadcast_to(np.arange(len(db)), full.shape), -full), axis=1)[:, :7]
    np.testing.assert_array_equal(i, want)
    assert list(i[1, :4]) == [11, 900, 901, 902]


@pytest.fixture(params=["avx2 tiles", "avx-512 tiles"])
def tiled(lib, request):
    """The one-pass kernels, with the product's AVX2 tiles or (where the processor has it)
    its AVX-512 tiles."""
    if not fused_product():
        pytest.skip("this processor has no AVX2 and FMA: the search uses the BLAS and the merge")
    wide = request.param == "avx-512 tiles"
    if wide and not lib.tl_avx512_ok():
        pytest.skip("this processor has no AVX-512: the product runs its AVX2 tiles")
    with _switch(lib, "tl_wide_product", int(wide)):
        yield lib


def test_avx512_product_tiles_give_the_avx2_tiles_bits(lib):
    """Each lane sums its dimensions in the same order with fused multiply-adds in both tile
    widths: real-valued rows keep the same cells with the same float32 scores."""
    if not (fused_product() and lib.tl_avx512_ok()):
        pytest.skip("needs AVX2 and AVX-512")
    rng = np.random.default_rng(12)
    q = rng.normal(size=(45, 77)).astype(np.float32)
    db = rng.normal(size=(2500, 77)).astype(np.float32)
    got = []
    for wide in (1, 0):
        with _switch(lib, "tl_wide_product", wide):
            top = NativeTopK(len(q), 9, lib)
            packed = top.pack(q)
            for d0 in range(0, len(db), 1100):
                top.product(db[d0 : d0 + 1100], packed, d0, None)
        got.append(top.lists())
    np.testing.assert_array_equal(got[0][1], got[1][1])
    np.testing.assert_array_equal(got[0][0].view(np.int32), got[1][0].view(np.int32))


@pytest.mark.parametrize(
    ("n_query", "n_db", "dim", "k"),
    [(1, 1, 3, 1), (13, 37, 40, 9), (50, 160, 128, 18), (20, 90, 24, 70)],
)
def test_gather_product_keeps_the_lists_of_the_product_and_merge(tiled, n_query, n_db, dim, k):
    """A subset of the queries, picked in any order, against packed rows in several sets
    (an approximate index's lists): whole numbers keep every float32 sum exact, so the
    lists must equal those of the product and merge of the same subsets, ties, NaN rows,
    partial panels (rows not a multiple of 16) and groups of queries not a multiple of 6
    too; queries not picked keep their lists untouched."""
    rng = np.random.default_rng(n_query * n_db + dim)
    q = rng.integers(-3, 4, size=(n_query, dim)).astype(np.float32)
    db = rng.integers(-3, 4, size=(n_db, dim)).astype(np.float32)
    if n_db > 5:
        db[3] = np.nan
        db[-2:] = db[1]  # ties, in another set than row 1
    one, two = NativeTopK(n_query, k, tiled), NativeTopK(n_query, k, tiled)
    cuts = sorted({0, n_db, *rng.integers(0, n_db, 3).tolist()})
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        which = rng.permutation(n_query)[: max(1, n_query * 2 // 3)]
        one.gather_product(q, which, one.pack(db[a:b]), b - a, a)
        s = np.full((n_query, b - a), -np.inf, np.float32)  # queries not picked see nothing
        s[which] = q[which] @ db[a:b].T
        two.merge(s, a)
        _same_lists(one.lists(), two.lists())
        np.testing.assert_array_equal(one.kth, two.kth)


@pytest.mark.parametrize(
    ("n_query", "n_db", "dim", "k", "block"),
    [(3, 1, 1, 1, 1), (17, 13, 7, 9, 5), (100, 1000, 40, 9, 333), (37, 500, 128, 70, 256),
     (16, 60, 200, 18, 60), (40, 700, 256, 12, 700),
     # blocks of 1,020 rows or more: the first is scored into memory for the floor
     (50, 2500, 40, 9, 1300), (21, 2100, 24, 70, 2100), (33, 3000, 16, 1, 1020)],
)  # fmt: skip
def test_product_keeps_the_lists_of_the_product_and_merge(tiled, n_query, n_db, dim, k, block):
    """Small whole numbers: every float32 sum is exact whatever its order, so the one-pass
    product must keep exactly the cells the BLAS product and the merge keep, ties too,
    after every block; partial tiles of rows and of queries, sorted lists and heaps (k 70)."""
    rng = np.random.default_rng(n_query + dim)
    db = rng.integers(-3, 4, size=(n_db, dim)).astype(np.float32)  # many tied scores
    q = rng.integers(-3, 4, size=(n_query, dim)).astype(np.float32)
    db[n_db // 2] = np.nan  # a NaN row scores NaN against every query: never kept
    q[n_query // 2] = np.nan  # a NaN query keeps nothing
    one, two = NativeTopK(n_query, k, tiled), NativeTopK(n_query, k, tiled)
    packed = one.pack(q)
    for d0 in range(0, n_db, block):
        part = db[d0 : d0 + block]
        one.product(part, packed, d0, None)
        two.merge(q @ part.T, d0)
        _same_lists(one.lists(), two.lists())
    s, i = _sorted(one.lists())
    full = q @ db.T
    full[np.isnan(full)] = -np.inf
    keep = min(k, n_db - 1)  # every row but the NaN one
    want = np.lexsort((np.broadcast_to(np.arange(n_db), full.shape), -full), axis=1)[:, :keep]
    live = np.arange(n_query) != n_query // 2
    np.testing.assert_array_equal(i[live, :keep], want[live])  # of tied rows, the lowest
    assert (i[~live] == -1).all()


@pytest.mark.parametrize(("self0", "block"), [(10, 128), (-4, 128), (10, 1500), (1100, 1500)])
def test_product_leaves_out_each_querys_own_row(tiled, self0, block):
    """``self0``: query j is database row self0 + j (negative for a shard that starts later);
    in blocks of 1,500 rows the own rows fall in the first block's floor rows, or after them."""
    rng = np.random.default_rng(8)
    db = rng.integers(-3, 4, size=(3000, 24)).astype(np.float32)
    q = db[max(self0, 0) : max(self0, 0) + 40].copy() if self0 >= 0 else rng.integers(
        -3, 4, size=(40, 24)).astype(np.float32)  # fmt: skip
    if self0 < 0:
        db[: 40 + self0] = q[-self0:]  # query j (j >= 4) is database row j - 4
    one, two = NativeTopK(40, 5, tiled), NativeTopK(40, 5, tiled)
    packed = one.pack(q)
    for d0 in range(0, len(db), block):
        part = db[d0 : d0 + block]
        one.product(part, packed, d0, self0)
        s = q @ part.T
        j = np.arange(40)
        hit = (j + self0 >= d0) & (j + self0 < d0 + len(part))
        s[j[hit], j[hit] + self0 - d0] = -np.inf
        two.merge(s, d0)
    _same_lists(one.lists(), two.lists())
    own = np.arange(40) + self0
    assert not (one.lists()[1] == own[:, None]).any()


def test_knn_scores_batches_in_one_pass_up_to_tiled_max_dim(tiled, monkeypatch):
    """The search takes the one-pass product for batches at d <= TILED_MAX_DIM and the BLAS
    beyond, and both find the brute-force neighbours of real-valued rows."""
    import trainleak.block_search as bs

    calls = []
    product = NativeTopK.product
    monkeypatch.setattr(NativeTopK, "product",
                        lambda self, *a: calls.append(1) or product(self, *a))  # fmt: skip
    rng = np.random.default_rng(9)
    for dim, used in ((bs.TILED_MAX_DIM, True), (bs.TILED_MAX_DIM + 1, False)):
        calls.clear()
        db = rng.normal(size=(2000, dim)).astype(np.float32)
        q = np.concatenate([db[:20] + 0.01, rng.normal(size=(30, dim))]).astype(np.float32)
        s, i = nb.knn(q, db, 5, block_size=700)
        assert bool(calls) == used
        full = q.astype(np.float64) @ db.astype(np.float64).T
        ref = np.argsort(-full, axis=1, kind="stable")[:, :5]
        np.testing.assert_array_equal(i, ref)
        np.testing.assert_allclose(s, np.take_along_axis(full, ref, 1), rtol=1e-6)


@pytest.mark.parametrize(("d", "kk"), [(1, 18), (7, 18), (8, 18), (9, 18), (128, 18), (515, 18),
                                       (9, 1), (515, 3), (40, 4), (40, 6)])  # fmt: skip
def test_avx2_rescore_gives_the_same_bits_as_the_sse2_sums(lib, d, kk):
    """The AVX2 re-score keeps dot64's eight partial sums in the same order; a float32 product
    is exact in float64, so its fused multiply-add rounds as dot64's add: the same bits. It
    sums four of a query's pairs at a time: lists of 1-6, padding among them, a list of
    padding only, and a padded group whose first pair is padding check those groups."""
    if not fused_product():
        pytest.skip("this processor has no AVX2 and FMA: the re-score sums in SSE2 only")
    rng = np.random.default_rng(d * 100 + kk)
    db = (rng.standard_normal((2000, d)) * rng.uniform(0.1, 100)).astype(np.float32)
    q = rng.standard_normal((200, d)).astype(np.float32)
    idx = rng.integers(-1, 2000, (200, kk)).astype(np.int64)  # -1: padding, -inf
    idx[::5, ::2] = -1
    idx[3] = -1
    outs = []
    for flag in (1, 0):
        out = np.empty(idx.shape, np.float32)
        with _switch(lib, "tl_wide_rescore", flag):
            lib.tl_rescore(db.ctypes.data, d, q.ctypes.data, d, d, idx.ctypes.data, len(q),
                           idx.shape[1], out.ctypes.data)  # fmt: skip
        outs.append(out)
    np.testing.assert_array_equal(outs[0].view(np.int32), outs[1].view(np.int32))
    assert np.isneginf(outs[0][idx < 0]).all()
    want = np.einsum("nkd,nd->nk", db[np.maximum(idx, 0)].astype(np.float64), q.astype(np.float64))
    np.testing.assert_array_max_ulp(outs[0][idx >= 0], want[idx >= 0].astype(np.float32), maxulp=1)


def test_gather_product_refuses_what_would_write_outside_the_lists(tiled):
    q = np.ones((4, 8), np.float32)
    top = NativeTopK(4, 2, tiled)
    packed = top.pack(np.ones((5, 8), np.float32))
    with pytest.raises(IndexError, match="outside the queries"):
        top.gather_product(q, np.array([0, 4]), packed, 5, 0)
    with pytest.raises(ValueError, match="fewer rows"):
        top.gather_product(q, np.array([0, 1]), packed, 17, 0)
    top.gather_product(q, np.array([3, 1]), packed, 5, 0)
    assert list(top.kth) == [-np.inf, 8.0, -np.inf, 8.0]  # only the picked queries' lists
