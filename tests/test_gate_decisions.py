"""Reviewers' decisions at the gate: ``check --decisions``, ``index add-decisions``, ``serve``.

The scene is review_scene.py's real pixel-encoder audit of ORL faces: four
synthetic files are exact copies of training photos (blocked by the
threshold), the others are other photos of the same people or COIL objects
(released). A reviewer marks one copy "not a leak" and one same-person photo
"leak" in the review log; the gate, built from the same training folder,
must then answer as ``audit --decisions`` does.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from trainleak.cli import main
from trainleak.decide.decisions import DB_NAME, Decision, DecisionStore
from trainleak.service.review import Review
from trainleak.store import content_hash

from review_scene import make_audit_report, make_folders

RUNTIME = ["--workers", "1", "--no-cache", "--quiet"]


@pytest.fixture
def scene(tmp_path, cache_dir):
    report = make_audit_report(tmp_path, cache_dir)
    folders = make_folders(tmp_path)  # the files the report names (already there)
    review = Review([report])
    copy = review.candidates[0]  # a planted copy, flagged by the threshold
    below = next(c for c in review.candidates if "other_s1" in c.synthetic)  # same person
    assert copy.flagged and not below.flagged
    idx = tmp_path / "idx"
    argv = ["index", "build", "--train", str(folders["train"]), "--encoder", "pixel",
            "--score", "nn", "--out", str(idx), *RUNTIME]  # fmt: skip
    assert main(argv) == 0
    return {"root": tmp_path, "report": report, "review": review, "copy": copy,
            "below": below, "idx": idx, **folders}  # fmt: skip


def _check(scene, *extra: str) -> tuple[int, dict[str, dict[str, str]]]:
    out = scene["root"] / "verdicts.csv"
    code = main(["check", "--index", str(scene["idx"]), str(scene["synthetic"]),
                 "--out", str(out), *RUNTIME, *extra])  # fmt: skip
    with open(out, newline="", encoding="utf-8") as fh:
        return code, {Path(r["path"]).name: r for r in csv.DictReader(fh)}


def _blocked(rows: dict[str, dict[str, str]]) -> set[str]:
    return {name for name, r in rows.items() if r["verdict"] == "block"}


def _decide(scene) -> None:
    scene["review"].decide(scene["copy"].id, "not a leak", "ana", "a licensed photo")
    scene["review"].decide(scene["below"].id, "leak", "bob")


def test_check_honours_decisions_as_audit_does(scene, cache_dir, capsys):
    copy, below = Path(scene["copy"].synthetic).name, Path(scene["below"].synthetic).name
    code, before = _check(scene)
    assert code == 1 and _blocked(before) == {f"copy_s{s}_{s}.pgm" for s in range(1, 5)}
    assert all(r["reviewed"] == "" for r in before.values())
    _decide(scene)
    code, after = _check(scene, "--decisions", str(scene["report"]))
    assert code == 1
    assert _blocked(after) == _blocked(before) - {copy} | {below}
    assert after[copy]["verdict"] == "release" and after[copy]["nearest"] == ""
    assert after[copy]["reviewed"].startswith("not a leak by ana at ")
    assert "(a licensed photo)" in after[copy]["reviewed"]
    assert after[copy]["reason"].startswith("reviewed: not a leak by ana")
    assert float(after[copy]["similarity"]) > float(after[copy]["threshold"])
    assert after[below]["reviewed"].startswith("leak by bob at ")
    assert float(after[below]["similarity"]) <= float(after[below]["threshold"])
    assert Path(after[below]["nearest"]).parts[-2:] == Path(scene["below"].train).parts[-2:]
    untouched = set(after) - {copy, below}
    assert all(after[n] == before[n] for n in untouched)
    assert "2 set by a reviewer's decision" in capsys.readouterr().out
    # The same decisions through audit flag the same files.
    out = scene["root"] / "again"
    argv = ["audit", "--train", str(scene["train"]), "--synthetic", str(scene["synthetic"]),
            "--encoder", "pixel", "--score", "nn", "--workers", "1", "--cache", str(cache_dir),
            "--out", str(out), "--decisions", str(scene["report"] / DB_NAME)]  # fmt: skip
    main(argv)
    rep = json.loads((out / "report.json").read_text())
    flagged = {Path(m["synthetic"]).name for m in rep["matches"] if m["flagged"]}
    assert flagged == _blocked(after)


def test_add_decisions_stores_them_in_the_index(scene, capsys):
    _decide(scene)
    idx = str(scene["idx"])
    assert main(["index", "add-decisions", idx, str(scene["report"])]) == 0
    assert "added 2 decisions, 0 already in the index" in capsys.readouterr().out
    assert main(["index", "add-decisions", idx, str(scene["report"] / DB_NAME)]) == 0
    printed = capsys.readouterr().out
    assert "added 0 decisions, 2 already in the index" in printed
    assert "reviewers' decisions on 2 pairs (1 leak, 1 not a leak)" in printed
    _, stored = _check(scene)  # no flag: the index's own log
    _, given = _check(scene, "--decisions", str(scene["report"]))
    assert stored == given
    assert stored[Path(scene["copy"].synthetic).name]["verdict"] == "release"
    # An undo in the review log, added again: the newest row wins, the threshold decides.
    log = DecisionStore(scene["report"] / DB_NAME)
    newest = [d for d in log.history() if d.reviewer == "ana"][-1]
    scene["review"].undo(scene["copy"].id, newest.row, "ana")
    assert main(["index", "add-decisions", idx, str(scene["report"])]) == 0
    _, undone = _check(scene)
    assert undone[Path(scene["copy"].synthetic).name]["verdict"] == "block"
    assert undone[Path(scene["below"].synthetic).name]["verdict"] == "block"


def test_a_decision_about_another_pair_or_encoder_changes_nothing(scene, capsys):
    copy = scene["copy"]
    synth_hash = content_hash(Path(copy.synthetic).read_bytes())
    other_train = scene["train"] / "s6" / "5.pgm"  # not the photo it copies
    assert Path(copy.train).name != "5.pgm" or Path(copy.train).parent.name != "s6"
    key = scene["review"].reports[0].encoder_key
    log = DecisionStore(scene["root"] / "other.sqlite")
    log.add(
        Decision(synth_hash, content_hash(other_train.read_bytes()), key, "not a leak", "ana", "")
    )
    true_pair = content_hash(Path(copy.train).read_bytes())
    log.add(Decision(synth_hash, true_pair, "tiled-v2-0000", "not a leak", "ana", ""))
    _, before = _check(scene)
    _, after = _check(scene, "--decisions", str(log.path))
    assert after == before
    assert main(["index", "add-decisions", str(scene["idx"]), str(log.path)]) == 0
    assert "1 made with another encoder (left out)" in capsys.readouterr().out


def test_exported_csv_and_identity_answers(scene):
    _decide(scene)
    export = scene["root"] / "decisions.csv"
    assert main(["review", str(scene["report"]), "--export", str(export)]) == 0
    _, from_csv = _check(scene, "--decisions", str(export))
    _, from_log = _check(scene, "--decisions", str(scene["report"]))
    assert from_csv == from_log
    # "Is my face in there?" uses the reviewed per-photo verdicts.
    person = scene["root"] / "person" / "s1"
    person.mkdir(parents=True)
    shutil.copy(scene["copy"].synthetic, person / "mine.pgm")
    out = scene["root"] / "who.csv"
    code = main(["check", "--index", str(scene["idx"]), "--identity", str(person.parent),
                 "--out", str(out), *RUNTIME, "--decisions", str(export)])  # fmt: skip
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert code == 0 and [r["verdict"] for r in rows] == ["release"]
    assert rows[0]["reason"].startswith("not found: none of 1 photo(s) passes")


def test_a_wrong_decisions_file_is_a_usage_error(scene, capsys):
    bad = scene["root"] / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["check", "--index", str(scene["idx"]), str(scene["synthetic"]),
                 "--decisions", str(bad), *RUNTIME]) == 2  # fmt: skip
    assert "lacks the column" in capsys.readouterr().err
    assert main(["index", "add-decisions", str(scene["idx"]), str(scene["root"] / "nope")]) == 2


def test_serve_honours_stored_decisions_and_picks_up_new_ones(scene, monkeypatch):
    from fastapi.testclient import TestClient
    from serve_helpers import AUTH, TOKENS, config

    from trainleak.gate import reviewed
    from trainleak.service.serve import create_app

    monkeypatch.setattr(reviewed, "RECHECK_S", 0.0)
    copy, below = Path(scene["copy"].synthetic), Path(scene["below"].synthetic)
    upload = [("file", (p.name, p.read_bytes(), "image/pgm")) for p in (copy, below)]
    with TestClient(create_app(scene["idx"], config(), TOKENS)) as client:
        first = client.post("/v1/check", files=upload, headers=AUTH).json()["results"]
        _decide(scene)
        assert main(["index", "add-decisions", str(scene["idx"]), str(scene["report"])]) == 0
        second = client.post("/v1/check", files=upload, headers=AUTH).json()["results"]
    assert [r["verdict"] for r in first] == ["block", "release"]
    assert [r["reviewed"] for r in first] == [None, None]
    assert [r["verdict"] for r in second] == ["release", "block"]
    assert second[0]["reviewed"].startswith("not a leak by ana")
    assert second[1]["reviewed"].startswith("leak by bob")


def test_a_real_server_honours_decisions_file(scene):
    """``trainleak serve --decisions`` as a process on 127.0.0.1, over real HTTP."""
    import os
    import subprocess
    import sys
    import time

    import httpx
    from serve_helpers import AUTH, TOKEN

    from review_scene import free_port

    _decide(scene)
    port = free_port()
    argv = [sys.executable, "-m", "trainleak.cli", "serve", "--index", str(scene["idx"]),
            "--port", str(port), "--workers", "1", "--decisions", str(scene["report"])]  # fmt: skip
    proc = subprocess.Popen(argv, env={**os.environ, "TRAINLEAK_TOKEN": TOKEN},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < end, "the server did not start"
            time.sleep(0.1)
        copy, below = Path(scene["copy"].synthetic), Path(scene["below"].synthetic)
        upload = [("file", (p.name, p.read_bytes(), "image/pgm")) for p in (copy, below)]
        got = httpx.post(f"{url}/v1/check", files=upload, headers=AUTH, timeout=60).json()
    finally:
        proc.terminate()
        proc.wait(60)
    assert [r["verdict"] for r in got["results"]] == ["release", "block"]
    assert got["results"][0]["reviewed"].startswith("not a leak by ana")
