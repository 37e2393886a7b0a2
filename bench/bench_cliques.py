"""Clique finding for ``extract``: trainleak's greedy cliques vs networkx's exact maximal cliques.

Each group mimics one prompt's generations: real COIL-20 images (tiled l2
rows), a few memorized images each repeated 15-40 times with pixel noise, the
rest shifted views. Times are for building the delta-graph and finding the
cliques; both methods get the same graph.

Reproduce:
    .venv/bin/python bench/bench_cliques.py [--sizes 500 2000 5000]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import networkx as nx
import numpy as np
from PIL import Image

from trainleak.audits.extraction import near_graph
from trainleak.audits.graph import greedy_cliques
from trainleak.encoders import get_encoder

COIL = Path(__file__).resolve().parents[2] / "shared" / "data" / "coil20"


def group(n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    enc = get_encoder("tiled", flip_invariant=False)
    files = sorted(COIL.glob("*.png"))
    memorized = rng.choice(len(files), size=max(1, n // 100), replace=False)
    images = []
    for i in memorized:
        base = np.asarray(Image.open(files[i]).convert("RGB"), np.float64)
        for _ in range(int(rng.integers(15, 41))):
            images.append(np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8))
    while len(images) < n:
        # Distinct background: a random view, shifted (tiled l2 is shift-sensitive).
        f = files[int(rng.integers(len(files)))]
        base = np.asarray(Image.open(f).convert("RGB"), np.float64)
        base = np.roll(base, tuple(rng.integers(-8, 9, size=2)), axis=(0, 1))
        images.append(np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8))
    return np.concatenate([enc.encode(im) for im in images[:n]]), len(memorized)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000])
    ap.add_argument("--min-clique", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{os.cpu_count()} CPUs; delta 0.15, cliques of at least {args.min_clique}\n")
    print(
        "| generations | planted | graph s | greedy cliques s (found) "
        "| networkx maximal cliques s (found >= K) | greedy vs networkx |"
    )
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        rows, planted = group(n, rng)
        t0 = time.perf_counter()
        graph = near_graph(rows, 1 / 1.15, "tiled_l2", 16)  # delta 0.15: score 1 / (1 + d)
        t_graph = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = greedy_cliques(graph, args.min_clique)
        t_greedy = time.perf_counter() - t0
        t0 = time.perf_counter()
        g = nx.from_numpy_array(graph & ~np.eye(n, dtype=bool))
        exact = [c for c in nx.find_cliques(g) if len(c) >= args.min_clique]
        t_nx = time.perf_counter() - t0
        print(
            f"| {n} | {planted} | {t_graph:.2f} | {t_greedy:.3f} ({len(found)}) "
            f"| {t_nx:.3f} ({len(exact)}) | {t_nx / t_greedy:.1f}x faster |"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
