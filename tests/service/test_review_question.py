"""The review page asks what the encoder can show (issue 24 item 3).

A copy encoder's audit asks whether the image is a copy of the artwork; a face
encoder's asks whether it is the same person. The kind comes from the report's
``encoder.kind``, written by the real audits here, and reaches each candidate's JSON.
"""

from __future__ import annotations

import os

import pytest

from trainleak import audit
from trainleak.config import AuditConfig, EmbedConfig
from trainleak.service.review_images import ImageTable
from trainleak.service.review_items import AUDIT_QUESTIONS, QUESTIONS, read_report

from conftest import ORL, link_orl


def _question(tmp_path, cache_dir, encoder: str) -> tuple[str, set[str]]:
    train = link_orl(tmp_path / "train", range(1, 3), range(1, 3))
    synth = tmp_path / "synth"
    synth.mkdir()
    os.symlink(ORL / "s1" / "7.pgm", synth / "s1_7.pgm")
    os.symlink(ORL / "s21" / "1.pgm", synth / "s21_1.pgm")
    cfg = AuditConfig(embed=EmbedConfig(encoder, workers=1, cache=str(cache_dir)))
    result = audit(train, synth, config=cfg)
    result.write(tmp_path / "out")
    report = read_report(tmp_path / "out", 0, ImageTable([tmp_path], 64))
    asked = {c.to_dict()["question"] for c in report.candidates}
    return report.report["encoder"]["kind"], asked


def test_a_copy_encoders_audit_asks_about_a_copy(tmp_path, cache_dir):
    kind, asked = _question(tmp_path, cache_dir, "pixel")
    assert kind == "copy"
    assert asked == {AUDIT_QUESTIONS["copy"]}
    assert "copy of the artwork" in AUDIT_QUESTIONS["copy"]
    assert "person" not in AUDIT_QUESTIONS["copy"]


@pytest.mark.slow
def test_a_face_encoders_audit_asks_about_the_person(tmp_path, cache_dir):
    """Real face model on 6 ORL photos (the gate's face test embeds the same files)."""
    kind, asked = _question(tmp_path, cache_dir, "face")
    assert kind == "identity"
    assert asked == {AUDIT_QUESTIONS["identity"]}
    assert "same person" in AUDIT_QUESTIONS["identity"]
    assert "copy" not in AUDIT_QUESTIONS["identity"]
    assert AUDIT_QUESTIONS["identity"] != QUESTIONS["audit"]
