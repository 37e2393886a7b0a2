"""Golden: the identity-leak scenario on real ORL faces with the real dlib model."""

from __future__ import annotations

import json

import pytest

from trainleak import audit
from trainleak.cli import main
from trainleak.config import AuditConfig, EmbedConfig

pytestmark = pytest.mark.slow


def _config(cache_dir, **kw) -> AuditConfig:
    return AuditConfig(embed=EmbedConfig(encoder="face", cache=str(cache_dir), workers=2), **kw)


@pytest.fixture(scope="module")
def orl_result(orl_scenario, cache_dir):
    s = orl_scenario
    return audit(s["train"], s["synthetic"], s["holdout"], config=_config(cache_dir, fpr=0.01))


def _flagged_split(result):
    flagged = result.flagged
    leaks = [f for f in flagged if "/leaks/" in f]
    non = [f for f in flagged if "/nonmembers/" in f]
    return leaks, non


def test_identity_leaks_found_at_one_percent_fpr(orl_result):
    leaks, non = _flagged_split(orl_result)
    # Issue 2's bar: >= 80% of the 50 leaks, <= 1 non-member sample.
    assert len(leaks) >= 40, f"only {len(leaks)} of 50 leaks flagged"
    assert len(non) <= 1, f"non-members flagged: {non}"
    rep = orl_result.report
    assert rep["threshold"]["method"] == "holdout"
    assert rep["summary"]["score"] == "identity"


def test_leaked_identities_are_the_members(orl_result):
    leaked = {e["identity"] for e in orl_result.report["summary"]["leaked_identities"]}
    members = {f"s{i}" for i in range(1, 11)}
    assert len(leaked & members) >= 9
    assert not leaked - members


def test_flagged_leaks_point_at_the_right_person(orl_result):
    for m in orl_result.report["matches"]:
        if m["flagged"] and "/leaks/" in m["synthetic"]:
            person = m["synthetic"].rsplit("/", 1)[1].split("_")[0]
            assert m["train_identity"] == person


def test_nearest_photo_score_is_weaker_but_works(orl_scenario, cache_dir):
    s = orl_scenario
    result = audit(
        s["train"], s["synthetic"], s["holdout"], config=_config(cache_dir, fpr=0.01, score="nn")
    )
    leaks, non = _flagged_split(result)
    assert len(leaks) >= 35
    assert len(non) <= 1


def test_report_contract(orl_result, tmp_path):
    paths = orl_result.write(tmp_path / "out")
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    for key in (
        "tool",
        "version",
        "command",
        "argv",
        "encoder",
        "inputs",
        "threshold",
        "summary",
        "matches",
        "skipped",
    ):
        assert key in rep
    assert rep["encoder"]["name"] == "face" and rep["encoder"]["dim"] == 128
    assert rep["inputs"]["synthetic"]["files"] == 150
    n_embedded = rep["inputs"]["synthetic"]["embedded"]
    assert rep["inputs"]["synthetic"]["skipped"] + n_embedded == 150
    # every embedded synthetic sample has its top-k rows
    per = {}
    for m in rep["matches"]:
        per.setdefault(m["synthetic"], []).append(m["rank"])
    assert len(per) == n_embedded
    assert all(sorted(r)[:5] == [1, 2, 3, 4, 5] for r in per.values())
    assert all(
        sum(1 for m in rep["matches"] if m["synthetic"] == s and m["flagged"]) <= 1
        for s in list(per)[:20]
    )
    assert rep["summary"]["dcr"]["auc_synthetic_closer"] > 0.5
    assert rep["summary"]["meehan_ct"]["value"] < 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/jpeg;base64" in html
    assert "http://" not in html and "https://" not in html
    assert paths["table"].endswith(("matches.parquet", "matches.csv"))
    assert rep["table"]["rows"] == len(rep["matches"])  # 150 samples: all listed


def test_cli_end_to_end_with_fail_on_leak_and_redact(orl_scenario, cache_dir, tmp_path):
    s = orl_scenario
    out = tmp_path / "cli"
    code = main(
        [
            "audit",
            "--train",
            str(s["train"]),
            "--synthetic",
            str(s["synthetic"]),
            "--holdout",
            str(s["holdout"]),
            "--fpr",
            "0.01",
            "--cache",
            str(cache_dir),
            "--out",
            str(out),
            "--redact",
            "--fail-on-leak",
            "-q",
        ]
    )
    assert code == 1
    html = (out / "report.html").read_text()
    assert "data:image" not in html
    rep = json.loads((out / "report.json").read_text())
    assert rep["argv"][:2] == ["trainleak", "audit"]
