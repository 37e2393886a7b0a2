"""Issue 21 items 6 and 7: archives cost one member of memory, and a cut tar loses nothing silently.

The shards are made here: real ORL photos in webdataset tars, and the
issue's attack files, smaller (its sample of 40 x 16 MB in a small
``.tar.gz``: 16 here; its 64 rows of 8 MB in a small zstd parquet file: 32).
Peak memory is measured in a fresh interpreter (``VmHWM``, its own peak;
``ru_maxrss`` would start at pytest's).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

import trainleak
from trainleak.archives import iter_inputs
from trainleak.images import Record

from conftest import ORL

SRC = str(Path(trainleak.__file__).parents[1])
EXE = str(Path(sys.executable).with_name("trainleak"))

_PEAK = """
import json, sys
from pathlib import Path
from trainleak.archives import iter_inputs
from trainleak.images import Record
import pyarrow.parquet  # imported before the baseline: its own size is not the reading
def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
base = hwm_mb()
out = [(r.id, len(r.data) if r.data else 0, why)
       for r, why in iter_inputs([Record(sys.argv[1], Path(sys.argv[1]))], float(sys.argv[2]))]
print(json.dumps({"growth_mb": hwm_mb() - base, "out": out}))
"""


def _peak(shard: Path, max_file_mb: float = 256) -> dict:
    env = dict(os.environ, PYTHONPATH=SRC, TRAINLEAK_CACHE=tempfile.mkdtemp(prefix="tl-cache-"))
    run = subprocess.run(
        [sys.executable, "-c", _PEAK, str(shard), str(max_file_mb)],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_tar_gz_of_large_members_costs_one_member(tmp_path):
    shard = tmp_path / "bomb.tar.gz"
    block = bytes(16 * 2**20)  # 16 MB, gzip packs it ~1000x
    with tarfile.open(shard, "w:gz") as tar:
        for i in range(16):  # one sample key: webdataset groups them all together
            _add(tar, f"sample.part{i:02d}", block)
    assert shard.stat().st_size < 2**20
    got = _peak(shard)
    (ident, size, why), = got["out"]  # fmt: skip
    assert ident.endswith("/sample") and size == len(block) and why is None
    # Was ~270 MB here (all 16 members held; 806 MB for the 40); one member is 16 MB.
    assert got["growth_mb"] < 120, got["growth_mb"]

    # Over --max-file-mb every member is passed over unread, in bounded memory too.
    got = _peak(shard, max_file_mb=8)
    assert got["out"][0][2] == "member larger than 8 MB (--max-file-mb)"
    assert got["growth_mb"] < 60, got["growth_mb"]


def test_zstd_parquet_of_large_rows_is_read_in_byte_bounded_batches(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "bomb.parquet"
    row = bytes(range(256)) * (8 * 2**20 // 256)  # 8 MB a row
    table = pa.table({"key": [f"k{i:02d}" for i in range(32)], "jpg": [row] * 32})
    pq.write_table(table, path, compression="zstd", row_group_size=32)
    del table
    assert path.stat().st_size < 64 * 2**10
    got = _peak(path)
    assert [(i.rsplit("/", 1)[1], n, w) for i, n, w in got["out"]] == [
        (f"k{i:02d}", len(row), None) for i in range(32)
    ]
    # The previous reader: +1.3 GB for 64 such rows (64 a batch, converted to Python at once).
    assert got["growth_mb"] < 150, got["growth_mb"]

    got = _peak(path, max_file_mb=4)  # every row over the limit: skipped, bytes never made
    assert {w for _, _, w in got["out"]} == {"member larger than 4 MB (--max-file-mb)"}
    assert len(got["out"]) == 32
    assert got["growth_mb"] < 150, got["growth_mb"]


def _orl_shard(path: Path, samples: int = 3) -> list[tuple[str, int]]:
    """A webdataset shard of real ORL photos (``.pgm`` + ``.cls``); return member offsets."""
    with tarfile.open(path, "w") as tar:
        for s in range(1, samples + 1):
            _add(tar, f"s{s}_1.pgm", (ORL / f"s{s}" / "1.pgm").read_bytes())
            _add(tar, f"s{s}_1.cls", f"s{s}".encode())
    with tarfile.open(path) as tar:
        return [(m.name, m.offset) for m in tar.getmembers()]


def _shard_skips(path: Path) -> tuple[list[str], list[str]]:
    ok, skipped = [], []
    for rec, why in iter_inputs([Record(str(path), path)]):
        (ok if why is None else skipped).append(rec.id if why is None else why)
    return ok, skipped


@pytest.mark.parametrize(
    ("cut", "lost"),
    [
        ("at-header", "cut at a member header"),
        ("in-header", "cut inside a member header"),
        ("in-data", "truncated tar member"),
        ("no-end-marker", "cut at a member header"),
    ],
)
def test_truncated_tar_names_what_was_lost(tmp_path, cut, lost):
    whole = tmp_path / "whole.tar"
    offsets = dict(_orl_shard(whole))
    data = whole.read_bytes()
    second = offsets["s2_1.pgm"]  # the header of the second sample's first member
    cut_at = {
        "at-header": second,
        "in-header": second + 100,
        "in-data": second + 512 + 300,  # inside s2_1.pgm's pixels
        "no-end-marker": offsets["s3_1.cls"] + 1024,  # every member, no zero blocks
    }[cut]
    shard = tmp_path / "cut.tar"
    shard.write_bytes(data[:cut_at])
    ok, skipped = _shard_skips(shard)
    assert ok[0] == f"{shard}/s1_1"
    assert len(skipped) == 1, skipped
    assert lost in skipped[0]
    assert ("s1_1" in skipped[0]) or ("s2_1" in skipped[0]) or ("s3_1" in skipped[0])


def test_whole_and_gzip_shards_have_no_truncation_record(tmp_path):
    whole = tmp_path / "whole.tar"
    _orl_shard(whole)
    ok, skipped = _shard_skips(whole)
    assert len(ok) == 3 and skipped == []
    gz = tmp_path / "whole.tar.gz"
    with tarfile.open(gz, "w:gz") as out, tarfile.open(whole) as src:
        for m in src.getmembers():
            out.addfile(m, src.extractfile(m))
    ok, skipped = _shard_skips(gz)
    assert len(ok) == 3 and skipped == []
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    ok, skipped = _shard_skips(cut)
    assert len(ok) < 3 and len(skipped) == 1


def test_check_reports_a_truncated_shard(tmp_path):
    """End to end: ``trainleak check`` on a cut shard says what was lost (was: 'checked 1')."""
    train = tmp_path / "train"
    train.mkdir()
    for s in range(1, 4):
        (train / f"s{s}.pgm").write_bytes((ORL / f"s{s}" / "2.pgm").read_bytes())
    run = [EXE, "index", "build", "--train", str(train), "--encoder", "pixel", "--threshold",
           "0.99", "--out", str(tmp_path / "idx"), "--workers", "1", "--no-cache",
           "-q"]  # fmt: skip
    built = subprocess.run(run, capture_output=True, text=True, timeout=240, check=False)
    assert built.returncode == 0, built.stderr
    whole = tmp_path / "whole.tar"
    offsets = dict(_orl_shard(whole))
    shard = tmp_path / "cut.tar"
    shard.write_bytes(whole.read_bytes()[: offsets["s2_1.pgm"]])
    checked = subprocess.run(
        [EXE, "check", "--index", str(tmp_path / "idx"), str(shard), "--workers", "1",
         "--no-cache", "-q"],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    lines = checked.stdout.splitlines()
    assert any(
        line.startswith("skip\t") and str(shard) in line and "truncated tar" in line
        for line in lines
    ), checked.stdout
    assert "checked 2 inputs: 1 released, 0 blocked, 1 skipped" in checked.stdout
