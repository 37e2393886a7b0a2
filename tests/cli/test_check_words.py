"""``check`` speaks plainly: a summary line with counts, singular and plural right."""

from __future__ import annotations

import os

from trainleak.cli import main

from conftest import COIL


def test_summary_line_counts_one_input_and_several(tmp_path, cache_dir, capsys):
    train = tmp_path / "train"
    train.mkdir()
    for v in range(0, 20, 4):
        os.symlink(COIL / f"obj1__{v}.png", train / f"obj1__{v}.png")
    idx = tmp_path / "idx"
    common = ["--workers", "1", "--cache", str(cache_dir), "-q"]
    build = ["index", "build", "--train", str(train), "--encoder", "pixel", "--out", str(idx)]
    assert main([*build, "--threshold", "0.99", *common]) == 0
    capsys.readouterr()
    # A copy of a training image (blocked) alone: one input.
    assert main(["check", "--index", str(idx), str(COIL / "obj1__0.png"), *common]) == 1
    said = capsys.readouterr()
    assert "checked 1 input: 0 released, 1 blocked, 0 skipped" in said.out + said.err
    # A view of another object (released) and the copy: two inputs, every verdict written.
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    os.symlink(COIL / "obj12__3.png", outbox / "fine.png")
    os.symlink(COIL / "obj1__0.png", outbox / "copy.png")
    verdicts = tmp_path / "verdicts.csv"
    assert main(["check", "--index", str(idx), str(outbox), "--out", str(verdicts), *common]) == 1
    said = capsys.readouterr()
    assert "checked 2 inputs: 1 released, 1 blocked, 0 skipped" in said.out + said.err
    rows = verdicts.read_text().splitlines()
    assert len(rows) == 3 and any("release" in r and "fine.png" in r for r in rows)
