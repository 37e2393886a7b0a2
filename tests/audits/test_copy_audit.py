"""``--encoder copy`` end to end: audit (API and CLI), dedup, and the gate's index and check.

Real photos from scikit-image and ORL faces at 92 x 112, written as files;
planted copies are edited here (crop, rotation, caption, several edits at
once); the negatives are other photos and other people.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from copy_edits import apply
from PIL import Image

import trainleak as tl
from trainleak.cli import main
from trainleak.config import CheckConfig, EmbedConfig, IndexConfig
from trainleak.gate.index import Index

from conftest import DATA

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("cv2")

TRAIN = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera"]
COPIES = [
    ("astronaut", "crop60"),
    ("coffee", "rotate15"),
    ("chelsea", "combo"),
    ("rocket", "caption"),
]
DISTINCT = ["text", "page", "coins"]


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]


@pytest.fixture(scope="module")
def copy_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("copysets")
    sets = {name: root / name for name in ("train", "synth", "hold")}
    for d in sets.values():
        d.mkdir()
    for n in TRAIN:
        Image.fromarray(_rgb(getattr(skdata, n)())).save(sets["train"] / f"{n}.png")
    for j, (n, edit) in enumerate(COPIES):
        out = apply(edit, _rgb(getattr(skdata, n)()), seed=j)
        Image.fromarray(out).save(sets["synth"] / f"{n}_{edit}.jpg", quality=90)
    for n in DISTINCT:
        Image.fromarray(_rgb(getattr(skdata, n)())).save(sets["synth"] / f"{n}.png")
    Image.new("RGB", (80, 60), (200, 30, 30)).save(sets["synth"] / "flat.png")
    for p in range(11, 31):
        face = Image.open(DATA / "orl_faces_92x112" / f"s{p}" / "1.pgm").convert("RGB")
        face.save(sets["hold"] / f"s{p}.png")
    for n in ["gravel", "grass", "brick", "moon", "immunohistochemistry"]:
        Image.fromarray(_rgb(getattr(skdata, n)())).save(sets["hold"] / f"{n}.png")
    return sets


def _copied(name: str) -> str | None:
    stem = Path(name).stem
    return next((n for n, e in COPIES if stem == f"{n}_{e}"), None)


def test_audit_flags_each_copy_and_nothing_else(
    copy_sets: dict[str, Path], tmp_path: Path, cache_dir: Path
) -> None:
    s = copy_sets
    result = tl.audit(s["train"], s["synth"], s["hold"], encoder="copy", workers=1, cache=cache_dir)
    rep = result.report
    assert rep["encoder"]["kind"] == "copy" and rep["encoder"]["metric"] == "local"
    assert rep["summary"]["score"] == "nn" and rep["threshold"]["method"] == "holdout"
    flagged = {Path(f).name for f in result.flagged}
    assert flagged == {f"{n}_{e}.jpg" for n, e in COPIES}
    best = {
        Path(m["synthetic"]).name: Path(m["train"]).stem for m in rep["matches"] if m["flagged"]
    }
    assert all(_copied(name) == train for name, train in best.items())
    reasons = {Path(x["path"]).name: x["reason"] for x in rep["skipped"]}
    assert "too few keypoints" in reasons["flat.png"]
    # Evidence: one picture and one JSON per flagged pair, the edit estimated.
    result.write(tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text()
    written = json.loads((tmp_path / "out" / "report.json").read_text())["copy_evidence"]
    edits = {Path(e["synthetic"]).stem: e["edit"] for e in written}
    assert set(edits) == {f"{n}_{e}" for n, e in COPIES}
    assert all((tmp_path / "out" / e["png"]).stat().st_size > 1000 for e in written)
    assert "Where the images match" in html and html.count("data:image/png;base64") == 4
    crop = edits["astronaut_crop60"]  # 60% of each side: 36% of the area, not mirrored
    box = crop["crop_box_fraction"]
    assert abs((box[2] - box[0]) * (box[3] - box[1]) - 0.36) < 0.03 and not crop["mirrored"]
    assert abs(abs(edits["coffee_rotate15"]["rotation_degrees"]) - 15) < 1
    combo = edits["chelsea_combo"]  # crop 70%, mirror, rotate 10, recolour, JPEG
    assert combo["mirrored"] and abs(abs(combo["rotation_degrees"]) - 10) < 1.5
    result.write(tmp_path / "redacted", redact=True)
    assert not list((tmp_path / "redacted" / "evidence").glob("*.png"))
    assert len(list((tmp_path / "redacted" / "evidence").glob("*.json"))) == 4


def test_cli_audit_exit_codes(copy_sets: dict[str, Path], tmp_path: Path, cache_dir: Path) -> None:
    s = copy_sets
    args = ["audit", "--encoder", "copy", "--train", str(s["train"]), "--synthetic",
            str(s["synth"]), "--holdout", str(s["hold"]), "--workers", "1",
            "--cache", str(cache_dir), "--out", str(tmp_path / "o"), "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert main([*args, "--fail-on-leak"]) == 1
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["summary"]["flagged"] == len(COPIES)


def test_index_build_persists_descriptors_and_check_blocks_copies(
    copy_sets: dict[str, Path], tmp_path: Path, cache_dir: Path
) -> None:
    s = copy_sets
    embed = EmbedConfig("copy", workers=1, cache=str(cache_dir))
    cfg = IndexConfig(embed=embed)
    with Index.build(
        tmp_path / "idx", s["train"], s["hold"], config=cfg, check_config=CheckConfig(embed=embed)
    ) as index:
        sidecars = sorted((tmp_path / "idx").glob("*.faiss"))
        assert len(sidecars) == 1
        built = sidecars[0].stat().st_mtime_ns
    # A new process (here: a new Index) reads the descriptor index, does not rebuild it.
    with Index.open(tmp_path / "idx", config=CheckConfig(embed=embed)) as index:
        verdicts = {Path(v.path).name: v for v in index.check(s["synth"])}
    assert sidecars[0].stat().st_mtime_ns == built
    blocked = {n for n, v in verdicts.items() if v.verdict == "block"}
    assert blocked == {f"{n}_{e}.jpg" for n, e in COPIES}
    assert all(Path(verdicts[f"{n}_{e}.jpg"].nearest or "").stem == n for n, e in COPIES)
    assert verdicts["flat.png"].verdict != "release"
    assert all(verdicts[f"{n}.png"].verdict == "release" for n in DISTINCT)


def test_dedup_joins_each_copy_with_its_original(
    copy_sets: dict[str, Path], tmp_path: Path, cache_dir: Path
) -> None:
    both = tmp_path / "both"
    both.mkdir()
    for d in (copy_sets["train"], copy_sets["synth"]):
        for f in d.iterdir():
            (both / f.name).symlink_to(f)
    result = tl.dedup(both, encoder="copy", workers=1, cache=cache_dir)
    clusters = result.report["clusters"]
    pairs = {frozenset(Path(m["path"]).stem for m in c["members"]) for c in clusters}
    assert pairs == {frozenset({n, f"{n}_{e}"}) for n, e in COPIES}


def test_score_auto_keeps_copy_encoders_off_identity_scoring(tmp_path: Path) -> None:
    """One folder per person does not make ``pixel`` (a copy encoder) an identity scorer."""
    train = tmp_path / "train"
    for p in (1, 2):
        (train / f"s{p}").mkdir(parents=True)
        for k in (1, 2):
            (train / f"s{p}" / f"{k}.pgm").symlink_to(DATA / "orl_faces" / f"s{p}" / f"{k}.pgm")
    synth = tmp_path / "synth"
    synth.mkdir()
    (synth / "a.pgm").symlink_to(DATA / "orl_faces" / "s1" / "3.pgm")
    result = tl.audit(train, synth, encoder="pixel", workers=1, cache=False)
    assert result.report["summary"]["score"] == "nn"


def test_face_encoder_on_pictures_without_faces_stops_early_and_names_copy(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 5 of issue 23: the wrong encoder is told early (exit 2), not after the whole set."""
    train, synth = tmp_path / "train", tmp_path / "synth"
    train.mkdir()
    synth.mkdir()
    for i in range(12):
        (train / f"c{i}.png").symlink_to(DATA / "coil20" / f"obj{i + 1}__0.png")
    (synth / "a.png").symlink_to(DATA / "coil20" / "obj1__5.png")
    args = ["audit", "--train", str(train), "--synthetic", str(synth), "--workers", "1",
            "--cache", str(cache_dir), "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "12 of the first 12 training images have no face" in err and "--encoder copy" in err
    assert not (tmp_path / "o" / "report.json").exists()
