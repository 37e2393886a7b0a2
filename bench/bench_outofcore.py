"""Out-of-core exact search: peak resident memory vs number of queries (it must stay flat).

Reproduce:
    .venv/bin/python bench/bench_outofcore.py [--n-db 20000] [--dim 128] [--k 10]
        [--queries 16384,65536,262144] [--query-rows 8192] [--in-memory]

Writes a random database (unit rows, seeded) and the largest query set to
``.npy`` files in a temporary folder, then, for each query count, runs one
fresh process that searches the first N queries with
``trainleak.outofcore.knn_files`` (database memory-mapped, queries read a
block at a time, results written a block at a time) and reports its peak
resident set (``VmHWM``: anonymous and file-backed pages together, so the
database's mapped pages count), the part of it taken before the search
(interpreter, numpy and torch), and the wall time. ``--in-memory`` also runs
``Similarity.knn`` on all N queries loaded at once, the way an audit
searches, for contrast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trainleak.outofcore import NpyWriter

CHILD = r"""
import json, sys, time
import numpy as np
import torch  # imported before the baseline, as the search may import it
from trainleak.outofcore import knn_files, read_blocks
from trainleak.similarity import Similarity

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

folder, mode = sys.argv[1], sys.argv[5]
n, k, rows = (int(a) for a in sys.argv[2:5])
queries = f"{folder}/q{n}.npy"
base = status("VmHWM")
t0 = time.perf_counter()
if mode == "stream":
    knn_files(queries, f"{folder}/db.npy", f"{folder}/out{n}", k, query_rows=rows)
else:
    q = np.concatenate(list(read_blocks(queries, 65536)))
    s, i = Similarity().knn(q, np.load(f"{folder}/db.npy"), k)
seconds = time.perf_counter() - t0
print(json.dumps({"base_mb": base, "peak_mb": status("VmHWM"), "seconds": seconds}))
"""


def write_rows(path: Path, n: int, dim: int, rng: np.random.Generator) -> None:
    with NpyWriter(path, dim) as out:
        for r0 in range(0, n, 50_000):
            x = rng.standard_normal((min(50_000, n - r0), dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out.write(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-db", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", default="16384,65536,262144")
    ap.add_argument("--query-rows", type=int, default=8192)
    ap.add_argument("--in-memory", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counts = [int(c) for c in args.queries.split(",")]
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_rows(folder / "db.npy", args.n_db, args.dim, rng)
        for n in counts:
            write_rows(folder / f"q{n}.npy", n, args.dim, np.random.default_rng(args.seed + 1))
        modes = ["stream", "in-memory"] if args.in_memory else ["stream"]
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.1f}; database {args.n_db} x {args.dim} float32 "
            f"({args.n_db * args.dim * 4 / 2**20:.0f} MB), k={args.k}, "
            f"query block {args.query_rows}"
        )
        print(
            "| mode | queries | q x db score matrix | peak RSS MB | before search MB | "
            "search MB | seconds |"
        )
        print("|---|---|---|---|---|---|---|")
        for mode in modes:
            for n in counts:
                proc = subprocess.run(
                    [sys.executable, "-c", CHILD, str(folder), str(n), str(args.k),
                     str(args.query_rows), mode],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                r = json.loads(proc.stdout)
                full = n * args.n_db * 4 / 2**30
                print(
                    f"| {mode} | {n:,} | {full:.1f} GB | {r['peak_mb']:.0f} | {r['base_mb']:.0f} "
                    f"| {r['peak_mb'] - r['base_mb']:.0f} | {r['seconds']:.1f} |",
                    flush=True,
                )
        print(f"# finished {time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
