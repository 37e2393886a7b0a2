"""The documentation site builds strictly, and the README's commands are real commands.

``mkdocs build --strict`` fails on a broken link, a missing page or a
docstring mkdocstrings cannot render. The shell blocks of the README and the docs name
``trainleak`` subcommands and flags: each must be one the command line
accepts (checked by parsing it, not by running the work). Its Python example
runs in ``tests/test_front_door.py``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("mkdocs", reason="the docs extra is not installed")


def test_docs_build_strictly(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()


def _commands(page: Path) -> list[list[str]]:
    text = page.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if not line.startswith("trainleak ") or "..." in line:
                continue  # not a command, or a fragment with its arguments left out
            words = shlex.split(line.split("|")[0].split("&&")[0].split("||")[0])
            commands.append([w for w in words if w != "&"])
    return commands


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_shown_parse(page):
    from trainleak.cli import build_parser

    commands = _commands(page)
    if page.name == "README.md":
        assert len(commands) >= 5, "the README shows too few commands to be a walk-through"
    parser = build_parser()
    for words in commands:
        try:
            parser.parse_args(words[1:])
        except SystemExit as exc:  # argparse exits 2 on an unknown flag or subcommand
            pytest.fail(f"command does not parse ({exc.code}): {' '.join(words)}")
