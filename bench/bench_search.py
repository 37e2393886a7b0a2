"""Exact top-k search: trainleak.neighbors.knn against faiss-cpu IndexFlatIP.

Reproduce:
    .venv/bin/python bench/bench_search.py [--n-db 200000] [--n-query 2000] [--dim 512] [--k 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import faiss
import numpy as np
import torch

from trainleak.neighbors import knn


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def best_of(fn, repeats: int) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def faiss_flat_ip(q: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    return index.search(q, k)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-db", type=int, default=200_000)
    ap.add_argument("--n-query", type=int, default=2_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-numpy", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    db = unit_rows(rng, args.n_db, args.dim)
    q = unit_rows(rng, args.n_query, args.dim)
    runs = {
        "faiss IndexFlatIP": lambda: faiss_flat_ip(q, db, args.k),
        "knn torch": lambda: knn(q, db, args.k, backend="torch"),
    }
    if not args.skip_numpy:
        runs["knn numpy"] = lambda: knn(q, db, args.k, backend="numpy")
    results = {}
    for name, fn in runs.items():
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        dt, out = best_of(fn, args.repeats)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results[name] = (dt, out, rss1, rss1 - rss0)

    ref_dt, (ref_s, ref_i), _, _ = results["faiss IndexFlatIP"]
    print(
        f"database {args.n_db} x {args.dim}, {args.n_query} queries, k={args.k}, "
        f"best of {args.repeats} after a warm-up; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), faiss {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} threads)\n"
    )
    print(
        "| method | seconds | vs faiss | top-1 identical | top-k identical | max score diff "
        "| peak RSS MB (growth) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (dt, (s, i), rss, grow) in results.items():
        top1 = float(np.mean(i[:, 0] == ref_i[:, 0]))
        topk = float(np.mean(np.sort(i, 1) == np.sort(ref_i, 1)))
        diff = float(np.abs(s - ref_s).max())
        print(
            f"| {name} | {dt:.3f} | {dt / ref_dt:.2f}x | {top1:.4f} | {topk:.4f} | {diff:.1e} "
            f"| {rss / 1024:.0f} (+{grow / 1024:.0f}) |"
        )


if __name__ == "__main__":
    main()
