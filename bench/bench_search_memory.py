"""Peak memory of the exact search with the pixel encoder's mirror rule, by score-block size.

Reproduce (each setting in a fresh process):
    for b in numpy torch; do for mb in 256 64; do
        OMP_NUM_THREADS=2 .venv/bin/python bench/bench_search_memory.py $mb $b; done; done

60,000 random unit 1024-d queries against 6,000 of them (k = 5); prints how
much the process's peak resident set (``VmHWM``) grew during the search and
the seconds it took. Measured on 2 cores (neighbors.SCORE_BLOCK_BYTES'
comment), session 10 (threaded numpy scans, column merge): numpy 241 MB at
256 MB blocks vs 53 MB at 64 MB, 12.4 and 13.1 s; torch 316 MB at 64 MB,
15.5 s. Before (row merge): numpy 1,411 vs 356 MB, both 45 s; torch 550 vs
291 MB, both 35 s.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import trainleak.neighbors as nb
from trainleak.encoders import get_encoder
from trainleak.similarity import Similarity


def peak_mb() -> float:
    """Peak resident set of this process (Linux ``VmHWM``), MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    block_mb, backend = int(sys.argv[1]), sys.argv[2]
    nb.SCORE_BLOCK_BYTES = block_mb * 2**20
    rng = np.random.default_rng(0)
    q = rng.standard_normal((60000, 1024), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    db = q[:6000].copy()
    sim = Similarity.of(get_encoder("pixel").info)
    if backend == "torch":
        import torch  # noqa: F401 - imported before the baseline is read

    base, start = peak_mb(), time.time()
    sim.knn(q, db, 5, backend=backend)  # type: ignore[arg-type]
    grew = round(peak_mb() - base)
    print(json.dumps({"block_mb": block_mb, "backend": backend, "grew_mb": grew,
                      "seconds": round(time.time() - start, 1)}))  # fmt: skip


main()
