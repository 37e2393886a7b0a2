"""A real memorizing generator for the membership tests: a pixel-space KDE on ORL faces.

``orl_kde`` is a Gaussian kernel density estimate fitted on photos 1-7 of ORL
people s1-s10: a sample is one training photo, picked at random, plus
Gaussian pixel noise (the kernel). It has memorized its training set the way
an overfitted generator does. Used as ``python:membership_gen:orl_kde``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from conftest import ORL

KDE_PEOPLE = range(1, 11)
KDE_PHOTOS = range(1, 8)
BANDWIDTH = 12.0  # kernel standard deviation, in 0-255 grey levels


@lru_cache(maxsize=1)
def _training_set() -> np.ndarray:
    photos = [
        np.asarray(Image.open(ORL / f"s{s}" / f"{p}.pgm").convert("L"), np.float64)
        for s in KDE_PEOPLE
        for p in KDE_PHOTOS
    ]
    return np.stack(photos)


def orl_kde(n: int, seed: int) -> list[np.ndarray]:
    """Draw ``n`` samples from the KDE; the same seed gives the same samples."""
    data = _training_set()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = data[rng.integers(len(data))]
        grey = np.clip(base + rng.normal(0.0, BANDWIDTH, base.shape), 0, 255)
        out.append(grey.astype(np.uint8))
    return out


#: Set once a test's audit has finished: from then on ``sealed_orl_kde`` raises.
SEALED = {"done": False}


def sealed_orl_kde(n: int, seed: int) -> list[np.ndarray]:
    """``orl_kde`` until ``SEALED["done"]``; then it raises, so writing a report cannot sample."""
    if SEALED["done"]:
        raise RuntimeError("the generator was called after the audit had finished")
    return orl_kde(n, seed)
