"""Shared fixtures: real images from ../shared/data, laid out per scenario."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ORL = DATA / "orl_faces"
COIL = DATA / "coil20"


def _require(path: Path) -> Path:
    if not path.is_dir():
        raise RuntimeError(f"test data missing: {path} (the repo expects ../shared/data beside it)")
    return path


def link_orl(dest: Path, people: range, photos: range, per_person: bool = True) -> Path:
    """Symlink ORL photos into ``dest`` (``dest/sN/P.pgm`` or ``dest/sN_P.pgm``)."""
    _require(ORL)
    dest.mkdir(parents=True, exist_ok=True)
    for s in people:
        for p in photos:
            src = ORL / f"s{s}" / f"{p}.pgm"
            if per_person:
                (dest / f"s{s}").mkdir(exist_ok=True)
                target = dest / f"s{s}" / f"{p}.pgm"
            else:
                target = dest / f"s{s}_{p}.pgm"
            os.symlink(src, target)
    return dest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the whole session, so each image is embedded once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def orl_scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The identity-leak scenario of issue 2.

    train: s1-s20 photos 1-5 (a sub-folder per person); synthetic: photos 6-10
    of s1-s10 (50 same-identity leaks) and all photos of s21-s30 (100
    non-members); holdout: all photos of s31-s40.
    """
    root = tmp_path_factory.mktemp("orl")
    link_orl(root / "train", range(1, 21), range(1, 6))
    link_orl(root / "synthetic" / "leaks", range(1, 11), range(6, 11), per_person=False)
    link_orl(root / "synthetic" / "nonmembers", range(21, 31), range(1, 11), per_person=False)
    link_orl(root / "holdout", range(31, 41), range(1, 11))
    return {
        "root": root,
        "train": root / "train",
        "synthetic": root / "synthetic",
        "holdout": root / "holdout",
    }


@pytest.fixture(scope="session")
def orl_face(cache_dir: Path):
    """All 400 ORL photos embedded once with the face encoder (labels ``s1``..``s40``).

    Slow cold (about 2 images/s here), shared by every test that needs real
    face vectors; the other ORL face tests' folders hit the same cache.
    """
    from trainleak.embedding import embed

    return embed(_require(ORL), encoder="face", cache=str(cache_dir), workers=2)
