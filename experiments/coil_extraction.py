"""Carlini et al. 2023 at small scale: duplicated training images are extracted far more.

A small unconditional DDPM (trainleak.ddpm, channels 16/32) is trained on CPU
on 16 x 16 grey COIL-20 images: 40 unique images (every object, views 0 and
25) plus 5 further images (view 12 of objects 1-5) each repeated ``--copies``
(20) times. (A first attempt at 32 x 32 with 200 unique images was too
undertrained after 2,000 steps to copy anything: no generation came within
0.15 of any training image, nor formed a clique.)
We sample 500 images, run ``extract`` (tiled l2, delta 0.15, cliques of 10),
and count, per training image, how many generations are within delta of it.
Then ``dedup`` (tiled distance < 0.01) removes the repeats, a second model
is trained on what is kept with the same number of steps (both models train
side by side, one core each), and the same is measured again.

Rerun (about 10 minutes on 2 cores; ``--quick`` for a smoke run):

    .venv/bin/python experiments/coil_extraction.py --out runs/coil_extraction
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainleak.audits.dedup import DedupConfig, dedup
from trainleak.audits.extraction import ExtractConfig, extract
from trainleak.config import EmbedConfig
from trainleak.ddpm import DDPMConfig, train_ddpm
from trainleak.embedding import embed
from trainleak.generators import get_generator, materialise
from trainleak.neighbors import knn

COIL = Path(__file__).resolve().parents[2] / "shared" / "data" / "coil20"
UNIQUE = [(o, v) for o in range(1, 21) for v in (0, 25)]
DUPLICATED = [(o, 12) for o in range(1, 6)]
DELTA = 0.15
SIZE = 16
#: The paper's tiled l2 (4 x 4 tiles, not mirror-blind) at the model's resolution.
TILED = {"flip_invariant": False, "size": SIZE}


def build_train(folder: Path, copies: int) -> None:
    """Lay out the training set as symlinks; repeats get their own names."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for o, v in UNIQUE:
        os.symlink(COIL / f"obj{o}__{v}.png", folder / f"obj{o}__{v}.png")
    for o, v in DUPLICATED:
        for c in range(copies):
            name = f"obj{o}__{v}.png" if c == 0 else f"obj{o}__{v}_copy{c:03d}.png"
            os.symlink(COIL / f"obj{o}__{v}.png", folder / name)


def load(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())]


def copies_per_image(gen_dir: Path, reference: Path, cache: Path) -> dict[str, int]:
    """Generations within delta of each distinct image of ``reference`` (repeats merged)."""
    opts = TILED
    train = embed(reference, "tiled", encoder_options=opts, workers=2, cache=cache, set_name="ref")
    gen = embed(gen_dir, "tiled", encoder_options=opts, workers=2, cache=cache, set_name="gen")
    scores, idx = knn(gen.vectors, train.vectors, 1, metric="tiled_l2", tiles=16)
    counts: dict[str, int] = {}
    for s, i in zip(scores[:, 0], idx[:, 0], strict=True):
        if 1.0 - s < DELTA:
            name = Path(train.ids[i]).name.split("_copy")[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


def train_and_sample(name: str, train_dir: Path, out: Path, cfg: DDPMConfig, n: int) -> dict:
    """Train one model and write ``n`` samples; runs in its own process, one thread."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    def progress(step: int, loss: float) -> None:
        if step % 250 == 0:
            print(f"  {name}: step {step} loss {loss:.4f}", flush=True)

    model = train_ddpm(load(train_dir), out / f"model_{name}", cfg, progress=progress)
    t_train = time.perf_counter() - t0
    generator = get_generator(f"diffusers:{model}", steps=cfg.sample_steps)
    for _ in materialise(generator, out / f"generated_{name}", n, seed=0, batch_size=50):
        pass
    return {
        "train_seconds": round(t_train),
        "generate_seconds": round(time.perf_counter() - t0 - t_train),
    }


def one_model(name: str, train_dir: Path, out: Path, timing: dict) -> dict:
    model = out / f"model_{name}"
    gen_dir = out / f"generated_{name}"
    ext_cfg = ExtractConfig(
        embed=EmbedConfig(encoder="tiled", encoder_options=dict(TILED), cache=str(out / "cache"))
    )
    result = extract(gen_dir, train_dir, config=ext_cfg, argv=["experiments/coil_extraction.py"])
    result.write(out / f"report_{name}", redact=False)
    extracted = {Path(p).name.split("_copy")[0] for p in result.extracted}
    counts = copies_per_image(gen_dir, out / "train", out / "cache")
    dup_names = {f"obj{o}__{v}.png" for o, v in DUPLICATED}
    uniq_names = {f"obj{o}__{v}.png" for o, v in UNIQUE}
    row = {
        "model": name,
        "train_images": len(os.listdir(train_dir)),
        "final_loss": json.loads((model / "trainleak.json").read_text())["final_loss"],
        "cliques": len(result.report["candidates"]),
        "extracted_duplicated": len(extracted & dup_names),
        "extracted_unique": len(extracted & uniq_names),
        "copied_duplicated": sum(1 for k in dup_names if counts.get(k)),
        "copied_unique": sum(1 for k in uniq_names if counts.get(k)),
        "copies_per_duplicated": sum(counts.get(k, 0) for k in dup_names) / len(dup_names),
        "copies_per_unique": sum(counts.get(k, 0) for k in uniq_names) / len(uniq_names),
        "generations_copying": sum(counts.values()),
        **timing,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/coil_extraction")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="300 steps, 100 samples: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.samples = 300, 100
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = DDPMConfig(
        size=SIZE,
        channels=(16, 32),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=2e-3,
        sample_steps=25,
    )
    start = time.perf_counter()
    build_train(out / "train", args.copies)
    # Tiled distance under 0.01: near-exact copies. (pixel at cosine 0.99 also
    # merged a few genuinely different views of rotation-symmetric objects.)
    dedup_embed = EmbedConfig(
        encoder="tiled", encoder_options=dict(TILED), cache=str(out / "cache")
    )
    deduped = dedup(out / "train", config=DedupConfig(embed=dedup_embed, threshold=0.99))
    deduped.write(out / "dedup")
    kept_dir = out / "train_dedup"
    if kept_dir.exists():
        shutil.rmtree(kept_dir)
    deduped.copy_kept(kept_dir)
    removed = len(os.listdir(out / "train")) - len(os.listdir(kept_dir))
    # The two models are independent: train them side by side, one core each.
    sets = {"duplicated": out / "train", "deduplicated": kept_dir}
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = {
            name: pool.submit(train_and_sample, name, folder, out, cfg, args.samples)
            for name, folder in sets.items()
        }
        timings = {name: job.result() for name, job in jobs.items()}
    rows = [one_model(name, folder, out, timings[name]) for name, folder in sets.items()]
    total = time.perf_counter() - start
    summary = {"rows": rows, "dedup_removed": removed, "total_seconds": round(total)}
    (out / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")

    print(f"\ndedup removed {removed} images; total {total / 60:.1f} min\n")
    print(
        "| training set | images | cliques | extracted: duplicated (of 5) | unique (of 40) "
        "| copied at least once: duplicated | unique | copies per duplicated image "
        "| per unique image |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['train_images']} | {r['cliques']} | {r['extracted_duplicated']} "
            f"| {r['extracted_unique']} | {r['copied_duplicated']} | {r['copied_unique']} "
            f"| {r['copies_per_duplicated']:.2f} | {r['copies_per_unique']:.3f} |"
        )


if __name__ == "__main__":
    main()
