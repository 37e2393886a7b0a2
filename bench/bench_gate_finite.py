"""What the gate's NaN check costs a reader: one pass over the shards vs one search.

The gate fails closed on a shard holding a NaN (see trainleak.gate.status):
a reader checks every live shard once, on its first score, instead of at
open. This measures that check against one exact search of a batch of
queries over the same memory-mapped shard (the search reads every row too),
warm page cache, one process. Prints seconds and the ratio.

    .venv/bin/python bench/bench_gate_finite.py [ROWS] [DIM]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trainleak.gate.search import ShardSearch
from trainleak.gate.shards import nonfinite_rows
from trainleak.similarity import Similarity


def main(rows: int = 200_000, dim: int = 512) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vectors.npy"
        out = np.lib.format.open_memmap(path, "w+", np.float32, (rows, dim))
        for b0 in range(0, rows, 65536):
            block = rng.standard_normal((min(65536, rows - b0), dim)).astype(np.float32)
            out[b0 : b0 + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        out.flush()
        del out
        shard = np.load(path, mmap_mode="r")
        queries = np.ascontiguousarray(shard[:64])
        search = ShardSearch([shard], np.zeros(0, np.int64), Similarity("cosine"), "numpy")
        search.knn(queries, 5)  # warm the page cache and the code paths
        t0 = time.perf_counter()
        bad = nonfinite_rows(shard)
        check = time.perf_counter() - t0
        t0 = time.perf_counter()
        search.knn(queries, 5)
        one = time.perf_counter() - t0
    assert len(bad) == 0
    gb = rows * dim * 4 / 2**30
    print(
        f"{rows} x {dim} float32 ({gb:.2f} GiB): NaN check {check:.3f} s, "
        f"one exact search of 64 queries {one:.3f} s, ratio {check / one:.2f}"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
