"""Issue 21 item 4 (and two Low items) end to end: one malformed image costs only itself.

A crafted TIFF on which Pillow raises ``TypeError``, a DDS on which it raises
``NotImplementedError`` and an EPS sit among real COIL photos; ``audit``,
``check``, ``dedup`` and ``index add`` run as subprocesses, exit as they would
without them, and list each as a skip with its reason (``index add`` adds
every good file). ``check`` prints file names with newlines or ANSI escapes as
escapes, and ``--max-pixels`` above Pillow's own limit takes effect.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_files import encode, eps, typeerror_tiff, unknown_pixel_format_dds
from PIL import Image

from trainleak.decoding import ImageSkip, TooManyPixels, decode_image

from conftest import COIL

EXE = str(Path(sys.executable).with_name("trainleak"))
RUNTIME = ["--no-cache", "--workers", "1", "-q"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args, *RUNTIME], capture_output=True, text=True, timeout=300, check=False
    )


def _bad(folder: Path) -> dict[str, str]:
    """Write the three hostile files; return name -> the start of the expected reason."""
    (folder / "crash.tif").write_bytes(typeerror_tiff())
    (folder / "texture.png").write_bytes(unknown_pixel_format_dds())  # named like a PNG
    (folder / "poster.eps").write_bytes(eps())
    return {
        "crash.tif": "truncated or corrupt image data: TypeError",
        "texture.png": "not an image (unrecognised format)",
        "poster.eps": "not an image (unrecognised format)",
    }


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-images")
    train, synth, more = root / "train", root / "synth", root / "more"
    for folder in (train, synth, more):
        folder.mkdir()
    for v in range(0, 48, 6):
        for obj in (1, 2):
            (train / f"obj{obj}__{v}.png").write_bytes((COIL / f"obj{obj}__{v}.png").read_bytes())
        (synth / f"obj3__{v}.png").write_bytes((COIL / f"obj3__{v}.png").read_bytes())
    for v in range(0, 48, 2):  # 24 good files for index add
        (more / f"obj5__{v}.png").write_bytes((COIL / f"obj5__{v}.png").read_bytes())
    expected = _bad(synth)
    _bad(more)
    idx = root / "idx"
    built = _run("index", "build", "--train", str(train), "--encoder", "pixel", "--threshold",
                 "0.99", "--out", str(idx))  # fmt: skip
    assert built.returncode == 0, built.stderr
    return {"root": root, "train": train, "synth": synth, "more": more, "idx": idx,
            "expected": expected}  # fmt: skip


def _reasons(skipped: list[dict[str, str]]) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in skipped}


def _assert_reasons(got: dict[str, str], expected: dict[str, str]) -> None:
    assert set(got) == set(expected), got
    for name, start in expected.items():
        assert got[name].startswith(start), (name, got[name])


def test_audit_skips_the_malformed_files(sets):
    out = sets["root"] / "audit"
    run = _run("audit", "--train", str(sets["train"]), "--synthetic", str(sets["synth"]),
               "--encoder", "pixel", "--threshold", "0.99", "--out", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    _assert_reasons(_reasons(report["skipped"]), sets["expected"])
    assert report["inputs"]["synthetic"]["embedded"] == 8


def test_dedup_skips_the_malformed_files(sets):
    out = sets["root"] / "dedup"
    run = _run("dedup", str(sets["synth"]), "--out", str(out))
    assert run.returncode == 0, run.stderr
    _assert_reasons(_reasons(json.loads((out / "report.json").read_text())["skipped"]),
                    sets["expected"])  # fmt: skip


def test_check_gives_each_malformed_file_a_skip_verdict(sets):
    run = _run("check", "--index", str(sets["idx"]), str(sets["synth"]), "--jsonl")
    assert run.returncode == 0, run.stderr  # nothing blocked: obj3 is not in the index
    verdicts = [json.loads(line) for line in run.stdout.splitlines()]
    skips = {Path(v["path"]).name: v["reason"] for v in verdicts if v["verdict"] == "skip"}
    _assert_reasons(skips, sets["expected"])
    assert sum(v["verdict"] == "release" for v in verdicts) == 8


def test_index_add_adds_every_good_file(tmp_path, sets):
    import shutil

    idx = tmp_path / "idx"
    shutil.copytree(sets["idx"], idx)
    run = _run("index", "add", str(idx), str(sets["more"]))
    assert run.returncode == 0, run.stderr
    assert "27 files: added 24 rows, 0 already in the index, 3 skipped" in run.stdout, run.stdout
    for name in sets["expected"]:
        assert f"skipped {sets['more'] / name}:" in run.stdout


def test_check_prints_hostile_file_names_escaped(tmp_path, sets):
    folder = tmp_path / "names"
    folder.mkdir()
    copy = (sets["train"] / "obj1__0.png").read_bytes()  # a training image: blocked
    forged = "x.png\nrelease\tforged.png\t"
    (folder / forged).write_bytes(copy)
    (folder / "\x1b[2J\x1b]0;pwned\x07title.png").write_bytes(copy)
    (folder / "\u202eevil.png").write_bytes(b"not an image")
    run = _run("check", "--index", str(sets["idx"]), str(folder))
    assert run.returncode == 1, run.stderr  # two blocked
    assert "\x1b" not in run.stdout and "\x07" not in run.stdout and "\u202e" not in run.stdout
    lines = run.stdout.splitlines()
    assert len(lines) == 4, lines  # three verdict lines and the summary
    rows = [line.split("\t") for line in lines[:3]]
    assert all(len(r) == 3 for r in rows), rows
    assert sorted(r[0] for r in rows) == ["block", "block", "skip"]
    paths = {r[1] for r in rows}
    assert str(folder / "x.png\\nrelease\\tforged.png\\t") in paths
    assert str(folder / "\\x1b[2J\\x1b]0;pwned\\x07title.png") in paths
    assert str(folder / "\\u202eevil.png") in paths


def test_max_pixels_above_pillows_limit_counts(monkeypatch):
    # Pillow refuses over 2 x MAX_IMAGE_PIXELS by itself; shrink it to show that in little time.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    data = encode(Image.open(COIL / "obj7__0.png").convert("L").resize((200, 150)), "PNG")
    for _ in range(2):  # before and after a larger limit raised Pillow's
        with pytest.raises(TooManyPixels) as refused:
            decode_image(data, max_pixels=20_000)
        # The message quotes the limit that refused it, with the image's own size.
        assert str(refused.value).startswith("too many pixels: 200x150 exceeds the limit of 20,000")
        assert decode_image(data, max_pixels=40_000).shape == (150, 200, 3)  # 30,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    # Over twice Pillow's own limit Pillow refuses first; the message still quotes ours.
    with pytest.raises(ImageSkip, match="30,000 pixels exceeds the limit of 10,000"):
        decode_image(data, max_pixels=10_000)
