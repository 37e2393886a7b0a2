"""How much identity the features at each split keep, for people the classifier never saw.

Issue 16 part 2's analysis: no inversion recovers a recognisable face from
``layer4``, although the victim model names the right person for its
reconstructions. Is identity still in those features for *new* people, so
that a better inversion could find it? One-shot identification (cosine,
1-nearest-neighbour) over the 100 photos of s31-s40, people not in the
classifier's training set: one photo per person is the gallery, the other 9
are probes, averaged over the 10 choices of gallery photo; on the pixels and
on each split's features (all values, and the per-channel means). Chance is
1/10. (Leave-one-out 1-NN over all photos is at the ceiling on ORL, 99% on
pixels, so it says nothing.)

    .venv/bin/python experiments/orl_split_identity_probe.py

The classifier is the 112x92 GPU run's (``orl_inversion_deep.py --size
112x92 --classifier FILE`` saves one; that run's is committed as
``results/orl_inversion_deep_112x92_classifier.pt``). Prints a Markdown
table and writes ``experiments/results/orl_split_identity_probe.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from orl_inversion_deep import SPLITS, load_sets

from trainleak.audits.inversion import SplitModel
from trainleak.audits.inversion.nets import resnet18_like


def one_shot(vectors: np.ndarray, labels: np.ndarray, photo: np.ndarray) -> float:
    """Mean 1-NN accuracy with photo ``g`` of each person as the gallery, over every ``g``.

    Example:
        >>> v = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
        >>> one_shot(v, np.array([0, 0, 1, 1]), np.array([1, 2, 1, 2]))
        1.0

    """
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    accuracy = []
    for g in np.unique(photo):
        gallery, probes = photo == g, photo != g
        nearest = (v[probes] @ v[gallery].T).argmax(1)
        accuracy.append(float((labels[gallery][nearest] == labels[probes]).mean()))
    return float(np.mean(accuracy))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--classifier",
        default=str(Path(__file__).parent / "results" / "orl_inversion_deep_112x92_classifier.pt"),
        help="weights of the 112x92 run (default: the committed run's)",
    )
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument(
        "--out",
        default=str(Path(__file__).parent / "results" / "orl_split_identity_probe.json"),
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    shape = (1, 112, 92)
    data = load_sets(shape)
    x, _, rows = data["aux"]
    labels = np.array([r["label"] for r in rows])
    photo = np.array([Path(r["path"]).stem for r in rows])
    model = resnet18_like(classes=40, width=args.width)
    model.load_state_dict(torch.load(args.classifier, map_location="cpu"))
    model.eval()
    result = {"people": 10, "photos": len(x), "chance": 0.1, "rows": []}
    result["rows"].append({"split": "pixels", "features": list(x.shape[1:]),
                           "one_shot": one_shot(x.flatten(1).numpy(), labels, photo)})  # fmt: skip
    for split in SPLITS:
        with torch.no_grad():
            f = SplitModel(model, split, shape).device(x)
        pooled = f.mean(dim=(2, 3))
        result["rows"].append(
            {
                "split": split,
                "features": list(f.shape[1:]),
                "one_shot": one_shot(f.flatten(1).numpy(), labels, photo),
                "one_shot_pooled": one_shot(pooled.numpy(), labels, photo),
            }
        )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| input | shape | one-shot 1-NN (all values) | one-shot 1-NN (channel means) |")
    print("|---|---|---|---|")
    for r in result["rows"]:
        pooled = r.get("one_shot_pooled")
        print(
            f"| {r['split']} | {'x'.join(map(str, r['features']))} | {100 * r['one_shot']:.0f}% "
            f"| {'-' if pooled is None else f'{100 * pooled:.0f}%'} |"
        )


if __name__ == "__main__":
    main()
