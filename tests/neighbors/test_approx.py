"""The approximate search: equal to the exact one at measured recall 1.0, honest otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainleak import _ivf_join
from trainleak._topk import fused_product
from trainleak.approx_search import (
    ApproxSettings,
    build_index,
    candidates,
    least_nprobe,
    recall_at_k,
    use_search,
)
from trainleak.config import AuditConfig, DedupConfig, EmbedConfig
from trainleak.errors import AuditInputError
from trainleak.neighbors import knn

from conftest import COIL, ORL

pytest.importorskip("faiss")


def _unit_rows(paths: list[Path]) -> np.ndarray:
    """Real images as 128-d unit rows: 16 x 8 grey pixels, each row centred."""
    x = np.stack([np.asarray(Image.open(p).convert("L").resize((8, 16)), np.float32).ravel()
                  for p in paths])  # fmt: skip
    x -= x.mean(axis=1, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def coil_rows() -> np.ndarray:
    """The 1,000 real COIL-20 views as 128-d unit rows."""
    return _unit_rows(sorted(Path(COIL).glob("*.png")))


@pytest.fixture(scope="module")
def orl_rows() -> np.ndarray:
    """The 400 real ORL faces as 128-d unit rows."""
    return _unit_rows(sorted(Path(ORL).glob("s*/*.pgm")))


def _grouped_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send every approximate search of the test through the grouped path, small as it is."""
    for name in ("MIN_PAIRS_PER_LIST", "MIN_LIST_ROWS", "MIN_LIST_ROWS_COMPILED"):
        monkeypatch.setattr(_ivf_join, name, 0)


@pytest.fixture(params=[False, True], ids=["auto", "grouped"])
def grouped(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """The library's choice of path, or the grouped path forced for every search."""
    if request.param:
        _grouped_everywhere(monkeypatch)
    return bool(request.param)


@pytest.fixture(params=["compiled", "torch"])
def join(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each list scored by the compiled one-pass product (where it runs) or by torch."""
    if request.param == "compiled" and not fused_product():
        pytest.skip("this processor has no AVX2 and FMA: the grouped search uses torch")
    monkeypatch.setattr(_ivf_join, "COMPILED", request.param == "compiled")
    return request.param


@pytest.mark.parametrize("rows", ["coil_rows", "orl_rows"])
@pytest.mark.parametrize(("nprobe", "kk"), [(1, 60), (3, 19), (8, 11)])
def test_grouped_finds_faiss_candidates(
    rows: str, nprobe: int, kk: int, request: pytest.FixtureRequest, join: str
) -> None:
    # Oracle: the grouped-by-list search returns the candidates of faiss's own
    # IVF-flat scan at the same nprobe; only a tie at the kk-th score may differ.
    x = request.getfixturevalue(rows)
    index = build_index(x, 20, seed=0)
    fs, fi = candidates(index, x, kk, nprobe, grouped=False)
    gs, gi = _ivf_join.grouped_candidates(index, x, kk, nprobe, block=97)
    assert gi.shape == fi.shape == (len(x), kk) and gs.dtype == np.float32
    if kk == 60:  # nearest list only: some lists hold fewer than 60 rows, so padding
        assert (fi == -1).any()
    np.testing.assert_array_equal(gi == -1, fi == -1)
    fs = np.where(fi == -1, -np.inf, fs)  # faiss pads with -FLT_MAX
    np.testing.assert_allclose(gs, fs, atol=1e-5)
    differ = 0
    for r in range(len(x)):
        extra = set(gi[r]) ^ set(fi[r])
        if extra:
            differ += 1
            kth = fs[r][fi[r] >= 0].min()
            score = dict(zip(fi[r], fs[r], strict=True)) | dict(zip(gi[r], gs[r], strict=True))
            assert all(abs(score[e] - kth) < 1e-5 for e in extra), r
    assert differ <= len(x) // 100


def test_grouped_independent_of_block_and_workers(coil_rows: np.ndarray, join: str) -> None:
    index = build_index(coil_rows, 20, seed=0)
    one = _ivf_join.grouped_candidates(index, coil_rows, 12, 4, block=1000, workers=1)
    many = _ivf_join.grouped_candidates(index, coil_rows, 12, 4, block=33, workers=2)
    # float32 products round with the block's shape (last bits only); the same rows are found.
    np.testing.assert_allclose(one[0], many[0], atol=1e-5)
    np.testing.assert_array_equal(np.sort(one[1], axis=1), np.sort(many[1], axis=1))


@pytest.mark.parametrize(("k", "exclude_self"), [(1, True), (10, True)])
def test_grouped_approx_equals_exact_at_recall_one(
    coil_rows: np.ndarray, k: int, exclude_self: bool, monkeypatch: pytest.MonkeyPatch, join: str
) -> None:
    # The grouped path everywhere (the tuning sample and the search), as on a large set.
    _grouped_everywhere(monkeypatch)
    assert _ivf_join.grouped_pays(len(coil_rows), 1, 25, len(coil_rows))
    with use_search("approx", ApproxSettings(target_recall=1.0)) as ctx:
        s, i = knn(coil_rows, coil_rows, k, exclude_self=exclude_self)
    (rec,) = ctx.records
    assert rec.recall_at_k == 1.0 and rec.sampled_queries == len(coil_rows)
    assert 1 < rec.nprobe < rec.nlist  # recall 1.0 reached before probing every list
    es, ei = knn(coil_rows, coil_rows, k, exclude_self=exclude_self, search="exact")
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_array_equal(s, es)


@pytest.mark.parametrize(("k", "exclude_self"), [(1, True), (5, False), (10, True)])
def test_approx_equals_exact_at_recall_one(
    coil_rows: np.ndarray, k: int, exclude_self: bool
) -> None:
    queries = coil_rows[::3]
    with use_search("approx", ApproxSettings(target_recall=1.0)) as ctx:
        s, i = knn(queries, coil_rows, k, exclude_self=exclude_self)
    (rec,) = ctx.records
    # Every query is sampled (fewer than 1,000), so this recall is the run's true recall.
    assert rec.mode == "approx" and rec.sampled_queries == len(queries)
    assert rec.recall_at_k == 1.0 and rec.nlist > 1
    es, ei = knn(queries, coil_rows, k, exclude_self=exclude_self, search="exact")
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_array_equal(s, es)


def test_measured_recall_is_the_true_recall_when_low(coil_rows: np.ndarray) -> None:
    # target 0: one probe per query, so real misses; the recorded recall must say so.
    with use_search("approx", ApproxSettings(target_recall=0.0, nlist=25)) as ctx:
        s, i = knn(coil_rows, coil_rows, 10, exclude_self=True)
    (rec,) = ctx.records
    es, ei = knn(coil_rows, coil_rows, 10, exclude_self=True, search="exact")
    true = recall_at_k(s.astype(np.float64), i, es.astype(np.float64), ei)
    assert rec.nprobe == 1 and rec.recall_at_k == pytest.approx(true)
    assert 0.3 < true < 0.999
    # Scores of what was found are exact scores, whatever was missed.
    found = i >= 0
    exact_pairs = np.einsum(
        "nd,nkd->nk", coil_rows.astype(np.float64), coil_rows[i].astype(np.float64)
    )
    np.testing.assert_allclose(s[found], exact_pairs[found].astype(np.float32))


def test_index_over_the_memory_budget_is_memory_mapped_and_finds_the_same(
    coil_rows: np.ndarray, tmp_path: Path, grouped: bool
) -> None:
    # A memory-mapped database over the budget: the index is filled in shards of
    # ~100 rows into a file under workdir, finds what the in-memory index finds
    # (same lists, same rows), and the file goes with the run's context. Grouped:
    # the lists are read in place from the file by the grouped search.
    db = np.lib.format.open_memmap(tmp_path / "db.npy", "w+", np.float32, coil_rows.shape)
    db[:] = coil_rows
    db.flush()
    db = np.load(tmp_path / "db.npy", mmap_mode="r")
    work = tmp_path / "work"
    work.mkdir()
    settings = ApproxSettings(target_recall=0.0, nlist=25)
    budget = 100 * (4 * db.shape[1] + 8) / 2**20  # MiB: 100 rows, so 10 shards
    with use_search("approx", settings) as mem:
        s, i = knn(coil_rows, coil_rows, 10, exclude_self=True)
    disk_settings = ApproxSettings(target_recall=0.0, nlist=25, memory_mb=budget,
                                   workdir=str(work))  # fmt: skip
    with use_search("approx", disk_settings) as disk:
        ds, di = knn(coil_rows, db, 10, exclude_self=True)
        (index,) = disk.indexes.values()
        assert index.ntotal == len(db)
        files = [p.name for p in work.rglob("*") if p.is_file()]
        assert files == ["lists.ivfdata"]  # the shards are merged and removed
    assert not any(work.iterdir())
    (rm,), (rd,) = mem.records, disk.records
    assert rd.nprobe == rm.nprobe == 1 and rd.recall_at_k == rm.recall_at_k < 0.999
    np.testing.assert_array_equal(di, i)
    np.testing.assert_array_equal(ds, s)


def test_approx_refuses_tiled_l2_and_default_stays_exact() -> None:
    x = np.random.default_rng(0).random((20, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="cosine metric only"):
        knn(x, x, 2, metric="tiled_l2", tiles=2, search="approx")
    with use_search("approx") as ctx:
        knn(x, x, 2, metric="tiled_l2", tiles=2)
    assert [r.mode for r in ctx.records] == ["exact"]
    assert "note" in ctx.summary()
    with use_search("exact") as ctx:
        knn(x, x, 2)
    assert len(ctx.records) == 1
    assert ctx.summary() == {"mode": "exact"}  # the same report wherever it searched


def test_audit_report_carries_measured_recall(orl_scenario: dict[str, Path]) -> None:
    from trainleak import audit
    from trainleak.embedding import embed

    sets = {k: embed(orl_scenario[k], encoder="pixel", cache=False, workers=1)
            for k in ("train", "synthetic", "holdout")}  # fmt: skip
    reports = {}
    for mode in ("exact", "approx"):
        cfg = AuditConfig(search=mode, fpr=0.05)  # type: ignore[arg-type]
        res = audit(sets["train"], sets["synthetic"], sets["holdout"], config=cfg)
        reports[mode] = res.report
    rep = reports["approx"]
    assert rep["settings"]["search"] == "approx"
    searches = rep["search"]["searches"]
    approx = [r for r in searches if r["mode"] == "approx"]
    # samples and holdout both searched approximately (the calibration searches as the samples)
    assert {r["queries"] for r in approx} >= {len(sets["synthetic"]), len(sets["holdout"])}
    assert all(0.0 <= r["recall_at_k"] <= 1.0 and r["sampled_queries"] == r["queries"]
               for r in approx)  # fmt: skip
    assert rep["search"]["recall_at_k_min"] == min(r["recall_at_k"] for r in approx)
    assert reports["exact"]["search"]["mode"] == "exact"
    if rep["search"]["recall_at_k_min"] == 1.0:
        assert rep["summary"]["flagged"] == reports["exact"]["summary"]["flagged"]
        assert rep["threshold"]["value"] == reports["exact"]["threshold"]["value"]


def test_dedup_report_and_ray_refusal(tmp_path: Path) -> None:
    from trainleak.audits.dedup import dedup, dedup_embeddings

    folder = tmp_path / "coil"
    folder.mkdir()
    for p in sorted(Path(COIL).glob("obj1__*.png"))[:30]:
        (folder / p.name).symlink_to(p)
    cfg = DedupConfig(embed=EmbedConfig(encoder="pixel", workers=1, no_cache=True),
                      threshold=0.99, search="approx")  # fmt: skip
    result = dedup(folder, config=cfg)
    rep = result.report
    assert rep["search"]["mode"] == "approx" and rep["search"]["searches"]
    cfg.embed.engine = "ray"
    with pytest.raises(AuditInputError, match="local engine"):
        dedup_embeddings(result.embedded, config=cfg)


def test_index_build_calibrates_with_measured_recall(
    orl_scenario: dict[str, Path], tmp_path: Path
) -> None:
    from trainleak.config import IndexConfig
    from trainleak.gate.index import Index

    made = {}
    for mode in ("exact", "approx"):
        cfg = IndexConfig(embed=EmbedConfig(encoder="pixel", workers=1, no_cache=True),
                          fpr=0.05, search=mode)  # type: ignore[arg-type]  # fmt: skip
        with Index.build(tmp_path / mode, orl_scenario["train"], orl_scenario["holdout"],
                         config=cfg) as index:  # fmt: skip
            made[mode] = (dict(index.manifest["search"]), index.threshold)
    search, threshold = made["approx"]
    approx = [r for r in search["searches"] if r["mode"] == "approx"]
    assert search["mode"] == "approx" and approx
    assert all(
        r["sampled_queries"] == r["queries"] == 100 for r in approx
    )  # the 100 holdout photos
    # A missed neighbour only lowers a holdout score: never a higher threshold than exact.
    assert threshold <= made["exact"][1]
    if search["recall_at_k_min"] == 1.0:
        assert threshold == made["exact"][1]
    assert made["exact"][0]["mode"] == "exact"


def test_tuning_stops_near_the_least_nprobe_that_reaches_the_target(
    coil_rows: np.ndarray,
) -> None:
    # Doubling alone may stop at twice the nprobe needed (a 1M run: 512 for want of
    # 0.0001 recall at 256); the tuned value is bisected to within 1/8 of the least.
    # The recall curve here is real: COIL-20 rows, faiss's candidates at each nprobe.
    nlist, k, target = 100, 10, 0.999
    index = build_index(coil_rows, nlist, 0)
    es, ei = knn(coil_rows, coil_rows, k, exclude_self=True, search="exact")
    own = np.arange(len(coil_rows))[:, None]

    def recall(nprobe: int) -> float:
        _, ci = candidates(index, coil_rows, k + 1, nprobe, grouped=False)
        ci = np.where(ci == own, -1, ci)
        x = coil_rows.astype(np.float64)  # scored as knn scores: float64, then float32
        cs = np.where(ci >= 0, np.einsum("nd,nkd->nk", x, x[ci]).astype(np.float32), -np.inf)
        order = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        top_s, top_i = np.take_along_axis(cs, order, 1), np.take_along_axis(ci, order, 1)
        return recall_at_k(top_s.astype(np.float64), top_i, es.astype(np.float64), ei)

    curve = {p: recall(p) for p in range(1, nlist + 1)}
    assert all(curve[p] <= curve[p + 1] + 1e-12 for p in range(1, nlist))  # monotone
    least = min(p for p, r in curve.items() if r >= target)
    doubled = next(2**j for j in range(8) if curve[min(nlist, 2**j)] >= target)
    tuned = least_nprobe(lambda p: curve[p] >= target, nlist)
    assert least <= tuned <= least + max(1, least // 8) and curve[tuned] >= target
    assert least < doubled and tuned < doubled  # this curve needs no power of two
    # And through knn: the run's own tuning reaches the target on this set.
    with use_search("approx", ApproxSettings(target_recall=target, nlist=nlist)) as ctx:
        knn(coil_rows, coil_rows, k, exclude_self=True)
    (rec,) = ctx.records
    assert rec.recall_at_k >= target and rec.nprobe <= doubled


def test_a_query_with_a_nan_finds_nothing_and_spoils_no_other(
    coil_rows: np.ndarray, grouped: bool, join: str
) -> None:
    # faiss's quantiser gives a NaN query no list (-1 probes); grouped or not, that query
    # gets no neighbour and every other query the neighbours it gets without it.
    q = coil_rows[:60].copy()
    q[7] = np.nan
    settings = ApproxSettings(target_recall=0.9, nlist=25)
    with use_search("approx", settings):
        s, i = knn(q, coil_rows, 5)
    with use_search("approx", settings):
        s0, i0 = knn(np.delete(q, 7, axis=0), coil_rows, 5)
    assert np.isneginf(s[7]).all() and (i[7] == -1).all()
    np.testing.assert_array_equal(np.delete(i, 7, axis=0), i0)
    np.testing.assert_array_equal(np.delete(s, 7, axis=0), s0)


@pytest.mark.parametrize("nprobe", [1, 7, 25])
def test_probes_are_the_quantisers_lists_nearest_first(coil_rows: np.ndarray, nprobe: int) -> None:
    # The grouped search's own probe search against faiss's quantiser: the same lists,
    # the nearest first; a query with a NaN gets none, as from faiss.
    index = build_index(coil_rows, 25, seed=0)
    centroids = _ivf_join._centroids(index)
    assert centroids is not None and centroids.shape == (25, coil_rows.shape[1])
    q = coil_rows[::7].copy()
    q[3] = np.nan
    _, want = index.quantizer.search(q, nprobe)
    got = _ivf_join._probes(centroids, q, nprobe)
    assert (want[3] == -1).all() and (got[3] == -1).all()
    np.testing.assert_array_equal(got[:, 0], want[:, 0])
    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))
