"""``evidence --against`` a generator: it is sampled, and its files go into the packet.

The generator is the tests' pixel-space KDE on photos 1-7 of ORL people
s1-s10 (``tests/membership_gen.py``), a generator that memorised its training
set. The owner is s3 with photos 8-10, never trained on themselves: the
attack must recognise the person, not a file. The reference is photos 8-10
of s11-s40 (R = 30, smallest p = 1/31).
"""

from __future__ import annotations

import json

import pytest

from trainleak.cli import main

from conftest import link_orl

KDE = "python:membership_gen:orl_kde"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence_gen")
    link_orl(root / "member", range(3, 4), range(8, 11), per_person=False)
    link_orl(root / "stranger", range(12, 13), range(8, 11), per_person=False)
    link_orl(root / "reference", range(13, 41), range(8, 11))
    link_orl(root / "reference", range(11, 12), range(8, 11))
    return root


def _run(scene, owner: str, cache_dir, out) -> dict:
    argv = [
        "evidence", "--mine", str(scene / owner), "--against", KDE, "--n-samples", "200",
        "--reference", str(scene / "reference"), "--encoder", "pixel", "--cache", str(cache_dir),
        "--workers", "1", "--out", str(out), "--pairs", "3",
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "evidence.json").read_text())


def test_member_of_a_sampled_generator(scene, cache_dir, tmp_path):
    packet = _run(scene, "member", cache_dir, tmp_path / "m")
    s = packet["summary"]
    assert s["n_against"] == 200 and s["n_reference"] == 29
    assert s["p_value"] == pytest.approx(1 / 30) and packet["verdict"]["key"] == "used"
    assert all(p["against"].startswith("sample:0:") for p in packet["pairs"])
    generator_files = [f for f in packet["files"] if f["set"] == "against"]
    assert [f["path"].rsplit("/", 1)[1] for f in generator_files] == ["membership_gen.py"]
    html = (tmp_path / "m" / "evidence.html").read_text()
    assert html.count("data:image/png;base64") >= 3  # the samples, drawn again for the page


def test_stranger_of_a_sampled_generator(scene, cache_dir, tmp_path):
    packet = _run(scene, "stranger", cache_dir, tmp_path / "s")
    assert packet["verdict"]["key"] == "not_found" and packet["summary"]["p_value"] > 0.05
