"""OpenBLAS's idle threads and the search's own threads (bench/README, session 14).

After a multi-threaded BLAS call, OpenBLAS's worker threads keep spinning for
a while before they sleep. A search that then runs on its own threads (one
BLAS thread each) shares a core with a spinning worker. This times one query
against 100,000 rows at d = 1,024, scanned by two threads each with a
one-thread BLAS (as ``knn`` does for few queries), started at several gaps
after a two-thread product, and after no product at all.

Reproduce (two threads; the second run lets the workers sleep at once):
    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_blas_spin.py
    OPENBLAS_THREAD_TIMEOUT=4 OMP_NUM_THREADS=2 .venv/bin/python bench/bench_blas_spin.py
"""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from trainleak.device import one_blas_thread

N, D, BLOCK, ROUNDS = 100_000, 1024, 16_384, 7
rng = np.random.default_rng(0)
db = rng.standard_normal((N, D), dtype=np.float32)
q = rng.standard_normal((1, D), dtype=np.float32)
outs = [np.empty((1, BLOCK), np.float32) for _ in range(2)]
pool = ThreadPoolExecutor(2)
square = rng.standard_normal((600, 600), dtype=np.float32)


def scan(lo: int, hi: int, out: np.ndarray) -> None:
    for d0 in range(lo, hi, BLOCK):
        part = db[d0 : min(d0 + BLOCK, hi)]
        np.matmul(q, part.T, out=out[:, : len(part)])


def two_threads() -> None:
    with one_blas_thread():
        list(pool.map(lambda a: scan(*a), [(0, N // 2, outs[0]), (N // 2, N, outs[1])]))


two_threads()
for gap in (0.005, 0.02, 0.05, 0.1, 0.2, 0.4):
    ts = []
    for _ in range(ROUNDS):
        square @ square  # a two-thread BLAS call
        time.sleep(gap)
        t0 = time.perf_counter()
        two_threads()
        ts.append(time.perf_counter() - t0)
    print(f"{gap * 1e3:5.0f} ms after a two-thread product: two-thread scan "
          f"{np.median(ts) * 1e3:.1f} ms")  # fmt: skip
ts = []
for _ in range(ROUNDS):
    time.sleep(0.2)
    t0 = time.perf_counter()
    two_threads()
    ts.append(time.perf_counter() - t0)
print(f"no product before (0.2 s idle): {np.median(ts) * 1e3:.1f} ms")
