"""``review --export``: no cell a spreadsheet would run, and every text reads back as it was.

Issue 21 (Low): cells starting with a space, an NBSP, a fullwidth ``＝`` or a
newline were left unquoted, and a leading ``'`` of the text itself was lost
when the export was read back. The log here is a real ``decisions.sqlite``
beside a real report folder, exported by the CLI.
"""

from __future__ import annotations

import csv

import pytest

from trainleak.cli import main
from trainleak.decide.decisions import DB_NAME, Decision, DecisionStore, load_decisions

from review_scene import make_audit_report

#: Notes and names a reviewer could type; each must come back exactly.
TEXTS = [
    "=HYPERLINK(1)", " =1+1", "\u00a0=1+1", "\uff1d1+1", "\n=1+1", "\t=1", "-1+1", "+1", "@SUM(1)",
    "\uff0b1", "'quoted already", "''two quotes", "' =1", "plain note", "x=1", "",
]  # fmt: skip


@pytest.fixture
def report(tmp_path, cache_dir):
    return make_audit_report(tmp_path, cache_dir)


def test_export_quotes_every_formula_start_and_reads_back_exactly(report, tmp_path):
    store = DecisionStore(report / DB_NAME)
    for i, text in enumerate(TEXTS):
        store.add(Decision(f"s{i}", f"t{i}", "pixel-v2-x", "leak", text or "ana", "", text))
    out = tmp_path / "decisions.csv"
    assert main(["review", str(report), "--export", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as fh:
        rows = {r["synthetic_hash"]: r for r in csv.DictReader(fh)}
    for i, text in enumerate(TEXTS):
        cell = rows[f"s{i}"]["note"]
        first = text[:1]
        dangerous = bool(first) and (first.isspace() or first in "=+-@'\uff1d\uff0b\uff0d\uff20")
        assert cell == ("'" + text if dangerous else text), (text, cell)
    back = load_decisions(out)
    for i, text in enumerate(TEXTS):
        got = back.decision_for(f"s{i}", f"t{i}", "pixel-v2-x")
        assert got is not None and got.note == text and got.reviewer == (text or "ana"), text
