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


def load_sets(shape: tuple[int, int, int]) -> dict:
    """The five image sets, as ``(pixels, class indices, rows)`` at ``shape``."""
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
    return data


def face_scorer(data: dict):
    """``recon -> {face_found, verified, rank1, verified_aligned, rank1_aligned}``.

    The first three detect the face (HOG) as a user's audit would; a
    reconstruction without a detected face counts as not recognised. The
    ``_aligned`` pair skips detection: ORL photos are centred faces, so the
    whole image is taken as the face box for gallery, originals and
    reconstructions alike. It measures identity in reconstructions too blurred
    for the detector; ``face_rates`` gives its ``face_found`` as 1 by design.
    """
    out = {}
    for suffix, aligned in (("", False), ("_aligned", True)):
        # HOG detector only: dlib's CNN fallback costs ~2 s per image without a face,
        # and most deep-split reconstructions have none.
        enc = get_encoder("face", cnn_fallback=False, aligned=aligned)
        x, y_query, rows = data["query"]
        sizes = [tuple(r["size"]) for r in rows]
        g_sizes = [tuple(r["size"]) for r in data["gallery"][2]]
        gallery = face_vectors(to_uint8_images(data["gallery"][0], g_sizes), enc)
        g_ok = [i for i, v in enumerate(gallery) if v is not None]
        out[suffix] = (
            enc,
            sizes,
            np.stack([gallery[i] for i in g_ok]),
            data["gallery"][1].cpu().numpy()[g_ok],
            face_vectors(to_uint8_images(x, sizes), enc),
            y_query.cpu().numpy(),
        )

    def faces(recon: torch.Tensor) -> dict:
        rates = {}
        for suffix, (enc, sizes, g_mat, g_lab, originals, labels) in out.items():
            vecs = face_vectors(to_uint8_images(recon, sizes), enc)
            r = face_rates(vecs, originals, g_mat, g_lab, labels, THRESHOLD)
            keys = ("face_found", "verified", "rank1") if not suffix else ("verified", "rank1")
            rates |= {k + suffix: r[k] for k in keys}
        return rates

    faces.gallery_with_face = len(out[""][3])  # type: ignore[attr-defined]
    return faces


def model_labels(data: dict) -> torch.Tensor:
    """The query people's class indices in the classifier's order (that of the training set)."""
    order = sorted({r["label"] for r in data["train"][2]})
    return torch.tensor([order.index(r["label"]) for r in data["query"][2]])


def model_rank1(model: torch.nn.Module, recon: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of reconstructions the victim classifier itself assigns to the right person."""
    p = next(model.parameters())
    with torch.no_grad():
        pred = model((recon.to(p.device) - 0.5) / 0.5).argmax(1).cpu()
    return float((pred == labels).float().mean())


def rescore(
    json_path: str, npz_path: str, data: dict, out: str, classifier: str | None, width: int
) -> None:
    """Add face scores to a ``--no-faces`` run from its saved reconstructions.

    Rows already scored keep their face scores (a second pass adds only what
    is missing); with ``classifier`` (the run's weights), ``model_rank1`` too.
    """
    results = json.loads(Path(json_path).read_text())
    recons = np.load(npz_path)
    faces = None
    model = None
    if classifier:
        model = resnet18_like(classes=40, width=width)
        model.load_state_dict(torch.load(classifier, map_location="cpu"))
        model.eval()
    labels = model_labels(data)
    x = data["query"][0]

    def pixels(key: str) -> torch.Tensor:
        return torch.from_numpy(recons[key].astype(np.float32) / 255.0)

    def add(row: dict, recon: torch.Tensor) -> None:
        nonlocal faces
        if "rank1_aligned" not in row:
            faces = faces or face_scorer(data)
            row |= faces(recon)
            results["gallery_with_face"] = faces.gallery_with_face  # type: ignore[attr-defined]
        if model is not None:
            row["model_rank1"] = model_rank1(model, recon, labels)

    add(results["baseline"], pixels("baseline"))
    add(results.setdefault("originals", {}), x)
    for row in results["rows"] + results["defenses"]:
        key = "/".join([row["split"], row["method"], row.get("defense", "")]).rstrip("/")
        add(row, pixels(key))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def merge(paths: list[str], out: str) -> None:
    """Join runs made over different splits, methods or step scales (same classifier).

    A row (split, method, defence, scale) measured by several runs is taken
    from the first file given.
    """
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if len({r["accuracy_clean"] for r in runs}) != 1:
        raise SystemExit("the runs trained different classifiers: their accuracies differ")
    merged = dict(runs[0])
    merged["rows"], merged["defenses"], merged["runs"], merged["skipped"] = [], [], [], []
    done: set[tuple] = set()
    for path, r in zip(paths, runs, strict=True):
        for key in ("rows", "defenses"):
            for row in r[key]:
                scale = row.get("scale", r["settings"]["scale"])
                ident = (key, row["split"], row["method"], row.get("defense"), scale)
                if ident not in done:
                    merged[key].append(row | {"scale": scale})
                    done.add(ident)
        merged["skipped"] += r.get("skipped", [])
        merged["runs"].append(
            {"file": Path(path).name, "settings": r["settings"], "seconds": r["seconds"]}
        )
    merged["seconds"] = sum(r["seconds"] for r in runs)
    Path(out).write_text(json.dumps(merged, indent=2) + "\n")
    print_table(merged)


def pct(row: dict, key: str) -> str:
    """A rate as a whole percentage; "-" where it was not measured (``--no-faces``)."""
    return "-" if row.get(key) is None else f"{100 * row[key]:.0f}%"


def print_table(r: dict) -> None:
    b = r["baseline"]
    print(
        f"\ntest accuracy {r['accuracy_clean']:.3f}; mean image: PSNR {b['psnr']:.2f} dB, "
        f"SSIM {b['ssim']:.3f}, face found {pct(b, 'face_found')}, rank-1 "
        f"{pct(b, 'rank1')}; {r['seconds'] / 60:.0f} min\n"
    )
    print(
        "| split | depth | features | method | PSNR (dB) | SSIM | face found | verified | rank-1 "
        "| rank-1, no detector | victim model's top-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def label(row: dict) -> str:
        scale = row.get("scale", r["settings"]["scale"])
        return row["method"] + ("" if scale == 1 else f" ({scale:g}x steps)")

    def order(row: dict) -> tuple:
        return row["depth"], row.get("scale", r["settings"]["scale"])

    for row in sorted(r["rows"], key=order):
        print(
            f"| `{row['split']}` | {row['depth']} | {'x'.join(map(str, row['features_shape']))} "
            f"| {label(row)} | "
            f"{row['psnr']:.2f} | {row['ssim']:.3f} | "
            f"{pct(row, 'face_found')} | {pct(row, 'verified')} | {pct(row, 'rank1')} "
            f"| {pct(row, 'rank1_aligned')} | {pct(row, 'model_rank1')} |"
        )
    print(
        "\n| split | defence | test accuracy | method | PSNR (dB) | SSIM | face found | rank-1 "
        "| rank-1, no detector |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in sorted(r["defenses"], key=order):
        print(
            f"| `{row['split']}` | {row['defense']} | {row['accuracy']:.3f} | {label(row)} | "
            f"{row['psnr']:.2f} | {row['ssim']:.3f} | {pct(row, 'face_found')} | "
            f"{pct(row, 'rank1')} | {pct(row, 'rank1_aligned')} |"
        )


if __name__ == "__main__":
    main()
