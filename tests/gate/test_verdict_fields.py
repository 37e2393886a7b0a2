"""The verdict record is defined once: the CSV columns, the JSON lines and the HTTP model follow it.

Issue 22: adding a verdict column used to touch seven files, and FastAPI's
``response_model`` silently dropped a key missing from ``CheckResult``. Here the
three views are compared with the record's fields, and a fresh interpreter adds one
line to ``gate/verdict.py`` and finds the new field in all three.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainleak.gate.output import VerdictWriter
from trainleak.gate.verdict import COLUMNS, Verdict

pytest.importorskip("fastapi")


def _views() -> tuple[list[str], list[str], list[str]]:
    from trainleak.service.serve import HTTP_NAMES, CheckResponse, CheckResult

    v = Verdict("a.png", "block", "t.png", 0.9, 0.5, "s1", "above threshold", None)
    csv_buf, jsonl_buf = io.StringIO(), io.StringIO()
    VerdictWriter(csv_buf, "csv").write(v)
    VerdictWriter(jsonl_buf, "jsonl").write(v)
    header = csv_buf.getvalue().splitlines()[0].split(",")
    keys = list(json.loads(jsonl_buf.getvalue().splitlines()[0]))
    back = {h: f for f, h in HTTP_NAMES.items()}
    http = [back.get(name, name) for name in CheckResult.model_fields]
    assert CheckResponse.model_fields["results"].annotation == list[CheckResult]
    return header, keys, http


def test_csv_jsonl_and_http_are_the_record_fields():
    fields = [f.name for f in dataclasses.fields(Verdict)]
    assert list(COLUMNS) == fields
    header, keys, http = _views()
    assert header == fields and keys == fields and http == fields


ADD_FIELD = r"""
import importlib.util, sys
import trainleak.gate
path = sys.argv[1]
source = open(path, encoding="utf-8").read()
anchor = "    match: MatchKind | None = None\n"
assert anchor in source, "the record's last field moved: update this test's anchor"
source = source.replace(anchor, anchor + "    provenance: str | None = None\n")
spec = importlib.util.spec_from_loader("trainleak.gate.verdict", loader=None, origin=path)
module = importlib.util.module_from_spec(spec)
module.__file__ = path
sys.modules["trainleak.gate.verdict"] = module
exec(compile(source, path, "exec"), module.__dict__)
import io, json
from trainleak.gate.output import VerdictWriter
from trainleak.service.serve import CheckResult
v = module.Verdict("a.png", "release", provenance="camera roll")
csv_buf, jsonl_buf = io.StringIO(), io.StringIO()
VerdictWriter(csv_buf, "csv").write(v)
VerdictWriter(jsonl_buf, "jsonl").write(v)
print(json.dumps({
    "csv": csv_buf.getvalue().splitlines()[0].split(","),
    "jsonl": json.loads(jsonl_buf.getvalue()),
    "http": list(CheckResult.model_fields),
}))
"""


def test_a_new_field_reaches_all_three_views():
    import trainleak.gate.verdict as verdict_module

    out = subprocess.run(
        [sys.executable, "-c", ADD_FIELD, str(Path(verdict_module.__file__))],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["csv"][-1] == "provenance"
    assert seen["jsonl"]["provenance"] == "camera roll"
    assert seen["http"][-1] == "provenance" and "name" in seen["http"]
