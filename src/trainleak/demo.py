"""``trainleak demo``: an offline audit with planted leaks on real faces.

The faces are the 100 LFW face crops that scikit-image ships
(``skimage/data/lfw_subset.npy``, 25 x 25 grey). 60 are the "training set",
40 a holdout. The synthetic set comes from two generators fitted to the
training faces in a 40-component PCA space, after Meehan et al. 2020:

* a memorising kernel density estimate with a small bandwidth (0.05 of each
  component's spread) around 12 randomly chosen training faces: the planted
  leaks, near-copies of known training images;
* a Gaussian over the PCA coefficients: 48 new faces, averages of many
  people, that copy no one.

The audit (face encoder on aligned crops, threshold calibrated on the
holdout at a 1/40 false-positive rate, the finest a holdout of 40 resolves)
should flag the 12 planted leaks and nothing else.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from trainleak.audits.leakage import audit
from trainleak.config import AuditConfig, EmbedConfig

N_TRAIN, N_HOLDOUT, N_LEAKS, N_NOVEL = 60, 40, 12, 48
COMPONENTS, BANDWIDTH, SIDE = 40, 0.05, 100


def lfw_faces() -> np.ndarray:
    """Return scikit-image's 100 LFW face crops, ``(100, 25, 25)`` in [0, 1]."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the demo needs scikit-image's bundled faces: pip install scikit-image")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "lfw_subset.npy"
    # The first 100 of the 200 images are faces, the rest are not.
    return np.load(path, allow_pickle=False)[:100]


def make_demo_data(folder: Path, seed: int = 0) -> list[tuple[str, str]]:
    """Write train/holdout/synthetic PNGs; return ``(synthetic, train)`` planted pairs."""
    rng = np.random.default_rng(seed)
    faces = lfw_faces()
    order = rng.permutation(len(faces))
    train, holdout = faces[order[:N_TRAIN]], faces[order[N_TRAIN : N_TRAIN + N_HOLDOUT]]
    flat = train.reshape(N_TRAIN, -1)
    mean = flat.mean(0)
    _, sing, comps = np.linalg.svd(flat - mean, full_matrices=False)
    comps = comps[:COMPONENTS]
    coef = (flat - mean) @ comps.T
    spread = coef.std(0)
    sources = rng.choice(N_TRAIN, N_LEAKS, replace=False)
    leaks = coef[sources] + rng.normal(size=(N_LEAKS, COMPONENTS)) * BANDWIDTH * spread
    novel = rng.normal(size=(N_NOVEL, COMPONENTS)) * spread
    synthetic = np.concatenate([leaks, novel]) @ comps + mean
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
