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
from trainleak.decide.decisions import (
    DB_NAME,
    Decision,
    DecisionsError,
    DecisionStore,
    load_decisions,
)
from trainleak.images import load_image
from trainleak.service.review import Review
from trainleak.service.review_auth import COOKIE, Reviewers
from trainleak.service.review_items import ReviewInputError, encoder_key
from trainleak.service.review_routes import create_app
from trainleak.store import content_hash

from review_scene import COPIES, LOCAL, TOKENS, app_of, make_audit_report, make_folders
from review_scene import client as client_of


@pytest.fixture
def report(tmp_path, cache_dir) -> Path:
    return make_audit_report(tmp_path, cache_dir)


@pytest.fixture
def client(report) -> TestClient:
    return client_of(Review([report]))


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
    client = client_of(Review([report]))
    cands = client.get("/api/candidates").json()["candidates"]
    urls = [s["url"] for c in cands for s in c["right"] if s["path"] == "/etc/passwd"]
    assert urls and all(client.get(u).status_code == 404 for u in urls)


def _decide(client, cid, decision, **extra):
    res = client.post("/api/decide", json={"id": cid, "decision": decision, **extra})
    assert res.status_code == 200, res.text
    return res.json()


def test_decisions_persist_append_only_and_undo_is_a_new_row(report):
    app = app_of(Review([report]))
    client, bob = client_of(app, "ana"), client_of(app, "bob")
    first, second = (c["id"] for c in client.get("/api/candidates").json()["candidates"][:2])
    a = _decide(client, first, "leak", note="same photo")
    # The name in the body is not who decided: the token is.
    b = _decide(bob, first, "not a leak", reviewer="ana")
    _decide(client, second, "unsure")
    state = client.get("/api/state").json()["decisions"]
    assert state[first]["decision"] == "not a leak" and state[first]["reviewer"] == "bob"
    assert state[second]["decision"] == "unsure"
    # Undo bob's row: ana's "leak" is back; undo ana's: nothing is left.
    undone = client.post("/api/undo", json={"id": first, "row": b["row"]}).json()
    assert undone["decision"]["decision"] == "leak"
    assert client.post("/api/undo", json={"id": first, "row": a["row"]}).json()["decision"] is None
    assert client.get("/api/state").json()["decisions"][first] is None
    # A fresh server on the same folder reads the same state from decisions.sqlite.
    again = client_of(Review([report]), "bob")
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
    sly = {"=HYPERLINK(1)": "sly-review-token-0123456789", "ana": TOKENS["ana"]}
    app = create_app(Review([report]), Reviewers(sly))
    client = TestClient(app, base_url=LOCAL, headers={"Authorization": f"Bearer {sly['ana']}"})
    cands = client.get("/api/candidates").json()["candidates"]
    formula = next(c for c in cands if Path(c["synthetic"]).name.startswith("="))
    bearer = {"Authorization": f"Bearer {sly['=HYPERLINK(1)']}"}
    res = client.post(
        "/api/decide",
        json={"id": formula["id"], "decision": "not a leak", "note": "-1+1"},
        headers=bearer,
    )
    assert res.status_code == 200
    _decide(client, cands[-1]["id"], "leak")
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


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_reviewers_token_is_required_on_every_address(report, host):
    """On loopback too: another user of a shared machine can reach its port."""
    app = create_app(Review([report]), Reviewers(TOKENS), host=host)
    client = TestClient(app, base_url=LOCAL)
    for path in ("/", "/api/candidates", "/api/state", "/image/0", "/report/0"):
        assert client.get(path).status_code == 401, path
    body = {"id": "0-0", "decision": "leak"}
    assert client.post("/api/decide", json=body).status_code == 401
    for wrong in ("nope", TOKENS["ana"][:-1], TOKENS["ana"] + "x", f"Basic {TOKENS['ana']}"):
        headers = {"Authorization": wrong if " " in wrong else f"Bearer {wrong}"}
        assert client.get("/api/candidates", headers=headers).status_code == 401
    ana = {"Authorization": f"Bearer {TOKENS['ana']}"}
    assert client.get("/api/candidates", headers=ana).json()["reviewer"] == "ana"


def test_the_token_link_opens_a_session_and_redirects_home(report):
    client = TestClient(app_of(Review([report])), base_url=LOCAL)
    res = client.get(f"/?token={TOKENS['bob']}", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/"
    cookie = res.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKENS["bob"] not in cookie  # a session id, not the token
    assert client.cookies.get(COOKIE)
    # The session is bob's: the page and his decisions say so.
    assert client.get("/api/candidates").json()["reviewer"] == "bob"
    cid = client.get("/api/candidates").json()["candidates"][0]["id"]
    assert _decide(client, cid, "unsure", reviewer="ana")["decision"]["reviewer"] == "bob"
    # Never a redirect elsewhere: //evil.example/x?token= is no login, and a wrong token is 401.
    fresh = TestClient(client.app, base_url=LOCAL)
    evil = fresh.get(f"//evil.example/x?token={TOKENS['bob']}", follow_redirects=False)
    assert evil.status_code in (401, 404) and "location" not in evil.headers
    assert fresh.get("/?token=wrong-token-0123456789", follow_redirects=False).status_code == 401
    forged = TestClient(client.app, base_url=LOCAL, cookies={COOKIE: TOKENS["bob"]})
    assert forged.get("/api/candidates").status_code == 401  # the raw token is no session


def test_review_cli_refuses_shared_token_files_and_bad_logs(report, tmp_path, capsys):
    listing = tmp_path / "reviewers.txt"
    listing.write_text(f"# who and their token\nana {TOKENS['ana']}\nbob {TOKENS['bob']}\n")
    listing.chmod(0o644)
    assert main(["review", str(report), "--reviewers", str(listing)]) == 2
    assert f"chmod 600 {listing}" in capsys.readouterr().err
    listing.chmod(0o600)
    assert main(["review", str(report), "--reviewers", str(listing), "--reviewer", "x"]) == 2
    listing.write_text(f"ana {TOKENS['ana']}\nana {TOKENS['bob']}\n")
    assert main(["review", str(report), "--reviewers", str(listing)]) == 2
    assert "repeats the name 'ana'" in capsys.readouterr().err
    # A damaged decisions log is an input error that says what to do, not a crash.
    listing.write_text(f"ana {TOKENS['ana']}\n")
    (report / DB_NAME).write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    assert main(["review", str(report), "--reviewers", str(listing)]) == 2
    assert "not a trainleak decisions log" in capsys.readouterr().err


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
    from trainleak import audit

    from review_scene import audit_config

    audit("train", "synthetic", config=audit_config(cache_dir)).write("report")
    monkeypatch.chdir(tmp_path.parent)
    review = Review([tmp_path / "report"])
    assert review.candidates[0].synthetic.startswith("synthetic/")
    client = client_of(review)
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
