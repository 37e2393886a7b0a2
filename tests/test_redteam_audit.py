"""Red team, audit side (issue 11): careless or hostile input must never give a wrong answer.

One test per item, on real files made here. The lower half (sources,
encoders, store, workers) has its own module, ``test_redteam_inputs.py``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainleak.cli import main

from conftest import DATA, ORL


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def orl_sets(tmp_path):
    """Train: s1-s3 photos 1-5; synthetic: 3 byte copies of training photos + 3 others."""
    train, synth, hold = (tmp_path / n for n in ("train", "synth", "hold"))
    for d in (train, synth, hold):
        d.mkdir()
    for s in range(1, 4):
        for p in range(1, 6):
            shutil.copy(ORL / f"s{s}" / f"{p}.pgm", train / f"s{s}_{p}.pgm")
        shutil.copy(ORL / f"s{s}" / "1.pgm", synth / f"copy_s{s}.pgm")
        shutil.copy(ORL / f"s{s + 10}" / "1.pgm", synth / f"new_s{s + 10}.pgm")
    for s in range(20, 41):
        shutil.copy(ORL / f"s{s}" / "2.pgm", hold / f"s{s}_2.pgm")
    return train, synth, hold


def _audit(train: Path, synth: Path, hold: Path, out: Path) -> list[str]:
    return [
        "audit", "--train", str(train), "--synthetic", str(synth), "--holdout", str(hold),
        "--encoder", "pixel", "--fpr", "0.05", "--no-cache", "--workers", "1", "-q",
        "--out", str(out), "--fail-on-leak",
    ]  # fmt: skip


def test_item01_holdout_with_a_training_image_is_cleaned_and_said(orl_sets, tmp_path):
    train, synth, hold = orl_sets
    shutil.copy(train / "s2_3.pgm", hold / "leaked_in.pgm")
    run = subprocess.run(
        [sys.executable, "-m", "trainleak.cli", *_audit(train, synth, hold, tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    pair = {"holdout": str(hold / "leaked_in.pgm"), "train": str(train / "s2_3.pgm")}
    assert report["contaminated"] == [pair]
    assert "identical to training files" in run.stderr and report["warnings"]
    assert report["threshold"]["value"] < 0.999
    flagged = {Path(m["synthetic"]).name for m in report["matches"] if m["flagged"]}
    assert {"copy_s1.pgm", "copy_s2.pgm", "copy_s3.pgm"} <= flagged  # before: none flagged
    assert run.returncode == 1  # --fail-on-leak sees the leaks


def test_item01_training_folder_as_holdout_is_an_error(orl_sets, tmp_path, capsys):
    train, synth, _ = orl_sets
    code, _, err = _run(capsys, *_audit(train, synth, train, tmp_path / "o"))
    assert code == 2 and "byte-identical to training images" in err


def test_item05_copy_kept_never_overwrites_same_names(tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{ORL / f's{s}' / '1.pgm'}\n" for s in (1, 2, 3)))
    kept = tmp_path / "kept"
    code, out, _ = _run(
        capsys, "dedup", str(listing), "--no-cache", "--workers", "1", "-q",
        "--out", str(tmp_path / "o"), "--copy-kept", str(kept),
    )  # fmt: skip
    assert code == 0 and "copied 3 kept images" in out
    written = sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file())
    assert written == ["s1/1.pgm", "s2/1.pgm", "s3/1.pgm"]
    for s in (1, 2, 3):
        assert (kept / f"s{s}" / "1.pgm").read_bytes() == (ORL / f"s{s}" / "1.pgm").read_bytes()


def test_item05_copy_kept_into_the_input_is_refused(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(ORL / "s1", data)
    before = sorted(os.listdir(data))
    code, _, err = _run(
        capsys, "dedup", str(data), "--no-cache", "--workers", "1", "-q",
        "--out", str(tmp_path / "o"), "--copy-kept", str(data / "dedup"),
    )  # fmt: skip
    assert code == 2 and "inside the input" in err
    assert sorted(os.listdir(data)) == before


def _gen_module(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text("import numpy as np\n" + body)


def test_item02_resumed_generations_never_mix(tmp_path, capsys, monkeypatch):
    mods = tmp_path / "mods"
    monkeypatch.syspath_prepend(str(mods))
    _gen_module(mods, "rt_gen", (
        "from PIL import Image\n"
        f"IMG = np.asarray(Image.open(r'{ORL / 's1' / '1.pgm'}').convert('RGB'))\n"
        "def gen(n, seed, prompt=None):\n    return [IMG] * n\n"
        "def noise(n, seed, prompt=None):\n"
        "    rng = np.random.default_rng(seed)\n"
        "    return [rng.integers(0, 255, (28, 23, 3), dtype=np.uint8) for _ in range(n)]\n"
    ))  # fmt: skip
    train = tmp_path / "train"
    train.mkdir()
    for p in (1, 2):
        shutil.copy(ORL / "s1" / f"{p}.pgm", train / f"{p}.pgm")
    out = tmp_path / "x"
    base = ["extract", "--train", str(train), "--samples-per-prompt", "12", "--min-clique", "3",
            "--no-cache", "--workers", "1", "-q", "--out", str(out)]  # fmt: skip
    code, stdout, _ = _run(capsys, *base, "--generated", "python:rt_gen:gen")
    assert code == 0 and "1 training images extracted" in stdout
    code, _, err = _run(capsys, *base, "--generated", "python:rt_gen:noise")
    assert code == 2 and "generator" in err and "new --out" in err
    code, _, err = _run(capsys, *base, "--generated", "python:rt_gen:gen", "--seed", "7")
    assert code == 2 and "seed" in err
    code, stdout, _ = _run(
        capsys, *base[:-1], str(tmp_path / "y"), "--generated", "python:rt_gen:noise"
    )
    assert code == 0 and "0 training images extracted" in stdout


def test_item09_unwritable_outputs_fail_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    args = ["dedup", str(ORL / "s1"), "--workers", "1", "-q"]
    code, _, err = _run(capsys, *args, "--out", str(a_file), "--no-cache")
    assert code == 2 and "--out" in err and "is a file" in err
    code, _, err = _run(capsys, *args, "--out", str(tmp_path / "o"), "--cache", str(a_file))
    assert code == 2 and "--cache" in err
    assert not (tmp_path / "o").exists()


def test_item09_internal_errors_exit_3_with_a_traceback_file(tmp_path, capsys, monkeypatch):
    mods = tmp_path / "mods"
    monkeypatch.syspath_prepend(str(mods))
    _gen_module(mods, "rt_bug", "def gen(n, seed, prompt=None):\n    return [None] * n\n")
    code, _, err = _run(
        capsys, "extract", "--generated", "python:rt_bug:gen", "--train", str(ORL / "s1"),
        "--samples-per-prompt", "2", "--no-cache", "--workers", "1", "-q",
        "--out", str(tmp_path / "x"), "--fail-on-leak",
    )  # fmt: skip
    assert code == 3 and "internal error" in err
    trace = Path(err.split("traceback in ")[1].split(";")[0])
    assert "Traceback" in trace.read_text()
    trace.unlink()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["audit", "--train", "t", "--synthetic", "s", "--threshold", "nan"], "--threshold"),
        (["dedup", "d", "--threshold", "nan"], "--threshold"),
        (["dedup", "d", "--threshold", "inf"], "--threshold"),
        (["extract", "--generated", "g", "--train", "t", "--delta", "nan"], "--delta"),
        (["extract", "--generated", "g", "--train", "t", "--delta", "-1"], "--delta"),
        (["audit", "--train", "t", "--synthetic", "s", "--fpr", "nan"], "--fpr"),
    ],
)
def test_item12_numeric_options_are_validated(argv, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and flag in capsys.readouterr().err


def test_item11_csv_cells_never_run_as_formulas(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: cells start with the folder names
    train, synth = Path("=cmd|' calc'!A0"), Path("@SUM(1+1)")
    train.mkdir()
    synth.mkdir()
    shutil.copy(ORL / "s1" / "1.pgm", train / "a.pgm")
    shutil.copy(ORL / "s1" / "1.pgm", synth / "b.pgm")
    code, _, _ = _run(
        capsys, "audit", "--train", str(train), "--synthetic", str(synth),
        "--encoder", "pixel", "--no-cache", "--workers", "1", "-q", "--out", "o",
        "--table", "csv",
    )  # fmt: skip
    assert code == 0
    code, _, _ = _run(
        capsys, "dedup", str(synth), "--no-cache", "--workers", "1", "-q", "--out", "d"
    )
    assert code == 0
    for path in (Path("o/matches.csv"), Path("d/dedup.csv")):
        rows = list(csv.reader(path.open()))[1:]
        assert rows
        for row in rows:
            assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row), (path, row)
            assert row[0].startswith("'")


def test_item16_headline_says_when_the_holdout_is_too_small(orl_sets, tmp_path, capsys):
    train, synth, hold = orl_sets
    code, _, _ = _run(
        capsys, "audit", "--train", str(train), "--synthetic", str(synth), "--holdout", str(hold),
        "--encoder", "pixel", "--fpr", "0.01", "--no-cache", "--workers", "1", "-q",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    html = (tmp_path / "o" / "report.html").read_text()
    assert "too few to calibrate a 1.0% false-positive rate" in html
    assert "calibrated on 21 holdout images for a 1.0%" not in html


def test_item17_help_and_hints_are_right(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["dedup", "--help"])
    text = capsys.readouterr().out
    assert "(default: tiled)" in text and "face (default)" not in text
    for command, flags in {
        "extract": ("--samples-per-prompt", "--redact", "--batch-size"),
        "audit": ("--batch-size",),
    }.items():
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        for flag in flags:
            line = text[text.index(f"  {flag}") :].split("\n  -")[0]
            assert len(line.split()) > 2, f"{command} {flag} has no help"
    from trainleak.encoders import get_encoder

    for name in ("tiled", "pixel"):
        note = get_encoder(name).info.threshold_note
        assert "--threshold" in note and "pass --holdout to calibrate" not in note
    code, _, err = _run(
        capsys, "extract", "--generated", "python:no_such_module_here:gen", "--train",
        str(ORL / "s1"), "--no-cache", "-q", "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert code == 2 and "PYTHONPATH" in err


def test_exit_codes_are_in_every_help(capsys):
    from trainleak.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no API
    for name in ["", *commands]:
        with pytest.raises(SystemExit):
            main([name, "--help"] if name else ["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "3 internal error" in text and "2 usage or input error" in text, name


def test_large_photos_are_searched_for_faces_at_a_bounded_size(tmp_path, capsys):
    """A 24-megapixel photo is embedded (detection on a 2048-px copy), not skipped."""
    from PIL import Image

    big = tmp_path / "big"
    big.mkdir()
    face = Image.open(DATA / "orl_faces_92x112" / "s1" / "1.pgm").convert("RGB")
    face.resize((4400, 5360), Image.Resampling.BICUBIC).save(big / "large.png")
    code, _, _ = _run(
        capsys, "dedup", str(big), "--encoder", "face", "--threshold", "0.93", "--no-cache",
        "--workers", "1", "-q", "--out", str(tmp_path / "o"), "--max-file-mb", "64",
    )  # fmt: skip
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert code == 0 and report["inputs"]["input"]["embedded"] == 1, report["skipped"]


def test_item15_nested_identity_folders_warn_and_depth_is_chosen(tmp_path, capsys):
    train = tmp_path / "train"
    for batch, people in (("batch1", (1, 2)), ("batch2", (3, 4))):
        for s in people:
            (train / batch / f"s{s}").mkdir(parents=True)
            for p in (1, 2, 3):
                shutil.copy(ORL / f"s{s}" / f"{p}.pgm", train / batch / f"s{s}" / f"{p}.pgm")
    synth = tmp_path / "synth"
    synth.mkdir()
    shutil.copy(ORL / "s3" / "5.pgm", synth / "a.pgm")
    base = [sys.executable, "-m", "trainleak.cli", "audit", "--train", str(train), "--synthetic",
            str(synth), "--encoder", "pixel", "--threshold", "0.5", "--no-cache", "--workers", "1",
            "-q"]  # fmt: skip
    run = subprocess.run([*base, "--out", str(tmp_path / "o1")], capture_output=True, text=True)
    assert run.returncode == 0 and "--identity-depth" in run.stderr  # merged people: warned
    one = json.loads((tmp_path / "o1" / "report.json").read_text())
    assert one["summary"]["identities_in_train"] == 2  # batch1, batch2: what the warning is about
    run = subprocess.run(
        [*base, "--identity-depth", "2", "--out", str(tmp_path / "o2")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and "--identity-depth" not in run.stderr
    two = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert two["summary"]["identities_in_train"] == 4


def test_item15_missing_identity_cells_warn(tmp_path):
    listing = tmp_path / "train.csv"
    rows = [f"{ORL / 's1' / f'{p}.pgm'},s1" for p in (1, 2)] + [f"{ORL / 's2' / '1.pgm'},"]
    listing.write_text("path,identity\n" + "\n".join(rows) + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "trainleak.cli", "audit", "--train", str(listing), "--synthetic",
         str(ORL / "s1" / "3.pgm"), "--encoder", "pixel", "--threshold", "0.5", "--no-cache",
         "--workers", "1", "-q", "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0 and "1 of 3 training samples have no identity label" in run.stderr
