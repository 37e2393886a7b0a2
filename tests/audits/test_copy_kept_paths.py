"""Issue 21 item 2: ``dedup --copy-kept`` never writes outside its destination.

Real COIL photos in a webdataset tar and a parquet file whose member names
climb out (``../../../../outside/x.png``) or are absolute; ``trainleak dedup``
runs as a subprocess. Afterwards no file exists under the test's folder but
the inputs, the report and the copies, and every copy resolves inside the
destination.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from trainleak.audits.dedup import dedup
from trainleak.config import DedupConfig, EmbedConfig

from conftest import COIL

EXE = str(Path(sys.executable).with_name("trainleak"))

GOOD = [f"obj6__{v}.png" for v in range(0, 60, 12)]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _dedup(source: Path, dest: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "dedup", str(source), "--copy-kept", str(dest), "--out", str(out),
         "--no-cache", "--workers", "1", "-q"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_tar_members_named_out_of_the_destination_are_skipped(tmp_path):
    work = tmp_path / "a" / "b" / "c"
    shard = work / "in" / "set.tar"
    shard.parent.mkdir(parents=True)
    absolute = tmp_path / "abs" / "evil.png"
    bad = {
        "../../../../outside/dotdot.png": "obj9__0.png",
        "sub/../../../../../outside/deeper.png": "obj9__10.png",
        str(absolute): "obj9__20.png",  # an absolute member name
    }
    with tarfile.open(shard, "w") as tar:
        for name in GOOD:
            _add(tar, name, (COIL / name).read_bytes())
        for name, src in bad.items():
            _add(tar, name, (COIL / src).read_bytes())
    before = _files(tmp_path)
    dest, out = work / "kept", work / "out"
    run = _dedup(shard, dest, out)
    assert run.returncode == 0, run.stderr
    created = _files(tmp_path) - before
    assert created, "nothing was written"
    for path in created:  # only the copies and the report
        assert path.resolve().is_relative_to(dest.resolve()) or path.is_relative_to(out), path
    assert not (tmp_path / "outside").exists() and not absolute.exists()
    assert sorted(p.name for p in dest.rglob("*.png")) == sorted(GOOD)
    report = json.loads((out / "report.json").read_text())
    reasons = [s["reason"] for s in report["skipped"]]
    assert len(reasons) == len(bad)
    assert all(r.startswith("unsafe member name") for r in reasons), reasons
    assert sum("absolute" in r for r in reasons) == 1
    assert sum("'..'" in r for r in reasons) == 2


def test_parquet_keys_that_climb_out_are_skipped(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    work = tmp_path / "a" / "b" / "c"
    (work / "in").mkdir(parents=True)
    keys = [n.removesuffix(".png") for n in GOOD] + ["../../../../outside/pq", "/etc/pq"]
    images = [(COIL / n).read_bytes() for n in GOOD] + [
        (COIL / "obj9__0.png").read_bytes(),
        (COIL / "obj9__30.png").read_bytes(),
    ]
    source = work / "in" / "set.parquet"
    pq.write_table(pa.table({"key": keys, "jpg": images}), source)
    before = _files(tmp_path)
    dest, out = work / "kept", work / "out"
    run = _dedup(source, dest, out)
    assert run.returncode == 0, run.stderr
    for path in _files(tmp_path) - before:
        assert path.resolve().is_relative_to(dest.resolve()) or path.is_relative_to(out), path
    assert not (tmp_path / "outside").exists()
    assert len(list(dest.rglob("*.png"))) == len(GOOD)
    report = json.loads((out / "report.json").read_text())
    assert sorted(s["reason"].split(":")[0] for s in report["skipped"]) == [
        "unsafe member name '../../../../outside/pq'",
        "unsafe member name '/etc/pq'",
    ]


def test_a_symlink_in_the_destination_does_not_lead_copies_out(tmp_path):
    source = tmp_path / "in"
    for sub in ("alpha", "beta"):
        (source / sub).mkdir(parents=True)
    for i, name in enumerate(GOOD):
        os.symlink(COIL / name, source / ("alpha" if i % 2 else "beta") / name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "kept"
    dest.mkdir()
    os.symlink(elsewhere, dest / "alpha")  # left there by someone else
    cfg = DedupConfig(embed=EmbedConfig(encoder="pixel", workers=1, no_cache=True))
    result = dedup(source, config=cfg)
    written = result.copy_kept(dest)
    assert list(elsewhere.iterdir()) == []
    n_alpha = sum(1 for i in range(len(GOOD)) if i % 2)
    assert written == len(GOOD) - n_alpha
    assert len(result.copy_skipped) == n_alpha
    assert all("would be written outside" in s.reason for s in result.copy_skipped)
    assert all(Path(s.path).parent.name == "alpha" for s in result.copy_skipped)
