"""Streamed generation + embedding throughput of ``membership`` (samples/s).

Generators: the pixel-space KDE of the tests (``python:``; generation costs
almost nothing, so this measures embedding) and a small DDPM (``diffusers:``,
24 x 24, 25 DDIM steps; trained here for 200 steps when no ``--ddpm`` folder is
given: the speed does not depend on how well it is trained). Encoders: the
face encoder with ``aligned`` (the experiment's setting) and ``pixel``. Each
run is cold (empty cache); a warm re-run is timed too: it generates nothing.

Reproduce: .venv/bin/python bench/bench_membership.py [--ddpm DIR] [--n 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from trainleak.audits.sampling import stream_embed  # noqa: E402
from trainleak.embedding import Embedder  # noqa: E402
from trainleak.generators import get_generator  # noqa: E402

from conftest import ORL  # noqa: E402


def _ddpm(folder: Path) -> Path:
    from trainleak.ddpm import DDPMConfig, train_ddpm

    images = [
        np.asarray(Image.open(ORL / f"s{s}" / f"{p}.pgm").convert("RGB"))
        for s in range(1, 21)
        for p in range(1, 8)
    ]
    return train_ddpm(images, folder, DDPMConfig(size=24, batch_size=16, steps=200))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ddpm", default=None, help="a trained pipeline folder (else train one)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # the embedding workers take the other core
    root = Path(tempfile.mkdtemp())
    ddpm = Path(args.ddpm) if args.ddpm else _ddpm(root / "ddpm")
    gens = {
        "python:membership_gen:orl_kde": get_generator("python:membership_gen:orl_kde"),
        "diffusers (24x24 DDPM, 25 steps)": get_generator(f"diffusers:{ddpm}", steps=25),
    }
    encoders = {"face, aligned": ("face", {"aligned": True}), "pixel": ("pixel", {})}
    print("| generator | encoder | cold samples/s | warm samples/s | generated when warm |")
    print("|---|---|---|---|---|")
    for gname, gen in gens.items():
        for ename, (enc, opts) in encoders.items():
            cache = root / f"cache-{len(list(root.iterdir()))}"
            rates = []
            for _ in ("cold", "warm"):
                with Embedder(enc, encoder_options=opts, workers=args.workers, cache=cache) as e:
                    e.embed_encoded({})  # start nothing; the pool starts on first use
                    t0 = time.perf_counter()
                    out = stream_embed(gen, e, args.n, seed=0, batch_size=64)
                    rates.append((args.n / (time.perf_counter() - t0), out.generated))
            print(
                f"| {gname} | {ename} | {rates[0][0]:.1f} | {rates[1][0]:.0f} | {rates[1][1]} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
