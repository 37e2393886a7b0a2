"""The compiled search kernels, one thread, each against what it replaced (issue 25 item 1).

Run from the repository root: ``.venv/bin/python bench/bench_search_kernels.py``
(``--sections 6`` runs section 6 only).
Every row is the median of ``--rounds`` rounds that alternate the order of
the methods (single timings on this machine vary by 15%). Sections:

1. the product of 500 queries by 10,000 rows in blocks of several sizes
   (the search's column blocks are at most 2 MB of scores, in multiples of 512 rows);
2. the float64 re-score of the found pairs: numpy's einsum against the C kernel
   (in AVX2 where the processor has it, and in SSE2 sums only), and with
   ``--old-kernels FILE`` against the re-score of another build (e.g. of an
   earlier commit: ``git show 339bfef:src/trainleak/_ctopk.c > old.c; gcc -O3
   -shared -fPIC -I$(python -c "import sysconfig;print(sysconfig.get_paths()['include'])")
   old.c -o old.so``), checking that both give the same bits;
3. one or two queries against 15,000-100,000 rows: the one-pass kernel
   (from d = 768 eight rows at a time, beside it one row at a time), product
   plus compiled merge, and faiss ``IndexFlatIP`` (when installed);
4. the compiled merge of 500 queries x 10,000 rows (blocks of 1,024, 18 kept a
   query): a first pass over the blocks (with its heap inserts) and a second
   pass over the same blocks, where no cell is inserted; where the processor
   has AVX-512, both again with the SSE2 compare only;
5. whole ``knn`` searches (k = 10, 2 threads), each in a new process, with the
   compiled kernels and with ``TRAINLEAK_NATIVE=0`` (the numpy merge);
6. the product and the merge in one pass (``NativeTopK.product``, AVX2 and
   FMA) against the BLAS product in cached blocks and the compiled merge:
   500 queries x 10,000 rows (9 kept) at d = 128 to 512, beside the same
   pass with every list already full (no inserts; also with the AVX2 tiles
   where the processor has AVX-512) and the BLAS product alone, with the
   multiply-adds a second of each, then whole
   one-thread ``knn`` searches of 8 to 32 queries x 100,000 rows (k = 10)
   with and without it (``TILED_MAX_DIM = 0``).
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

import numpy as np
import threadpoolctl

import trainleak.block_search as bs
from trainleak._topk import NativeTopK, fused_product, native
from trainleak.neighbors import knn

ap = argparse.ArgumentParser()
ap.add_argument("--rounds", type=int, default=11)
ap.add_argument("--sections", default="123456", help="which sections to run, e.g. 6")
ap.add_argument("--old-kernels", help="section 2: also the re-score of this build of _ctopk.c")
args = ap.parse_args()
lib = native()
if lib is None:
    raise SystemExit("the compiled kernels are not built (pip install -e . with a C compiler)")
wide = bool(lib.tl_avx512_ok())
rng = np.random.default_rng(0)


def unit(n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rounds(fs: dict, gap: float = 0.0) -> dict:
    res: dict = {k: [] for k in fs}
    for r in range(args.rounds):
        for k, f in fs.items() if r % 2 else reversed(list(fs.items())):
            time.sleep(gap)
            t0 = time.perf_counter()
            f()
            res[k].append(time.perf_counter() - t0)
    return {k: np.median(v) * 1e3 for k, v in res.items()}


def switched(name: str, value: int, f):
    """``f`` run with one of the kernels' int switches set to ``value``, then restored."""
    flag = ctypes.c_int.in_dll(lib, name)

    def run():
        old, flag.value = flag.value, value
        try:
            return f()
        finally:
            flag.value = old

    return run


def rescore(q: np.ndarray, db: np.ndarray, idx: np.ndarray, out: np.ndarray, of=None) -> None:
    """The compiled re-score (of this build, or of the library ``of``)."""
    (of or lib).tl_rescore(db.ctypes.data, db.shape[1], q.ctypes.data, q.shape[1], q.shape[1],
                           idx.ctypes.data, len(q), idx.shape[1], out.ctypes.data)  # fmt: skip


def show(title: str, got: dict) -> None:
    print(f"\n{title}\n| method | median ms |\n|---|---|")
    for k, v in got.items():
        print(f"| {k} | {v:.2f} |")


with threadpoolctl.threadpool_limits(1):
    if "1" in args.sections:
        for d in (128, 512):
            q, db = unit(500, d), unit(10_000, d)

            def blocks(b: int, q=q, db=db):
                out = np.empty((b, len(q)), np.float32)
                return lambda: [np.matmul(db[a : a + b], q.T, out=out[: len(db[a : a + b])])
                                for a in range(0, len(db), b)]  # fmt: skip

            sizes = {f"blocks of {b} rows": blocks(b) for b in (512, 1024, 1048, 2048, 4096)}
            sizes["one block of 10,000 rows"] = blocks(10_000)
            show(f"1. product, 500 queries x 10,000 rows, d = {d}", rounds(sizes))

    if "2" in args.sections:
        old = None
        if args.old_kernels:
            old = ctypes.CDLL(args.old_kernels)
            old.tl_rescore.argtypes = lib.tl_rescore.argtypes
            old.tl_rescore.restype = None
        for n, m, d, kk in ((1000, 10_000, 128, 9), (2000, 100_000, 128, 18),
                            (1000, 10_000, 512, 9), (2000, 100_000, 512, 18),
                            (1000, 10_000, 1024, 18), (1000, 10_000, 3072, 18),
                            (1000, 30_000, 3072, 9)):  # fmt: skip
            q, db = unit(n, d), unit(m, d)
            idx = rng.integers(0, len(db), (len(q), kk)).astype(np.int64)
            out = np.empty(idx.shape, np.float32)
            fs = {
                "numpy einsum (float32 rows widened)":
                    lambda q=q, db=db, idx=idx: np.einsum("nkd,nd->nk", db[idx], q,
                                                          dtype=np.float64),
                "C kernel": lambda q=q, db=db, idx=idx, out=out: rescore(q, db, idx, out),
                "C kernel, SSE2 sums only": switched("tl_wide_rescore", 0,
                    lambda q=q, db=db, idx=idx, out=out: rescore(q, db, idx, out)),
            }  # fmt: skip
            if old is not None:
                mine, theirs = np.empty_like(out), np.empty_like(out)
                rescore(q, db, idx, mine)
                rescore(q, db, idx, theirs, old)
                assert (mine.view(np.int32) == theirs.view(np.int32)).all(), "not the same bits"
                fs["C kernel of --old-kernels"] = (
                    lambda q=q, db=db, idx=idx, out=out: rescore(q, db, idx, out, old))
            show(f"2. float64 re-score of {n:,} x {kk} pairs, d = {d}, {m:,} rows", rounds(fs))

    if "3" in args.sections:
        try:
            import faiss
        except ImportError:
            faiss = None
        group = ctypes.c_int.in_dll(lib, "tl_scan_group_dim")
        long_rows = group.value
        for d, nq, m in ((128, 1, 100_000), (128, 2, 100_000), (512, 1, 100_000),
                         (1024, 1, 50_000), (3072, 1, 15_000), (3072, 2, 15_000)):  # fmt: skip
            q, db = unit(nq, d), unit(m, d)
            scores = np.empty((nq, len(db)), np.float32)

            def one_pass(q=q, db=db, at=long_rows):
                group.value = at
                NativeTopK(len(q), 18, lib).scan(db, q, 0)
                group.value = long_rows

            def product_and_merge(q=q, db=db, scores=scores):
                np.matmul(q, db.T, out=scores)
                NativeTopK(len(q), 18, lib).merge(scores, 0)

            fs = {"one pass (scan)": one_pass, "product + compiled merge": product_and_merge}
            if d >= long_rows and fused_product():
                fs["one pass, one row at a time"] = lambda one_pass=one_pass: one_pass(at=2**30)
            if faiss is not None:
                faiss.omp_set_num_threads(1)
                index = faiss.IndexFlatIP(d)
                index.add(db)
                fs["faiss IndexFlatIP"] = lambda index=index, q=q: index.search(q, 10)
            show(f"3. {nq} quer{'y' if nq == 1 else 'ies'} x {m:,} rows, d = {d}",
                 rounds(fs, gap=0.02))  # fmt: skip

    if "4" in args.sections:
        q, db = unit(500, 128), unit(10_000, 128)
        blocks = [np.matmul(db[a : a + 1024], q.T) for a in range(0, len(db), 1024)]

        def merge_all(top: NativeTopK) -> NativeTopK:
            for j, b in enumerate(blocks):
                top.merge_columns(b, j * 1024)
            return top

        def passes() -> tuple[float, float]:
            t0 = time.perf_counter()
            top = merge_all(NativeTopK(len(q), 18, lib))
            t1 = time.perf_counter()
            merge_all(top)
            return t1 - t0, time.perf_counter() - t1

        ways = {"": passes}
        if wide:  # the sixteen-lane compare against the SSE2 compare, alternating
            ways[", SSE2 compare only"] = switched("tl_wide_merge", 0, passes)
        times: dict = {way: [] for way in ways}
        for r in range(args.rounds):
            for way in ways if r % 2 else reversed(list(ways)):
                times[way].append(ways[way]())
        got = {}
        for way, ts in times.items():
            got[f"first pass (inserts){way}"] = np.median([a for a, _ in ts]) * 1e3
            got[f"second pass (no inserts){way}"] = np.median([b for _, b in ts]) * 1e3
        show("4. compiled merge, 500 queries x 10,000 rows, d = 128, 18 kept", got)

    if "6" in args.sections:
        if fused_product():
            for d in (128, 256, 384, 512):
                q, db = unit(500, d), unit(10_000, d)
                rows = bs._cached_bytes(d) // (4 * len(q)) // bs.CACHED_ROWS * bs.CACHED_ROWS
                out = np.empty((rows, len(q)), np.float32)

                def tiled(q=q, db=db):
                    top = NativeTopK(len(q), 9, lib)
                    top.product(db, top.pack(q), 0, None)

                def blas_and_merge(q=q, db=db, rows=rows, out=out):
                    top = NativeTopK(len(q), 9, lib)
                    for a in range(0, len(db), rows):
                        part = db[a : a + rows]
                        top.merge_columns(np.matmul(part, q.T, out=out[: len(part)]), a)

                def full_lists(q=q, db=db):  # the bars already at the end's: no inserts
                    top = NativeTopK(len(q), 9, lib)
                    top.kth[:] = np.inf
                    top.product(db, top.pack(q), 0, None)

                def blas_alone(q=q, db=db, rows=rows, out=out):
                    for a in range(0, len(db), rows):
                        part = db[a : a + rows]
                        np.matmul(part, q.T, out=out[: len(part)])

                fs = {"one pass (product)": tiled,
                      "BLAS product + compiled merge": blas_and_merge,
                      "one pass, no inserts": full_lists,
                      "BLAS product alone": blas_alone}  # fmt: skip
                if wide:
                    fs["one pass, no inserts, AVX2 tiles"] = switched(
                        "tl_wide_product", 0, full_lists)
                got = rounds(fs)
                macs = len(q) * len(db) * d / 1e6  # a GMAC/s is this over the milliseconds
                show(f"6a. 500 queries x 10,000 rows, d = {d}, 9 kept", got)
                print("GMAC/s: " + ", ".join(f"{k} {macs / v:.0f}" for k, v in got.items()
                                              if "inserts" in k or "alone" in k))  # fmt: skip
            db = unit(100_000, 128)
            tiled_max = bs.TILED_MAX_DIM
            for nq in (8, 12, 16, 32):
                q = unit(nq, 128)

                def search(dim: int, q=q) -> None:
                    bs.TILED_MAX_DIM = dim
                    knn(q, db, 10)

                fs = {"one pass (product)": lambda: search(tiled_max),
                      "BLAS product + compiled merge": lambda: search(0)}  # fmt: skip
                got = rounds(fs, gap=0.02)
                bs.TILED_MAX_DIM = tiled_max
                show(f"6b. knn, {nq} queries x 100,000 rows, d = 128, k = 10", got)
        else:
            print("\n6. skipped: this processor has no AVX2 and FMA")

WHOLE = """
import json, time, numpy as np
from trainleak.neighbors import knn
rng = np.random.default_rng(0)
out = {}
shapes = [(10_000, 1_000, 128), (10_000, 1_000, 512), (100_000, 1, 128), (100_000, 2_000, 128)]
for m, n, d in shapes:
    db = rng.standard_normal((m, d)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[rng.integers(0, m, n)] + 0.1 * rng.standard_normal((n, d)).astype(np.float32)
    knn(q, db, 10)
    ts = []
    for _ in range(%d):
        time.sleep(0.05)
        t0 = time.perf_counter()
        knn(q, db, 10)
        ts.append(time.perf_counter() - t0)
    out[f"{m:,} rows x {n:,} queries, d = {d}"] = float(np.median(ts)) * 1e3
print(json.dumps(out))
"""
if "5" in args.sections:
    got: dict = {}
    for flag in ("1", "0", "1", "0"):  # two processes each, alternating
        env = {**os.environ, "TRAINLEAK_NATIVE": flag, "OMP_NUM_THREADS": "2"}
        run = subprocess.run([sys.executable, "-c", WHOLE % args.rounds], env=env, check=True,
                             capture_output=True, text=True)  # fmt: skip
        for shape, ms in json.loads(run.stdout).items():
            got.setdefault(shape, {}).setdefault(flag, []).append(ms)
    print("\n5. whole knn, 2 threads, k = 10 (median ms of each process)")
    print("| shape | compiled | numpy merge | numpy / compiled |\n|---|---|---|---|")
    for shape, by in got.items():
        ratio = sum(by["0"]) / sum(by["1"])
        native_ms, numpy_ms = (", ".join(f"{x:.1f}" for x in by[f]) for f in ("1", "0"))
        print(f"| {shape} | {native_ms} | {numpy_ms} | {ratio:.2f} |")
