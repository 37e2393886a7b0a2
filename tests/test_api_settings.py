"""One front door: settings come one way, and the command line goes through ``tl.audit``.

``config=`` and a keyword that disagrees with it used to let the config win
silently; now it is an error naming the setting. Keywords that agree with the
config, or stay at their defaults, are accepted. ``trainleak audit`` builds an
:class:`AuditConfig` and calls the public ``tl.audit``, so both answer alike.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import trainleak as tl
import trainleak.api
from trainleak.cli import main
from trainleak.config import (
    AuditConfig,
    DedupConfig,
    EmbedConfig,
    EvidenceConfig,
    MembershipConfig,
)
from trainleak.errors import AuditInputError

from conftest import link_orl

T = np.eye(4, dtype=np.float32)[:3]
S = np.eye(4, dtype=np.float32)[[0, 3]]


def test_a_keyword_that_disagrees_with_config_is_an_error() -> None:
    with pytest.raises(AuditInputError, match=r"config\.threshold is 0\.9 but a keyword says 0\.5"):
        tl.audit(T, S, config=AuditConfig(threshold=0.9), threshold=0.5)
    with pytest.raises(AuditInputError, match=r"config\.embed\.encoder is 'face'.*'pixel'.*"
                       r"set them on the config"):  # fmt: skip
        tl.audit(T, S, config=AuditConfig(threshold=0.9), encoder="pixel")
    with pytest.raises(AuditInputError, match=r"config\.embed\.no_cache is False but a keyword"):
        tl.audit(T, S, config=AuditConfig(threshold=0.9), cache=False)
    # The other audits refuse it the same way, before reading anything.
    with pytest.raises(AuditInputError, match=r"config\.threshold is None but a keyword says 0\.9"):
        tl.dedup("no/such/folder", config=DedupConfig(), threshold=0.9)
    with pytest.raises(AuditInputError, match=r"config\.top_m is 5 but a keyword says 3"):
        tl.membership("no/such/people", "no/such/samples", config=MembershipConfig(), top_m=3)
    with pytest.raises(AuditInputError, match=r"config\.alpha is 0\.05 but a keyword says 0\.01"):
        tl.evidence("no/such/mine", "no/such/samples", config=EvidenceConfig(), alpha=0.01)


def test_keywords_that_agree_or_stay_default_are_accepted() -> None:
    config = AuditConfig(threshold=0.9, k=2, embed=EmbedConfig(encoder="pixel"))
    agreeing = tl.audit(T, S, config=config, threshold=0.9, encoder="pixel", k=2)
    alone = tl.audit(T, S, config=config)
    keywords = tl.audit(T, S, threshold=0.9, k=2)
    assert agreeing.report["summary"]["flagged"] == alone.report["summary"]["flagged"] == 1
    assert keywords.report["summary"]["flagged"] == 1
    assert agreeing.report["settings"]["k"] == keywords.report["settings"]["k"] == 2


def test_cli_audit_goes_through_tl_audit(tmp_path, monkeypatch) -> None:
    train = link_orl(tmp_path / "train", range(1, 4), range(1, 4))
    synth = link_orl(tmp_path / "synth", range(1, 3), range(4, 6))
    calls: list[AuditConfig] = []
    front = trainleak.api.audit

    def recorded(*args, **kwargs):  # the real tl.audit, remembering the config it got
        calls.append(kwargs["config"])
        return front(*args, **kwargs)

    monkeypatch.setattr(trainleak.api, "audit", recorded)
    monkeypatch.setattr(tl, "audit", recorded, raising=False)  # the name, once loaded
    argv = ["audit", "--train", str(train), "--synthetic", str(synth), "--encoder", "pixel",
            "--threshold", "0.97", "--workers", "1", "--no-cache", "-q",
            "--out", str(tmp_path / "cli")]  # fmt: skip
    assert main(argv) == 0
    assert len(calls) == 1 and calls[0].embed.encoder == "pixel" and calls[0].threshold == 0.97
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert cli["argv"][-len(argv):] == argv
    api = front(train, synth, encoder="pixel", threshold=0.97, workers=1, cache=False)
    assert api.report["summary"]["flagged"] == cli["summary"]["flagged"]
    assert api.report["summary"]["n_synthetic"] == cli["summary"]["n_synthetic"] == 4


def test_cli_dedup_goes_through_tl_dedup(tmp_path, monkeypatch) -> None:
    images = link_orl(tmp_path / "in", range(1, 3), range(1, 4), per_person=False)
    seen: list[list[str] | None] = []
    front = trainleak.api.dedup

    def recorded(*args, **kwargs):  # the real tl.dedup, remembering the argv it got
        seen.append(kwargs["argv"])
        return front(*args, **kwargs)

    monkeypatch.setattr(trainleak.api, "dedup", recorded)
    monkeypatch.setattr(tl, "dedup", recorded, raising=False)
    argv = ["dedup", str(images), "--encoder", "pixel", "--workers", "1", "--no-cache", "-q",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    assert len(seen) == 1 and seen[0] is not None and seen[0][-len(argv):] == argv
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["summary"]["removed"] == 0  # six different photos of two people
