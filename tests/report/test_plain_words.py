"""Audit pages in plain words: what a flag means by the encoder's kind, a line under each tile."""

from __future__ import annotations

import os

from trainleak import audit
from trainleak.config import AuditConfig, EmbedConfig
from trainleak.report.html import TILE_NOTES, render_audit_html, verdict_sentence

from conftest import COIL


def test_copy_audit_says_copies_and_explains_every_tile(tmp_path, cache_dir):
    for sub in ("train", "synthetic", "holdout"):
        (tmp_path / sub).mkdir()
    for v in range(0, 40, 4):
        os.symlink(COIL / f"obj1__{v}.png", tmp_path / "train" / f"obj1__{v}.png")
        os.symlink(COIL / f"obj2__{v + 1}.png", tmp_path / "holdout" / f"obj2__{v + 1}.png")
    os.symlink(COIL / "obj1__0.png", tmp_path / "synthetic" / "copy.png")
    os.symlink(COIL / "obj3__0.png", tmp_path / "synthetic" / "other.png")
    cfg = AuditConfig(embed=EmbedConfig("pixel", workers=1, cache=str(cache_dir)), fpr=0.1)
    result = audit(tmp_path / "train", tmp_path / "synthetic", tmp_path / "holdout", config=cfg)
    report = result.report
    assert report["summary"]["flagged_as"] == "copy" and report["summary"]["flagged"] >= 1
    page = render_audit_html(report, None)
    assert "flagged as copies of training images" in verdict_sentence(report)
    assert "flagged: copies" in page and "FLAGGED: copy" in page
    assert TILE_NOTES["input"] in page and TILE_NOTES["copy"] in page
    assert "same person" not in page


def test_identity_report_says_same_person_and_counts_people():
    report = {
        "encoder": {"kind": "identity"},
        "summary": {
            "flagged": 3, "n_synthetic": 60, "flagged_rate": 0.05,
            "flagged_rate_ci95": [0.02, 0.14],
        },
        "threshold": {
            "method": "holdout", "value": 0.95, "target_fpr": 0.05, "resolvable_fpr": 1 / 30,
            "counted_over": "people", "n_people": 30,
        },
        "inputs": {"holdout": {"embedded": 60}},
    }  # fmt: skip
    sentence = verdict_sentence(report)
    assert "the same person as someone in training" in sentence
    assert "30 holdout people (60 photos; a person counts once)" in sentence
    assert "copies of training images" not in sentence
