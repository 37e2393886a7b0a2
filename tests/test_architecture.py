"""The import contracts of ``.importlinter`` hold: layers point down, no cycles (issue 22).

Runs import-linter's own command line, as ``make lint`` does, without its cache (a
cache written before a package gained its ``__init__.py`` hides that package's imports).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> list[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    return [exe]


def test_import_contracts_are_kept():
    out = subprocess.run(
        [*_lint_imports(), "--no-cache", str(ROOT / ".importlinter")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_the_contracts_ignore_nothing():
    text = (ROOT / ".importlinter").read_text(encoding="utf-8")
    assert not [line for line in text.splitlines() if line.strip().startswith("ignore_imports")]
    assert "exhaustive = true" in text and "type = acyclic_siblings" in text


def test_a_broken_layer_is_reported(tmp_path):
    # The same command fails on a contract the code breaks (audits import decide,
    # so a layering with decide above audits is broken): the test above can fail.
    config = tmp_path / "contracts.ini"
    config.write_text(
        "[importlinter]\nroot_package = trainleak\n\n"
        "[importlinter:contract:upside-down]\nname = upside down\ntype = layers\n"
        "layers =\n    trainleak.decide\n    trainleak.audits\n",
        encoding="utf-8",
    )
    out = subprocess.run(
        [*_lint_imports(), "--no-cache", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0 and "BROKEN" in out.stdout
