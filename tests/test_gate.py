"""The release gate: index build/add/remove/compact, check verdicts, atomic changes, damage."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

import trainleak as tl
from trainleak import audit
from trainleak.cli import main
from trainleak.config import AuditConfig, CheckConfig, EmbedConfig, IndexConfig
from trainleak.decide.calibration import ThresholdChangeError
from trainleak.errors import EncoderMismatchError, IndexFormatError
from trainleak.gate.check import COLUMNS, Verdict, check
from trainleak.gate.index import Index
from trainleak.gate.search import FaissSearch, ShardSearch
from trainleak.gate.shards import COMMIT_DELAY_ENV, MANIFEST
from trainleak.neighbors import knn
from trainleak.similarity import Similarity

from conftest import COIL, link_orl

AUGMENTS = ("flip", "crop", "jpeg30", "bright")


def _augment(im: Image.Image, kind: str) -> Image.Image:
    if kind == "flip":
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "crop":
        w, h = im.size
        return im.crop((1, 1, w - 1, h - 1)).resize((w, h), Image.Resampling.BICUBIC)
    if kind == "jpeg30":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=30)
        return Image.open(io.BytesIO(buf.getvalue()))
    return ImageEnhance.Brightness(im).enhance(1.25)


@pytest.fixture(scope="module")
def coil(tmp_path_factory):
    """train: objects 1-10 x 10 views; synthetic: 20 augmented copies of training images,
    40 views of unseen objects 11-20 (negative control) and a non-image; holdout: 40 other
    views of objects 11-20."""
    root = tmp_path_factory.mktemp("gate_coil")
    for sub in ("train", "synthetic", "holdout"):
        (root / sub).mkdir()
    views = range(0, 50, 5)
    for obj in range(1, 11):
        for v in views:
            os.symlink(COIL / f"obj{obj}__{v}.png", root / "train" / f"obj{obj}__{v}.png")
    rng = np.random.default_rng(0)
    for i in range(20):
        obj, v = int(rng.integers(1, 11)), int(rng.choice(list(views)))
        kind = AUGMENTS[i % 4]
        img = _augment(Image.open(COIL / f"obj{obj}__{v}.png").convert("L"), kind)
        img.save(root / "synthetic" / f"copy{i:02d}_{kind}_obj{obj}__{v}.png")
    for obj in range(11, 21):
        for v in (2, 14, 26, 38):
            os.symlink(COIL / f"obj{obj}__{v}.png", root / "synthetic" / f"new_obj{obj}__{v}.png")
        for v in (8, 20, 32, 44):
            os.symlink(COIL / f"obj{obj}__{v}.png", root / "holdout" / f"obj{obj}__{v}.png")
    (root / "synthetic" / "notes.png").write_text("not an image")
    return root


def _embed(cache_dir, **options) -> EmbedConfig:
    return EmbedConfig("pixel", encoder_options=options, workers=1, cache=str(cache_dir))


def _checks(cache_dir, **kw) -> CheckConfig:
    return CheckConfig(embed=_embed(cache_dir), **kw)


@pytest.fixture(scope="module")
def coil_index(coil, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gate_idx") / "idx"
    cfg = IndexConfig(embed=_embed(cache_dir), fpr=0.02)
    Index.build(out, coil / "train", coil / "holdout", config=cfg).close()
    return out


@pytest.fixture()
def index_copy(coil_index, tmp_path):
    """A private copy of the COIL index that a test may change."""
    dest = tmp_path / "idx"
    shutil.copytree(coil_index, dest)
    return dest


def _by_name(verdicts: list[Verdict]) -> dict[str, Verdict]:
    return {os.path.basename(v.path): v for v in verdicts}


def test_copies_blocked_unseen_released(coil, coil_index, cache_dir):
    verdicts = check(coil_index, coil / "synthetic", config=_checks(cache_dir))
    assert [v.path for v in verdicts] == sorted(str(p) for p in (coil / "synthetic").iterdir())
    by = _by_name(verdicts)
    copies = {n: v for n, v in by.items() if n.startswith("copy")}
    assert all(v.verdict == "block" for v in copies.values()), copies
    for name, v in copies.items():  # each block names the training image it copies
        assert os.path.basename(v.nearest) == name.split("_", 2)[2]
        assert v.similarity > v.threshold
    # negative control: views of objects never trained on (pixel space confuses
    # at most 4 views of object 16 with training objects, as in test_copies)
    false = [n for n, v in by.items() if n.startswith("new_") and v.verdict == "block"]
    assert len(false) <= 4, false
    released = [v for n, v in by.items() if n.startswith("new_") and v.verdict == "release"]
    assert all(v.nearest is None and v.similarity <= v.threshold for v in released)
    assert by["notes.png"].verdict == "skip"
    assert by["notes.png"].reason == "not an image (unrecognised format)"


def test_verdicts_equal_audit(coil, coil_index, cache_dir):
    cfg = AuditConfig(embed=_embed(cache_dir), fpr=0.02)
    result = audit(coil / "train", coil / "synthetic", coil / "holdout", config=cfg)
    with Index.open(coil_index, config=_checks(cache_dir)) as index:
        verdicts = index.check(coil / "synthetic")
        assert index.threshold == result.report["threshold"]["value"]
        assert (
            index.manifest["threshold"]["achieved_fpr"]
            == result.report["threshold"]["achieved_fpr"]
        )
    blocked = {v.path: v.nearest for v in verdicts if v.verdict == "block"}
    flagged = {m["synthetic"]: m["train"] for m in result.report["matches"] if m["flagged"]}
    assert blocked == flagged and len(blocked) >= 20


def test_identity_scoring_equals_audit(tmp_path, cache_dir):
    """ORL has a sub-folder per person: asked to, audit and the index both score by identity.

    (``pixel`` is a copy encoder: under ``--score auto`` it scores ``nn``.)
    """
    train = link_orl(tmp_path / "train", range(1, 11), range(1, 6))
    synth = link_orl(tmp_path / "synth", range(1, 6), range(6, 11), per_person=False)
    link_orl(synth, range(21, 26), range(1, 6), per_person=False)
    hold = link_orl(tmp_path / "hold", range(31, 41), range(1, 6))
    acfg = AuditConfig(embed=_embed(cache_dir), fpr=0.05, score="identity")
    result = audit(train, synth, hold, config=acfg)
    assert result.report["summary"]["score"] == "identity"
    cfg = IndexConfig(embed=_embed(cache_dir), fpr=0.05, score="identity")
    with Index.build(
        tmp_path / "idx", train, hold, config=cfg, check_config=_checks(cache_dir)
    ) as ix:
        assert ix.score_mode == "identity"
        assert ix.threshold == result.report["threshold"]["value"]
        verdicts = ix.check(synth)
    blocked = {v.path: (v.nearest, v.identity) for v in verdicts if v.verdict == "block"}
    flagged = {
        m["synthetic"]: (m["train"], m["train_identity"])
        for m in result.report["matches"]
        if m["flagged"]
    }
    assert blocked == flagged and blocked


def test_faiss_and_exact_search_give_identical_verdicts(coil, cache_dir, tmp_path):
    emb = _embed(cache_dir, flip_invariant=False)  # cosine without the mirror rule
    cfg = IndexConfig(embed=emb, fpr=0.02, shard_rows=33)
    Index.build(tmp_path / "idx", coil / "train", coil / "holdout", config=cfg).close()
    answers = {}
    for search in ("faiss", "exact"):
        config = CheckConfig(embed=emb, search=search)
        with Index.open(tmp_path / "idx", config=config) as index:
            assert index.search_kind() == search
            assert index.warm() is index  # what a service does at start-up
            answers[search] = index.check(coil / "synthetic")
    assert answers["faiss"] == answers["exact"]
    blocked = {os.path.basename(v.path) for v in answers["faiss"] if v.verdict == "block"}
    unflipped = {p.name for p in (coil / "synthetic").glob("copy*") if "_flip_" not in p.name}
    assert unflipped <= blocked  # without the mirror rule, mirrored copies may pass


def test_sharded_searches_match_one_exact_search_without_tombstones():
    """Oracle: faiss and the per-shard search equal knn over the live rows, ties by row."""
    rng = np.random.default_rng(1)
    db = tl.embeddings(rng.normal(size=(100, 16))).vectors
    db[50] = db[7]  # an exact tie across shards
    queries = np.concatenate([db[[7, 3, 99]], tl.embeddings(rng.normal(size=(20, 16))).vectors])
    shards = [db[:40], db[40:80], db[80:]]
    dead = np.array([3, 41, 42, 85])
    live = np.setdiff1d(np.arange(100), dead)
    s_ref, i_ref = knn(queries, db[live], 6)
    i_ref = live[i_ref]
    for search in (ShardSearch(shards, dead, Similarity()), FaissSearch(shards, dead)):
        s, i = search.knn(queries, 6)
        np.testing.assert_array_equal(s, s_ref)
        np.testing.assert_array_equal(i[:, :-1], i_ref[:, :-1])
        # which of two identical rows tied at the k-th place is kept is up to the backend
        np.testing.assert_array_equal(db[i[:, -1]], db[i_ref[:, -1]])
    assert i_ref[0, :2].tolist() == [7, 50]


def test_add_remove_info_compact(coil, index_copy, cache_dir, tmp_path):
    more = tmp_path / "more"
    more.mkdir()
    for v in (1, 3):
        os.symlink(COIL / f"obj15__{v}.png", more / f"obj15__{v}.png")
    os.symlink(COIL / "obj1__0.png", more / "same_bytes_as_training.png")
    probe = tmp_path / "probe"
    probe.mkdir()
    os.symlink(COIL / "obj15__1.png", probe / "p.png")
    with Index.open(index_copy, config=_checks(cache_dir)) as index:
        before = index.threshold
        assert index.check(probe)[0].verdict == "release"
        # Other views of a holdout object move the calibrated threshold: refused unless accepted.
        files_before = sorted(p.name for p in index_copy.iterdir())
        with pytest.raises(ThresholdChangeError, match=r"from 0\.\d{4} to 0\.\d{4}"):
            index.add(more)
        assert index.manifest["generation"] == 1 and index.threshold == before
        assert sorted(p.name for p in index_copy.iterdir()) == files_before
        result = index.add(more, accept_threshold_change=True)
        assert (result["files"], result["added"], result["present"]) == (3, 2, 1)
        assert len(index) == 102 and index.manifest["generation"] == 2
        assert index.manifest["threshold"]["rows_at_calibration"] == 102
        assert index.threshold >= before  # more training rows: holdout scores can only rise
        again = index.add(more)
        assert (again["added"], again["present"]) == (0, 3)
        hit = index.check(probe)[0]
        assert hit.verdict == "block" and hit.nearest == str(more / "obj15__1.png")
        gone = index.remove([hit.nearest, "no/such/id.png"])
        assert gone["removed"] == 1 and gone["unknown"] == ["no/such/id.png"]
        after_remove = index.check(coil / "synthetic")
        assert index.check(probe)[0].nearest != hit.nearest
        info = index.info()
        assert info["counts"] == {"rows": 102, "live": 101, "tombstoned": 1, "shards": 2}
    with Index.open(index_copy, config=_checks(cache_dir)) as index:  # a fresh reader sees it too
        assert index.check(probe)[0].nearest != hit.nearest
        index.compact()
        assert index.info()["counts"] == {"rows": 101, "live": 101, "tombstoned": 0, "shards": 2}
        assert index.check(coil / "synthetic") == after_remove
        index.verify()
    names = {p.name for p in index_copy.iterdir()}
    assert not any(n.startswith("tombstones") or ".tmp-" in n for n in names)


def _state(path: Path) -> tuple[int, int]:
    with Index.open(path) as index:
        index.verify()
        return index.manifest["generation"], len(index)


ADD = (
    "import sys\n"
    "from trainleak.config import CheckConfig, EmbedConfig\n"
    "from trainleak.gate.index import Index\n"
    "cfg = CheckConfig(embed=EmbedConfig(workers=1, no_cache=True), batch=4)\n"
    "Index.open(sys.argv[1], config=cfg).add(sys.argv[2], accept_threshold_change=True)\n"
)


def _start_add(index: Path, images: Path, delay: float = 0) -> subprocess.Popen:
    env = dict(os.environ, **{COMMIT_DELAY_ENV: str(delay)})
    return subprocess.Popen([sys.executable, "-c", ADD, str(index), str(images)], env=env)


@pytest.mark.slow
def test_kill_9_during_add_leaves_the_index_before_or_after(coil_index, tmp_path):
    images = tmp_path / "new"
    images.mkdir()
    for obj in (12, 13):
        for v in range(1, 50, 4):
            os.symlink(COIL / f"obj{obj}__{v}.png", images / f"obj{obj}__{v}.png")
    pristine = tmp_path / "pristine"
    shutil.copytree(coil_index, pristine)
    before = _state(pristine)
    # Killed at the worst moment: every new shard file is on disk, the manifest is not.
    idx = tmp_path / "hooked"
    shutil.copytree(pristine, idx)
    proc = _start_add(idx, images, delay=120)
    deadline = time.monotonic() + 60
    new_shard = {"vectors-00002-00001.npy", "rows-00002-00001.jsonl", "offsets-00002-00001.npy"}
    while not (idx / "vectors-00002-00001.npy").exists() or not (
        idx / "offsets-00002-00001.npy"
    ).exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _state(idx) == before
    _start_add(idx, images).wait(120)
    after = _state(idx)
    assert after == (before[0] + 1, before[1] + 26)
    assert not (
        set(os.listdir(idx))
        - set(os.listdir(pristine))
        - new_shard
    )
    # Killed at random moments: always one of the two states, and every file checks out.
    seen = set()
    for delay in np.linspace(0.2, 3.0, 8):
        shutil.rmtree(idx)
        shutil.copytree(pristine, idx)
        proc = _start_add(idx, images)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = _state(idx)
        assert state in (before, after), (delay, state)
        seen.add(state)
    assert before in seen


def test_damaged_or_foreign_index_is_refused(index_copy, tmp_path, capsys):
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        Index.open(tmp_path)
    with pytest.raises(EncoderMismatchError, match="built with encoder 'pixel'"):
        Index.open(index_copy, encoder="tiled")
    Index.open(index_copy, encoder="pixel").close()
    vectors = next(index_copy.glob("vectors-*.npy"))
    data = vectors.read_bytes()
    # a flipped byte in the data: opening (size + header) passes, verify does not
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    vectors.write_bytes(bytes(flipped))
    index = Index.open(index_copy)
    with pytest.raises(IndexFormatError, match="sha256 does not match"):
        index.verify()
    with pytest.raises(IndexFormatError, match="sha256"):
        Index.open(index_copy, verify=True)
    assert main(["index", "info", str(index_copy), "--verify"]) == 2
    assert "corrupted" in capsys.readouterr().err
    # truncated: refused at open
    vectors.write_bytes(data[: len(data) - 4096])
    with pytest.raises(IndexFormatError, match="truncated"):
        Index.open(index_copy)
    assert main(["check", "--index", str(index_copy), str(COIL / "obj1__0.png")]) == 2
    assert "truncated" in capsys.readouterr().err
    vectors.write_bytes(data)
    manifest = json.loads((index_copy / MANIFEST).read_text())
    manifest["format_version"] = 99
    (index_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="newer trainleak"):
        Index.open(index_copy)


def test_check_streams_a_folder_a_batch_at_a_time(coil, coil_index, cache_dir, tmp_path):
    folder = tmp_path / "outbox"
    folder.mkdir()
    for v in range(6):
        shutil.copy(COIL / f"obj1__{v}.png", folder / f"{v}.png")
    with Index.open(coil_index, config=_checks(cache_dir, batch=2)) as index:
        held = len(index.embedder().store)
        stream = index.iter_check(folder)
        first = next(stream)
        for v in range(2, 6):  # not read yet: they were never listed in memory as images
            (folder / f"{v}.png").unlink()
        rest = list(stream)
        assert len(index.embedder().store) == held  # new embeddings went to disk, not memory
    assert first.path.endswith("0.png") and first.verdict == "block"
    assert [v.verdict for v in rest] == ["block"] + ["skip"] * 4
    assert {v.reason for v in rest[1:]} == {"file not found"}


def test_vectors_sets_and_uploads_get_the_same_verdicts(coil, coil_index, cache_dir):
    with Index.open(coil_index, config=_checks(cache_dir)) as index:
        by_path = index.check(coil / "synthetic")
        emb = tl.embed(coil / "synthetic", "pixel", workers=1, cache=str(cache_dir))
        assert index.check(emb) == sorted(by_path, key=lambda v: v.verdict == "skip")
        rows = index.check(emb.vectors)
        assert [v.path for v in rows] == [str(i) for i in range(len(emb))]
        kept = [v for v in by_path if v.verdict != "skip"]
        assert [(v.verdict, v.similarity) for v in rows] == [
            (v.verdict, v.similarity) for v in kept
        ]
        files = sorted((coil / "synthetic").iterdir())
        uploads = index.check_encoded([(p.name, p.read_bytes()) for p in files])
        assert [(os.path.basename(v.path), v.verdict, v.nearest) for v in by_path] == [
            (v.path, v.verdict, v.nearest) for v in uploads
        ]


def test_cli_build_check_add_remove(coil, cache_dir, tmp_path, capsys, monkeypatch):
    idx = tmp_path / "idx"
    common = ["--workers", "1", "--cache", str(cache_dir), "-q"]
    build = ["index", "build", "--train", str(coil / "train"), "--encoder", "pixel", *common]
    assert (
        main([*build, "--holdout", str(coil / "holdout"), "--threshold", "0.9", "--out", "x"]) == 2
    )
    assert (
        main([*build, "--holdout", str(coil / "holdout"), "--fpr", "0.02", "--out", str(idx)]) == 0
    )
    assert "threshold" in capsys.readouterr().out
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    os.symlink(COIL / "obj12__3.png", outbox / "fine.png")
    assert main(["check", "--index", str(idx), str(outbox), *common]) == 0
    os.symlink(COIL / "obj2__10.png", outbox / "=HYPERLINK(evil).png")
    out_csv = tmp_path / "verdicts.csv"
    monkeypatch.chdir(outbox)  # ids are paths as given: this one starts with '='
    code = main(
        [
            "check",
            "--index",
            str(idx),
            "=HYPERLINK(evil).png",
            "fine.png",
            "--out",
            str(out_csv),
            *common,
        ]
    )
    assert code == 1
    rows = list(csv.DictReader(out_csv.open(newline="")))
    assert tuple(rows[0]) == COLUMNS
    blocked = [r for r in rows if r["verdict"] == "block"]
    assert len(blocked) == 1 and blocked[0]["path"].startswith("'")  # OWASP: no formula
    assert blocked[0]["nearest"] == str(coil / "train" / "obj2__10.png")
    capsys.readouterr()
    assert main(["check", "--index", str(idx), str(outbox), "--jsonl", *common]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [tuple(line) for line in lines] == [COLUMNS] * 2
    ids = tmp_path / "ids.txt"
    ids.write_text(blocked[0]["nearest"] + "\n")
    assert main(["index", "remove", str(idx), "--ids", str(ids)]) == 0
    assert "removed 1 rows" in capsys.readouterr().out

    def nearest() -> set[str | None]:
        main(["check", "--index", str(idx), str(outbox), "--jsonl", *common])
        return {json.loads(line)["nearest"] for line in capsys.readouterr().out.splitlines()}

    assert blocked[0]["nearest"] not in nearest()
    os.symlink(COIL / "obj2__10.png", tmp_path / "again.png")
    assert main(["index", "add", str(idx), str(tmp_path / "again.png"), *common]) == 0
    assert "added 1 rows" in capsys.readouterr().out
    assert str(tmp_path / "again.png") in nearest()
    assert main(["index", "info", str(idx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["live"] == 100 and info["threshold"]["method"] == "holdout"
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"nope")
    assert main(["check", "--index", str(idx), str(junk), *common]) == 2


@pytest.mark.slow
def test_is_my_face_in_there_face_encoder(tmp_path, cache_dir):
    """Real dlib face model on a few ORL people: members found under their name, others not."""
    train = link_orl(tmp_path / "train", range(1, 7), range(1, 6))
    hold = link_orl(tmp_path / "hold", range(31, 41), range(1, 4))
    mine = tmp_path / "mine"
    link_orl(mine, [1, 2, 3, 21, 22, 23], range(6, 11))
    emb = EmbedConfig("face", workers=2, cache=str(cache_dir))
    cfg = IndexConfig(embed=emb, fpr=0.05)
    checks = CheckConfig(embed=emb)
    with Index.build(tmp_path / "idx", train, hold, config=cfg, check_config=checks) as index:
        answers = {v.path: v for v in index.check_identity(mine)}
    assert sorted(answers) == ["s1", "s2", "s21", "s22", "s23", "s3"]
    for member in ("s1", "s2", "s3"):
        assert answers[member].verdict == "block" and answers[member].identity == member
        assert "a stranger is falsely matched with at most" in answers[member].reason
    for stranger in ("s21", "s22", "s23"):
        assert answers[stranger].verdict == "release", answers[stranger]
        assert answers[stranger].nearest is None


def test_file_names_that_are_not_utf8_round_trip(tmp_path, cache_dir, capsys):
    train = tmp_path / "train"
    train.mkdir()
    odd = os.fsencode(train) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    shutil.copy(COIL / "obj3__10.png", odd)
    os.symlink(COIL / "obj4__10.png", train / "plain.png")
    idx = tmp_path / "idx"
    cfg = IndexConfig(embed=_embed(cache_dir), threshold=0.99)
    with Index.build(idx, train, config=cfg, check_config=_checks(cache_dir)) as index:
        hit = index.check(COIL / "obj3__10.png")[0]
        assert hit.verdict == "block" and os.fsencode(hit.nearest) == odd
        assert index.remove([hit.nearest])["removed"] == 1
    common = ["--workers", "1", "--cache", str(cache_dir), "-q"]
    assert main(["check", "--index", str(idx), os.fsdecode(odd), *common]) == 0
    capsys.readouterr()
    assert main(["check", "--index", str(idx), str(train), "--jsonl", *common]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert os.fsencode(lines[0]["path"]) == odd
