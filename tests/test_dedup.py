"""``dedup`` and the copy encoders' defaults: negative controls first, then planted copies.

Natural sets with no planted duplicates must lose nothing (ORL at both
resolutions) or only views a person cannot tell apart (COIL-20's symmetric
objects); planted near-copies must land in their original's cluster and
nowhere else. Numbers are pinned from ``experiments/dedup_defaults.py``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from trainleak import audit
from trainleak.audits.dedup import dedup, duplicate_edges, star_clusters
from trainleak.audits.graph import greedy_cliques
from trainleak.cli import main
from trainleak.config import AuditConfig, DedupConfig, EmbedConfig
from trainleak.embedding import embed
from trainleak.encoders import get_encoder
from trainleak.errors import AuditInputError
from trainleak.neighbors import pairwise_scores
from trainleak.similarity import Similarity

from conftest import COIL, DATA, ORL

ORL92 = DATA / "orl_faces_92x112"
COPY_KINDS = ["noise3", "jpeg70", "resize80", "bright15", "flip"]


def copy_of(im: Image.Image, kind: str, seed: int = 0) -> Image.Image:
    """A planted near-copy, made as ``experiments/dedup_defaults.py`` makes them."""
    if kind == "noise3":
        a = np.asarray(im, np.float32) + np.random.default_rng(seed).normal(0, 3, im.size[::-1])
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    if kind == "jpeg70":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=70)
        return Image.open(io.BytesIO(buf.getvalue())).convert(im.mode)
    if kind == "resize80":
        w, h = im.size
        small = im.resize((round(w * 0.8), round(h * 0.8)), Image.Resampling.BICUBIC)
        return small.resize((w, h), Image.Resampling.BICUBIC)
    if kind == "bright15":
        return ImageEnhance.Brightness(im).enhance(1.15)
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _cfg(encoder: str = "tiled", **kw) -> DedupConfig:
    return DedupConfig(embed=EmbedConfig(encoder=encoder, workers=1, cache=kw.pop("cache")), **kw)


@pytest.mark.parametrize("encoder", ["tiled", "pixel"])
@pytest.mark.parametrize("folder", [ORL, ORL92], ids=["orl23x28", "orl92x112"])
def test_defaults_remove_nothing_from_distinct_photos(folder, encoder, cache_dir):
    rep = dedup(folder, config=_cfg(encoder, cache=str(cache_dir))).report
    assert rep["summary"]["images"] == 400
    assert rep["summary"]["removed"] == 0 and rep["clusters"] == []
    assert rep["threshold"]["method"] == "encoder-default"
    assert "ORL" in rep["threshold"]["note"] and rep["summary"]["mode"] == "near-duplicate"


def test_cli_says_no_near_duplicates(tmp_path, cache_dir, capsys):
    code = main(["dedup", str(ORL / "s1"), "--cache", str(cache_dir), "--out", str(tmp_path), "-q"])
    assert code == 0
    assert "10 images: no near-duplicates found (tiled threshold 0.9413" in capsys.readouterr().out


def _rms(a: str, b: str) -> float:
    x, y = (np.asarray(Image.open(p).convert("L"), np.float64) for p in (a, b))
    return float(np.sqrt(((x - y) ** 2).mean()))


def test_coil_defaults_join_only_views_a_person_cannot_tell_apart(cache_dir):
    rep = dedup(COIL, config=_cfg(cache=str(cache_dir))).report
    # Pinned from experiments/dedup_defaults.py (README table).
    assert rep["summary"]["removed"] == 61 and len(rep["clusters"]) == 35
    worst = 0.0
    for c in rep["clusters"]:
        assert len({Path(m["path"]).name.split("__")[0] for m in c["members"]}) == 1
        for m in c["members"]:
            assert m["similarity_to_kept"] > rep["threshold"]["value"]  # stars, never chains
            worst = max(worst, _rms(c["kept"], m["path"]))
    assert worst < 6.5  # grey levels RMS: less than a JPEG re-encoding changes


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """ORL 92x112 photos 1-3 of 20 people, plus 5 copies of each of 10 of them."""
    root = tmp_path_factory.mktemp("planted")
    origin = {}
    for s in range(1, 21):
        for p in range(1, 4):
            os.symlink(ORL92 / f"s{s}" / f"{p}.pgm", root / f"s{s}_{p}.pgm")
    for s in range(1, 21, 2):
        im = Image.open(ORL92 / f"s{s}" / "2.pgm")
        for kind in COPY_KINDS:
            copy_of(im, kind, s).save(root / f"copy_s{s}_{kind}.png")
            origin[str(root / f"copy_s{s}_{kind}.png")] = str(root / f"s{s}_2.pgm")
    return root, origin


@pytest.mark.parametrize("encoder", ["tiled", "pixel"])
def test_planted_copies_cluster_with_their_original_only(planted, encoder, tmp_path):
    root, origin = planted
    rep = dedup(root, config=_cfg(encoder, cache=str(tmp_path))).report
    groups = {}
    for copy, orig in origin.items():
        groups.setdefault(orig, set()).add(copy)
    clusters = [{m["path"] for m in c["members"]} for c in rep["clusters"]]
    found = {kind: 0 for kind in COPY_KINDS}
    for members in clusters:
        originals = {origin.get(p, p) for p in members}
        assert len(originals) == 1, f"false merge: {sorted(members)}"
    for copy, orig in origin.items():
        if any({copy, orig} <= m for m in clusters):
            found[copy.rsplit("_", 1)[1].split(".")[0]] += 1
    expected = {"tiled": {}, "pixel": {}}[encoder]
    assert found == {k: expected.get(k, 10) for k in COPY_KINDS}


def _split_image(value_left: int, value_right: int) -> np.ndarray:
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :16], img[:, 16:] = value_left, value_right
    return img


@pytest.mark.parametrize("name", ["pixel", "tiled"])
def test_mirror_invariance_is_a_max_never_a_sum(name):
    enc = get_encoder(name)
    sim = Similarity.of(enc.info)
    split = enc.encode(_split_image(0, 255))
    assert sim.pairwise(split, enc.encode(_split_image(0, 255)))[0, 0] == pytest.approx(1, abs=1e-5)
    assert sim.pairwise(split, enc.encode(_split_image(255, 0)))[0, 0] == pytest.approx(1, abs=1e-5)
    grey = np.full((32, 32, 3), 128, np.uint8)
    bright_dark = grey.astype(int)
    bright_dark[:, :16] += 60
    bright_dark[:, 16:] -= 60
    thr = enc.info.default_threshold
    assert sim.pairwise(enc.encode(grey), split)[0, 0] < thr
    square = np.zeros((32, 32, 3), np.uint8)
    square[8:24, 8:24] = 200
    moved = square.copy()
    moved[8:24, 8:24] = bright_dark[8:24, 8:24].clip(0, 255)
    assert sim.pairwise(enc.encode(square), enc.encode(moved))[0, 0] < thr


@pytest.mark.parametrize("name", ["pixel", "tiled"])
def test_mirror_search_matches_brute_force(name):
    enc = get_encoder(name, size=8, grid=2) if name == "tiled" else get_encoder(name, size=8)
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(30)]
    imgs += [im[:, ::-1].copy() for im in imgs[:10]]
    x = np.concatenate([enc.encode(im) for im in imgs])
    sim = Similarity.of(enc.info)
    flipped = [enc.encode(im[:, ::-1].copy())[0].astype(np.float64) for im in imgs]
    full = np.full((len(x), len(x)), -np.inf)
    for a in range(len(x)):
        for b in range(len(x)):
            if a != b:
                full[a, b] = max(
                    _slow_score(x[a], x[b], sim.tiles), _slow_score(flipped[a], x[b], sim.tiles)
                )
    s, i = sim.knn(x, x, 3, exclude_self=True)
    assert np.allclose(s, -np.sort(-full, 1)[:, :3], atol=1e-5)
    assert (i[30:, 0] == np.arange(10)).all()  # each mirror finds its own original
    # The mirror images go a block at a time (each block searches k + 1 and
    # drops its own rows when the queries are the database).
    import trainleak.similarity as similarity_mod

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(similarity_mod, "MIRROR_BLOCK", 7)
        s7, i7 = sim.knn(x, x, 3, exclude_self=True)
    np.testing.assert_array_equal(s7, s)
    np.testing.assert_array_equal(i7, i)
    assert (i7 != np.arange(len(x))[:, None]).all()

    np.fill_diagonal(full, [max(_slow_score(f, x[a], sim.tiles), 1.0) for a, f in
                            enumerate(flipped)])  # fmt: skip
    whole = sim.knn(x, x, 3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(similarity_mod, "MIRROR_BLOCK", 7)
        blocked = sim.knn(x, x, 3)
    np.testing.assert_array_equal(blocked[0], whole[0])
    np.testing.assert_array_equal(blocked[1], whole[1])
    assert np.allclose(whole[0], -np.sort(-full, 1)[:, :3], atol=1e-5)


def _slow_score(a: np.ndarray, b: np.ndarray, tiles: int) -> float:
    if tiles == 1:
        return float(np.dot(a, b))
    a, b = a.astype(np.float64).reshape(tiles, -1), b.astype(np.float64).reshape(tiles, -1)
    return 1.0 / (1.0 + float(np.sqrt(((a - b) ** 2).mean(1)).max()))


def test_star_clusters_never_chain():
    # a~b, b~c, c~d: a and d must not end up together, nor a and c.
    stars = star_clusters(4, np.array([[0, 1], [1, 2], [2, 3]]), np.array([0.9, 0.95, 0.9]))
    assert stars == [(1, [0, 1, 2])]
    edges = {frozenset(e) for e in [(0, 1), (1, 2), (2, 3)]}
    for centre, members in stars:
        assert all(m == centre or frozenset((m, centre)) in edges for m in members)


@pytest.mark.parametrize("k", [1, 2, 16])
def test_duplicate_edges_match_all_pairs(k):
    rng = np.random.default_rng(k)
    centres = rng.normal(size=(6, 12))
    x = np.repeat(centres, 9, axis=0) + rng.normal(scale=0.05, size=(54, 12))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    full = pairwise_scores(x, x)
    i, j = np.nonzero(np.triu(full > 0.95, 1))
    got = duplicate_edges(x, 0.95, Similarity("cosine"), k=k)
    assert got.tolist() == np.stack([i, j], 1).tolist()


def test_face_dedup_needs_a_threshold(tmp_path, capsys):
    with pytest.raises(AuditInputError, match="identity dedup"):
        dedup(ORL / "s1", config=DedupConfig(embed=EmbedConfig(encoder="face", workers=1)))
    code = main(["dedup", str(ORL / "s1"), "--encoder", "face", "--out", str(tmp_path), "-q"])
    assert code == 2 and "--threshold" in capsys.readouterr().err


def test_cli_writes_keep_list_and_copies_kept(planted, tmp_path, capsys):
    root, origin = planted
    out, kept_dir = tmp_path / "out", tmp_path / "kept"
    args = ["dedup", str(root), "--no-cache", "--workers", "1", "--out", str(out)]
    assert main([*args, "--copy-kept", str(kept_dir), "-q"]) == 0
    stdout = capsys.readouterr().out
    rows = list(csv.DictReader((out / "dedup.csv").open()))
    n_kept = sum(r["kept"] == "1" for r in rows)
    assert len(rows) == 110 and f"keep {n_kept}, remove {110 - n_kept}" in stdout
    assert n_kept == 60
    assert len(list(kept_dir.iterdir())) == n_kept
    html = (out / "report.html").read_text()
    assert "data:image/jpeg;base64" in html and "cluster" in html


@pytest.fixture(scope="module")
def orl_audit(tmp_path_factory):
    """Train: photos 1-5 of s1-s20; synthetic: photos 6-10 of them plus 20 near-copies."""
    root = tmp_path_factory.mktemp("orlaudit")
    (root / "train").mkdir()
    (root / "synth").mkdir()
    origin = {}
    for s in range(1, 21):
        for p in range(1, 11):
            os.symlink(
                ORL92 / f"s{s}" / f"{p}.pgm",
                root / ("train" if p <= 5 else "synth") / f"s{s}_{p}.pgm",
            )
        kind = COPY_KINDS[s % 4]  # the four photometric copies, five each
        name = f"copy_s{s}_{kind}.png"
        copy_of(Image.open(ORL92 / f"s{s}" / f"{1 + s % 5}.pgm"), kind, s).save(
            root / "synth" / name
        )
        origin[name] = f"s{s}_{1 + s % 5}.pgm"
    return root, origin


@pytest.mark.parametrize("encoder", ["pixel", "tiled"])
def test_copy_audit_without_holdout_flags_only_the_copies(orl_audit, encoder, tmp_path):
    root, origin = orl_audit
    cfg = AuditConfig(embed=EmbedConfig(encoder=encoder, workers=1, cache=str(tmp_path)))
    rep = audit(root / "train", root / "synth", config=cfg).report
    flagged = {
        Path(m["synthetic"]).name: Path(m["train"]).name for m in rep["matches"] if m["flagged"]
    }
    assert flagged == origin
    assert rep["threshold"]["method"] == "encoder-default"


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


def test_embed_of_copy_encoders_is_order_free(cache_dir):
    a = embed(COIL, "tiled", workers=1, cache=str(cache_dir))
    assert a.vectors.shape == (1000, 3072) and a.info.version == 3
