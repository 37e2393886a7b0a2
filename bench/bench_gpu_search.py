"""Exact top-k search on a CUDA device vs the CPU: ``trainleak.neighbors.knn`` with ``device``.

Random unit rows (seeded): a database of ``--n-db`` rows and ``--queries``
queries of ``--dim`` dimensions. The CUDA search runs on every query; the CPU
search (torch backend, ``--threads``) on the first ``--check`` queries only,
both to time it and to check that the two return the same neighbours. The CPU
time for all queries is projected linearly from that slice and marked so.

    python bench/bench_gpu_search.py --n-db 1000000 --queries 100000

Prints one JSON line. Needs a CUDA device; exits 2 without one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-db", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--check", type=int, default=2000, help="queries also searched on the CPU")
    ap.add_argument("--threads", type=int, default=8, help="CPU torch threads")
    args = ap.parse_args()
    import torch

    from trainleak.neighbors import knn

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    db, q = unit_rows(args.n_db, args.dim, 0), unit_rows(args.queries, args.dim, 1)
    knn(q[:64], db[:4096], args.k, backend="torch", device="cuda")  # CUDA context, kernels
    t0 = time.perf_counter()
    s_gpu, i_gpu = knn(q, db, args.k, backend="torch", device="cuda")
    gpu_s = time.perf_counter() - t0
    c = min(args.check, args.queries)
    t0 = time.perf_counter()
    s_cpu, i_cpu = knn(q[:c], db, args.k, backend="torch", device="cpu")
    cpu_s = time.perf_counter() - t0
    same = float((i_cpu == i_gpu[:c]).all(axis=1).mean())
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(0),
                "n_db": args.n_db,
                "queries": args.queries,
                "dim": args.dim,
                "k": args.k,
                "cuda_seconds": gpu_s,
                "cuda_queries_per_s": args.queries / gpu_s,
                "cpu_threads": args.threads,
                "cpu_seconds_for_check": cpu_s,
                "cpu_seconds_projected_all": cpu_s * args.queries / c,
                "same_neighbours_fraction": same,
                "max_score_diff": float(np.abs(s_cpu - s_gpu[:c]).max()),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
