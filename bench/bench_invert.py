"""Time per image per split: batched inversion vs one image at a time (issue 5).

`optimize` method (the inner loop of every data-free method), SmallResNet
(width 16) at ORL's 28x23, 16 ORL photos, 50 Adam steps. Ratios are measured
within one run; absolute seconds depend on the machine and its load.

Run: .venv/bin/python bench/bench_invert.py [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from trainleak.audits.inversion import OptimizeInverter, SplitModel  # noqa: E402
from trainleak.audits.inversion.audit import read_images  # noqa: E402
from trainleak.audits.inversion.nets import small_resnet  # noqa: E402

from conftest import link_orl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = link_orl(Path(tempfile.mkdtemp()) / "q", range(1, args.images + 1), range(1, 2))
    x, _, _ = read_images(folder, "q", 1, None)
    torch.manual_seed(0)
    # Untrained weights: the work per step does not depend on their values.
    model = small_resnet(width=16).eval()
    print(f"{len(x)} images, {args.steps} steps, {args.threads} thread(s)\n")
    print("| split | depth | batched s/image | one at a time s/image | speed-up | max pixel diff |")
    print("|---|---|---|---|---|---|")
    for split in ("stem", "layer1", "layer2", "layer3"):
        sm = SplitModel(model, split, (1, 28, 23))
        inv = OptimizeInverter(steps=args.steps).fit(sm)
        feats = sm.device(x).detach()
        OptimizeInverter(steps=2).fit(sm).reconstruct(feats)  # warm-up, not timed
        t = time.perf_counter()
        batched = inv.reconstruct(feats)
        tb = (time.perf_counter() - t) / len(x)
        t = time.perf_counter()
        single = torch.cat([inv.reconstruct(feats[i : i + 1]) for i in range(len(x))])
        ts = (time.perf_counter() - t) / len(x)
        # Per-image losses make the results equal up to float rounding, which
        # Adam can amplify over many steps at deep splits.
        diff = float((batched - single).abs().max())
        print(f"| `{split}` | {sm.depth} | {tb:.4f} | {ts:.4f} | {ts / tb:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
