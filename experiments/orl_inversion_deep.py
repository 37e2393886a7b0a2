"""Split-computing inversion from deep splits (issue 16 part 2; after Dong et al. 2021/2022).

A ResNet-18-like classifier (:func:`~trainleak.audits.inversion.nets.resnet18_like`:
stem + four stages of two residual units with batch norm, widths 16/32/64/128,
21 conv/linear layers) is trained on CPU to tell the 40 ORL people apart,
on photos 1-7 of each at 64x64 (the 92x112 files resized, bicubic). Then, for
the features after each stage (``layer1`` .. ``layer4``, the last before
global pooling), each method rebuilds photo 8 of people s1-s30 (30 images):

* ``optimize``: input optimisation with total-variation and batch-norm priors;
* ``dci-noise``: divide-and-conquer inversion, block inverses trained on
  multi-scale noise images;
* ``dci-generator``: the same, block inverses trained on samples of a
  generator fitted to the device part's batch-norm statistics and the
  classifier's class terms (the paper's variant);
* ``decoder``: an inverse network trained on the attacker's own photos (all
  10 photos of s31-s40, people never inverted).

Scores, over all 30 images (no face found = not recognised):

* PSNR / SSIM against the 64x64 original;
* face found: the face encoder (HOG detector, no CNN fallback) detects a
  face in the reconstruction (resized back to 92x112);
* verified: face-encoder cosine to the original >= 0.93 (the encoder's
  same-person operating point);
* rank-1: the nearest face among photo 1 of each of the 30 people is the
  right person (chance 1/30 = 3.3%).

The mean of the 30 originals is the no-information baseline.

Defences at equal accuracy cost: per split, the largest noise level
(``noise:SIGMA``, std SIGMA x the features' RMS) and the fewest bits
(``quantize:BITS``) whose cost in test accuracy (photos 8-10 of all 40
people) is at most ``--cost`` (0.05); then ``optimize`` and ``decoder``
invert the defended features.

Reproduce (2 shared CPU cores; see the README for the times measured):
    nice -n 10 .venv/bin/python experiments/orl_inversion_deep.py --threads 1
The committed results joined two runs made side by side to fit the time
available: ``--splits layer4,layer3`` at full steps and ``--splits
layer2,layer1 --scale 0.5``, then ``--merge A.json B.json`` (each row has
its ``scale``).
Writes experiments/results/orl_inversion_deep.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from trainleak.audits.inversion import (
    BNGenerator,
    DCIInverter,
    DecoderInverter,
    Defense,
    OptimizeInverter,
    SplitModel,
    psnr,
    ssim,
)
from trainleak.audits.inversion.audit import class_indices, read_images
from trainleak.audits.inversion.dci import synthesise
from trainleak.audits.inversion.generator import batch_bn_loss
from trainleak.audits.inversion.metrics import face_rates, face_vectors, to_uint8_images
from trainleak.audits.inversion.nets import resnet18_like
from trainleak.audits.inversion.optimize import BNPrior
from trainleak.encoders import get_encoder

ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces_92x112"
SPLITS = ["layer1", "layer2", "layer3", "layer4"]
METHODS = ["optimize", "dci-noise", "dci-generator", "decoder"]
THRESHOLD = 0.93
SIGMAS = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0]
BITS = [8, 6, 5, 4, 3, 2, 1]


def link(dest: Path, people: range, photos: range) -> Path:
    """Symlink ORL 92x112 photos into ``dest/sN/P.pgm``."""
    for s in people:
        (dest / f"s{s}").mkdir(parents=True, exist_ok=True)
        for p in photos:
            os.symlink(ORL / f"s{s}" / f"{p}.pgm", dest / f"s{s}" / f"{p}.pgm")
    return dest


def train(x: torch.Tensor, y: torch.Tensor, epochs: int, width: int) -> torch.nn.Module:
    """Adam + one-cycle, mirror and +-4 px shift augmentation."""
    torch.manual_seed(0)
    model = resnet18_like(classes=40, width=width)
    opt = torch.optim.Adam(model.parameters(), 5e-3, weight_decay=5e-4)
    steps = epochs * ((len(x) + 31) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=steps)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(32):
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            dy, dx = (int(v) for v in torch.randint(-4, 5, (2,)))
            xb = F.pad(xb, (4, 4, 4, 4), mode="replicate")[
                :, :, 4 + dy : 4 + dy + x.shape[2], 4 + dx : 4 + dx + x.shape[3]
            ]
            loss = F.cross_entropy(model((xb - 0.5) / 0.5), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(sm: SplitModel, x: torch.Tensor, y: torch.Tensor, transform=None) -> float:
    with torch.no_grad():
        return float((sm.logits(x, transform).argmax(1) == y).float().mean())


def inverter(method: str, scale: float):
    def n(v: int) -> int:
        return max(1, int(v * scale))

    if method == "optimize":
        return OptimizeInverter(steps=n(300))
    if method.startswith("dci"):
        return DCIInverter(
            synth=256,
            train_steps=n(150),
            block_steps=n(50),
            steps=n(200),
            width=16,
            inputs="generator" if method == "dci-generator" else "noise",
            gen_steps=n(150),
            gen_batch=32,
        )
    return DecoderInverter(steps=n(400), width=32)


def bn_fit(sm: SplitModel, x: torch.Tensor) -> float:
    """DeepInversion batch-norm loss of a batch at the device part's layers (lower: closer)."""
    prior = BNPrior(sm.bn_layers)
    with torch.no_grad(), prior:
        sm.device(x)
        return float(batch_bn_loss(prior.inputs))


def calibrate(sm: SplitModel, x: torch.Tensor, y: torch.Tensor, clean: float, cost: float):
    """Strongest noise and quantisation whose accuracy cost is at most ``cost``."""
    chosen = {}
    for kind, levels in (("noise", SIGMAS), ("quantize", BITS)):
        best = None
        for level in levels:
            d = Defense.parse(f"{kind}:{level}", 1)
            acc = accuracy(sm, x, y, d)
            if clean - acc <= cost:
                best = (f"{kind}:{level}", acc)
        chosen[kind] = best
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every step count")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cost", type=float, default=0.05, help="accuracy cost of the defences")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on 2 shared cores)")
    # Deepest first: the split the claim is about is measured even if the run is cut short.
    ap.add_argument("--splits", default=",".join(reversed(SPLITS)))
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "orl_inversion_deep.json")
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="merge the rows of runs over different splits into --out, print the tables, stop",
    )
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    shape = (1, args.size, args.size)
    root = Path(tempfile.mkdtemp())
    sets = {
        "train": link(root / "train", range(1, 41), range(1, 8)),
        "test": link(root / "test", range(1, 41), range(8, 11)),
        "query": link(root / "query", range(1, 31), range(8, 9)),
        "gallery": link(root / "gallery", range(1, 31), range(1, 2)),
        "aux": link(root / "aux", range(31, 41), range(1, 11)),
    }
    data = {}
    for name, folder in sets.items():
        x, rows, _ = read_images(folder, name, 1, shape[1:])
        data[name] = (x, torch.tensor(class_indices([r["label"] for r in rows])), rows)
    model = train(data["train"][0], data["train"][1], args.epochs, args.width)
    train_s = time.perf_counter() - t0
    x_test, y_test, _ = data["test"]
    x, y_query, rows = data["query"]
    sizes = [tuple(r["size"]) for r in rows]
    # HOG detector only: dlib's CNN fallback costs ~2 s per image without a face,
    # and most deep-split reconstructions have none.
    enc = get_encoder("face", cnn_fallback=False)
    g_sizes = [tuple(r["size"]) for r in data["gallery"][2]]
    gallery = face_vectors(to_uint8_images(data["gallery"][0], g_sizes), enc)
    g_ok = [i for i, v in enumerate(gallery) if v is not None]
    g_mat = np.stack([gallery[i] for i in g_ok])
    g_lab = data["gallery"][1].numpy()[g_ok]
    originals = face_vectors(to_uint8_images(x, sizes), enc)

    def faces(recon: torch.Tensor) -> dict:
        vecs = face_vectors(to_uint8_images(recon, sizes), enc)
        return face_rates(vecs, originals, g_mat, g_lab, y_query.numpy(), THRESHOLD)

    def scores(recon: torch.Tensor) -> dict:
        out = {"psnr": float(psnr(x, recon).mean()), "ssim": float(ssim(x, recon).mean())}
        return out | faces(recon)

    mean_img = x.mean(0, keepdim=True).expand_as(x)
    clean = accuracy(SplitModel(model, "stem", shape), x_test, y_test)
    results = {
        "model": f"resnet18_like(classes=40, width={args.width})",
        "input": list(shape),
        "train_accuracy": accuracy(SplitModel(model, "stem", shape), *data["train"][:2]),
        "accuracy_clean": clean,
        "train_seconds": train_s,
        "baseline": scores(mean_img),
        "originals": faces(x),
        "gallery_with_face": len(g_ok),
        "settings": {"scale": args.scale, "epochs": args.epochs, "cost": args.cost},
        "rows": [],
        "defenses": [],
    }
    head = ("train_accuracy", "accuracy_clean", "baseline", "originals", "train_seconds")
    print(json.dumps({k: results[k] for k in head}), flush=True)
    aux = data["aux"][0]
    for split in args.splits.split(","):
        sm = SplitModel(model, split, shape)
        feats = sm.device(x).detach()
        fitted = {}
        for method in METHODS:
            start = time.perf_counter()
            inv = inverter(method, args.scale).fit(sm, aux)
            fit_s = time.perf_counter() - start
            recon = inv.reconstruct(feats)
            row = {"split": split, "depth": sm.depth, "method": method}
            row["features_shape"] = list(feats.shape[1:])
            row |= scores(recon)
            row["fit_seconds"] = fit_s
            row["seconds"] = time.perf_counter() - start
            if isinstance(inv, DCIInverter):
                synth = (
                    inv.generator_.sample(256)
                    if isinstance(inv.generator_, BNGenerator)
                    else synthesise(256, shape, 0)
                )
                row["synth_bn_loss"] = bn_fit(sm, synth)
                row["real_bn_loss"] = bn_fit(sm, data["train"][0][:256])
                last = [float(np.mean(h[-20:])) for h in inv.block_histories_]
                row["block_inverse_final_loss"] = last
                if inv.generator_ is not None:
                    row["generator_bn_loss"] = [
                        float(np.mean(inv.generator_.bn_history_[:10])),
                        float(np.mean(inv.generator_.bn_history_[-10:])),
                    ]
            fitted[method] = inv
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
        chosen = calibrate(sm, x_test, y_test, clean, args.cost)
        for pick in chosen.values():
            if pick is None:
                continue
            spec, acc = pick
            defended = Defense.parse(spec, 0)(feats)
            for method in ("optimize", "decoder"):
                start = time.perf_counter()
                row = {"split": split, "depth": sm.depth, "method": method, "defense": spec}
                row |= scores(fitted[method].reconstruct(defended))
                row |= {"accuracy": acc, "accuracy_cost": clean - acc}
                row["seconds"] = time.perf_counter() - start
                results["defenses"].append(row)
                print(json.dumps(row), flush=True)
        results["seconds"] = time.perf_counter() - t0
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    results["threads"] = args.threads
    results["seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def merge(paths: list[str], out: str) -> None:
    """Join runs made over different splits (same classifier) into one result file.

    A split measured by several runs is taken from the first file given.
    """
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if len({r["accuracy_clean"] for r in runs}) != 1:
        raise SystemExit("the runs trained different classifiers: their accuracies differ")
    merged = dict(runs[0])
    merged["rows"], merged["defenses"], merged["runs"] = [], [], []
    done: set[str] = set()
    for path, r in zip(paths, runs, strict=True):
        # A split measured by several runs is taken from the first one given.
        splits = {row["split"] for row in r["rows"]} - done
        for key in ("rows", "defenses"):
            merged[key] += [
                row | {"scale": r["settings"]["scale"]} for row in r[key] if row["split"] in splits
            ]
        done |= splits
        merged["runs"].append(
            {"file": Path(path).name, "settings": r["settings"], "seconds": r["seconds"]}
        )
    merged["seconds"] = sum(r["seconds"] for r in runs)
    Path(out).write_text(json.dumps(merged, indent=2) + "\n")
    print_table(merged)


def print_table(r: dict) -> None:
    b = r["baseline"]
    print(
        f"\ntest accuracy {r['accuracy_clean']:.3f}; mean image: PSNR {b['psnr']:.2f} dB, "
        f"SSIM {b['ssim']:.3f}, face found {100 * b['face_found']:.0f}%, rank-1 "
        f"{100 * b['rank1']:.0f}%; {r['seconds'] / 60:.0f} min\n"
    )
    print(
        "| split | depth | features | method | PSNR (dB) | SSIM | face found | verified | rank-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in sorted(r["rows"], key=lambda e: e["depth"]):
        print(
            f"| `{row['split']}` | {row['depth']} | {'x'.join(map(str, row['features_shape']))} "
            f"| {row['method']}{'' if row.get('scale', 1) == 1 else ' (½ steps)'} | "
            f"{row['psnr']:.2f} | {row['ssim']:.3f} | "
            f"{100 * row['face_found']:.0f}% | {100 * row['verified']:.0f}% | "
            f"{100 * row['rank1']:.0f}% |"
        )
    print("\n| split | defence | test accuracy | method | PSNR (dB) | SSIM | face found | rank-1 |")
    print("|---|---|---|---|---|---|---|---|")
    for row in sorted(r["defenses"], key=lambda e: e["depth"]):
        print(
            f"| `{row['split']}` | {row['defense']} | {row['accuracy']:.3f} | {row['method']} | "
            f"{row['psnr']:.2f} | {row['ssim']:.3f} | {100 * row['face_found']:.0f}% | "
            f"{100 * row['rank1']:.0f}% |"
        )


if __name__ == "__main__":
    main()
