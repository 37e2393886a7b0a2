"""``dedup``: planted near-duplicates among real COIL-20 images."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from trainleak.audits.dedup import DedupConfig, dedup, duplicate_edges
from trainleak.audits.graph import connected_components, greedy_cliques
from trainleak.cli import main
from trainleak.config import EmbedConfig
from trainleak.neighbors import pairwise_scores

from conftest import COIL

PLANTED = [(1, 0), (4, 20), (7, 40), (12, 10), (18, 30)]


def _variant(im: Image.Image, j: int) -> Image.Image:
    if j == 0:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        return Image.open(io.BytesIO(buf.getvalue()))
    if j == 1:
        return ImageEnhance.Brightness(im).enhance(1.1)
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


@pytest.fixture(scope="module")
def dup_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dups") / "set"
    for obj in range(1, 21):
        (root / f"obj{obj}").mkdir(parents=True)
        for v in (0, 10, 20, 30, 40):
            os.symlink(COIL / f"obj{obj}__{v}.png", root / f"obj{obj}" / f"{v}.png")
    for obj, v in PLANTED:
        im = Image.open(COIL / f"obj{obj}__{v}.png")
        for j in range(3):
            _variant(im, j).save(root / f"obj{obj}" / f"{v}_dup{j}.png")
    return root


def _cfg(**kw):
    return DedupConfig(embed=EmbedConfig(encoder="pixel", workers=1, no_cache=True), **kw)


def _members(cluster):
    return {m["path"].split("/set/")[1] for m in cluster["members"]}


def test_planted_duplicates_are_clustered_and_objects_never_mixed(dup_folder):
    res = dedup(dup_folder, config=_cfg(threshold=0.99))
    clusters = res.report["clusters"]
    for obj, v in PLANTED:
        group = {f"obj{obj}/{v}.png"} | {f"obj{obj}/{v}_dup{j}.png" for j in range(3)}
        assert any(group <= _members(c) for c in clusters), f"planted group {obj}/{v} split"
    # Other clusters are real near-identical views of one (symmetric) object.
    for c in clusters:
        assert len({p.split("/")[0] for p in _members(c)}) == 1
        assert c["kept"].split("/set/")[1] in _members(c)
    s = res.report["summary"]
    assert s["images"] == 115
    assert s["removed"] == sum(c["size"] - 1 for c in clusters) >= 15
    assert s["kept"] == 115 - s["removed"] == len(res.kept)


def test_cli_writes_keep_list_and_copies_kept(dup_folder, tmp_path, capsys):
    out, kept_dir = tmp_path / "out", tmp_path / "kept"
    code = main(
        [
            "dedup",
            str(dup_folder),
            "--threshold",
            "0.99",
            "--no-cache",
            "--workers",
            "1",
            "--out",
            str(out),
            "--copy-kept",
            str(kept_dir),
            "-q",
        ]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    rows = list(csv.DictReader((out / "dedup.csv").open()))
    n_kept = sum(r["kept"] == "1" for r in rows)
    assert len(rows) == 115 and f"keep {n_kept}, remove {115 - n_kept}" in stdout
    per_cluster = {}
    for r in rows:
        if r["cluster"]:
            per_cluster.setdefault(r["cluster"], []).append(r["kept"])
    assert per_cluster and all(v.count("1") == 1 for v in per_cluster.values())
    copied = sorted(p.relative_to(kept_dir).as_posix() for p in kept_dir.rglob("*.png"))
    assert len(copied) == n_kept and all("/" in c for c in copied)  # sub-folders kept
    html = (out / "report.html").read_text()
    assert "data:image/jpeg;base64" in html and "cluster" in html


@pytest.mark.parametrize("k", [1, 2, 16])
def test_duplicate_edges_match_all_pairs(k):
    rng = np.random.default_rng(k)
    centres = rng.normal(size=(6, 12))
    x = np.repeat(centres, 9, axis=0) + rng.normal(scale=0.05, size=(54, 12))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    full = pairwise_scores(x, x)
    i, j = np.nonzero(np.triu(full > 0.95, 1))
    ref = np.stack([i, j], 1)
    got = duplicate_edges(x, 0.95, "cosine", k=k)
    assert got.tolist() == ref.tolist()
    labels = connected_components(len(x), got)
    assert len(set(labels.tolist())) == 6


def test_greedy_cliques_are_cliques():
    rng = np.random.default_rng(0)
    adj = rng.random((60, 60)) < 0.05
    adj = adj | adj.T
    adj[:12, :12] = True  # a planted clique of 12
    cliques = greedy_cliques(adj, 5)
    assert cliques and len(cliques[0]) >= 12
    for c in cliques:
        sub = adj[np.ix_(c, c)] | np.eye(len(c), dtype=bool)
        assert sub.all()
    flat = [n for c in cliques for n in c]
    assert len(flat) == len(set(flat))
