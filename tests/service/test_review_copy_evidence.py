"""A copy audit's evidence on the review page, in Chromium, and beside ``review --export``.

A real ``--encoder copy`` audit of edited scikit-image photos (a crop to 60%
of each side, a 15° rotation) against their originals, calibrated on a
holdout of other photos and ORL faces; an unrelated photo (``text``) is the
negative control: its candidate carries no evidence. The page is served by a
real uvicorn and driven by Playwright with Debian's Chromium.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from copy_edits import apply
from PIL import Image

import trainleak as tl
from trainleak.cli import main
from trainleak.service.review import Review

from conftest import DATA
from review_scene import ServerThread, app_of, client, login

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("cv2")

TRAIN = ["astronaut", "coffee", "chelsea", "camera"]
COPIES = [("astronaut", "crop60"), ("coffee", "rotate15")]


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]


@pytest.fixture(scope="module")
def copy_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("copyreview")
    train, synth, hold = root / "train", root / "synth", root / "hold"
    for d in (train, synth, hold):
        d.mkdir()
    for n in TRAIN:
        Image.fromarray(_rgb(getattr(skdata, n)())).save(train / f"{n}.png")
    for j, (n, edit) in enumerate(COPIES):
        out = apply(edit, _rgb(getattr(skdata, n)()), seed=j)
        Image.fromarray(out).save(synth / f"{n}_{edit}.jpg", quality=90)
    Image.fromarray(_rgb(skdata.text())).save(synth / "text.png")
    for p in range(11, 23):
        face = Image.open(DATA / "orl_faces_92x112" / f"s{p}" / "1.pgm").convert("RGB")
        face.save(hold / f"s{p}.png")
    for n in ["gravel", "brick", "moon", "page"]:
        Image.fromarray(_rgb(getattr(skdata, n)())).save(hold / f"{n}.png")
    result = tl.audit(train, synth, hold, encoder="copy", workers=1, cache=root / "cache")
    assert {Path(f).name for f in result.flagged} == {f"{n}_{e}.jpg" for n, e in COPIES}
    result.write(root / "report")
    return root / "report"


def _by_name(review: Review) -> dict[str, dict]:
    cands = review.payload("ana")["candidates"]
    return {Path(c["synthetic"]).stem: c for c in cands}


def test_payload_carries_the_evidence_picture_and_the_edit(copy_report: Path) -> None:
    review = Review([copy_report])
    by = _by_name(review)
    assert by["text"]["evidence"] is None  # not flagged: nothing drawn
    rot = by["coffee_rotate15"]
    facts = dict(rot["facts"])
    assert abs(abs(float(facts["rotation"].rstrip("°"))) - 15) < 1.5
    assert facts["mirrored"] == "no" and int(facts["verified matches"]) >= 10
    crop = dict(by["astronaut_crop60"]["facts"])["crop box"]
    lo_x, hi_x = (float(v) for v in crop.split(",")[0].removeprefix("x ").split("–"))
    assert abs((hi_x - lo_x) - 0.6) < 0.05
    with client(review) as c:
        got = c.get(rot["evidence"]["url"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(got.content))
    # Two images side by side, sent up to twice the page's image size wide.
    assert picture.width > picture.height and picture.width > review.config.image_size


def test_evidence_renders_in_chromium(copy_report: Path) -> None:
    from test_review_browser import _chromium

    sync_api = pytest.importorskip("playwright.sync_api")
    review = Review([copy_report])
    ids = {Path(c.synthetic).stem: c.id for c in review.candidates}
    with ServerThread(app_of(review)) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        login(page, server.url, then=f"/#{ids['coffee_rotate15']}")
        page.wait_for_selector("#evidence img")
        assert page.get_attribute("#card", "data-id") == ids["coffee_rotate15"]
        for _ in range(200):  # polled: the page's CSP forbids wait_for_function's eval
            if page.evaluate("document.querySelector('#evidence img').naturalWidth > 0"):
                break
            page.wait_for_timeout(50)
        assert page.evaluate("document.querySelector('#evidence img').naturalWidth") > 0
        assert page.is_visible("#evidence")
        facts = page.inner_text("#facts")
        assert "rotation" in facts and "verified matches" in facts and "mirrored" in facts
        login(page, server.url, then=f"/#{ids['text']}")
        assert page.get_attribute("#card", "data-id") == ids["text"]
        assert page.is_hidden("#evidence")  # the negative control shows no evidence
        assert "verified matches" not in page.inner_text("#facts")
        browser.close()


def test_export_puts_the_evidence_beside_the_csv(copy_report: Path, tmp_path: Path) -> None:
    out = tmp_path / "decisions.csv"
    assert main(["review", str(copy_report), "--export", str(out)]) == 0
    assert list(csv.reader(out.open()))[0][0]  # the CSV header
    folder = tmp_path / "decisions-evidence"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"report0-pair-00{i}.{x}" for i in (1, 2) for x in ("json", "png")]
    entry = json.loads((folder / "report0-pair-001.json").read_text())
    assert {"synthetic", "train", "edit"} <= set(entry)
    assert Image.open(folder / "report0-pair-001.png").width > 0
