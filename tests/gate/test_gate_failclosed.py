"""The gate fails closed (issue 21, items 1, 8, 9 and the gate's low items).

A real index of COIL-20 images (pixel encoder), damaged on disk the way an
operator's mistake or a bad disk would: every test asks that nothing a
damaged index cannot score is released, and that a change which would move
the threshold or reuse a file name is refused or harmless.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainleak.cli import main
from trainleak.config import CheckConfig, EmbedConfig, IndexConfig
from trainleak.decide.calibration import ThresholdChangeError
from trainleak.decide.failclosed import DAMAGED
from trainleak.embedding_set import EmbeddingSet
from trainleak.errors import AuditInputError, IndexFormatError
from trainleak.gate.index import Index
from trainleak.gate.shards import MANIFEST

from conftest import COIL

TRAIN_OBJECTS = range(1, 6)
HOLD_OBJECTS = range(11, 21)
VIEWS = range(0, 48, 6)  # 8 views per object (0, 6, ..., 42)


def _embed(cache_dir: Path) -> EmbedConfig:
    return EmbedConfig("pixel", workers=1, cache=str(cache_dir))


def _checks(cache_dir: Path) -> CheckConfig:
    return CheckConfig(embed=_embed(cache_dir))


def _copy_views(dest: Path, objects: range, views: range) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for obj in objects:
        for v in views:
            shutil.copyfile(COIL / f"obj{obj}__{v}.png", dest / f"obj{obj}__{v}.png")
    return dest


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train: 5 objects x 8 views (copied files); holdout: 10 other objects x 8 views;
    probe: byte-identical copies of 3 training images, and 3 other views of holdout objects
    (never trained on: the negative control, released by the undamaged index)."""
    root = tmp_path_factory.mktemp("failclosed")
    _copy_views(root / "train", TRAIN_OBJECTS, VIEWS)
    _copy_views(root / "holdout", HOLD_OBJECTS, VIEWS)
    probe = root / "probe"
    probe.mkdir()
    for obj in (1, 3, 5):
        shutil.copyfile(COIL / f"obj{obj}__12.png", probe / f"copy_obj{obj}__12.png")
    for obj, v in ((17, 15), (18, 27), (19, 3)):
        shutil.copyfile(COIL / f"obj{obj}__{v}.png", probe / f"unseen_obj{obj}__{v}.png")
    return root


@pytest.fixture(scope="module")
def built(sets: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("failclosed_idx") / "idx"
    cfg = IndexConfig(embed=_embed(cache_dir), fpr=0.02, shard_rows=16)
    Index.build(out, sets / "train", sets / "holdout", config=cfg).close()
    return out


@pytest.fixture()
def idx(built: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "idx"
    shutil.copytree(built, dest)
    return dest


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainleak.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _cli_verdicts(idx: Path, images: Path) -> tuple[int, list[dict], str]:
    run = _cli("check", "--index", str(idx), str(images), "--jsonl",
               "--workers", "1", "--no-cache")  # fmt: skip
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return run.returncode, lines, run.stderr


def test_healthy_index_blocks_copies_and_releases_unseen(idx, sets, cache_dir):
    """The control for every damage below: the same probe on the undamaged index."""
    with Index.open(idx, config=_checks(cache_dir)) as index:
        verdicts = {Path(v.path).name: v for v in index.check(sets / "probe")}
        assert index.health()["ok"], index.health()
    assert {n for n, v in verdicts.items() if v.verdict == "block"} == {
        "copy_obj1__12.png", "copy_obj3__12.png", "copy_obj5__12.png",
    }  # fmt: skip
    assert verdicts["copy_obj3__12.png"].nearest == str(sets / "train" / "obj3__12.png")
    manifest = json.loads((idx / MANIFEST).read_text())
    assert all(s["finite"] is True for s in manifest["shards"])
    assert manifest["threshold"]["interval"] and manifest["threshold"]["counted_over"] == "images"


def _poison_row(idx: Path, train_id: str) -> None:
    """Set one element of the row of ``train_id`` to NaN in its shard file (on disk)."""
    manifest = json.loads((idx / MANIFEST).read_text())
    for shard in manifest["shards"]:
        rows = (idx / shard["files"]["rows"]["name"]).read_text().splitlines()
        ids = [json.loads(line)["id"] for line in rows]
        if train_id in ids:
            vectors = np.load(idx / shard["files"]["vectors"]["name"], mmap_mode="r+")
            vectors[ids.index(train_id), 7] = np.nan
            vectors.flush()
            del vectors
            return
    raise AssertionError(f"{train_id} is not in the index")


@pytest.mark.parametrize("poisoned", ["obj3__12.png", "obj1__0.png"])
def test_one_nan_in_a_shard_releases_nothing(idx, sets, cache_dir, poisoned):
    """Issue 21 item 1: one NaN element used to release everything ("no training rows")."""
    _poison_row(idx, str(sets / "train" / poisoned))
    Index.open(idx).close()  # opening reads no vector: the damage is found when searching
    with Index.open(idx, config=_checks(cache_dir)) as index:
        verdicts = index.check(sets / "probe")
        assert not index.health()["ok"] and "NaN" in index.health()["problems"][0]
        person = index.check_identity(sets / "probe")  # "is my face in there?" fails closed too
        assert [(p.verdict, p.reason.startswith(DAMAGED)) for p in person] == [("block", True)]
    assert len(verdicts) == 6 and {v.verdict for v in verdicts} == {"block"}
    assert all(v.reason.startswith(DAMAGED) for v in verdicts), verdicts[0].reason
    code, lines, err = _cli_verdicts(idx, sets / "probe")
    assert code == 1, err  # ran, and blocked something
    assert len(lines) == 6 and {v["verdict"] for v in lines} == {"block"}
    assert all(DAMAGED in v["reason"] for v in lines)
    assert main(["index", "info", str(idx), "--verify"]) == 2


@pytest.mark.parametrize("value", ["NaN", "Infinity", "null", '"0.5"'])
def test_non_finite_threshold_refuses_to_open(idx, sets, value):
    manifest = (idx / MANIFEST).read_text()
    record = json.loads(manifest)
    old = json.dumps(record["threshold"]["value"])
    assert manifest.count(f'"value": {old}') == 1
    (idx / MANIFEST).write_text(manifest.replace(f'"value": {old}', f'"value": {value}'))
    with pytest.raises(IndexFormatError, match="threshold"):
        Index.open(idx)
    code, lines, err = _cli_verdicts(idx, sets / "probe")
    assert code == 2 and not lines
    assert "threshold" in err and "rebuild" in err


def test_a_damaged_row_line_is_never_released(idx, sets, cache_dir):
    """A rows file whose line offsets no longer match: the row cannot be read."""
    manifest = json.loads((idx / MANIFEST).read_text())
    shard = manifest["shards"][0]
    offsets = np.load(idx / shard["files"]["offsets"]["name"], mmap_mode="r+")
    offsets[1:-1] += 3  # every line but the file's ends now starts mid-record
    offsets.flush()
    del offsets
    code, lines, err = _cli_verdicts(idx, sets / "probe")
    assert code in (1, 2)
    assert all(v["verdict"] == "block" for v in lines) and "release" not in err
    assert not any(v["verdict"] == "release" for v in lines)


def test_rows_are_checked_finite_when_written(sets, cache_dir, tmp_path):
    with Index.build(tmp_path / "a", sets / "train", config=IndexConfig(embed=_embed(cache_dir),
                     threshold=0.95)) as index:  # fmt: skip
        info = index.encoder_info
        vectors = np.load(tmp_path / "a" / index.manifest["shards"][0]["files"]["vectors"]["name"])
    bad = vectors[:3].copy()
    bad[1, 0] = np.inf
    es = EmbeddingSet(["x0", "x1", "x2"], [None] * 3, bad, [], 3, info)
    with pytest.raises(AuditInputError, match="NaN or infinite"):
        Index.build(tmp_path / "b", es, config=IndexConfig(threshold=0.95))
    with Index.open(tmp_path / "a") as index:
        result = index.add(es)
    assert (result["added"], result["skipped"]) == (2, 1)
    assert result["skipped_files"][0]["path"] == "x1"
    assert "NaN or infinite" in result["skipped_files"][0]["reason"]


def test_add_that_moves_the_threshold_is_refused(idx, sets, cache_dir, tmp_path):
    """Issue 21 item 8: other views of the holdout's objects would release near-copies."""
    near = _copy_views(tmp_path / "near", range(11, 16), range(1, 48, 4))
    before = json.loads((idx / MANIFEST).read_text())
    files_before = sorted(os.listdir(idx))
    run = _cli("index", "add", str(idx), str(near), "--workers", "1", "--no-cache")
    assert run.returncode == 2, run.stderr
    assert "would move the threshold from" in run.stderr
    assert "--accept-threshold-change" in run.stderr
    assert json.loads((idx / MANIFEST).read_text()) == before  # nothing committed
    assert sorted(os.listdir(idx)) == files_before  # and nothing left behind
    # The API refuses alike, and commits when told to accept it.
    with Index.open(idx, config=_checks(cache_dir)) as index:
        with pytest.raises(ThresholdChangeError, match="Nothing was committed"):
            index.add(near)
        old = index.threshold
        index.add(near, accept_threshold_change=True)
        assert index.threshold - old > 0.01 and index.manifest["generation"] == 2


def test_cli_accepts_a_threshold_change_when_told(built, sets, tmp_path):
    """Negative control: more views of the training objects move nothing and need no flag."""
    near = _copy_views(tmp_path / "near", range(11, 16), range(1, 48, 4))
    other = _copy_views(tmp_path / "other", TRAIN_OBJECTS, range(3, 48, 12))
    for extra, code in (([], 0), (["--accept-threshold-change"], 0)):
        idx = tmp_path / f"idx{len(extra)}"
        shutil.copytree(built, idx)
        images = other if not extra else near
        run = _cli("index", "add", str(idx), str(images), *extra, "--workers", "1", "--no-cache")
        assert run.returncode == code, run.stderr
        assert json.loads((idx / MANIFEST).read_text())["generation"] == 2
    idx = tmp_path / "loose"
    shutil.copytree(built, idx)
    run = _cli("index", "add", str(idx), str(near), "--max-threshold-change", "0.5",
               "--workers", "1", "--no-cache")  # fmt: skip
    assert run.returncode == 0, run.stderr


def test_reader_keeps_its_view_across_remove_compact_add(idx, sets, cache_dir, tmp_path):
    """Issue 21 item 9: compact dropped a shard and the next add reused its file names."""
    checks = _checks(cache_dir)
    reader = Index.open(idx, config=checks)
    last = reader.manifest["shards"][-1]
    in_last = [r["id"] for r in reader.iter_rows() if r["row"] >= reader.starts[-2]]
    probe = tmp_path / "probe"
    probe.mkdir()
    target = Path(in_last[0])
    shutil.copyfile(target, probe / f"copy_{target.name}")
    first = reader.check(probe)[0]
    assert first.verdict == "block" and first.nearest == str(target)
    new = _copy_views(tmp_path / "new", range(16, 21), range(1, 48, 3))
    with Index.open(idx, config=checks) as writer:
        assert writer.remove(in_last)["removed"] == len(in_last)
        writer.compact()
        assert len(writer.manifest["shards"]) == len(reader.manifest["shards"]) - 1
        writer.add(new, accept_threshold_change=True)
        names = {f["name"] for s in writer.manifest["shards"] for f in s["files"].values()}
    # No name of the reader's generation was used again for other content.
    assert not names & {f["name"] for f in last["files"].values()}
    again = reader.check(probe)[0]
    assert (again.verdict, again.nearest) == ("block", str(target))
    assert again.similarity == first.similarity
    reader.close()
    with Index.open(idx, config=checks) as fresh:  # a new reader sees the new generation
        now = fresh.check(probe)[0]
        assert now.nearest != str(target)


def test_ids_are_unique(idx, sets, cache_dir, tmp_path):
    """An image with a live row's id but other content is skipped, so remove removes one row."""
    train_file = sets / "train" / "obj2__6.png"
    twin = tmp_path / "twin"
    twin.mkdir()
    with Index.open(idx, config=_checks(cache_dir)) as index:
        # The same path, other content: what an upload named like a training path looks like.
        original = train_file.read_bytes()
        try:
            shutil.copyfile(COIL / "obj20__1.png", train_file)
            result = index.add([str(train_file)], accept_threshold_change=True)
        finally:
            train_file.write_bytes(original)
        assert (result["added"], result["skipped"]) == (0, 1)
        assert "id is in the index already" in result["skipped_files"][0]["reason"]
        assert index.remove([str(train_file)])["removed"] == 1


def test_health_and_public_manifest(idx, sets, cache_dir, tmp_path):
    from trainleak.decide.decisions import DB_NAME, Decision, DecisionStore

    decisions = tmp_path / "review" / DB_NAME
    decisions.parent.mkdir()
    with Index.open(idx) as index:
        key = index.encoder_info.cache_key()
        DecisionStore(decisions).add(Decision("a" * 8, "b" * 8, key, "leak", "ana", ""))
        shown = json.dumps(index.public_manifest())
        assert str(sets / "holdout") not in shown and cache_dir.name not in shown
        assert str(sets / "holdout") in json.dumps(index.manifest)  # the operator's copy has it
    checks = CheckConfig(embed=_embed(cache_dir), decisions=str(decisions))
    with Index.open(idx, config=checks) as index:
        assert index.health()["ok"]
        decisions.write_bytes(b"not a database at all" * 100)
        for wal in decisions.parent.glob(f"{DB_NAME}-*"):
            wal.unlink()
        import time

        time.sleep(1.1)  # the decisions files are looked at once a second
        health = index.health()
        assert not health["ok"] and "decisions" in health["problems"][0]
    # An index built from vectors of an encoder this machine cannot rebuild: uploads fail.
    with Index.open(idx) as index:
        info = index.encoder_info
        vectors = np.asarray(index.shards[0][:4])
    from dataclasses import replace

    foreign = replace(info, name="someone-elses-model", version=1)
    es = EmbeddingSet([f"v{i}" for i in range(4)], [None] * 4, vectors, [], 4, foreign)
    with Index.build(tmp_path / "vec", es, config=IndexConfig(threshold=0.9)) as index:
        health = index.health()
    assert not health["ok"] and "cannot be embedded" in health["problems"][0]
