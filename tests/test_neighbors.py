"""knn against a brute-force oracle (ties handled), invariance, and the error contract."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from trainleak.neighbors import knn, pairwise_scores

BACKENDS = ["torch", "numpy", "faiss", "auto"]
TOL = 1e-5


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _images(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return rng.random((n, d), dtype=np.float32)


def _true_score(a: np.ndarray, b: np.ndarray, metric: str, tiles: int) -> float:
    """Definition of the score, one pair, float64, plain loops."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if metric == "cosine":
        return float(sum(x * y for x, y in zip(a, b, strict=True)))
    td = len(a) // tiles
    rms = [
        np.sqrt(np.mean((a[t * td : (t + 1) * td] - b[t * td : (t + 1) * td]) ** 2))
        for t in range(tiles)
    ]
    return 1.0 / (1.0 + max(rms))


def _brute(q, db, k, metric, tiles=16, exclude_self=False):
    """Full float64 score matrix and its top-k by a stable sort (ties -> lower index)."""
    full = np.array([[_true_score(a, b, metric, tiles) for b in db] for a in q]).reshape(
        len(q), len(db)
    )
    if exclude_self:
        n = min(len(q), len(db))
        full[np.arange(n), np.arange(n)] = -np.inf
    order = np.argsort(-full, axis=1, kind="stable")[:, :k]
    return full, np.take_along_axis(full, order, 1), order


def _assert_matches_oracle(scores, idx, q, db, k, metric, tiles=16, exclude_self=False):
    full, ref_s, _ = _brute(q, db, k, metric, tiles, exclude_self)
    n_valid = min(k, len(db) - (exclude_self and len(db) > 0))
    assert scores.shape == (len(q), k) and idx.shape == (len(q), k)
    assert scores.dtype == np.float32 and idx.dtype == np.int64
    # Scores equal the oracle's top-k; any of several tied rows is acceptable.
    np.testing.assert_allclose(scores[:, :n_valid], ref_s[:, :n_valid], atol=TOL, rtol=0)
    for i in range(len(q)):
        row = idx[i, :n_valid]
        assert len(set(row.tolist())) == n_valid, "a row lists a database index twice"
        assert np.all((row >= 0) & (row < len(db)))
        np.testing.assert_allclose(full[i, row], scores[i, :n_valid], atol=TOL, rtol=0)
        assert np.all(np.diff(scores[i, :n_valid]) <= 0), "row not sorted by descending score"
    assert np.all(idx[:, n_valid:] == -1) and np.all(np.isneginf(scores[:, n_valid:]))


SHAPES = [  # (n_query, n_db, k, block_size)
    (13, 50, 5, 7),  # many blocks, last one partial
    (13, 3, 5, 16384),  # n_db < k: padding
    (13, 100, 1, 33),  # k = 1
    (5, 64, 10, 64),  # n_db == block_size
    (7, 41, 41, 10),  # k == n_db
    (1, 20, 3, 1),  # one row per block
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("n_q", "n_db", "k", "block"), SHAPES)
def test_cosine_matches_oracle(backend, n_q, n_db, k, block):
    rng = np.random.default_rng([n_q, n_db, k, block])
    q, db = _unit(rng, n_q, 24), _unit(rng, n_db, 24)
    s, i = knn(q, db, k, backend=backend, block_size=block)
    _assert_matches_oracle(s, i, q, db, k, "cosine")


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize(("n_q", "n_db", "k", "block"), SHAPES)
@pytest.mark.parametrize("tiles", [16, 4])
def test_tiled_l2_matches_oracle(backend, n_q, n_db, k, block, tiles):
    rng = np.random.default_rng([n_q, n_db, k, block, tiles])
    q, db = _images(rng, n_q, 48), _images(rng, n_db, 48)
    s, i = knn(q, db, k, metric="tiled_l2", tiles=tiles, backend=backend, block_size=block)
    _assert_matches_oracle(s, i, q, db, k, "tiled_l2", tiles)


def test_tiled_l2_is_the_max_over_tiles_not_the_mean():
    a = np.zeros((1, 64), np.float32)
    b = a.copy()
    b[0, :4] = 1.0  # tile 0 of 16 (4 values) differs completely, the rest match
    s, i = knn(a, b, 1, metric="tiled_l2", tiles=16)
    # RMS of tile 0 is 1: score 1 / (1 + 1)
    assert s[0, 0] == pytest.approx(0.5, abs=1e-6) and i[0, 0] == 0
    assert pairwise_scores(a, b, metric="tiled_l2")[0, 0] == pytest.approx(0.5, abs=1e-6)
    b[0, :4] = 0.15  # the paper's delta: score 1 / 1.15 exactly at the threshold
    assert knn(a, b, 1, metric="tiled_l2")[0][0, 0] == pytest.approx(1 / 1.15, abs=1e-6)
    assert knn(a, a, 1, metric="tiled_l2")[0][0, 0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_across_the_cut_off(backend):
    rng = np.random.default_rng(7)
    base = _unit(rng, 4, 8)
    db = np.repeat(base, 6, axis=0)
    s, i = knn(base, db, 3, backend=backend, block_size=4)
    _assert_matches_oracle(s, i, base, db, 3, "cosine")  # any 3 of the 6 copies will do
    assert np.all(i // 6 == np.arange(4)[:, None])


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_exact_ties(backend):
    rng = np.random.default_rng(7)
    base = _unit(rng, 4, 8)
    db = np.repeat(base, 6, axis=0)  # rows 0-5 equal base[0], rows 6-11 base[1], ...
    s, i = knn(base, db, 9, backend=backend, block_size=5)
    _assert_matches_oracle(s, i, base, db, 9, "cosine")
    np.testing.assert_array_equal(s[:, :6], s[:, :1].repeat(6, 1))  # equal rows, equal scores
    # The six copies fill the first places, listed by index: all of them fit in k.
    np.testing.assert_array_equal(np.sort(i[:, :6], 1), np.arange(24).reshape(4, 6))
    np.testing.assert_array_equal(i[:, :6], np.sort(i[:, :6], 1))


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_ties_tiled_l2(backend):
    rng = np.random.default_rng(11)
    base = _images(rng, 3, 32)
    db = np.concatenate([base, base, base])
    s, i = knn(base, db, 4, metric="tiled_l2", tiles=8, backend=backend, block_size=2)
    _assert_matches_oracle(s, i, base, db, 4, "tiled_l2", 8)
    np.testing.assert_array_equal(i[:, :3], np.arange(3)[:, None] + [0, 3, 6])


@pytest.mark.parametrize("metric", ["cosine", "tiled_l2"])
def test_block_size_does_not_change_results(metric):
    rng = np.random.default_rng(8)
    make = _unit if metric == "cosine" else _images
    q, db = make(rng, 30, 64), make(rng, 500, 64)
    ref_s, ref_i = knn(q, db, 7, metric=metric, backend="torch", block_size=10_000)
    for block in (1, 17, 128, 499):
        s, i = knn(q, db, 7, metric=metric, backend="torch", block_size=block)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_array_equal(s, ref_s)
    s, i = knn(q, db, 7, metric=metric, backend="numpy", block_size=33)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_array_equal(s, ref_s)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("metric", ["cosine", "tiled_l2"])
def test_few_queries_take_larger_blocks_with_the_same_results(backend, metric, monkeypatch):
    import trainleak.neighbors as nb

    rng = np.random.default_rng(9)
    make = _unit if metric == "cosine" else _images
    q, db = make(rng, 3, 64), make(rng, 6000, 64)
    for n in (1, 3):  # 1 query: one block of 6,000 rows; 3 queries: 6,000 too
        assert nb._auto_block(n, len(db), 64) == 6000
    assert nb._auto_block(200, 10**6, 64) == nb.BLOCK_ROWS
    seen = []
    real = nb._knn_torch if backend == "torch" else nb._knn_numpy
    monkeypatch.setattr(nb, f"_knn_{backend}", lambda *a: seen.append(a[4]) or real(*a))
    s, i = knn(q, db, 5, metric=metric, backend=backend, exclude_self=True, self_offset=2)
    assert seen == [6000]
    ref_s, ref_i = knn(q, db, 5, metric=metric, backend=backend, block_size=97,
                       exclude_self=True, self_offset=2)  # fmt: skip
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_array_equal(s, ref_s)
    assert 2 not in i[0] and 3 not in i[1]


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_a_better_row_after_many_tied_rows_is_found(backend):
    # Eleven rows tie ahead of the best one in the same block: the k-th-value
    # selection must keep the best row, not the first k + margin tied ones.
    db = np.zeros((40, 4), np.float32)
    db[:11, 0], db[11, 0], db[12:, 1] = 0.5, 0.9, 1.0
    q = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    for block in (None, 40, 13):
        s, i = knn(q, db, 1, backend=backend, block_size=block)
        assert i.tolist() == [[11]] and s[0, 0] == np.float32(0.9)
    s, i = knn(q, db, 3, backend=backend)
    assert i.tolist() == [[11, 0, 1]]


def test_query_blocks_do_not_change_results(monkeypatch):
    import trainleak.neighbors as nb

    rng = np.random.default_rng(12)
    q, db = _unit(rng, 50, 16), _unit(rng, 90, 16)
    ref = knn(q, db, 5, block_size=20)
    monkeypatch.setattr(nb, "SCORE_BLOCK_BYTES", 4 * 20 * 3)  # 3 queries per block
    got = knn(q, db, 5, block_size=20)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("n", "k", "block"), [(20, 3, 7), (20, 1, 1), (4, 6, 3)])
def test_exclude_self(backend, n, k, block):
    rng = np.random.default_rng([n, k, block])
    db = _unit(rng, n, 8)
    s, i = knn(db, db, k, backend=backend, block_size=block, exclude_self=True)
    assert not np.any(i == np.arange(n)[:, None])
    _assert_matches_oracle(s, i, db, db, k, "cosine", exclude_self=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_offset_leaves_out_the_rows_the_queries_are(backend):
    """A block of the database's own rows, and a shard of the queries' set."""
    db = _unit(np.random.default_rng(21), 30, 8)
    whole = knn(db, db, 4, backend=backend, block_size=7, exclude_self=True)
    part = knn(db[10:19], db, 4, backend=backend, block_size=7, exclude_self=True, self_offset=10)
    np.testing.assert_array_equal(part[1], whole[1][10:19])
    np.testing.assert_array_equal(part[0], whole[0][10:19])
    # Queries 0..29 against a shard holding rows 12..19: query i is shard row i - 12.
    s, i = knn(db, db[12:20], 3, backend=backend, exclude_self=True, self_offset=-12)
    assert not np.any(i + 12 == np.arange(30)[:, None])
    ref = knn(db, db[12:20], 4, backend=backend)[1] + 12
    for q in range(30):
        np.testing.assert_array_equal(i[q] + 12, [r for r in ref[q] if r != q][:3])


def test_exclude_self_keeps_duplicates():
    base = _unit(np.random.default_rng(13), 3, 8)
    db = np.concatenate([base, base])  # row i and row i + 3 are equal
    s, i = knn(db, db, 1, exclude_self=True)
    np.testing.assert_array_equal(i[:, 0], [3, 4, 5, 0, 1, 2])
    np.testing.assert_array_equal(s[:, 0], s[[3, 4, 5, 0, 1, 2], 0])
    np.testing.assert_allclose(s[:, 0], 1.0, atol=TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_and_dtypes_of_edge_cases(backend):
    db = _unit(np.random.default_rng(14), 5, 4)
    s, i = knn(np.zeros((0, 4), np.float32), db, 3, backend=backend)
    assert s.shape == i.shape == (0, 3) and s.dtype == np.float32 and i.dtype == np.int64
    s, i = knn(db[:2], np.zeros((0, 4), np.float32), 2, backend=backend)
    assert np.all(i == -1) and np.all(np.isneginf(s)) and s.shape == (2, 2)
    s, i = knn(db.astype(np.float64), db, 1, backend=backend)  # float64 input is accepted
    assert s.dtype == np.float32 and i.dtype == np.int64
    np.testing.assert_array_equal(i[:, 0], np.arange(5))


def test_memmap_database(tmp_path):
    rng = np.random.default_rng(15)
    db, q = _unit(rng, 40, 8), _unit(rng, 6, 8)
    np.save(tmp_path / "db.npy", db)
    mm = np.load(tmp_path / "db.npy", mmap_mode="r")  # read-only
    got = knn(q, mm, 4, block_size=9)
    ref = knn(q, db, 4, block_size=9)
    np.testing.assert_array_equal(got[1], ref[1])


def test_pairwise_scores_matches_definition():
    rng = np.random.default_rng(16)
    a, b = _images(rng, 4, 32), _images(rng, 5, 32)
    for metric in ("cosine", "tiled_l2"):
        full, _, _ = _brute(a, b, 1, metric, tiles=8)
        got = pairwise_scores(a, b, metric=metric, tiles=8)
        assert got.shape == (4, 5) and got.dtype == np.float32
        np.testing.assert_allclose(got, full, atol=TOL, rtol=0)


def test_errors_say_how_to_fix(monkeypatch):
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="k must be 1 or more, got 0"):
        knn(x, x, 0)
    with pytest.raises(ValueError, match="queries have dim 4 but the database has dim 3"):
        knn(x, np.zeros((2, 3), np.float32), 1)
    with pytest.raises(ValueError, match="faiss backend supports the cosine metric only"):
        knn(x, x, 1, metric="tiled_l2", tiles=4, backend="faiss")
    with pytest.raises(ValueError, match="not a multiple of tiles=16"):
        knn(x, x, 1, metric="tiled_l2")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        knn(x, x, 1, backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown metric"):
        knn(x, x, 1, metric="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block_size must be 1 or more"):
        knn(x, x, 1, block_size=0)
    with pytest.raises(ValueError, match=r"2-d \(n, dim\)"):
        knn(x[0], x, 1)

    monkeypatch.setitem(sys.modules, "faiss", None)  # how Python marks a module missing
    with pytest.raises(ImportError, match=r"pip install 'trainleak\[faiss\]'"):
        knn(x, x, 1, backend="faiss")
