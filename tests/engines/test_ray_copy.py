"""``--encoder copy`` on the Ray engine: the same answers as the local engine.

Real photos from scikit-image and ORL faces at 92 x 112 (the holdout), the
real ``copy`` encoder; planted copies edited with :mod:`copy_edits` (a 60%
crop, a 15 degree rotation, several edits at once) and distinct photos as the
negative control. Every comparison is against the local engine on the same
inputs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from copy_edits import apply
from PIL import Image

import trainleak as tl
from trainleak import _descriptor_index, local_search
from trainleak.config import AuditConfig, EmbedConfig
from trainleak.encoders.copydetect import CopyEncoder
from trainleak.engines.ray import RayEngine
from trainleak.local_search import LocalSimilarity
from trainleak.similarity import Similarity

from conftest import DATA

ray = pytest.importorskip("ray")
skdata = pytest.importorskip("skimage.data")
pytest.importorskip("cv2")

# Ray's start and its Data stages cost seconds on 2 CPUs: about 40 s for the module.
pytestmark = pytest.mark.slow

TRAIN = ["astronaut", "coffee", "chelsea", "rocket"]
COPIES = [("astronaut", "crop60"), ("coffee", "rotate15"), ("chelsea", "combo")]
DISTINCT = ["text", "coins", "camera"]
#: Report keys that differ by design between the engines.
HEADER = ("settings", "argv", "created")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray instance with 2 CPUs for the module (the engine joins it)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)  # fmt: skip
    yield
    ray.shutdown()


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]


def _photo(name: str) -> np.ndarray:
    return _rgb(getattr(skdata, name)())


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raycopy")
    out = {name: root / name for name in ("train", "synth", "hold")}
    for d in out.values():
        d.mkdir()
    for n in TRAIN:
        Image.fromarray(_photo(n)).save(out["train"] / f"{n}.png")
    for j, (n, edit) in enumerate(COPIES):
        Image.fromarray(apply(edit, _photo(n), seed=j)).save(
            out["synth"] / f"{n}_{edit}.jpg", quality=90
        )
    for n in DISTINCT:
        Image.fromarray(_photo(n)).save(out["synth"] / f"{n}.png")
    for p in range(11, 27):
        os.symlink(DATA / "orl_faces_92x112" / f"s{p}" / "1.pgm", out["hold"] / f"s{p}.pgm")
    for n in ["gravel", "brick", "moon", "page"]:
        Image.fromarray(_photo(n)).save(out["hold"] / f"{n}.png")
    return out


def _body(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in HEADER}


def test_copy_audit_on_ray_equals_local(sets: dict[str, Path], tmp_path: Path) -> None:
    """Embedded on Ray's actors and searched in Ray tasks: the report body is the local one."""
    reports = {}
    for engine in ("local", "ray"):
        embed = EmbedConfig(encoder="copy", workers=1, engine=engine,
                            cache=str(tmp_path / engine))  # fmt: skip
        result = tl.audit(sets["train"], sets["synth"], sets["hold"],
                          config=AuditConfig(embed=embed))  # fmt: skip
        reports[engine] = result.report
        flagged = {Path(f).name for f in result.flagged}
        assert flagged == {f"{n}_{e}.jpg" for n, e in COPIES}, engine
    local, on_ray = reports["local"], reports["ray"]
    assert on_ray["settings"]["embed"]["engine"] == "ray"
    assert _body(on_ray) == _body(local)
    # The negative control: no distinct photo is flagged or matched above the threshold.
    threshold = local["threshold"]["value"]
    for m in local["matches"]:
        if Path(m["synthetic"]).stem in DISTINCT:
            assert not m["flagged"] and m["score"] <= threshold
    best = {Path(m["synthetic"]).stem: Path(m["train"]).stem for m in local["matches"]
            if m["flagged"]}  # fmt: skip
    assert best == {f"{n}_{e}": n for n, e in COPIES}


@pytest.fixture(scope="module")
def rows() -> dict[str, np.ndarray]:
    enc = CopyEncoder()
    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "page", "moon", "brick",
             "gravel", "grass", "hubble_deep_field", "immunohistochemistry"]  # fmt: skip
    db = np.concatenate([enc.encode(_photo(n)) for n in names])
    queries = [apply(e, _photo(n), seed=j) for j, (n, e) in enumerate(COPIES)]
    queries += [_photo(n) for n in ("text", "coins")]
    return {"db": db, "queries": np.concatenate([enc.encode(q) for q in queries])}


def _rule() -> LocalSimilarity:
    rule = Similarity.of(CopyEncoder().info)
    assert isinstance(rule, LocalSimilarity) and rule.rescoring
    return rule


@pytest.mark.parametrize("exclude_self", [False, True])
def test_copy_search_on_ray_equals_local(rows: dict[str, np.ndarray], exclude_self: bool) -> None:
    """5 queries in 4 tasks; the rule was used here first (its kept index must not travel)."""
    db = rows["db"]
    queries = db if exclude_self else rows["queries"]
    rule = _rule()
    local = rule.knn(queries, db, 5, exclude_self=exclude_self)
    on_ray = RayEngine().knn(rule, queries, db, 5, exclude_self=exclude_self)
    np.testing.assert_array_equal(on_ray[1], local[1])
    np.testing.assert_array_equal(on_ray[0], local[0])
    if exclude_self:  # distinct photos: nothing verified once each one's own row is left out
        assert (local[0] == 0).all() and (local[1] != np.arange(len(db))[:, None]).all()
    else:
        assert local[1][:3, 0].tolist() == [0, 1, 2] and (local[0][:3, 0] > 0.5).all()
        assert (local[0][3:] == 0).all()


def test_ray_tasks_vote_in_the_drivers_index(
    rows: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's descriptor index (here an inverted file) travels to the tasks.

    Below ``EXACT_MAX`` descriptors the index is exact; lowered here (in this
    process only), the driver builds the approximate inverted file, and a copy
    of the rows in another rule adopts it (it does not build its own).
    """
    monkeypatch.setattr(_descriptor_index, "EXACT_MAX", 256)
    db = rows["db"]
    rule = _rule()
    built = rule.index_for(db)
    assert hasattr(built.index, "nprobe")  # the inverted file, not the exact index
    other, rows_copy = _rule(), db.copy()
    other.adopt_state(rows_copy, rule.search_state(db))
    adopted = other.index_for(rows_copy)
    assert hasattr(adopted.index, "nprobe") and adopted.index.ntotal == built.index.ntotal
    feats = [[local_search.unpack(q)] for q in rows["queries"]]
    assert adopted.votes_many(feats, 4) == built.votes_many(feats, 4)
    local = rule.knn(rows["queries"], db, 5)
    on_ray = RayEngine().knn(_rule(), rows["queries"], db, 5)
    np.testing.assert_array_equal(on_ray[1], local[1])
    np.testing.assert_array_equal(on_ray[0], local[0])
