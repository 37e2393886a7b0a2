"""Face encoder: where the time goes, per stage, before vs after ``cheap_first``.

Two sets of real photos, each encoded by both settings in one run, image by
image, alternating which goes first (the machine is shared, so only the
ratios within the run mean anything):

* ``orl``: ORL at its original 92 x 112 (``../shared/data/orl_faces_92x112``),
  ``--per-person`` photos of each of the 40 people.
* ``lfw-like``: the same ORL photos enlarged 1.25x (a face of about LFW's
  size) and pasted at a seeded position into a 250 x 250 crop of a real
  photograph that scikit-image ships (coffee, rocket, brick, grass, gravel):
  one face on a real background, LFW's frame size. scikit-image's own LFW
  crops are 25 x 25 pixels, too small for dlib's detectors, and carry no
  names, so they cannot measure identification.
* negative control: ``--negatives`` 250 x 250 crops of the same backgrounds
  with no face; any face found there is a false detection.

Per setting: images/s, milliseconds per image and stage (HOG passes, CNN
passes, landmarks and chip, descriptor, mirror descriptor), faces found,
rank-1 identification (each photo's nearest other photo is the same person;
a photo with no face counts as wrong), and at the encoder's default threshold
(cosine 0.93) same-person pairs matched and different-person pairs matched
(false matches).

Reproduce: nice .venv/bin/python bench/bench_face_speed.py [--per-person 5] (one thread)
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainleak.encoders.base import EncodeSkip
from trainleak.encoders.face import FaceEncoder

ORL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "orl_faces_92x112"
BACKGROUNDS = ("coffee", "rocket", "brick", "grass", "gravel")
#: Before: version 2's behaviour (full-upsampling detection, dlib's own network);
#: after: the defaults (a detection pass at upsampling 0 first, torch runs the network).
SETTINGS: dict[str, dict[str, Any]] = {
    "before (v2: cheap_first=False, runtime=dlib)": {"cheap_first": False, "runtime": "dlib"},
    "after (v3 defaults)": {},
}


class Timed:
    """Wraps a detector callable and adds its time to ``times[name + upsampling]``."""

    def __init__(self, fn: Any, name: str, times: dict[str, float]) -> None:
        self.fn, self.name, self.times = fn, name, times

    def __call__(self, image: np.ndarray, up: int) -> Any:
        t0 = time.perf_counter()
        out = self.fn(image, up)
        self.times[f"{self.name} up{up}"] += time.perf_counter() - t0
        return out


def backgrounds() -> list[np.ndarray]:
    """Return the real scikit-image photographs used as backgrounds, as RGB."""
    import skimage.data

    out = []
    for name in BACKGROUNDS:
        im = np.asarray(getattr(skimage.data, name)())
        out.append(np.stack([im] * 3, axis=-1) if im.ndim == 2 else im[..., :3])
    return out


def crop(bg: np.ndarray, rng: np.random.Generator, side: int = 250) -> np.ndarray:
    y = int(rng.integers(0, bg.shape[0] - side + 1))
    x = int(rng.integers(0, bg.shape[1] - side + 1))
    return np.array(bg[y : y + side, x : x + side])


def load_sets(per_person: int, negatives: int, seed: int = 0) -> dict[str, Any]:
    """Return ``{set: (images, labels)}`` (label -1 for the negative control)."""
    rng = np.random.default_rng(seed)
    bgs = backgrounds()
    orl, lfw, labels = [], [], []
    for person in range(1, 41):
        for k in range(1, per_person + 1):
            im = np.asarray(Image.open(ORL / f"s{person}" / f"{k}.pgm").convert("RGB"))
            orl.append(im)
            big = np.asarray(Image.fromarray(im).resize((115, 140), Image.Resampling.BICUBIC))
            canvas = crop(bgs[len(lfw) % len(bgs)], rng)
            y, x = int(rng.integers(40, 70)), int(rng.integers(50, 85))
            canvas[y : y + 140, x : x + 115] = big
            lfw.append(canvas)
            labels.append(person)
    neg = [crop(bgs[i % len(bgs)], rng) for i in range(negatives)]
    return {
        "orl": (orl, labels),
        "lfw-like": (lfw, labels),
        "negatives (no face)": (neg, [-1] * len(neg)),
    }


def instrument(enc: FaceEncoder, times: dict[str, float]) -> Callable[[np.ndarray], Any]:
    """Return ``encode`` of ``enc`` with every stage timed into ``times``."""
    dlib, det, landmarks, net = enc._models()
    enc._hog = (dlib, Timed(det, "HOG", times))
    from trainleak.encoders.face import _MODEL_FILES, model_dir

    cnn = dlib.cnn_face_detection_model_v1(str(model_dir() / _MODEL_FILES["cnn"]))
    enc._cnn = Timed(cnn, "CNN", times)

    def encode(image: np.ndarray) -> np.ndarray | None:
        image = np.ascontiguousarray(image)
        boxes = enc._detect(image)
        if not boxes:
            return None
        t0 = time.perf_counter()
        shape = landmarks(image, boxes[0])
        chip = dlib.get_face_chip(image, shape, size=150, padding=0.25)
        t1 = time.perf_counter()
        vec = enc.describe([chip])[0]
        times["landmarks+chip"] += t1 - t0
        times["descriptor + mirror"] += time.perf_counter() - t1
        return vec

    return encode


def accuracy(vecs: list[np.ndarray | None], labels: list[int], thr: float) -> dict[str, Any]:
    """Faces found, rank-1 identification and pairs over ``thr`` (same / different person)."""
    found = [i for i, v in enumerate(vecs) if v is not None]
    out: dict[str, Any] = {"faces found": f"{len(found)}/{len(vecs)}"}
    if labels[0] < 0 or len(found) < 2:
        return out
    x = np.stack([vecs[i] for i in found]).astype(np.float64)
    lab = np.array([labels[i] for i in found])
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    right = int((lab[sim.argmax(axis=1)] == lab).sum())
    iu = np.triu_indices(len(found), 1)
    same = lab[iu[0]] == lab[iu[1]]
    over = sim[iu] >= thr
    all_labels = np.array(labels)
    n_same = int(
        sum((all_labels == p).sum() * ((all_labels == p).sum() - 1) // 2 for p in set(labels))
    )
    out["rank-1"] = f"{right}/{len(vecs)}"
    out["same-person pairs matched"] = f"{int((over & same).sum())}/{n_same}"
    out["different-person pairs matched"] = int((over & ~same).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-person", type=int, default=5, help="ORL photos per person (1-10)")
    ap.add_argument("--negatives", type=int, default=40)
    args = ap.parse_args()
    sets = load_sets(args.per_person, args.negatives)
    import torch

    torch.set_num_threads(1)  # per core, as each embedding worker runs
    encs = {name: FaceEncoder(**opts) for name, opts in SETTINGS.items()}
    thr = next(iter(encs.values())).info.default_threshold
    for set_name, (images, labels) in sets.items():
        times = {n: defaultdict(float) for n in SETTINGS}
        total = dict.fromkeys(SETTINGS, 0.0)
        vecs: dict[str, list[np.ndarray | None]] = {n: [] for n in SETTINGS}
        fns = {n: instrument(encs[n], times[n]) for n in SETTINGS}
        order = list(SETTINGS)
        for i, im in enumerate(images):
            # Alternate which setting goes first, so drifting load hits both.
            for name in order if i % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                try:
                    vec = fns[name](im)
                except EncodeSkip:
                    vec = None
                total[name] += time.perf_counter() - t0
                vecs[name].append(vec)
        n = len(images)
        print(f"\n### {set_name}: {n} images\n")
        stages = sorted({s for t in times.values() for s in t})
        print("| setting | images/s | ms/image | " + " | ".join(stages) + " |")
        print("|---" * (3 + len(stages)) + "|")
        for name in SETTINGS:
            row = [f"{times[name].get(s, 0.0) / n * 1e3:.1f}" for s in stages]
            rate = n / total[name]
            print(
                f"| {name} | {rate:.2f} | {total[name] / n * 1e3:.0f} | " + " | ".join(row) + " |"
            )
        first, second = (total[name] for name in SETTINGS)
        print(f"\nspeed-up: {first / second:.2f}x")
        for name in SETTINGS:
            print(f"{name}: {accuracy(vecs[name], labels, thr)}")


if __name__ == "__main__":
    main()
