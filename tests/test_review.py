"""``trainleak review`` over HTTP: candidates, images, decisions, export, guards, flow-back.

The report is a real pixel-encoder audit of ORL faces and COIL objects made by
the test (review_scene.py); requests go through Starlette's TestClient to the
guarded application, the same one ``trainleak review`` serves.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from trainleak.cli import main
from trainleak.images import load_image
from trainleak.service.decisions import (
    DB_NAME,
    Decision,
    DecisionsError,
    DecisionStore,
    load_decisions,
)
from trainleak.service.review import Review, ReviewServerError, create_app
from trainleak.service.review_items import ReviewInputError, encoder_key
from trainleak.store import content_hash

from review_scene import COPIES, make_audit_report, make_folders

LOCAL = "http://127.0.0.1:8765"


@pytest.fixture
def report(tmp_path, cache_dir) -> Path:
    return make_audit_report(tmp_path, cache_dir)


@pytest.fixture
def client(report) -> TestClient:
    return TestClient(create_app(Review([report])), base_url=LOCAL)


def _report_json(report: Path) -> dict:
    return json.loads((report / "report.json").read_text())


def test_candidates_are_the_audit_samples_sorted_by_score(client, report):
    data = client.get("/api/candidates").json()
    rep = _report_json(report)
    cands = data["candidates"]
    assert len(cands) == rep["summary"]["n_synthetic"] == 14
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True)
    # The four planted copies come first, flagged, each beside the training photo it copies.
    top = cands[: len(COPIES)]
    assert all(c["flagged"] for c in top) and not any(c["flagged"] for c in cands[4:])
    for c in top:
        name = Path(c["synthetic"]).name  # copy_sS_P.pgm
        s, p = name[len("copy_s") : -len(".pgm")].split("_")
        assert Path(c["train"]).parts[-2:] == (f"s{s}", f"{p}.pgm")
        assert c["identity"] == f"s{s}"
        assert c["threshold"] == rep["threshold"]["value"]
    assert data["decisions"] == {c["id"]: None for c in cands}
    assert data["reports"][0]["encoder_key"] == encoder_key(rep["encoder"])


def test_images_are_the_files_pixels_as_png(client):
    c = client.get("/api/candidates").json()["candidates"][0]
    for shown in c["left"] + c["right"]:
        res = client.get(shown["url"])
        assert res.status_code == 200 and res.headers["content-type"] == "image/png"
        got = np.asarray(Image.open(io.BytesIO(res.content)).convert("RGB"))
        assert np.array_equal(got, load_image(shown["path"]))  # ORL is 92x112: not resized


@pytest.mark.parametrize(
    "path",
    [
        "/image/..%2F..%2F..%2Fetc%2Fpasswd",
        "/image/../../etc/passwd",
        "/image/-1",
        "/image/99999",
        "/image/1e3",
        "/static/..%2Freport.json",
        "/static/decisions.sqlite",
        "/static/../../../../etc/passwd",
        "/report/..%2F..%2Fetc",
        "/report/7",
        "/etc/passwd",
    ],
)
def test_path_traversal_gets_404(client, path):
    res = client.get(path)
    assert res.status_code == 404
    assert b"root:" not in res.content


def test_a_report_naming_a_non_image_file_shows_nothing(tmp_path, report):
    """Only listed paths are served, and only as re-encoded pixels: /etc/passwd is no image."""
    rep = _report_json(report)
    rep["matches"][0]["train"] = "/etc/passwd"
    (report / "report.json").write_text(json.dumps(rep))
    client = TestClient(create_app(Review([report])), base_url=LOCAL)
    cands = client.get("/api/candidates").json()["candidates"]
    urls = [s["url"] for c in cands for s in c["right"] if s["path"] == "/etc/passwd"]
    assert urls and all(client.get(u).status_code == 404 for u in urls)


def _decide(client, cid, decision, **extra):
    res = client.post("/api/decide", json={"id": cid, "decision": decision, **extra})
    assert res.status_code == 200, res.text
    return res.json()


def test_decisions_persist_append_only_and_undo_is_a_new_row(client, report):
    first, second = (c["id"] for c in client.get("/api/candidates").json()["candidates"][:2])
    a = _decide(client, first, "leak", reviewer="ana", note="same photo")
    b = _decide(client, first, "not a leak", reviewer="bob")
    _decide(client, second, "unsure", reviewer="ana")
    state = client.get("/api/state").json()["decisions"]
    assert state[first]["decision"] == "not a leak" and state[first]["reviewer"] == "bob"
    assert state[second]["decision"] == "unsure"
    # Undo bob's row: ana's "leak" is back; undo ana's: nothing is left.
    undone = client.post("/api/undo", json={"id": first, "row": b["row"]}).json()
    assert undone["decision"]["decision"] == "leak"
    assert client.post("/api/undo", json={"id": first, "row": a["row"]}).json()["decision"] is None
    assert client.get("/api/state").json()["decisions"][first] is None
    # A fresh server on the same folder reads the same state from decisions.sqlite.
    again = TestClient(create_app(Review([report])), base_url=LOCAL)
    assert again.get("/api/state").json()["decisions"][second]["decision"] == "unsure"
    with sqlite3.connect(report / DB_NAME) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = con.execute("SELECT decision, undoes FROM decisions ORDER BY id").fetchall()
        assert [r[0] for r in rows] == ["leak", "not a leak", "unsure", "leak", "undecided"]
        assert rows[3][1] == b["row"] and rows[4][1] == a["row"]
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute("UPDATE decisions SET decision = 'leak'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute("DELETE FROM decisions")


def test_decisions_are_keyed_by_content_hash_and_encoder(client, report):
    c = client.get("/api/candidates").json()["candidates"][0]
    _decide(client, c["id"], "leak")
    (d,) = DecisionStore(report / DB_NAME).history()
    assert d.synthetic_hash == content_hash(Path(c["synthetic"]).read_bytes())
    assert d.train_hash == content_hash(Path(c["train"]).read_bytes())
    assert d.encoder == encoder_key(_report_json(report)["encoder"])
    assert (d.synthetic, d.train, d.kind) == (c["synthetic"], c["train"], "audit")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"id": "0-0", "decision": "maybe"}, 400),
        ({"id": "9-9", "decision": "leak"}, 404),
        ({"id": "0-0", "decision": "undecided"}, 400),
        ({"id": ["0-0"], "decision": "leak"}, 400),
        ({"id": "0-0", "decision": "leak", "note": "x" * 40_000}, 413),
    ],
)
def test_bad_decisions_are_refused(client, body, status):
    assert client.post("/api/decide", json=body).status_code == status


def test_undo_of_another_candidates_row_is_refused(client):
    ids = [c["id"] for c in client.get("/api/candidates").json()["candidates"][:2]]
    row = _decide(client, ids[0], "leak")["row"]
    assert client.post("/api/undo", json={"id": ids[1], "row": row}).status_code == 404
    assert client.post("/api/undo", json={"id": ids[0], "row": "1"}).status_code == 400


def _add_many(path: str, reviewer: str, n: int) -> None:
    store = DecisionStore(path)
    for i in range(n):
        store.add(Decision(f"s{reviewer}{i}", f"t{i}", "enc", "leak", reviewer, ""))


def test_two_reviewers_at_once_lose_nothing(tmp_path):
    """Two processes (two `trainleak review` servers on one report) append at once."""
    path = str(tmp_path / DB_NAME)
    DecisionStore(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(path, r, 60)) for r in ("ana", "bob")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    decisions = load_decisions(path)
    assert len(decisions) == 120
    assert decisions.decision_for("sbob59", "t59", "enc").reviewer == "bob"


def test_concurrent_requests_lose_nothing(client):
    from concurrent.futures import ThreadPoolExecutor

    ids = [c["id"] for c in client.get("/api/candidates").json()["candidates"]]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda cid: _decide(client, cid, "unsure"), ids))
    state = client.get("/api/state").json()["decisions"]
    assert all(state[cid]["decision"] == "unsure" for cid in ids)


def test_export_csv_and_formula_injection(tmp_path, cache_dir):
    report = make_audit_report(tmp_path, cache_dir, formula_name=True)
    client = TestClient(create_app(Review([report])), base_url=LOCAL)
    cands = client.get("/api/candidates").json()["candidates"]
    formula = next(c for c in cands if Path(c["synthetic"]).name.startswith("="))
    _decide(client, formula["id"], "not a leak", reviewer="=HYPERLINK(1)", note="-1+1")
    _decide(client, cands[-1]["id"], "leak", reviewer="ana")
    out = tmp_path / "decisions.csv"
    assert main(["review", str(report), "--export", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {"synthetic", "train", "decision", "reviewer", "decided_at"} <= set(rows[0])
    by_decision = {r["decision"]: r for r in rows}
    assert set(by_decision) == {"not a leak", "leak"}
    bad = by_decision["not a leak"]
    assert bad["reviewer"] == "'=HYPERLINK(1)" and bad["note"] == "'-1+1"
    assert by_decision["leak"]["reviewer"] == "ana"
    # The export reads back as the same decisions (the quote undone).
    d = load_decisions(out)
    got = d.decision_for(bad["synthetic_hash"], bad["train_hash"], bad["encoder"])
    assert got.reviewer == "=HYPERLINK(1)" and got.decision == "not a leak"
    hist = tmp_path / "history.csv"
    assert main(["review", str(report), "--export", str(hist), "--history"]) == 0
    assert len(list(csv.DictReader(hist.open()))) == 2


def _flow_back(tmp_path, cache_dir, decisions_arg):
    """Decide two pairs, then re-run the audit through the CLI with --decisions."""
    report = make_audit_report(tmp_path, cache_dir)
    review = Review([report])
    copy = review.candidates[0]  # a planted copy, flagged
    below = next(c for c in review.candidates if "other_s1" in c.synthetic)  # same person
    assert copy.flagged and not below.flagged
    review.decide(copy.id, "not a leak", "ana", "a licensed photo")
    review.decide(below.id, "leak", "bob")
    folders = make_folders(tmp_path)
    out = tmp_path / "again"
    argv = ["audit", "--train", str(folders["train"]), "--synthetic", str(folders["synthetic"]),
            "--encoder", "pixel", "--score", "nn", "--workers", "1", "--cache", str(cache_dir),
            "--out", str(out), "--decisions", decisions_arg(report, tmp_path)]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text()), copy, below, out


@pytest.mark.parametrize(
    "decisions_arg",
    [
        lambda report, tmp: str(report / DB_NAME),
        lambda report, tmp: str(report),
        lambda report, tmp: (
            main(["review", str(report), "--export", str(tmp / "d.csv")]),
            str(tmp / "d.csv"),
        )[1],
    ],
    ids=["sqlite", "report-folder", "exported-csv"],
)
def test_audit_honours_decisions(tmp_path, cache_dir, decisions_arg, capsys):
    rep, copy, below, out = _flow_back(tmp_path, cache_dir, decisions_arg)
    rows = {(m["synthetic"], m["train"]): m for m in rep["matches"]}
    released = rows[(copy.synthetic, copy.train)]
    assert released["flagged"] is False
    assert released["reviewed"]["decision"] == "not a leak"
    assert released["reviewed"]["reviewer"] == "ana" and released["reviewed"]["decided_at"]
    blocked = rows[(below.synthetic, below.train)]
    assert blocked["flagged"] is True and blocked["score"] < rep["threshold"]["value"]
    assert blocked["reviewed"]["reviewer"] == "bob"
    review = rep["summary"]["review"]
    # Threshold flags 4 copies; one released, one other sample flagged by bob: 5 candidates.
    assert review["candidates"] == 5 and review["reviewed"] == 2 and review["unreviewed"] == 3
    assert [r["synthetic"] for r in review["released"]] == [copy.synthetic]
    assert review["flagged_by_reviewer"] == [below.synthetic]
    assert rep["summary"]["flagged"] == 4  # 4 - 1 released + 1 blocked
    assert "reviewed: 2 of 5 candidates" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "reviewed: not a leak (ana," in html and "reviewed: leak (bob," in html


def test_audit_without_decisions_has_no_review_block(report):
    assert "review" not in _report_json(report)["summary"]


def test_bad_decisions_file_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DecisionsError, match="lacks the column"):
        load_decisions(bad)
    argv = ["audit", "--train", "x", "--synthetic", "y", "--decisions", str(bad)]
    assert main(argv) == 2
    assert "trainleak review" in capsys.readouterr().err


# --- guards -------------------------------------------------------------------------------


def test_non_loopback_without_token_is_refused(report, monkeypatch, capsys):
    with pytest.raises(ReviewServerError, match="TRAINLEAK_TOKEN"):
        create_app(Review([report]), token=None, host="0.0.0.0")
    monkeypatch.delenv("TRAINLEAK_TOKEN", raising=False)
    assert main(["review", str(report), "--host", "0.0.0.0"]) == 2
    assert "without a token" in capsys.readouterr().err


def test_token_is_required_when_set(report):
    token = "s3cret-token-for-the-review"
    client = TestClient(create_app(Review([report]), token=token, host="0.0.0.0"))
    assert client.get("/api/candidates").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.get("/api/candidates", headers=wrong).status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/candidates", headers=auth).status_code == 200
    # A browser opens /?token=... once: a cookie keeps it, the URL loses it.
    res = client.get(f"/?token={token}", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/"
    cookie = res.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/api/candidates").status_code == 200  # the cookie now
    fresh = TestClient(client.app)
    assert fresh.get("/?token=wrong", follow_redirects=False).status_code == 401


def test_loopback_server_refuses_other_hosts_and_cross_site_posts(client):
    assert client.get("/api/state", headers={"Host": "evil.example:8765"}).status_code == 403
    assert client.get("/api/state", headers={"Host": "localhost:8765"}).status_code == 200
    body = json.dumps({"id": "0-0", "decision": "leak"})
    form = client.post("/api/decide", content=body, headers={"Content-Type": "text/plain"})
    assert form.status_code == 415
    cross = client.post("/api/decide", content=body, headers={
        "Content-Type": "application/json", "Origin": "http://evil.example"})  # fmt: skip
    assert cross.status_code == 403
    same = client.post("/api/decide", content=body, headers={
        "Content-Type": "application/json", "Origin": LOCAL})  # fmt: skip
    assert same.status_code == 200


def test_every_response_carries_the_security_headers(client):
    res = client.get("/")
    assert "default-src 'self'" in res.headers["content-security-policy"]
    assert res.headers["x-content-type-options"] == "nosniff"
    assert "/static/review.js" in res.text and "http" not in res.text.split("<body>")[0]


def test_a_folder_without_candidates_is_refused(tmp_path, report):
    with pytest.raises(ReviewInputError, match="report.json"):
        Review([tmp_path])
    rep = _report_json(report)
    rep["command"] = "invert"
    (report / "report.json").write_text(json.dumps(rep))
    with pytest.raises(ReviewInputError, match="no candidates"):
        Review([report])


def test_relative_paths_resolve_from_another_folder(tmp_path, cache_dir, monkeypatch):
    """An audit run with relative paths is reviewed from elsewhere (the report's parent)."""
    make_folders(tmp_path)
    monkeypatch.chdir(tmp_path)
    from trainleak.audits.leakage import audit

    from review_scene import audit_config

    audit("train", "synthetic", config=audit_config(cache_dir)).write("report")
    monkeypatch.chdir(tmp_path.parent)
    review = Review([tmp_path / "report"])
    assert review.candidates[0].synthetic.startswith("synthetic/")
    client = TestClient(create_app(review), base_url=LOCAL)
    shown = client.get("/api/candidates").json()["candidates"][0]
    assert all(client.get(s["url"]).status_code == 200 for s in shown["left"] + shown["right"])


def test_review_counts_cover_samples_the_report_does_not_list(tmp_path, cache_dir):
    """report.json lists 1 sample (--report-samples 1); the review counts are over all 14."""
    report = make_audit_report(tmp_path, cache_dir)
    review = Review([report])
    copy = review.candidates[0]
    below = next(c for c in review.candidates if "other_s1" in c.synthetic)
    review.decide(copy.id, "not a leak", "ana")
    review.decide(below.id, "leak", "bob")
    folders = make_folders(tmp_path)
    out = tmp_path / "capped"
    argv = ["audit", "--train", str(folders["train"]), "--synthetic", str(folders["synthetic"]),
            "--encoder", "pixel", "--score", "nn", "--workers", "1", "--cache", str(cache_dir),
            "--out", str(out), "--decisions", str(report), "--report-samples", "1"]  # fmt: skip
    assert main(argv) == 0
    rep = _report_json(out)
    assert rep["listed"]["of_synthetic"] == 14
    review_block = rep["summary"]["review"]
    assert review_block["candidates"] == 5 and review_block["reviewed"] == 2
    assert review_block["unreviewed"] == 3 and rep["summary"]["flagged"] == 4
