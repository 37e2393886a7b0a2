"""Approximate search at scale: ``knn(search="approx")`` against the exact search.

The vectors are real image content, not random numbers (which defeat any
clustering) nor a few tight clusters (which flatter it): ``--rows`` distinct
16 x 8 crops (128 values) of real photographs - the photos scikit-image
ships, the 1,000 COIL-20 views and the 400 ORL faces at 92 x 112 - taken at
scales 1-3 (block-averaged) at seeded random positions, each centred on its
own mean and L2-normalised (flat crops are dropped). Duplicated crops are
kept: a self-search must still find them, as dedup would.

A self-search (every row is a query, its own row left out), ``k`` neighbours,
with recall@k measured by the search itself on 1,000 sampled queries and
checked here on another ``--check`` queries against the exact search. Peak
RSS of the process is read from ``/proc/self/status`` (VmHWM).

``--compare`` first times IVF-flat (this module's choice) against HNSW
(``IndexHNSWFlat``, M = 32) on the first ``--compare`` rows, each tuned to
recall@10 >= 0.99 on the same sample.

``--memmap DIR`` writes the rows to ``DIR/rows-N.npy`` (a million at a
time, each million its own seeded crops; reused when it exists) and searches
the memory-mapped file, the index built on disk past ``--memory-mb`` of
rows (:mod:`trainleak.approx_search`): with ``--queries`` a fraction of the
rows, this is the 10M-row run. The peak of anonymous memory (``RssAnon``,
sampled every 0.2 s: what the process holds, not the pages of the mapped
files, which the kernel can drop) is printed beside ``VmHWM``.

``--faiss-queries N`` first runs the same search of the first N rows twice,
once with faiss's per-query scan forced and once grouped by inverted list
(:mod:`trainleak._ivf_join`), so their ratio is measured in one run; the
search of all queries then runs as the library chooses. ``--crossover`` times
the two candidate searches alone at 250 to 16,000 queries. ``--build-threads
1,2`` only times the index build with each faiss thread count.

Reproduce: OMP_NUM_THREADS=2 nice .venv/bin/python bench/bench_approx.py --rows 1000000
(and --rows 100000 / 200000 --faiss-queries 20000 --crossover for the path table).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import logging
import os
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from trainleak import _ivf_join, approx_search
from trainleak._topk import native
from trainleak.approx_search import ApproxSettings, candidates, recall_at_k, use_search
from trainleak.neighbors import knn

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHOTOS = (
    "astronaut",
    "camera",
    "coffee",
    "rocket",
    "chelsea",
    "brick",
    "grass",
    "gravel",
    "moon",
    "page",
    "text",
    "coins",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
)


def real_images() -> list[np.ndarray]:
    """Grey float images: scikit-image's photos, COIL-20 and ORL 92 x 112."""
    import skimage.data

    out = []
    for name in PHOTOS:
        try:
            im = np.asarray(getattr(skimage.data, name)(), np.float32)
        except Exception:  # noqa: BLE001 - a photo the installed scikit-image lacks
            continue
        out.append(im[..., :3].mean(-1) if im.ndim == 3 else im)
    for pattern in ("coil20/*.png", "orl_faces_92x112/s*/*.pgm"):
        for p in sorted(glob.glob(str(DATA / pattern))):
            out.append(np.asarray(Image.open(p).convert("L"), np.float32))
    return out


def crops(rows: int, seed: int = 0) -> np.ndarray:
    """``(rows, 128)`` unit vectors of real image crops (see the module docstring)."""
    rng = np.random.default_rng(seed)
    images = real_images()
    pools = []
    for im in images:
        for s in (1, 2, 3):
            h, w = im.shape[0] // s * s, im.shape[1] // s * s
            small = im[:h, :w].reshape(h // s, s, w // s, s).mean((1, 3))
            if small.shape[0] >= 16 and small.shape[1] >= 8:
                pools.append(sliding_window_view(small, (16, 8)))
    sizes = np.array([p.shape[0] * p.shape[1] for p in pools], np.float64)
    out = np.empty((rows, 128), np.float32)
    filled = 0
    while filled < rows:
        pick = rng.choice(len(pools), size=min(rows - filled, 200_000) * 2, p=sizes / sizes.sum())
        batch = []
        for j in np.unique(pick):
            pool = pools[j]
            cnt = int((pick == j).sum())
            ys = rng.integers(0, pool.shape[0], cnt)
            xs = rng.integers(0, pool.shape[1], cnt)
            batch.append(pool[ys, xs].reshape(cnt, 128))
        b = np.concatenate(batch)
        b -= b.mean(1, keepdims=True)
        norm = np.linalg.norm(b, axis=1)
        b = b[norm > 1.0] / norm[norm > 1.0, None]  # flat crops (sky, page margin) carry nothing
        take = min(rows - filled, len(b))
        out[filled : filled + take] = b[:take]
        filled += take
    return out[rng.permutation(rows)]


#: Temporary folders of on-disk indexes reused from one search to the next (removed at exit).
SCRATCH: list = []


def memmap_rows(rows: int, folder: Path) -> np.ndarray:
    """The crops of :func:`crops`, a million at a time, in a memory-mapped ``.npy`` file."""
    path = folder / f"rows-{rows}.npy"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        out = np.lib.format.open_memmap(part, "w+", np.float32, (rows, 128))
        for b, r0 in enumerate(range(0, rows, 1_000_000)):
            n = min(1_000_000, rows - r0)
            out[r0 : r0 + n] = crops(n, seed=b)
            out.flush()
        del out
        part.rename(path)
    return np.load(path, mmap_mode="r")


class AnonPeak:
    """The largest ``RssAnon`` of this process, sampled on a thread every 0.2 s."""

    def __init__(self) -> None:
        import threading

        self.mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.mb = max(self.mb, status_mb("RssAnon"))


def status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmHWM``, ``RssAnon``...), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return status_mb("VmHWM")


def compare(x: np.ndarray, k: int) -> None:
    """IVF-flat vs HNSW on ``x``, each tuned to recall@k >= 0.99 on 1,000 queries."""
    import faiss

    from trainleak.approx_search import build_index, default_nlist

    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), 1000, replace=False)]
    es, ei = knn(q, x, k, search="exact")
    print(f"\n### IVF-flat vs HNSW, {len(x):,} rows, 1,000 queries, k={k}\n")
    print("| index | build s | nprobe / efSearch | recall@k | search s (1,000 q) | index MB |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    ivf = build_index(x, default_nlist(len(x)), 0)
    build = time.perf_counter() - t0
    for name, index, knob in (("IVF-flat", ivf, "nprobe"), ("HNSW32", None, "efSearch")):
        if index is None:
            t0 = time.perf_counter()
            index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
            index.add(x)
            build = time.perf_counter() - t0
        value = 1
        while True:
            if knob == "nprobe":
                index.nprobe = value
            else:
                index.hnsw.efSearch = value
            t0 = time.perf_counter()
            s, i = index.search(q, k)
            dt = time.perf_counter() - t0
            r = recall_at_k(s.astype(np.float64), i, es.astype(np.float64) - 1e-6, ei)
            if r >= 0.99 or value >= 4096:
                break
            value *= 2
        mb = faiss.serialize_index(index).nbytes / 2**20
        print(f"| {name} | {build:.1f} | {value} | {r:.4f} | {dt:.2f} | {mb:.0f} |")


def exact_check(x: np.ndarray, nq: int, k: int, n: int) -> tuple[np.ndarray, ...]:
    """``n`` seeded rows among the first ``nq`` and their exact top-k, own row left out."""
    rows = np.sort(np.random.default_rng(7).choice(nq, min(n, nq), replace=False))
    es, ei = knn(x[rows], x, k + 1, search="exact")
    own = ei == rows[:, None]
    es = np.where(own, -np.inf, es)
    order = np.argsort(-es, axis=1, kind="stable")[:, :k]
    es, ei = np.take_along_axis(es, order, 1), np.take_along_axis(np.where(own, -1, ei), order, 1)
    return rows, es, ei


def search(
    x: np.ndarray, nq: int, k: int, path: str, indexes: dict, memory_mb: float = 1024
) -> tuple:
    """One ``knn(search="approx")`` self-search of the first ``nq`` rows on ``path``.

    ``faiss`` forces faiss's per-query scan (the grouped path's threshold set
    out of reach), ``grouped`` the grouped one, ``auto`` leaves the choice to
    the library. ``indexes`` carries the built index from one path to the next.
    """
    names = ("MIN_PAIRS_PER_LIST", "MIN_LIST_ROWS", "MIN_LIST_ROWS_COMPILED")
    saved = [getattr(_ivf_join, n) for n in names]
    if path != "auto":
        for n in names:
            setattr(_ivf_join, n, 0 if path == "grouped" else 2**62)
    try:
        t0 = time.perf_counter()
        settings = ApproxSettings(memory_mb=memory_mb)
        with use_search("approx", settings) as ctx:
            ctx.indexes.update(indexes)
            s, i = knn(x[:nq], x, k, exclude_self=True)
            indexes.update(ctx.indexes)
            dt = time.perf_counter() - t0
            SCRATCH.extend(ctx.scratch)  # an on-disk index's folder lives on with the index
            ctx.scratch.clear()
    finally:
        for n, v in zip(names, saved, strict=True):
            setattr(_ivf_join, n, v)
    return s, i, dt, ctx.records[0]


def crossover(index: object, x: np.ndarray, nprobe: int, k: int) -> None:
    """Candidate search alone, faiss's per-query scan against the grouped one, by query count."""
    print(f"\n### candidates alone at nprobe {nprobe}: faiss per query vs grouped by list\n")
    print("| queries | pairs per list | faiss s | grouped s | faiss / grouped |")
    print("|---|---|---|---|---|")
    nlist, ntotal = index.nlist, index.ntotal  # type: ignore[attr-defined]
    for m in (250, 1000, 4000, 16000):
        q = x[:m]
        t0 = time.perf_counter()
        candidates(index, q, k + 9, nprobe, grouped=False)
        tf = time.perf_counter() - t0
        t0 = time.perf_counter()
        candidates(index, q, k + 9, nprobe, grouped=True)
        tg = time.perf_counter() - t0
        pairs = min(m, _ivf_join.BLOCK) * nprobe / nlist * ntotal / nlist
        print(f"| {m:,} | {pairs:,.0f} | {tf:.2f} | {tg:.2f} | {tf / tg:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--check", type=int, default=1000)
    ap.add_argument(
        "--queries", type=int, default=0, help="search only the first N rows (0 = all; a fraction)"
    )
    ap.add_argument("--faiss-queries", type=int, default=0, help="both paths on N rows (0 = skip)")
    ap.add_argument("--crossover", action="store_true", help="time both candidate paths by size")
    ap.add_argument("--compare", type=int, default=0, help="rows for IVF vs HNSW (0 = skip)")
    ap.add_argument("--build-threads", default="", help="only time the build with each, e.g. 1,2")
    ap.add_argument("--memmap", type=Path, help="rows in a memory-mapped file in this folder")
    ap.add_argument("--memory-mb", type=float, default=1024, help="ApproxSettings.memory_mb")
    ap.add_argument("--join", choices=["compiled", "torch"], default="compiled",
                    help="how the grouped path scores each list (torch: the fallback)")  # fmt: skip
    ap.add_argument("--avx2-tiles", action="store_true",
                    help="the compiled join in its AVX2 tiles even where AVX-512 runs")  # fmt: skip
    args = ap.parse_args()
    _ivf_join.COMPILED = args.join == "compiled"
    if args.avx2_tiles:
        lib = native()
        if lib is None:
            raise SystemExit("--avx2-tiles: the compiled kernels are not built")
        ctypes.c_int.in_dll(lib, "tl_wide_product").value = 0
    anon = AnonPeak()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("trainleak._ivf_join").setLevel(logging.DEBUG)  # progress of long runs
    print(f"load average at start: {os.getloadavg()}")
    t0 = time.perf_counter()
    x = memmap_rows(args.rows, args.memmap) if args.memmap else crops(args.rows)
    print(f"{len(x):,} real-crop vectors (d=128) made in {time.perf_counter() - t0:.1f} s, "
          f"{peak_mb():.0f} MB peak so far, {anon.mb:.0f} MB anonymous")  # fmt: skip
    if args.memmap:
        anon.mb = 0.0  # what follows is the search's
    if args.compare:
        compare(x[: args.compare], args.k)
    for threads in filter(None, args.build_threads.split(",")):
        approx_search.BUILD_THREADS = int(threads)
        t0 = time.perf_counter()
        approx_search.build_index(x, approx_search.default_nlist(len(x)), 0)
        print(f"build on {threads} faiss thread(s): {time.perf_counter() - t0:.1f} s; "
              f"load average now {os.getloadavg()}", flush=True)  # fmt: skip
    if args.build_threads:
        return
    nq = args.queries or len(x)
    runs = [("auto", nq)]
    if args.faiss_queries:
        runs = [("faiss", args.faiss_queries), ("grouped", args.faiss_queries), *runs]
    indexes: dict = {}
    print(f"\n### approx self-search, {len(x):,} rows, k={args.k}\n")
    print("| path | queries | total s | build s | recall samples s | search s | us/query "
          "| nlist | nprobe | recall@k (run) | recall@k (check) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    found = {}
    for path, m in runs:
        s, i, dt, rec = search(x, m, args.k, path, indexes, args.memory_mb)
        rows, es, ei = exact_check(x, m, args.k, args.check)
        check = recall_at_k(s[rows], i[rows], es, ei)
        t = rec.seconds - rec.build_seconds - rec.check_seconds
        print(f"| {path} | {m:,} | {dt:.1f} | {rec.build_seconds:.1f} | {rec.check_seconds:.1f} "
              f"| {t:.1f} | {t / m * 1e6:.0f} | {rec.nlist} | {rec.nprobe} | "
              f"{rec.recall_at_k:.4f} ({rec.sampled_queries}) | {check:.4f} ({len(rows)}) |",
              flush=True)  # fmt: skip
        found[path] = i[: args.faiss_queries or 1]
    if args.faiss_queries:
        same = (np.sort(found["faiss"], 1) == np.sort(found["grouped"], 1)).all(1).mean()
        print(f"\nrows with the same {args.k} neighbours on both paths: {same:.5f}")
    if args.crossover:
        (index,) = indexes.values()
        crossover(index, x, rec.nprobe, args.k)
    print(f"\npeak RSS {peak_mb():.0f} MB, peak anonymous memory {anon.mb:.0f} MB"
          f"{' (after making the rows)' if args.memmap else ''}; "
          f"load average at end: {os.getloadavg()}")  # fmt: skip


if __name__ == "__main__":
    main()
