"""``trainleak extract --encoder copy``: cliques of near-identical generations, confirmed by copy.

Real photos from scikit-image. Group ``p1`` holds six regurgitations of a
training photo (JPEG q30, recoloured, grey, an 80% crop, mirrored, captioned:
107 to 234 verified inliers a pair, the paper's delta 0.15 asks for 57) and
four distinct photos; group ``p2`` six versions of a photo that is
*not* in training (a clique, but nothing extracted: the negative control of
the confirmation), three distinct photos and a flat image (a skip record).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from copy_edits import apply
from PIL import Image

from trainleak.cli import main
from trainleak.encoders.copydetect import CopyEncoder
from trainleak.similarity import Similarity

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("cv2")

TRAIN = ["astronaut", "chelsea", "rocket", "camera"]
VERSIONS = ["jpeg30", "colour", "grey", "crop80", "flip", "caption"]
DISTINCT = {"p1": ["text", "coins", "page", "moon"], "p2": ["gravel", "grass", "brick"]}


def _photo(name: str) -> np.ndarray:
    a = getattr(skdata, name)()
    return np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("copyextract")
    train, gen = root / "train", root / "gen"
    for d in (train, gen / "p1", gen / "p2"):
        d.mkdir(parents=True)
    for n in TRAIN:
        Image.fromarray(_photo(n)).save(train / f"{n}.png")
    for group, original in (("p1", "astronaut"), ("p2", "coffee")):
        for j, edit in enumerate(VERSIONS):
            out = apply(edit, _photo(original), seed=j)
            Image.fromarray(out).save(gen / group / f"{original}_{edit}.jpg", quality=90)
        for n in DISTINCT[group]:
            Image.fromarray(_photo(n)).save(gen / group / f"{n}.png")
    Image.new("RGB", (80, 60), (30, 120, 200)).save(gen / "p2" / "flat.png")
    return {"train": train, "gen": gen}


def test_extract_with_the_copy_encoder(folders: dict[str, Path], tmp_path: Path) -> None:
    args = ["extract", "--generated", str(folders["gen"]), "--train", str(folders["train"]),
            "--encoder", "copy", "--min-clique", "5", "--workers", "1", "--no-cache",
            "--out", str(tmp_path / "o"), "-q"]  # fmt: skip
    assert main(args) == 0
    assert main([*args, "--fail-on-leak"]) == 1
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["encoder"]["name"] == "copy" and rep["encoder"]["metric"] == "local"
    s = rep["summary"]
    assert s["extracted"] == [str(folders["train"] / "astronaut.png")]
    assert "copy distance" in s["criterion"]
    cliques = {c["group"]: c for c in rep["candidates"]}
    assert sorted(cliques) == ["p1", "p2"] and len(rep["candidates"]) == 2
    for group, original in (("p1", "astronaut"), ("p2", "coffee")):
        members = sorted(Path(m).stem for m in cliques[group]["members"])
        assert members == sorted(f"{original}_{e}" for e in VERSIONS)  # no distinct photo
    assert cliques["p1"]["extracted"] and cliques["p1"]["distance"] < 0.15
    # coffee is not in training: a clique, confirmed by nothing.
    assert not cliques["p2"]["extracted"] and cliques["p2"]["train_match"] is None
    reasons = {Path(x["path"]).name: x["reason"] for x in rep["skipped"]}
    assert "too few keypoints" in reasons["flat.png"]


def test_copy_near_graph_equals_verifying_every_pair(folders: dict[str, Path]) -> None:
    """The vote-pruned graph is the graph of every pair verified (the lower row as query)."""
    enc = CopyEncoder()
    files = sorted(p for p in folders["gen"].rglob("*") if p.is_file() and p.stem != "flat")
    rows = np.concatenate([enc.encode(np.asarray(Image.open(f).convert("RGB"))) for f in files])
    rule = Similarity.of(enc.info)
    min_score = 0.85  # the paper's delta 0.15 as a copy score
    graph = rule.near_graph(rows, min_score)
    every = rule.pairwise(rows, rows) > min_score
    upper = np.triu(every, 1)
    np.testing.assert_array_equal(graph, upper | upper.T)
    assert graph.sum() == 2 * 2 * 15  # two cliques of six versions: 15 pairs each, both ways
