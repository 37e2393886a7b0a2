"""``trainleak demo``: an offline audit with planted leaks on real faces.

The faces are the 100 LFW face crops that scikit-image ships
(``skimage/data/lfw_subset.npy``, 25 x 25 grey, shown upscaled to 100 x 100).
50 are the "training set" and 25 a holdout. The synthetic set has two parts:

* 10 planted leaks from a memorising generator, after Meehan et al. 2020: a
  kernel density estimate over the training faces with a small bandwidth
  (noise of 0.05 of each principal component's spread added to a randomly
  chosen training face) - near-copies of known training images;
* 25 faces of people in neither set, standing in for the output of a
  generator that generalises: the fresh samples from the data distribution
  it is meant to produce.

The audit (face encoder on aligned crops, threshold calibrated on the holdout
at a 1/25 false-positive rate, the finest a holdout of 25 resolves) should flag
the planted leaks and, at that rate, about one of the 25 fresh faces.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from trainleak._optional import require
from trainleak.audits._leakage import audit
from trainleak.config import AuditConfig, EmbedConfig

N_TRAIN, N_HOLDOUT, N_LEAKS, N_NOVEL = 50, 25, 10, 25
BANDWIDTH, SIDE = 0.05, 100


def lfw_faces() -> np.ndarray:
    """Return scikit-image's 100 LFW face crops, ``(100, 25, 25)`` in [0, 1]."""
    skimage = require("skimage", extra="demo", needed_for="trainleak demo (its bundled faces)")
    path = Path(next(iter(skimage.__path__))) / "data" / "lfw_subset.npy"
    # The first 100 of the 200 images are faces, the rest are not.
    return np.load(path, allow_pickle=False)[:100]


def make_demo_data(folder: Path, seed: int = 0) -> list[tuple[str, str]]:
    """Write train/holdout/synthetic PNGs; return ``(synthetic, train)`` planted pairs."""
    rng = np.random.default_rng(seed)
    faces = lfw_faces()
    order = rng.permutation(len(faces))
    train, holdout = faces[order[:N_TRAIN]], faces[order[N_TRAIN : N_TRAIN + N_HOLDOUT]]
    novel = faces[order[N_TRAIN + N_HOLDOUT : N_TRAIN + N_HOLDOUT + N_NOVEL]]
    flat = train.reshape(N_TRAIN, -1)
    _, _, comps = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
    spread = ((flat - flat.mean(0)) @ comps.T).std(0)
    sources = rng.choice(N_TRAIN, N_LEAKS, replace=False)
    noise = (rng.normal(size=(N_LEAKS, len(comps))) * BANDWIDTH * spread) @ comps
    leaks = flat[sources] + noise
    synthetic = np.concatenate([leaks, novel.reshape(N_NOVEL, -1)])
    names = [f"gen_{i:03d}.png" for i in rng.permutation(N_LEAKS + N_NOVEL)]
    for sub in ("train", "holdout", "synthetic"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(train):
        _save(img, folder / "train" / f"face_{i:03d}.png")
    for i, img in enumerate(holdout):
        _save(img, folder / "holdout" / f"face_{i:03d}.png")
    for name, img in zip(names, synthetic.reshape(-1, 25, 25), strict=True):
        _save(img, folder / "synthetic" / name)
    planted = [
        (str(folder / "synthetic" / names[i]), str(folder / "train" / f"face_{src:03d}.png"))
        for i, src in enumerate(sources)
    ]
    with open(folder / "planted.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["synthetic", "train"])
        writer.writerows(planted)
    return planted


def _save(img: np.ndarray, path: Path) -> None:
    pixels = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).resize((SIDE, SIDE), Image.Resampling.BICUBIC).save(path)


def run_demo(
    out: str | Path, workers: int | None = None, progress: bool = False
) -> tuple[dict[str, str], str]:
    """Build the demo data under ``out/data``, audit it, write the report to ``out``.

    Returns:
        The report paths and a one-line account of planted leaks found.

    """
    out = Path(out)
    planted = make_demo_data(out / "data")
    config = AuditConfig(
        embed=EmbedConfig(
            encoder="face",
            encoder_options={"aligned": True},
            workers=workers,
            cache=str(out / "cache"),
            progress=progress,
        ),
        fpr=1.0 / N_HOLDOUT,
    )
    data = out / "data"
    result = audit(
        data / "train",
        data / "synthetic",
        data / "holdout",
        config=config,
        argv=["trainleak", "demo", "--out", str(out)],
    )
    paths = result.write(out)
    flagged = set(result.flagged)
    want = {s for s, _ in planted}
    found = len(flagged & want)
    false = len(flagged - want)
    line = (
        f"demo: {found} of {len(want)} planted leaks flagged, {false} of "
        f"{N_NOVEL} novel samples flagged (planted pairs: {data / 'planted.csv'})"
    )
    return paths, line
