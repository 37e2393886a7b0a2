"""``extract``: cliques of near-identical generations confirmed against training.

Real COIL-20 images throughout; the memorizing generator is a real DDPM that
the test trains on three images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainleak.audits.extraction import PAPER_TILED, ExtractConfig, extract, find_candidates
from trainleak.audits.graph import greedy_cliques
from trainleak.cli import main
from trainleak.config import EmbedConfig
from trainleak.embedding import EmbeddingSet, embed
from trainleak.encoders import get_encoder
from trainleak.generators import get_generator, materialise
from trainleak.neighbors import pairwise_scores

from conftest import COIL

SEEDS = [(1, 0), (5, 0), (9, 0), (13, 0)]
# Views 60 degrees apart of objects other than the seeds: distinct images.
DISTINCT = [(o, v) for o in (2, 3, 4, 6, 7, 8, 10, 11, 12, 14) for v in (0, 12, 24, 36, 48)]


def coil(obj: int, view: int) -> np.ndarray:
    return np.asarray(Image.open(COIL / f"obj{obj}__{view}.png").convert("RGB"))


def _save(folder: Path, name: str, image: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / name)


def _near_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Pixel noise and a brightness change; tiled l2 is shift-sensitive by design
    # (a 1-pixel shift of a COIL object moves it 0.2-0.4), so no shifts here.
    noisy = image.astype(np.float64) + rng.normal(rng.uniform(-6, 6), 5, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 near-copies of each seed image among 50 distinct images; train = seeds + others."""
    root = tmp_path_factory.mktemp("extract")
    rng = np.random.default_rng(0)
    for o, v in SEEDS:
        _save(root / "train", f"obj{o}__{v}.png", coil(o, v))
        for j in range(12):
            _save(root / "gen" / "planted", f"copy_obj{o}_{j:02d}.png", _near_copy(coil(o, v), rng))
    for o, v in DISTINCT:
        _save(root / "gen" / "planted", f"distinct_obj{o}_{v}.png", coil(o, v))
        _save(root / "gen" / "distinct", f"obj{o}_{v}.png", coil(o, v))
    for o in (15, 16, 17, 18):
        _save(root / "train", f"obj{o}__0.png", coil(o, 0))
    return {"root": root, "train": root / "train", "gen": root / "gen"}


def _config(tmp_path: Path, **kw: object) -> ExtractConfig:
    embed_cfg = EmbedConfig(
        encoder="tiled", encoder_options=dict(PAPER_TILED), workers=1, cache=str(tmp_path)
    )
    return ExtractConfig(embed=embed_cfg, **kw)  # type: ignore[arg-type]


def test_greedy_cliques_returns_true_cliques_and_finds_planted_ones():
    rng = np.random.default_rng(1)
    n = 120
    adj = rng.random((n, n)) < 0.08  # sparse background noise
    adj = adj | adj.T
    planted = [list(range(0, 15)), list(range(40, 52)), list(range(90, 110))]
    for group in planted:
        adj[np.ix_(group, group)] = True
    found = greedy_cliques(adj, 10)
    for clique in found:
        sub = adj[np.ix_(clique, clique)] | np.eye(len(clique), dtype=bool)
        assert sub.all(), "every reported set must be a clique"
    assert sorted(map(sorted, found)) == sorted(planted)
    assert greedy_cliques(np.zeros((50, 50), bool), 2) == []


def test_tiled_distance_matches_slow_reference():
    enc = get_encoder("tiled", **PAPER_TILED)
    images = [coil(1, 0), coil(1, 1), coil(2, 0), _near_copy(coil(1, 0), np.random.default_rng(3))]
    rows = np.concatenate([enc.encode(im) for im in images])
    fast = 1.0 / pairwise_scores(rows, rows, "tiled_l2", tiles=16).astype(np.float64) - 1.0
    for a, ia in enumerate(images):
        for b, ib in enumerate(images):
            # COIL images are 32 x 32 already: the paper's form is their raw pixels.
            pa, pb = ia.astype(np.float64) / 255, ib.astype(np.float64) / 255
            worst = 0.0
            for ty in range(4):
                for tx in range(4):
                    ta = pa[ty * 8 : ty * 8 + 8, tx * 8 : tx * 8 + 8].astype(np.float64)
                    tb = pb[ty * 8 : ty * 8 + 8, tx * 8 : tx * 8 + 8].astype(np.float64)
                    worst = max(worst, float(np.sqrt(((ta - tb) ** 2).mean())))
            # float32 |a|^2 + |b|^2 - 2ab loses ~1e-7 of |a|^2, i.e. ~4e-4 after the sqrt
            assert fast[a, b] == pytest.approx(worst, abs=1e-3)
    assert fast[0, 3] < 0.15 < fast[0, 2]  # a near-copy is within delta, another object is not


def _tiled(path: Path, tmp_path: Path) -> EmbeddingSet:
    opts = dict(PAPER_TILED)
    return embed(path, "tiled", encoder_options=opts, workers=1, cache=tmp_path)


def test_cliques_find_the_planted_groups_and_nothing_among_distinct_images(planted, tmp_path):
    cfg = _config(tmp_path)
    train = _tiled(planted["train"], tmp_path)
    gen = _tiled(planted["gen"] / "planted", tmp_path)
    found = find_candidates("planted", gen, train, cfg)
    assert len(found) == 4
    for cand in found:
        objs = {Path(m).name.split("_")[1] for m in cand.members}
        assert len(objs) == 1 and all("copy_" in Path(m).name for m in cand.members)
        assert cand.clique_size >= 10 and cand.extracted
        assert Path(cand.train_match).name == f"{objs.pop()}__0.png"
    distinct = _tiled(planted["gen"] / "distinct", tmp_path)
    assert find_candidates("distinct", distinct, train, cfg) == []
    assert find_candidates("distinct", distinct, train, _config(tmp_path, min_clique=5)) == []


def test_extract_groups_report_and_relative_criterion(planted, tmp_path):
    result = extract(planted["gen"], planted["train"], config=_config(tmp_path))
    rep = result.report
    assert [g["group"] for g in rep["summary"]["groups"]] == ["distinct", "planted"]
    assert sorted(Path(p).name for p in result.extracted) == sorted(
        f"obj{o}__0.png" for o, _ in SEEDS
    )
    for c in rep["candidates"]:
        assert set(c) >= {"group", "clique_size", "representative", "train_match", "distance"}
        assert c["extracted"] and c["distance"] < 0.15
    relative = extract(planted["gen"], planted["train"], config=_config(tmp_path, relative=True))
    assert relative.extracted == result.extracted
    assert all(c["relative_distance"] < 0.5 for c in relative.report["candidates"])
    paths = result.write(tmp_path / "out")
    html = Path(paths["html"]).read_text(encoding="utf-8")
    assert "EXTRACTED" in html and "data:image/jpeg;base64" in html
    loaded = json.loads(Path(paths["json"]).read_text(encoding="utf-8"))
    assert loaded["summary"]["extracted"] == result.extracted


# -- a real memorizing generator: a DDPM trained here on three COIL images ---------------

# Three distinct objects; with four, our small DDPM dropped one mode (obj5) in trials.
MEMORIZED = [(1, 0), (9, 0), (13, 0)]


@pytest.fixture(scope="module")
def tiny_ddpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainleak.ddpm import DDPMConfig, train_ddpm

    folder = tmp_path_factory.mktemp("ddpm") / "pipe"
    cfg = DDPMConfig(
        size=16, channels=(16, 32), steps=1000, batch_size=16, lr=2e-3, sample_steps=20
    )
    return train_ddpm([coil(o, v) for o, v in MEMORIZED], folder, cfg)


def test_diffusers_adapter_is_seed_reproducible(tiny_ddpm):
    gen = get_generator(f"diffusers:{tiny_ddpm}", steps=5)
    a = gen.sample(3, seed=7)
    b = gen.sample_at([2, 0, 1], seed=7)  # other batch and order: same images per index
    assert all(np.array_equal(x, y) for x, y in zip(a, [b[1], b[2], b[0]], strict=True))
    c = gen.sample(3, seed=8)
    assert not np.array_equal(a[0], c[0])


def test_extract_finds_exactly_the_memorized_images(tiny_ddpm, tmp_path):
    train = tmp_path / "train"  # the three it saw, among 13 images it never saw
    for o, v in MEMORIZED + [(o, 0) for o in (2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 14, 15, 16)]:
        _save(train, f"obj{o}__{v}.png", coil(o, v))
    gen = get_generator(f"diffusers:{tiny_ddpm}", steps=20)
    folder = tmp_path / "gen"
    assert list(materialise(gen, folder, 60, seed=0, batch_size=30)) == [30, 60]
    cfg = _config(tmp_path, min_clique=5)
    cfg.embed.encoder_options["size"] = 16
    result = extract(folder, train, config=cfg)
    assert sorted(Path(p).name for p in result.extracted) == sorted(
        f"obj{o}__{v}.png" for o, v in MEMORIZED
    )


def test_cli_extract_with_a_python_generator(planted, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "out"
    args = ["extract", "--generated", "python:models:coil_replayer", "--train"]
    args += [str(planted["train"]), "--samples-per-prompt", "30", "--min-clique", "5"]
    args += ["--out", str(out), "--workers", "1", "--no-cache", "-q", "--fail-on-leak"]
    code = main(args)
    assert code == 1, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [Path(p).name for p in rep["summary"]["extracted"]] == ["obj1__0.png"]
    assert len(list((out / "generated" / "prompt_0000").glob("*.png"))) == 30
    again = main(args)  # resumes: nothing regenerated, same answer
    assert again == 1
    assert json.loads((out / "report.json").read_text())["summary"] == rep["summary"]
    assert main(["extract", "--generated", "python:models:nope", "--train", "x"]) == 2
