"""Exact top-k search: trainleak.neighbors.knn against faiss-cpu IndexFlatIP.

Reproduce:
    .venv/bin/python bench/bench_search.py [--n-db 200000] [--n-query 2000] [--dim 512] [--k 10]

faiss's index is built before the rounds (its ``add`` copies the database),
so faiss is timed on its search alone, against ``knn`` on the numpy array.
Each round runs every method once (the order rotates from round to round), so
a slow spell on a shared machine hits all methods of a round alike; the ratio
reported is the median over rounds of each round's time over faiss's.
Every timed call waits ``--gap-ms`` (50) first: faiss's OpenMP threads keep
spinning for a while after its search, and took the cores from whatever ran
next (10,000 x 1,000 at d = 128: knn 1.58x faiss's time back to back, 1.09x
with the gap, where faiss's own search took 32 ms instead of 26).
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

import trainleak.block_search as bs
from trainleak.neighbors import _auto_block, knn


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def faiss_flat_ip(db: np.ndarray) -> faiss.IndexFlatIP:
    """faiss's exact index of ``db``, built once: the rounds time its search alone."""
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    return index


def products_alone(q: np.ndarray, db: np.ndarray) -> None:
    """The float32 matrix products knn makes, without any top-k: the floor of an exact scan.

    As ``knn``'s numpy search (its ``auto`` on the CPU) makes them: one thread
    per slice of the queries (or share of the database, for few queries),
    each with a one-thread BLAS, writing each block's scores into one buffer.
    """
    block = _auto_block(len(q), len(db), db.shape[1])
    shares = bs.thread_shares(len(q), len(db), db.shape[1])
    parts = [(q[rows], start, stop) for rows, start, stop in shares]

    def scan(qs: np.ndarray, start: int, stop: int) -> None:
        columns = len(qs) >= bs.COLUMN_QUERIES
        width = min(block, max(1, stop - start))
        buf = np.empty((width, len(qs)) if columns else (len(qs), width), np.float32)
        for d0 in range(start, stop, block):
            part = db[d0 : min(d0 + block, stop)]
            a, b = (part, qs) if columns else (qs, part)
            np.matmul(a, b.T, out=buf[: len(a), : len(b)])

    if len(parts) == 1:
        scan(*parts[0])
        return
    pool = bs.search_pool(len(parts))  # the search's own threads
    with bs.one_blas_thread():
        for job in [pool.submit(scan, *p) for p in parts]:
            job.result()


def _wide_blocks(mib: float, q: np.ndarray, db: np.ndarray, k: int):
    """``knn`` with a thread's score block above ``TILED_MAX_DIM`` set to ``mib`` MiB."""
    default = bs.WIDE_SCORE_BYTES
    bs.WIDE_SCORE_BYTES = int(mib * 2**20)
    try:
        return knn(q, db, k)
    finally:
        bs.WIDE_SCORE_BYTES = default


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-db", type=int, default=200_000)
    ap.add_argument("--n-query", type=int, default=2_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-torch", action="store_true", help="leave out knn's torch backend")
    ap.add_argument("--gap-ms", type=float, default=50, help="idle time before each timed call")
    ap.add_argument("--block-sizes", type=int, nargs="*", default=[],
                    help="also knn with these fixed database blocks")  # fmt: skip
    ap.add_argument("--wide-score-mib", type=float, nargs="*", default=[],
                    help="also knn with these score blocks (MiB) above TILED_MAX_DIM")  # fmt: skip
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    db = unit_rows(rng, args.n_db, args.dim)
    q = unit_rows(rng, args.n_query, args.dim)
    index = faiss_flat_ip(db)
    runs = {"faiss IndexFlatIP": lambda: index.search(q, args.k)}
    runs["knn (default blocks)"] = lambda: knn(q, db, args.k)
    for block in args.block_sizes:
        runs[f"knn, block {block}"] = lambda b=block: knn(q, db, args.k, block_size=b)
    for mib in args.wide_score_mib:
        runs[f"knn, wide score blocks {mib:g} MiB"] = lambda m=mib: _wide_blocks(m, q, db, args.k)
    runs["matrix products alone (no top-k)"] = lambda: products_alone(q, db)
    if not args.skip_torch:
        runs["knn torch (CPU)"] = lambda: knn(q, db, args.k, backend="torch")
    outputs, rss = {}, {}
    for name, fn in runs.items():  # warm-up, results and memory
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        outputs[name] = fn()
        rss[name] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss0)
    names = list(runs)
    times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(args.gap_ms / 1000)  # the last method's threads go idle
            times[name].append(timed(runs[name]))
    ref_s, ref_i = outputs["faiss IndexFlatIP"]
    ref_t = np.array(times["faiss IndexFlatIP"])
    print(
        f"database {args.n_db} x {args.dim}, {args.n_query} queries, k={args.k}, "
        f"{args.rounds} rounds after a warm-up; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), faiss {faiss.__version__} "
        f"({faiss.omp_get_max_threads()} threads)\n"
    )
    print(
        "| method | best s | median s | vs faiss (median of rounds) | rounds faster than faiss "
        "| top-1 identical | top-k identical | max score diff | peak RSS MB (growth) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        t = np.array(times[name])
        peak, before = rss[name]
        head = f"| {name} | {t.min():.3f} | {np.median(t):.3f} | {np.median(t / ref_t):.2f}x "
        if outputs[name] is None:
            flops = 2 * args.n_query * args.n_db * args.dim / t.min() / 1e9
            print(head + f"| {int(np.sum(t < ref_t))}/{len(t)} | - | - | {flops:.0f} GFLOP/s | - |")
            continue
        s, i = outputs[name]
        top1 = float(np.mean(i[:, 0] == ref_i[:, 0]))
        topk = float(np.mean(np.sort(i, 1) == np.sort(ref_i, 1)))
        diff = float(np.abs(s - ref_s).max())
        print(
            head + f"| {int(np.sum(t < ref_t))}/{len(t)} | {top1:.4f} | {topk:.4f} | {diff:.1e} "
            f"| {peak / 1024:.0f} (+{(peak - before) / 1024:.0f}) |"
        )


if __name__ == "__main__":
    main()
