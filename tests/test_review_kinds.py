"""``trainleak review`` over every report with candidates: dedup, extract, membership.

Each report is made by the real audit on real images (COIL-20, ORL); the
review reads its candidates, serves their images, records decisions, and
the report's own HTML carries the ``data-review`` markers the review links use.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trainleak as tl
from trainleak.audits.dedup import dedup
from trainleak.audits.extraction import PAPER_TILED, extract
from trainleak.audits.membership import membership
from trainleak.config import DedupConfig, EmbedConfig, ExtractConfig, MembershipConfig
from trainleak.service.review import Review
from trainleak.store import content_hash

from conftest import COIL, link_orl
from review_scene import client as client_of
from review_scene import make_audit_report, make_folders


def _markers(report: Path) -> set[str]:
    html = (report / "report.html").read_text()
    return {m.replace("&amp;", "&") for m in re.findall(r'data-review="([^"]*)"', html)}


def _all_images_load(review: Review) -> None:
    client = client_of(review)
    for c in client.get("/api/candidates").json()["candidates"]:
        for shown in c["left"] + c["right"]:
            assert client.get(shown["url"]).status_code == 200, shown["path"]


def test_dedup_clusters_are_reviewed_pair_by_pair(tmp_path, cache_dir):
    folder = tmp_path / "set"
    folder.mkdir()
    for o in range(1, 9):
        shutil.copy(COIL / f"obj{o}__0.png", folder / f"obj{o}.png")
    for o in (2, 5):  # two planted duplicates
        shutil.copy(COIL / f"obj{o}__0.png", folder / f"dup_obj{o}.png")
    cfg = DedupConfig(embed=EmbedConfig(encoder="pixel", workers=1, cache=str(cache_dir)))
    out = tmp_path / "report"
    dedup(folder, config=cfg).write(out)
    review = Review([out])
    assert [c.kind for c in review.candidates] == ["dedup", "dedup"]
    pairs = {(Path(c.synthetic).name, Path(c.train).name) for c in review.candidates}
    assert pairs in (
        {("dup_obj2.png", "obj2.png"), ("dup_obj5.png", "obj5.png")},
        {("obj2.png", "dup_obj2.png"), ("obj5.png", "dup_obj5.png")},
    )
    assert {c.ref for c in review.candidates} == _markers(out)
    _all_images_load(review)
    c = review.candidates[0]
    d = review.decide(c.id, "leak", "ana")
    assert d.synthetic_hash == d.train_hash == content_hash(Path(c.synthetic).read_bytes())
    assert review.state()[c.id]["decision"] == "leak"


def _noisy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def test_extract_cliques_are_reviewed_against_their_training_image(tmp_path, cache_dir):
    rng = np.random.default_rng(0)
    train, gen = tmp_path / "train", tmp_path / "gen" / "planted"
    train.mkdir()
    gen.mkdir(parents=True)
    seed = np.asarray(Image.open(COIL / "obj1__0.png").convert("RGB"), np.float64)
    Image.fromarray(seed.astype(np.uint8)).save(train / "obj1__0.png")
    for o in (3, 7, 11):
        shutil.copy(COIL / f"obj{o}__0.png", train / f"obj{o}__0.png")
    for j in range(12):  # the generator regurgitates obj1 twelve times
        Image.fromarray(_noisy(seed, rng)).save(gen / f"copy_{j:02d}.png")
    for o in (2, 4, 6, 8, 10):
        shutil.copy(COIL / f"obj{o}__24.png", gen / f"distinct_{o}.png")
    embed = EmbedConfig(
        encoder="tiled", encoder_options=dict(PAPER_TILED), workers=1, cache=str(cache_dir)
    )
    out = tmp_path / "report"
    extract(tmp_path / "gen", train, config=ExtractConfig(embed=embed)).write(out)
    review = Review([out])
    (c,) = review.candidates
    assert c.kind == "extract" and c.flagged
    assert Path(c.train).name == "obj1__0.png" and Path(c.synthetic).name.startswith("copy_")
    assert c.score is not None and c.threshold == ExtractConfig().delta and c.score < c.threshold
    assert len(c.left) >= 2  # the representative and more of its clique
    assert _markers(out) == {c.ref}
    _all_images_load(review)


def test_membership_identities_are_reviewed_with_their_closest_samples(tmp_path, cache_dir):
    ids = link_orl(tmp_path / "ids", range(1, 7), range(8, 11))
    cfg = MembershipConfig(
        embed=EmbedConfig(encoder="pixel", workers=1, cache=str(cache_dir)),
        n_samples=120,
        n_boot=50,
        gen_batch_size=60,
    )
    out = tmp_path / "report"
    membership("python:membership_gen:orl_kde", ids, config=cfg).write(out)
    review = Review([out])
    assert len(review.candidates) == 6
    assert {c.kind for c in review.candidates} == {"membership"}
    assert {c.identity for c in review.candidates} == {f"s{s}" for s in range(1, 7)}
    scores = [c.score for c in review.candidates]
    assert scores == sorted(scores, reverse=True)
    top = review.candidates[0]
    assert top.left and top.train == f"identity:{top.identity}"
    assert {c.ref for c in review.candidates} == _markers(out)
    _all_images_load(review)
    d = review.decide(top.id, "leak", "ana")
    assert d.train_hash == f"identity:{top.identity}"
    assert d.synthetic_hash == content_hash(Path(top.left[0].path).read_bytes())


def test_two_reports_at_once_keep_their_own_logs(tmp_path, cache_dir):
    a = make_audit_report(tmp_path / "a", cache_dir)
    b = make_audit_report(tmp_path / "b", cache_dir, redact=True)
    review = Review([a, b])
    assert {c.report for c in review.candidates} == {0, 1}
    first_a = next(c for c in review.candidates if c.report == 0)
    first_b = next(c for c in review.candidates if c.report == 1)
    review.decide(first_a.id, "leak", "ana")
    review.decide(first_b.id, "unsure", "ana")
    assert len(tl_log(a)) == 1 and len(tl_log(b)) == 1
    payload = review.payload("ana")
    assert [r["redacted"] for r in payload["reports"]] == [False, True]


def tl_log(report: Path) -> list:
    from trainleak.decide.decisions import DB_NAME, DecisionStore

    return DecisionStore(report / DB_NAME).history()


def test_front_door_audit_takes_decisions(tmp_path, cache_dir):
    report = make_audit_report(tmp_path, cache_dir)
    review = Review([report])
    top = review.candidates[0]
    review.decide(top.id, "not a leak", "ana")
    folders = make_folders(tmp_path)
    result = tl.audit(
        folders["train"], folders["synthetic"], encoder="pixel", score="nn", workers=1,
        cache=cache_dir, decisions=report,
    )  # fmt: skip
    assert top.synthetic not in result.flagged
    assert result.report["summary"]["review"]["released"][0]["reviewer"] == "ana"


@pytest.mark.parametrize("name", ["review.js", "review.css", "report-links.js"])
def test_the_page_needs_nothing_from_the_network(name):
    from trainleak.service.review import STATIC

    text = (STATIC / name).read_text()
    assert not re.search(r"https?://", text), f"{name} refers to another host"
    assert "innerHTML" not in text  # report strings are set as text, never parsed
