"""Verdicts say what a block shows (issue 24 item 3), and --identity counts people (item 2).

A copy index (pixel) says ``copy``; a face index says ``same person`` (a face
encoder cannot tell a copy of a photo from another photo of the person),
except where the input's bytes equal the training file's. Releases, skips and
blocks that point at nothing say nothing. The field is one line in
``gate/verdict.py`` and reaches the CSV, the JSON lines and the HTTP model
(``tests/gate/test_verdict_fields.py``); here a real ``trainleak check --jsonl``
subprocess carries it. ``check --identity`` on an index whose holdout has a
folder per person states its false-match bound counted over people.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from trainleak.config import CheckConfig, EmbedConfig, IndexConfig
from trainleak.gate.answers import false_match_words
from trainleak.gate.check import check
from trainleak.gate.index import Index

from conftest import ORL, link_orl


def _brighter(src: Path, dest: Path) -> None:
    """An edited copy: other bytes, the same picture to a copy encoder."""
    with Image.open(src) as im:
        ImageEnhance.Brightness(im.convert("L")).enhance(1.15).save(dest)


@pytest.fixture(scope="module")
def pixel_index(tmp_path_factory, cache_dir):
    """Pixel index of ORL s1-s5 (photos 1-3), holdout s11-s20 (photos 1-3, a folder each)."""
    root = tmp_path_factory.mktemp("match")
    train = link_orl(root / "train", range(1, 6), range(1, 4))
    hold = link_orl(root / "hold", range(11, 21), range(1, 4))
    outbox = root / "outbox"
    outbox.mkdir()
    _brighter(ORL / "s1" / "1.pgm", outbox / "s1_1_brighter.png")
    shutil.copyfile(ORL / "s2" / "2.pgm", outbox / "s2_2_copy.pgm")
    for s in (31, 32, 33):  # negative control: people in neither set
        os.symlink(ORL / f"s{s}" / "5.pgm", outbox / f"s{s}_5.pgm")
    emb = EmbedConfig("pixel", workers=1, cache=str(cache_dir))
    Index.build(root / "idx", train, hold, config=IndexConfig(embed=emb, fpr=0.1)).close()
    return {"root": root, "idx": root / "idx", "outbox": outbox, "embed": emb}


def test_a_copy_index_says_copy_and_releases_say_nothing(pixel_index):
    cfg = CheckConfig(embed=pixel_index["embed"])
    verdicts = {Path(v.path).name: v for v in check(pixel_index["idx"], pixel_index["outbox"],
                                                     config=cfg)}  # fmt: skip
    for name in ("s1_1_brighter.png", "s2_2_copy.pgm"):
        v = verdicts[name]
        assert v.verdict == "block" and v.match == "copy", v
        assert v.reason.startswith("a copy of a training image: "), v.reason
    for s in (31, 32, 33):
        v = verdicts[f"s{s}_5.pgm"]
        assert v.verdict == "release" and v.match is None, v


def test_check_jsonl_subprocess_carries_match(pixel_index):
    """The real command line: every JSON line has ``match``, set exactly on the blocks."""
    common = ["--workers", "1", "--cache", pixel_index["embed"].cache, "-q"]
    cmd = [sys.executable, "-m", "trainleak.cli", "check", "--index", str(pixel_index["idx"]),
           str(pixel_index["outbox"]), "--jsonl", *common]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr  # something blocked
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 5
    got = {Path(r["path"]).name: (r["verdict"], r["match"]) for r in lines}
    assert got == {
        "s1_1_brighter.png": ("block", "copy"),
        "s2_2_copy.pgm": ("block", "copy"),
        "s31_5.pgm": ("release", None),
        "s32_5.pgm": ("release", None),
        "s33_5.pgm": ("release", None),
    }


def test_identity_check_counts_people_when_the_holdout_has_them(pixel_index):
    """A holdout with a folder per person: the calibration and each answer count people."""
    mine = pixel_index["root"] / "mine"
    link_orl(mine, [1, 34], range(1, 3))  # s1's photos 1-2 are in training; s34 in nothing
    cfg = CheckConfig(embed=pixel_index["embed"])
    with Index.open(pixel_index["idx"], config=cfg) as index:
        assert index.calibration.counted_over == "people"
        assert index.calibration.details["n_people"] == 10
        hi = index.calibration.interval[1]
        answers = {v.path: v for v in index.check_identity(mine)}
    assert answers["s1"].verdict == "block" and answers["s1"].match == "copy"
    assert answers["s34"].verdict == "release" and answers["s34"].match is None
    for v in answers.values():
        assert "counted over people" in v.reason and "of 10 holdout people" in v.reason, v.reason
    # Two photos each, as the holdout people had three: the people bound as it is.
    assert f"at most {hi:.1%} chance" in answers["s34"].reason
    # More photos than a holdout person had: a union bound over groups of three, said so.
    six = false_match_words(index.calibration, 6)
    assert f"2 times the 95% upper bound {hi:.1%}" in six and "counted over people" in six


def test_identity_check_without_person_labels_counts_photos(tmp_path, cache_dir):
    """Negative control for the wording: a flat holdout cannot count people, and says photos."""
    train = link_orl(tmp_path / "train", range(1, 4), range(1, 3))
    hold = link_orl(tmp_path / "hold", range(11, 21), range(1, 3), per_person=False)
    emb = EmbedConfig("pixel", workers=1, cache=str(cache_dir))
    mine = link_orl(tmp_path / "mine", [35], range(1, 3))
    cfg = IndexConfig(embed=emb, fpr=0.1)
    with Index.build(tmp_path / "idx", train, hold, config=cfg) as index:
        assert index.calibration.counted_over == "images"
        (answer,) = index.check_identity(mine)
    assert "counted over people" not in answer.reason
    assert "holdout photos of people not in the index" in answer.reason


@pytest.mark.slow
def test_a_face_index_says_same_person(tmp_path, cache_dir):
    """Real face model: another photo of a training person is ``same person``, a byte copy ``copy``.

    Small on purpose (11 photos, about 10 s cold here); the encoder's own
    operating point decides, as no holdout is given.
    """
    train = link_orl(tmp_path / "train", range(1, 3), range(1, 3))
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    os.symlink(ORL / "s1" / "7.pgm", outbox / "s1_7.pgm")  # same person, another photo
    shutil.copyfile(ORL / "s2" / "1.pgm", outbox / "s2_1_copy.pgm")  # the training file's bytes
    for s in (21, 22):
        os.symlink(ORL / f"s{s}" / "1.pgm", outbox / f"s{s}_1.pgm")
    emb = EmbedConfig("face", workers=1, cache=str(cache_dir))
    with Index.build(tmp_path / "idx", train, config=IndexConfig(embed=emb)) as index:
        verdicts = {Path(v.path).name: v for v in index.check(outbox)}
    assert verdicts["s1_7.pgm"].verdict == "block"
    assert verdicts["s1_7.pgm"].match == "same person"
    assert verdicts["s1_7.pgm"].reason.startswith("the same person as in a training image")
    assert verdicts["s2_1_copy.pgm"].match == "copy"
    for s in (21, 22):
        assert verdicts[f"s{s}_1.pgm"].match is None, verdicts[f"s{s}_1.pgm"]
