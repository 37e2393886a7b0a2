"""Reports at scale (issue 15 items 4 and 5): whole audits, their peak memory and report share.

Reproduce (each part runs every measurement in a fresh process):
    nice -n 10 .venv/bin/python bench/bench_report_scale.py pixel --n 50000
    nice -n 10 .venv/bin/python bench/bench_report_scale.py vectors --n-train 1000000 \
        --n-synth 50000
    nice -n 10 .venv/bin/python bench/bench_report_scale.py search --n-db 1000000 \
        --queries 20000 [--dim 128]

``pixel``: writes ``n`` training and ``n`` synthetic 32 x 32 PNG images (random
colour blocks plus noise; 1% of the synthetic ones are noisy copies of
training images) to a temporary folder, then runs ``trainleak audit
--encoder pixel -O size=16`` on them twice with one cache folder: cold
(embedding everything) and warm (every vector from the store). ``vectors``:
random unit 128-d vectors (1% planted copies) saved as ``.npy``, memory-mapped
and audited with ``audit_embeddings`` (the array path of ``tl.audit``).
Both print, per run: wall time, the main process's peak RSS (``VmHWM``), and
the seconds spent building the report dict and writing the report files
(report.json, report.html and the parquet table), timed by wrapping
``_leakage.build_report`` and ``AuditResult.write`` in the child.

``search``: ``queries`` x ``n_db`` random unit vectors, top-10 exact search
with trainleak (``Similarity.knn``, all queries in memory, and
``outofcore.knn_files``, queries streamed) vs faiss ``IndexFlatIP``, each in
a fresh process with its peak RSS (one thread each unless ``--threads``);
the seconds per 1,000 queries give the projection to a million queries
(the search is linear in the queries).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUN_AUDIT = r"""
import json, sys, time

def vmhwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

from trainleak.audits import _leakage as leakage
timed = {"build": 0.0, "write": 0.0}

def timing(name, fn):
    def wrapped(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            timed[name] += time.perf_counter() - t
    return wrapped

leakage.build_report = timing("build", leakage.build_report)
leakage.AuditResult.write = timing("write", leakage.AuditResult.write)
mode, rest = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
if mode == "cli":
    from trainleak.cli import main
    code = main(rest)
else:
    import numpy as np
    import trainleak as tl
    from trainleak.config import AuditConfig
    from trainleak.outofcore import open_vectors
    folder, out = rest
    sets = {}
    for name in ("train", "synth"):
        x = open_vectors(f"{folder}/{name}.npy")
        sets[name] = tl.embeddings(x, ids=[f"{name}/{i:07d}.png" for i in range(len(x))])
    train, synth = sets["train"], sets["synth"]
    t_load = time.perf_counter() - t0
    result = leakage.audit_embeddings(train, synth, config=AuditConfig(threshold=0.9))
    result.write(out)
    code = 0
    timed["load"] = t_load
wall = time.perf_counter() - t0
print(json.dumps({"code": code, "seconds": wall, "peak_mb": vmhwm(), **timed}))
"""

RUN_SEARCH = r"""
import json, sys, time
import numpy as np

def vmhwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

folder, how, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
if how == "faiss":
    import faiss
else:
    import torch
    from trainleak.similarity import Similarity
    from trainleak.outofcore import knn_files
base = vmhwm()
t0 = time.perf_counter()
if how == "faiss":
    db = np.load(f"{folder}/db.npy")
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    del db
    q = np.load(f"{folder}/q.npy")
    t1 = time.perf_counter()
    s, i = index.search(q, k)
elif how == "knn":
    db, q = np.load(f"{folder}/db.npy"), np.load(f"{folder}/q.npy")
    t1 = time.perf_counter()
    s, i = Similarity().knn(q, db, k)
else:
    t1 = time.perf_counter()
    s, i = knn_files(f"{folder}/q.npy", f"{folder}/db.npy", f"{folder}/out", k)
    s, i = np.load(s), np.load(i)
t2 = time.perf_counter()
np.save(f"{folder}/{how}_idx.npy", np.asarray(i))
print(json.dumps({"seconds": t2 - t1, "load_s": t1 - t0, "peak_mb": vmhwm(), "base_mb": base}))
"""


THREADS = "1"


def _child(code: str, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def _images(folder: Path, n: int, seed: int, copies_of: Path | None = None) -> None:
    """``n`` 32 x 32 PNGs: random 4 x 4 colour blocks (8 x 8 pixels each) plus pixel noise.

    With ``copies_of``, every 100th image is that folder's image of the same
    name plus light noise (a planted copy).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for a in range(0, n, 1000):
        m = min(1000, n - a)
        coarse = rng.uniform(0, 255, (m, 4, 4, 3)).astype(np.float32)
        img = coarse.repeat(8, 1).repeat(8, 2) + rng.normal(0, 12, (m, 32, 32, 3))
        for i in range(a, a + m):
            x = img[i - a]
            if copies_of is not None and i % 100 == 0:
                src = np.asarray(Image.open(copies_of / f"{i:07d}.png"), np.float32)
                x = src + rng.normal(0, 4, src.shape)
            Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(folder / f"{i:07d}.png")


def bench_pixel(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="tl-scale-", dir=args.tmp))
    try:
        t = time.perf_counter()
        _images(root / "train", args.n, 1)
        _images(root / "synth", args.n, 2, copies_of=root / "train")
        gen = time.perf_counter() - t
        print(f"generated {2 * args.n} PNGs in {gen:.0f} s under {root}", flush=True)
        cli = [
            "audit", "--train", str(root / "train"), "--synthetic", str(root / "synth"),
            "--encoder", "pixel", "-O", "size=16", "--threshold", str(args.threshold),
            "--workers", str(args.workers), "--cache", str(root / "cache"), "-q",
        ]  # fmt: skip
        for run in ("cold", "warm"):
            out = root / f"out-{run}"
            load = _load()
            r = _child(RUN_AUDIT, "cli", *cli, "--out", str(out))
            sizes = {p.name: p.stat().st_size for p in out.iterdir()}
            _print_run(f"pixel {args.n} x {args.n} {run}", r, sizes, load, out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_vectors(args: argparse.Namespace) -> None:
    from trainleak.outofcore import write_vectors

    root = Path(tempfile.mkdtemp(prefix="tl-vec-", dir=args.tmp))
    try:
        rng = np.random.default_rng(0)
        block = 100_000

        def unit(n: int, seed: int):
            g = np.random.default_rng(seed)
            for a in range(0, n, block):
                x = g.standard_normal((min(block, n - a), args.dim)).astype(np.float32)
                yield x / np.linalg.norm(x, axis=1, keepdims=True)

        write_vectors(root / "train.npy", unit(args.n_train, 1), args.dim)
        train = np.load(root / "train.npy", mmap_mode="r")
        synth = np.concatenate(list(unit(args.n_synth, 2)))
        at = rng.choice(args.n_synth, min(args.n_synth // 100, args.n_train), replace=False)
        synth[at] = train[rng.choice(args.n_train, len(at), replace=False)]
        np.save(root / "synth.npy", synth)
        del synth, train
        load = _load()
        r = _child(RUN_AUDIT, "vectors", str(root), str(root / "out"))
        sizes = {p.name: p.stat().st_size for p in (root / "out").iterdir()}
        name = f"vectors {args.n_synth} x {args.n_train} x {args.dim}"
        _print_run(name, r, sizes, load, root / "out")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _print_run(name: str, r: dict, sizes: dict, load: str, out: Path) -> None:
    summary = json.loads((out / "report.json").read_text())["summary"]
    name += f" (flagged {summary['flagged']} of {summary['n_synthetic']})"
    share = (r["build"] + r["write"]) / r["seconds"]
    files = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(sizes.items()))
    print(
        f"{name}: {r['seconds']:.1f} s, peak RSS {r['peak_mb']:.0f} MB, report build "
        f"{r['build']:.2f} s + write {r['write']:.2f} s = {100 * share:.1f}% of the run"
        + (f", load vectors {r['load']:.1f} s" if "load" in r else "")
        + f"; {files}; load avg {load} -> {_load()}",
        flush=True,
    )


def bench_search(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="tl-search-", dir=args.tmp))
    try:
        g = np.random.default_rng(0)
        db = np.lib.format.open_memmap(root / "db.npy", "w+", np.float32, (args.n_db, args.dim))
        for a in range(0, args.n_db, 100_000):
            x = g.standard_normal((min(100_000, args.n_db - a), args.dim)).astype(np.float32)
            db[a : a + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        db.flush()
        del db
        q = g.standard_normal((args.queries, args.dim)).astype(np.float32)
        np.save(root / "q.npy", q / np.linalg.norm(q, axis=1, keepdims=True))
        scale = 1_000_000 / args.queries
        for how in args.engines.split(","):
            load = _load()
            r = _child(RUN_SEARCH, str(root), how, str(args.k))
            print(
                f"{how}: {args.queries} x {args.n_db} x {args.dim}, k={args.k}: "
                f"{r['seconds']:.1f} s search (+{r['load_s']:.1f} s load/index), peak RSS "
                f"{r['peak_mb']:.0f} MB (before: {r['base_mb']:.0f}); x{scale:.0f} -> 1M queries "
                f"{r['seconds'] * scale / 3600:.2f} h; load avg {load} -> {_load()}",
                flush=True,
            )
        ref = np.load(root / f"{args.engines.split(',')[0]}_idx.npy")
        for how in args.engines.split(",")[1:]:
            other = np.load(root / f"{how}_idx.npy")
            same = float(np.mean(np.sort(ref, axis=1) == np.sort(other, axis=1)))
            print(f"same neighbour sets as {args.engines.split(',')[0]}: {how} {100 * same:.3f}%")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tmp", default=None, help="where the temporary files go")
    sub = p.add_subparsers(dest="part", required=True)
    a = sub.add_parser("pixel")
    a.add_argument("--n", type=int, default=50_000)
    a.add_argument("--workers", type=int, default=2)
    a.add_argument("--threshold", type=float, default=0.98)
    v = sub.add_parser("vectors")
    v.add_argument("--n-train", type=int, default=1_000_000)
    v.add_argument("--n-synth", type=int, default=50_000)
    v.add_argument("--dim", type=int, default=128)
    s = sub.add_parser("search")
    s.add_argument("--n-db", type=int, default=1_000_000)
    s.add_argument("--queries", type=int, default=20_000)
    s.add_argument("--dim", type=int, default=128)
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--engines", default="knn,files,faiss")
    p.add_argument("--threads", default="1", help="OMP threads per process (torch, faiss)")
    args = p.parse_args()
    global THREADS
    THREADS = args.threads
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, numpy {np.__version__}; load {_load()}",
        flush=True,
    )
    {"pixel": bench_pixel, "vectors": bench_vectors, "search": bench_search}[args.part](args)


if __name__ == "__main__":
    main()
