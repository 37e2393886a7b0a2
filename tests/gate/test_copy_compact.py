"""A copy index after ``remove`` + ``compact``: no descriptor file of a retired shard is left.

The ``copy`` encoder keeps each shard's descriptor index beside it
(``<vectors>.copy-<digest>.faiss``). Real photos from scikit-image (train,
planted copies, distinct photos) and ORL faces at 92 x 112 with textures
(the holdout); three rows per shard, so ``compact`` rewrites one shard and
keeps the other.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from copy_edits import apply
from PIL import Image

from trainleak.cli import main
from trainleak.config import CheckConfig, EmbedConfig, IndexConfig
from trainleak.gate.index import Index

from conftest import DATA

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("cv2")

TRAIN = ["astronaut", "camera", "chelsea", "coffee", "hubble_deep_field", "rocket"]
COPIES = [("astronaut", "crop60"), ("coffee", "rotate15"), ("rocket", "caption")]
DISTINCT = ["text", "coins"]


def _photo(name: str) -> np.ndarray:
    a = getattr(skdata, name)()
    return np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]


def _sidecars(folder: Path) -> dict[str, str]:
    """Each descriptor file (or its temporary) -> the vectors file it is named after."""
    out = {}
    for p in folder.iterdir():
        if p.name.endswith(".faiss") or p.name.endswith(".tmp") and ".faiss." in p.name:
            out[p.name] = p.name.lstrip(".").split(".copy-")[0]
    return out


def _listed(folder: Path) -> set[str]:
    with Index.open(folder) as index:
        return {s["files"]["vectors"]["name"] for s in index.manifest["shards"]}


def test_compact_deletes_retired_shards_descriptor_files(tmp_path: Path, cache_dir: Path) -> None:
    train, synth, hold = (tmp_path / n for n in ("train", "synth", "hold"))
    for d in (train, synth, hold):
        d.mkdir()
    for n in TRAIN:
        Image.fromarray(_photo(n)).save(train / f"{n}.png")
    for j, (n, edit) in enumerate(COPIES):
        Image.fromarray(apply(edit, _photo(n), seed=j)).save(synth / f"{n}_{edit}.jpg", quality=90)
    for n in DISTINCT:
        Image.fromarray(_photo(n)).save(synth / f"{n}.png")
    for p in range(11, 31):
        os.symlink(DATA / "orl_faces_92x112" / f"s{p}" / "1.pgm", hold / f"s{p}.pgm")
    for n in ["gravel", "grass", "brick", "moon", "immunohistochemistry"]:
        Image.fromarray(_photo(n)).save(hold / f"{n}.png")

    embed = EmbedConfig("copy", workers=1, cache=str(cache_dir))
    idx = tmp_path / "idx"
    cfg = IndexConfig(embed=embed, shard_rows=3)
    with Index.build(idx, train, hold, config=cfg, check_config=CheckConfig(embed=embed)) as index:
        assert len(index.manifest["shards"]) == 2
        removed = index.remove([str(train / "rocket.png")])
        assert removed["removed"] == 1
    before = _sidecars(idx)
    old = _listed(idx)
    assert set(before.values()) == old  # one descriptor file per shard, built with the index
    # Rows go into shards in id order: rocket.png is in the last shard, which compact rewrites.
    last = sorted(old)[-1]
    # A writer of a descriptor file killed before its rename leaves its temporary name.
    crashed = idx / f".{last}.copy-0123456789abcdef.faiss.4242.tmp"
    crashed.write_bytes(b"half-written")

    assert main(["index", "compact", str(idx)]) == 0
    live = _listed(idx)
    gone = old - live
    assert gone == {last} and len(live) == 2  # the shard holding rocket was rewritten
    left = _sidecars(idx)
    assert not crashed.exists()
    assert not set(left.values()) & gone, f"descriptor files of retired shards left: {left}"
    assert set(left.values()) == old - gone  # the kept shard keeps its descriptor index

    with Index.open(idx, config=CheckConfig(embed=embed)) as index:
        verdicts = {Path(v.path).stem: v for v in index.check(synth)}
    blocked = {n for n, v in verdicts.items() if v.verdict == "block"}
    # The removed work's copy is released; the others are blocked; distinct photos released.
    assert blocked == {"astronaut_crop60", "coffee_rotate15"}
    assert Path(verdicts["coffee_rotate15"].nearest or "").stem == "coffee"  # a rewritten row
    assert all(verdicts[n].verdict == "release" for n in [*DISTINCT, "rocket_caption"])
    # The rewritten shard's descriptor index is built by the first check and kept beside it.
    assert set(_sidecars(idx).values()) == live
