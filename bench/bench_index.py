"""Release-gate index at scale: build, open (memory-mapped), search latency, faiss side by side.

    .venv/bin/python bench/bench_index.py --n 1000000            # build, open, latency, faiss
    .venv/bin/python bench/bench_index.py --n 10000000 --big     # build by adds, open, RSS
    .venv/bin/python bench/bench_index.py --stream 200000        # check a folder, RSS over time

Random 512-d unit vectors (seeded); the first queries are noisy copies of
database rows (each must find its row), the rest random. Open time and memory
are measured in a fresh process (imports excluded): resident memory from
/proc/self/status, split into anonymous memory (a copy of the vectors would be
here) and file-backed pages (the memory-map; the kernel may drop them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 512
CHUNK = 1_000_000


def rss() -> dict[str, float]:
    """Resident memory of this process in MB (total, anonymous, file-backed)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def chunk_set(start: int, n: int):
    import trainleak as tl

    rng = np.random.default_rng(start)
    vectors = unit_rows(rng, n)
    ids = [f"v{start + i}" for i in range(n)]
    # metric cosine: tl.embeddings renormalises (a no-op here), name "arrays"
    return tl.embeddings(vectors, ids=ids), vectors


def build(path: Path, n: int) -> float:
    from trainleak.config import IndexConfig
    from trainleak.gate.index import Index

    if path.exists():
        shutil.rmtree(path)
    t0 = time.perf_counter()
    first, _ = chunk_set(0, min(n, CHUNK))
    gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = Index.build(path, first, config=IndexConfig(threshold=0.9, shard_rows=CHUNK))
    del first
    for start in range(CHUNK, n, CHUNK):
        t1 = time.perf_counter()
        more, _ = chunk_set(start, min(CHUNK, n - start))
        gen += time.perf_counter() - t1
        index.add(more)
        print(f"  added rows {start}..{start + len(more)}", flush=True)
        del more
    index.close()
    return time.perf_counter() - t0 - (gen if n > CHUNK else 0)


def open_in_fresh_process(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--open", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def open_only(path: str) -> None:
    from trainleak.gate.index import Index  # imports are not part of the open time

    before = rss()
    t0 = time.perf_counter()
    index = Index.open(path)
    seconds = time.perf_counter() - t0
    after = rss()
    print(json.dumps({"open_s": seconds, "rows": len(index), "rss_before": before, "rss": after}))


def queries(first: int, n_copies: int, n_random: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)
    rows = rng.integers(0, first, n_copies)
    base = unit_rows(np.random.default_rng(0), first)[rows]  # rows of the first chunk
    noisy = base + 0.01 * rng.standard_normal(base.shape, dtype=np.float32)
    q = np.concatenate([noisy, unit_rows(rng, n_random)])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32), rows


def latency(fn, q: np.ndarray, batch: int, repeat: int) -> dict[str, float]:
    """Seconds per query over ``repeat`` batches: the best (least disturbed) and the median."""
    times = []
    for r in range(repeat):
        part = q[(r * batch) % len(q) :][:batch]
        t0 = time.perf_counter()
        fn(part)
        times.append((time.perf_counter() - t0) / len(part))
    return {"best": float(np.min(times)), "median": float(np.median(times))}


def search_bench(path: Path, n: int, faiss_too: bool) -> dict:
    from trainleak.config import CheckConfig
    from trainleak.gate.index import Index

    q, rows = queries(min(n, CHUNK), 64, 192)
    out: dict = {}
    with Index.open(path, config=CheckConfig(search="exact")) as index:
        s, i = index.knn(q[:64], 5)
        assert (i[:, 0] == rows).all(), "exact search missed a planted copy"
        out["exact_1"] = latency(index.knn, q, 1, 10)
        out["exact_256"] = latency(index.knn, q, 256, 3)
        t0 = time.perf_counter()
        verdicts = index.check(q[:256])
        out["check_256_vectors"] = (time.perf_counter() - t0) / 256
        out["blocked"] = sum(v.verdict == "block" for v in verdicts)
        ref = index.knn(q, 5)
    out["rss_after_exact"] = rss()
    if not faiss_too:
        return out
    with Index.open(path, config=CheckConfig(search="faiss")) as index:
        t0 = time.perf_counter()
        index.knn(q[:1], 5)
        out["faiss_load_s"] = time.perf_counter() - t0
        out["faiss_1"] = latency(index.knn, q, 1, 20)
        out["faiss_256"] = latency(index.knn, q, 256, 3)
        got = index.knn(q, 5)
        out["faiss_equals_exact"] = bool(
            np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
        )
        out["rss_after_faiss_index"] = rss()
        # Raw faiss IndexFlatIP on the same vectors, nothing of trainleak around it.
        import faiss

        flat = faiss.IndexFlatIP(DIM)
        t0 = time.perf_counter()
        for shard in index.shards:
            for b in range(0, len(shard), 65536):
                flat.add(np.ascontiguousarray(shard[b : b + 65536]))
        out["raw_faiss_add_s"] = time.perf_counter() - t0
        out["raw_faiss_1"] = latency(lambda x: flat.search(x, 5), q, 1, 20)
        out["raw_faiss_256"] = latency(lambda x: flat.search(x, 5), q, 256, 3)
    return out


def stream_bench(root: Path, n: int) -> None:
    """Check a folder of ``n`` distinct small images; resident memory as verdicts stream out."""
    from PIL import Image

    from trainleak.config import CheckConfig, EmbedConfig, IndexConfig
    from trainleak.gate.index import Index

    folder = root / f"outbox-{n}"
    if not folder.exists():
        rng = np.random.default_rng(5)
        t0 = time.perf_counter()
        for i in range(n):
            sub = folder / f"{i // 1000:04d}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(sub / f"{i}.png")
        print(f"wrote {n} PNGs in {time.perf_counter() - t0:.0f} s", flush=True)
    idx = root / "stream-idx"
    if idx.exists():
        shutil.rmtree(idx)
    embed = EmbedConfig("pixel", workers=2, no_cache=True)
    Index.build(idx, folder / "0000", config=IndexConfig(embed=embed, threshold=0.99)).close()
    samples = []
    t0 = time.perf_counter()
    blocked = 0
    with Index.open(idx, config=CheckConfig(embed=embed, batch=256)) as index:
        for k, v in enumerate(index.iter_check(folder), 1):
            blocked += v.verdict == "block"
            if k % (n // 10) == 0:
                samples.append((k, round(rss()["VmRSS"]), round(time.perf_counter() - t0, 1)))
    print(
        f"checked {n} files, {blocked} blocked (the 1000 indexed ones), "
        f"{n / (time.perf_counter() - t0):.0f} images/s",
        flush=True,
    )
    print("(verdicts, main-process RSS MB, seconds):", samples, flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dir", default="/tmp/trainleak-bench-index")
    p.add_argument("--big", action="store_true", help="build, open and one exact batch only")
    p.add_argument("--keep", action="store_true", help="keep the index folder")
    p.add_argument("--stream", type=int, help="check a folder of this many files instead")
    p.add_argument("--open", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.open:
        open_only(args.open)
        return
    if args.stream:
        stream_bench(Path(args.dir), args.stream)
        return
    import faiss
    import torch

    print(f"load average {os.getloadavg()}", flush=True)
    print(
        f"cores {os.cpu_count()}, torch threads {torch.get_num_threads()}, "
        f"faiss threads {faiss.omp_get_max_threads()}",
        flush=True,
    )
    path = Path(args.dir) / f"idx-{args.n}"
    seconds = build(path, args.n)
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"build {args.n} x {DIM}: {seconds:.1f} s, {size / 1e9:.2f} GB on disk", flush=True)
    opened = [open_in_fresh_process(path) for _ in range(3)]
    print("open (fresh processes):", json.dumps(opened), flush=True)
    if args.big:
        from trainleak.config import CheckConfig
        from trainleak.gate.index import Index

        q, rows = queries(min(args.n, CHUNK), 8, 8)
        with Index.open(path, config=CheckConfig(search="exact")) as index:
            t0 = time.perf_counter()
            _, i = index.knn(q, 5)
            took = time.perf_counter() - t0
            print(
                f"exact search, one batch of {len(q)}: {took:.1f} s; found planted: "
                f"{bool((i[:8, 0] == rows).all())}; rss {rss()}",
                flush=True,
            )
    else:
        print("search:", json.dumps(search_bench(path, args.n, True), indent=1), flush=True)
    print(f"load average {os.getloadavg()}", flush=True)
    if not args.keep:
        shutil.rmtree(path)


if __name__ == "__main__":
    main()
