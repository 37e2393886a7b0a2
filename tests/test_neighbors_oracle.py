"""Oracle: every search path equals a brute-force reference, ties handled."""

from __future__ import annotations

import numpy as np
import pytest

from trainleak.neighbors import knn, pairwise_scores, resolve_device


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(q, db, k, metric, tiles=16):
    full = np.array([[_score(a, b, metric, tiles) for b in db] for a in q], np.float64)
    order = np.argsort(-full, axis=1, kind="stable")[:, :k]
    return full, np.take_along_axis(full, order, 1), order


def _score(a, b, metric, tiles):
    if metric == "cosine":
        return float(np.dot(a.astype(np.float64), b))
    t = np.split(a.astype(np.float64) - b, tiles)
    return 1.0 / (1.0 + max(np.sqrt(np.mean(x * x)) for x in t))


def _assert_tie_aware(scores, idx, q, db, k, metric, tiles=16):
    full, ref_s, _ = _brute(q, db, k, metric, tiles)
    kk = min(k, len(db))
    assert scores.shape == (len(q), k) and idx.shape == (len(q), k)
    assert scores.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_allclose(scores[:, :kk], ref_s[:, :kk], atol=1e-5)
    for i in range(len(q)):
        row = idx[i, :kk]
        assert len(set(row.tolist())) == kk
        np.testing.assert_allclose(full[i, row], scores[i, :kk], atol=1e-5)
    if k > len(db):
        assert np.all(idx[:, len(db) :] == -1) and np.all(np.isneginf(scores[:, len(db) :]))


@pytest.mark.parametrize("backend", ["torch", "numpy", "faiss"])
@pytest.mark.parametrize(
    ("n_db", "k", "block"), [(50, 5, 7), (3, 5, 16384), (100, 1, 33), (64, 10, 64)]
)
def test_cosine_matches_brute_force(backend, n_db, k, block):
    rng = np.random.default_rng(n_db + k)
    q, db = _unit(rng, 13, 24), _unit(rng, n_db, 24)
    s, i = knn(q, db, k, backend=backend, block_size=block)
    _assert_tie_aware(s, i, q, db, k, "cosine")


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_tiled_matches_brute_force(backend):
    rng = np.random.default_rng(5)
    q, db = rng.random((9, 64), dtype=np.float32), rng.random((40, 64), dtype=np.float32)
    s, i = knn(q, db, 4, metric="tiled_l2", tiles=16, backend=backend, block_size=11)
    _assert_tie_aware(s, i, q, db, 4, "tiled_l2")


@pytest.mark.parametrize("backend", ["torch", "numpy", "faiss"])
def test_many_exact_ties(backend):
    rng = np.random.default_rng(7)
    base = _unit(rng, 4, 8)
    db = np.repeat(base, 6, axis=0)  # every row appears 6 times
    s, i = knn(base, db, 9, backend=backend, block_size=5)
    _assert_tie_aware(s, i, base, db, 9, "cosine")
    if backend != "faiss":  # ties broken by lower index
        assert i[0, :6].tolist() == [0, 1, 2, 3, 4, 5]


def test_block_size_does_not_change_results():
    rng = np.random.default_rng(8)
    q, db = _unit(rng, 30, 16), _unit(rng, 500, 16)
    ref = knn(q, db, 7, block_size=10_000)
    for block in (1, 17, 128):
        got = knn(q, db, 7, block_size=block)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])


def test_exclude_self():
    rng = np.random.default_rng(9)
    db = _unit(rng, 20, 8)
    s, i = knn(db, db, 3, exclude_self=True)
    assert not np.any(i == np.arange(20)[:, None])
    full = pairwise_scores(db, db)
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(s, -np.sort(-full, axis=1)[:, :3], atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "numpy", "faiss"])
def test_exclude_self_across_blocks(backend):
    rng = np.random.default_rng(11)
    db = _unit(rng, 40, 8)
    s, i = knn(db, db, 4, exclude_self=True, backend=backend, block_size=3)
    full = pairwise_scores(db, db)
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(s, -np.sort(-full, axis=1)[:, :4], atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_blocks_that_improve_every_query_or_none(order, backend):
    """Later blocks beating all earlier ones, or none of them, give the oracle's lists."""
    rng = np.random.default_rng(12)
    q = _unit(rng, 1, 16)
    db = _unit(rng, 300, 16)
    sims = db @ q[0]
    db = db[np.argsort(sims if order == "ascending" else -sims)]
    q2 = np.concatenate([q, _unit(rng, 6, 16)])
    s, i = knn(q2, db, 5, block_size=8, backend=backend)
    _assert_tie_aware(s, i, q2, db, 5, "cosine")


def test_errors_say_how_to_fix():
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="k must be 1 or more"):
        knn(x, x, 0)
    with pytest.raises(ValueError, match="dim 4 but the database has dim 3"):
        knn(x, np.zeros((2, 3), np.float32), 1)
    with pytest.raises(ValueError, match="cosine metric only"):
        knn(x, x, 1, metric="tiled_l2", backend="faiss")
    assert knn(np.zeros((0, 4), np.float32), x, 2)[0].shape == (0, 2)


@pytest.mark.gpu
def test_cuda_search_matches_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(10)
    q, db = _unit(rng, 50, 32), _unit(rng, 3000, 32)
    cpu = knn(q, db, 5, block_size=512)
    gpu = knn(q, db, 5, block_size=512, device="cuda")
    np.testing.assert_array_equal(gpu[1], cpu[1])
    np.testing.assert_array_equal(gpu[0], cpu[0])
    db[1000:1030] = np.nan  # NaN rows hide no other row on the device either
    cpu = knn(q, db, 5, block_size=512)
    gpu = knn(q, db, 5, block_size=512, device="cuda")
    np.testing.assert_array_equal(gpu[1], cpu[1])
    np.testing.assert_array_equal(gpu[0], cpu[0])


def test_resolve_device():
    torch = pytest.importorskip("torch")
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto", backend="faiss") == "cpu"
    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="numpy backend searches on the CPU"):
        resolve_device("cuda", backend="numpy")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            resolve_device("cuda:0")
