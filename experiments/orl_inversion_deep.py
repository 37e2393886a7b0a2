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

At 112x92 on a GPU machine without dlib (``experiments/gpu_session.sh``;
results in ``orl_inversion_deep_112x92*.json``): ``--size 112x92 --device
cuda --no-faces --save-recon RUN.npz``, then here ``--rescore RUN.json
RUN.npz`` adds the face scores (``inversion_scores.py``: also a rank-1 with
no face detector, and the victim classifier's top-1).
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
from inversion_scores import face_scorer, merge, model_labels, model_rank1, print_table, rescore
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
from trainleak.audits.inversion.nets import resnet18_like
from trainleak.audits.inversion.optimize import BNPrior

ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces_92x112"
SPLITS = ["layer1", "layer2", "layer3", "layer4"]
METHODS = ["optimize", "dci-noise", "dci-generator", "decoder"]
SIGMAS = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0]
BITS = [8, 6, 5, 4, 3, 2, 1]


def link(dest: Path, people: range, photos: range) -> Path:
    """Symlink ORL 92x112 photos into ``dest/sN/P.pgm``."""
    for s in people:
        (dest / f"s{s}").mkdir(parents=True, exist_ok=True)
        for p in photos:
            os.symlink(ORL / f"s{s}" / f"{p}.pgm", dest / f"s{s}" / f"{p}.pgm")
    return dest


def train(
    x: torch.Tensor, y: torch.Tensor, epochs: int, width: int, saved: str | None
) -> torch.nn.Module:
    """Adam + one-cycle, mirror and +-4 px shift augmentation.

    With ``saved``, a classifier saved there is loaded instead of trained, and
    a trained one is saved there: runs of different splits in parallel
    processes then invert the same weights.
    """
    torch.manual_seed(0)
    model = resnet18_like(classes=40, width=width).to(x.device)
    if saved and Path(saved).is_file():
        model.load_state_dict(torch.load(saved, map_location=x.device))
        return model.eval()
    opt = torch.optim.Adam(model.parameters(), 5e-3, weight_decay=5e-4)
    steps = epochs * ((len(x) + 31) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=steps)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(32):
            xb = x[idx]
            flip = torch.rand(len(idx), device=x.device) < 0.5
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
    if saved:  # written whole, then renamed: a process waiting for it never reads half
        torch.save(model.state_dict(), f"{saved}.part")
        os.replace(f"{saved}.part", saved)
    return model.eval()


def accuracy(sm: SplitModel, x: torch.Tensor, y: torch.Tensor, transform=None) -> float:
    with torch.no_grad():
        return float((sm.logits(x, transform).argmax(1) == y).float().mean())


class DecoderThenOptimize:
    """The decoder's reconstruction as the start of input optimisation (lr 0.01).

    Not in the paper: a check whether a face-like start keeps its face while
    the optimisation matches the features (method ``decoder+optimize``).
    """

    def __init__(self, decoder: DecoderInverter, optimize: OptimizeInverter) -> None:
        self.decoder, self.optimize = decoder, optimize

    def fit(self, sm: SplitModel, aux: torch.Tensor) -> DecoderThenOptimize:
        self.decoder.fit(sm, aux)
        self.optimize.fit(sm)
        return self

    def reconstruct(self, feats: torch.Tensor) -> torch.Tensor:
        return self.optimize.reconstruct(feats, start=self.decoder.reconstruct(feats))


def inverter(method: str, scale: float):
    def n(v: int) -> int:
        return max(1, int(v * scale))

    if method == "decoder+optimize":
        return DecoderThenOptimize(inverter("decoder", scale), OptimizeInverter(n(300), lr=0.01))
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
    ap.add_argument("--size", default="64", help="input side N, or HxW (112x92: ORL as stored)")
    ap.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    ap.add_argument("--classifier", help="load the classifier's weights from here, or save them")
    ap.add_argument("--methods", default=",".join(METHODS), help="in the order to run them")
    ap.add_argument(
        "--budget", type=float, help="seconds: start no new method or defence after this"
    )
    ap.add_argument(
        "--no-faces",
        action="store_true",
        help="skip the face encoder (a machine without dlib); with --save-recon, add it later "
        "with --rescore",
    )
    ap.add_argument("--save-recon", metavar="NPZ", help="save every reconstruction (float16)")
    ap.add_argument(
        "--rescore",
        nargs=2,
        metavar=("JSON", "NPZ"),
        help="add the face scores to a --no-faces run from its reconstructions into --out, stop",
    )
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
    h, _, w = args.size.partition("x")
    shape = (1, int(h), int(w or h))
    data = load_sets(shape)
    if args.rescore:
        rescore(*args.rescore, data, args.out, args.classifier, args.width)
        return
    dev = torch.device(args.device)
    model = train(
        data["train"][0].to(dev), data["train"][1].to(dev), args.epochs, args.width, args.classifier
    )
    train_s = time.perf_counter() - t0
    if not args.splits:  # --splits "": train (and save with --classifier) only
        return
    for name, (xs, ys, rows) in list(data.items()):
        data[name] = (xs.to(dev), ys.to(dev), rows)
    x_test, y_test, _ = data["test"]
    x, y_query, rows = data["query"]
    score_faces = face_scorer(data) if not args.no_faces else lambda _recon: {}
    gallery_with_face = getattr(score_faces, "gallery_with_face", None)
    saved: dict[str, np.ndarray] = {}

    y_model = model_labels(data)

    def scores(recon: torch.Tensor, key: str) -> dict:
        if args.save_recon:
            # uint8 (n, C, H, W), rounded as to_uint8_images rounds for the face encoder
            pix = recon.detach().float().clamp(0, 1).cpu().numpy()
            saved[key] = (pix * 255.0 + 0.5).astype(np.uint8)
        out = {"psnr": float(psnr(x, recon).mean()), "ssim": float(ssim(x, recon).mean())}
        out["model_rank1"] = model_rank1(model, recon, y_model)
        return out | score_faces(recon)

    mean_img = x.mean(0, keepdim=True).expand_as(x)
    clean = accuracy(SplitModel(model, "stem", shape), x_test, y_test)
    results = {
        "model": f"resnet18_like(classes=40, width={args.width})",
        "input": list(shape),
        "device": f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "cpu",
        "train_accuracy": accuracy(SplitModel(model, "stem", shape), *data["train"][:2]),
        "accuracy_clean": clean,
        "train_seconds": train_s,
        "baseline": scores(mean_img, "baseline"),
        "originals": score_faces(x) | {"model_rank1": model_rank1(model, x, y_model)},
        "gallery_with_face": gallery_with_face,
        "settings": {"scale": args.scale, "epochs": args.epochs, "cost": args.cost},
        "rows": [],
        "defenses": [],
        "skipped": [],
    }
    head = ("train_accuracy", "accuracy_clean", "baseline", "originals", "train_seconds")
    print(json.dumps({k: results[k] for k in head}), flush=True)

    def over_budget(what: str) -> bool:
        late = args.budget is not None and time.perf_counter() - t0 > args.budget
        if late:
            results["skipped"].append(what)
        return late

    def save() -> None:
        results["seconds"] = time.perf_counter() - t0
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        if args.save_recon:
            np.savez_compressed(args.save_recon, **saved)

    aux = data["aux"][0]
    for split in args.splits.split(","):
        sm = SplitModel(model, split, shape)
        feats = sm.device(x).detach()
        fitted = {}
        for method in args.methods.split(","):
            if over_budget(f"{split}/{method}"):
                continue
            start = time.perf_counter()
            inv = inverter(method, args.scale).fit(sm, aux)
            fit_s = time.perf_counter() - start
            recon = inv.reconstruct(feats)
            row = {"split": split, "depth": sm.depth, "method": method}
            row["features_shape"] = list(feats.shape[1:])
            row |= scores(recon, f"{split}/{method}")
            row["fit_seconds"] = fit_s
            row["seconds"] = time.perf_counter() - start
            if isinstance(inv, DCIInverter):
                synth = (
                    inv.generator_.sample(256)
                    if isinstance(inv.generator_, BNGenerator)
                    else synthesise(256, shape, 0).to(dev)
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
            save()
        chosen = calibrate(sm, x_test, y_test, clean, args.cost)
        for pick in chosen.values():
            if pick is None:
                continue
            spec, acc = pick
            defended = Defense.parse(spec, 0)(feats)
            for method in ("optimize", "decoder"):
                if method not in fitted or over_budget(f"{split}/{method}/{spec}"):
                    continue
                start = time.perf_counter()
                row = {"split": split, "depth": sm.depth, "method": method, "defense": spec}
                recon = fitted[method].reconstruct(defended)
                row |= scores(recon, f"{split}/{method}/{spec}")
                row |= {"accuracy": acc, "accuracy_cost": clean - acc}
                row["seconds"] = time.perf_counter() - start
                results["defenses"].append(row)
                print(json.dumps(row), flush=True)
                save()
    results["threads"] = args.threads
    save()
    print_table(results)


def load_sets(shape: tuple[int, int, int], linker=link) -> dict:
    """The five image sets, as ``(pixels, class indices, rows)`` at ``shape``.

    ``linker(dest, people, photos)`` lays ORL out: this script's links the
    92x112 files, ``orl_inversion.py`` passes the tests' 23x28 one.
    """
    root = Path(tempfile.mkdtemp())
    sets = {
        "train": linker(root / "train", range(1, 41), range(1, 8)),
        "test": linker(root / "test", range(1, 41), range(8, 11)),
        "query": linker(root / "query", range(1, 31), range(8, 9)),
        "gallery": linker(root / "gallery", range(1, 31), range(1, 2)),
        "aux": linker(root / "aux", range(31, 41), range(1, 11)),
    }
    data = {}
    for name, folder in sets.items():
        x, rows, _ = read_images(folder, name, 1, shape[1:])
        data[name] = (x, torch.tensor(class_indices([r["label"] for r in rows])), rows)
    return data


if __name__ == "__main__":
    main()
