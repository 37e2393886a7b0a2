"""Face embedding throughput with 1 vs 2 worker processes (cold, no cache).

Reproduce: .venv/bin/python bench/bench_embed.py [--images DIR] [--encoder face]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from trainleak.embedding import embed

ORL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "orl_faces"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default=str(ORL))
    ap.add_argument("--encoder", default="face")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    rows = []
    for w in [int(x) for x in args.workers.split(",")]:
        t0 = time.perf_counter()
        emb = embed(args.images, args.encoder, workers=w, cache=False)
        dt = time.perf_counter() - t0
        rows.append((w, len(emb), dt, len(emb) / dt))
    base = rows[0][3]
    print(f"encoder {args.encoder}, {rows[0][1]} embedded images from {args.images}\n")
    print("| workers | images | seconds | images/s | speed-up |")
    print("|---|---|---|---|---|")
    for w, n, dt, rate in rows:
        print(f"| {w} | {n} | {dt:.1f} | {rate:.2f} | {rate / base:.2f}x |")
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\npeak RSS: main {self_mb:.0f} MB, largest worker {child_mb:.0f} MB")


if __name__ == "__main__":
    main()
