"""Split-computing inversion on ORL faces (issue 5; after Dong et al. 2021/2022).

A SmallResNet (stem + 3 stages of 2 residual units with batch norm, widths
16/32/64, 16 conv/linear layers) is trained on CPU to tell the 40 ORL people
apart, on photos 1-7 of each, at the files' own size (28x23 grey: no
upsampling, so the face encoder sees reconstructions at the originals' size).
Then, for the features at several split points, each method rebuilds photo
8 of people s1-s30 (30 images) and the reconstructions are scored:

* PSNR / SSIM against the original;
* face found: the face encoder detects a face in the reconstruction;
* verified: face-encoder cosine to the original >= 0.93 (the encoder's
  same-person operating point, ~1% false matches on ORL);
* rank-1: the reconstruction's nearest face among photo 1 of each of the 30
  people is the right person (chance 3.3%).
Rates are over all 30 images (no face = not recognised).

The decoder's auxiliary images are all photos of s31-s40 (people never
inverted). The defence adds noise:0.5 (Gaussian, std 0.5 x the features' RMS)
at the split; accuracy is measured on photos 8-10 of all 40 people.

Reproduce: .venv/bin/python experiments/orl_inversion.py [--quick] [--threads 1]
Writes experiments/results/orl_inversion.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from orl_inversion_deep import load_sets  # noqa: E402

from trainleak.audits.inversion import (  # noqa: E402
    DCIInverter,
    DecoderInverter,
    Defense,
    OptimizeInverter,
    SplitModel,
    psnr,
    ssim,
)
from trainleak.audits.inversion.metrics import face_rates, face_vectors, to_uint8_images  # noqa: E402
from trainleak.audits.inversion.nets import small_resnet  # noqa: E402
from trainleak.encoders import get_encoder  # noqa: E402

from conftest import link_orl  # noqa: E402

SPLITS = ["stem", "layer1", "layer2", "layer3"]
SHAPE = (1, 28, 23)
THRESHOLD = 0.93


def train(x: torch.Tensor, y: torch.Tensor, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = small_resnet(classes=40, width=16)
    opt = torch.optim.Adam(model.parameters(), 1e-2, weight_decay=5e-4)
    steps = epochs * ((len(x) + 31) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-2, total_steps=steps)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(32):
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = torch.nn.functional.cross_entropy(model((xb - 0.5) / 0.5), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(sm: SplitModel, x: torch.Tensor, y: torch.Tensor, transform=None) -> float:
    with torch.no_grad():
        return float((sm.logits(x, transform).argmax(1) == y).float().mean())


def inverter(method: str, quick: bool):
    s = 0.5 if quick else 1.0
    if method == "optimize":
        return OptimizeInverter(steps=int(200 * s))
    if method == "dci":
        return DCIInverter(
            synth=128, train_steps=int(100 * s), block_steps=50, steps=int(200 * s), width=16
        )
    return DecoderInverter(steps=int(300 * s), width=32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="half the steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on 2 shared cores)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "orl_inversion.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_sets(SHAPE, link_orl)
    model = train(data["train"][0], data["train"][1], epochs=20)
    x_test, y_test, _ = data["test"]
    x, y_query, rows = data["query"]
    sizes = [tuple(r["size"]) for r in rows]
    enc = get_encoder("face")
    gallery = face_vectors(to_uint8_images(data["gallery"][0]), enc)
    g_ok = [i for i, v in enumerate(gallery) if v is not None]
    g_mat = np.stack([gallery[i] for i in g_ok])
    g_lab = data["gallery"][1].numpy()[g_ok]
    originals = face_vectors(to_uint8_images(x, sizes), enc)

    def faces(recon: torch.Tensor) -> dict:
        vecs = face_vectors(to_uint8_images(recon, sizes), enc)
        return face_rates(vecs, originals, g_mat, g_lab, y_query.numpy(), THRESHOLD)

    mean_img = x.mean(0, keepdim=True).expand_as(x)
    results = {
        "accuracy_clean": accuracy(SplitModel(model, "stem", SHAPE), x_test, y_test),
        "baseline": {
            "psnr": float(psnr(x, mean_img).mean()),
            "ssim": float(ssim(x, mean_img).mean()),
        },
        "originals_with_face": sum(o is not None for o in originals) / len(originals),
        "gallery_with_face": len(g_ok),
        "rows": [],
    }
    defense = Defense.parse("noise:0.5")
    for split in SPLITS:
        sm = SplitModel(model, split, SHAPE)
        feats = sm.device(x).detach()
        for method in ("optimize", "dci", "decoder"):
            start = time.perf_counter()
            inv = inverter(method, args.quick).fit(sm, data["aux"][0])
            recon = inv.reconstruct(feats)
            row = {"split": split, "depth": sm.depth, "method": method, "defense": None}
            row |= {"psnr": float(psnr(x, recon).mean()), "ssim": float(ssim(x, recon).mean())}
            row |= faces(recon)
            if method == "optimize":
                noisy = inv.reconstruct(defense(feats))
                d = {"psnr": float(psnr(x, noisy).mean()), "ssim": float(ssim(x, noisy).mean())}
                d |= faces(noisy)
                d["accuracy"] = accuracy(sm, x_test, y_test, Defense.parse("noise:0.5", 1))
                row["with_noise_0.5"] = d
            row["seconds"] = time.perf_counter() - start
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    results["seconds"] = time.perf_counter() - t0
    results["threads"] = args.threads
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(r: dict) -> None:
    b = r["baseline"]
    print(
        f"\nclean test accuracy {r['accuracy_clean']:.3f}; mean-image baseline "
        f"PSNR {b['psnr']:.2f} dB, SSIM {b['ssim']:.3f}; originals with a face "
        f"{100 * r['originals_with_face']:.0f}%; {r['seconds']:.0f} s\n"
    )
    print(
        "| split | depth | method | PSNR (dB) | SSIM | face found | verified (cos>=0.93) | rank-1 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in r["rows"]:
        print(
            f"| `{row['split']}` | {row['depth']} | {row['method']} | {row['psnr']:.2f} | "
            f"{row['ssim']:.3f} | {100 * row['face_found']:.0f}% | {100 * row['verified']:.0f}% | "
            f"{100 * row['rank1']:.0f}% |"
        )
    print("\n| split | depth | PSNR clean → noise:0.5 | SSIM | rank-1 | test accuracy |")
    print("|---|---|---|---|---|---|")
    for row in r["rows"]:
        d = row.get("with_noise_0.5")
        if d:
            print(
                f"| `{row['split']}` | {row['depth']} | {row['psnr']:.2f} → {d['psnr']:.2f} | "
                f"{row['ssim']:.3f} → {d['ssim']:.3f} | {100 * row['rank1']:.0f}% → "
                f"{100 * d['rank1']:.0f}% | {r['accuracy_clean']:.3f} → {d['accuracy']:.3f} |"
            )


if __name__ == "__main__":
    main()
