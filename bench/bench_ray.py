"""The Ray engine on this machine vs the local engine: same work, same CPUs.

Reproduce:
    .venv/bin/python bench/bench_ray.py [--cpus 2] [--rounds 2] [--encoder face]
        [--source ../shared/data/orl_faces] [--search 50000]

Starts a local Ray instance with ``--cpus`` CPUs (timed on its own), then, in
alternating rounds so that a slow spell on a shared machine hits both alike,
embeds the source cold (no cache) with the local engine (``--cpus`` worker
processes) and with the Ray engine (``--cpus`` encoder actors), and checks
that the two sets are identical. ``--search N`` also times an exact search of
N x N random 128-d unit rows, local vs sharded on Ray, and checks the answers
are identical. Prints a Markdown table with the load average before and after.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import ray

from trainleak.embedding import Embedder
from trainleak.engines.ray import RayEngine
from trainleak.similarity import Similarity

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def embed_once(encoder: str, source: str, workers: int, engine: RayEngine | None):
    t0 = time.perf_counter()
    with Embedder(encoder, workers=workers, cache=False, engine=engine) as emb:
        out = emb.embed(source, "bench")
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--encoder", default="face")
    ap.add_argument("--source", default=str(DATA / "orl_faces"))
    ap.add_argument("--search", type=int, default=0, help="N for an N x N search (0: none)")
    args = ap.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"ray {ray.__version__}")  # fmt: skip
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)  # fmt: skip
    print(f"# ray.init(num_cpus={args.cpus}): {time.perf_counter() - t0:.1f} s")
    engine = RayEngine(actors=args.cpus)
    times: dict[str, list[float]] = {"local": [], "ray": []}
    sets = {}
    for r in range(args.rounds):
        order = ["local", "ray"] if r % 2 == 0 else ["ray", "local"]
        for name in order:
            seconds, sets[name] = embed_once(
                args.encoder, args.source, args.cpus, engine if name == "ray" else None
            )
            times[name].append(seconds)
            print(f"# round {r + 1} {name}: {seconds:.1f} s", flush=True)
    same = sets["local"].ids == sets["ray"].ids and np.array_equal(
        sets["local"].vectors, sets["ray"].vectors
    )
    n = sets["local"].files
    print(f"\n{args.encoder} encoder, {n} images of {args.source}, no cache, {args.cpus} CPUs:\n")
    print("| engine | runs (s) | median s | images/s | vs local |")
    print("|---|---|---|---|---|")
    base = statistics.median(times["local"])
    for name, runs in times.items():
        med = statistics.median(runs)
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in runs)} | {med:.1f} | {n / med:.2f} "
              f"| {med / base:.2f}x |")  # fmt: skip
    print(f"\nidentical sets (ids and vectors): {same}")
    if args.search:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.search, 128), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        sim = Similarity()
        t0 = time.perf_counter()
        local = sim.knn(x, x, 10)
        t_local = time.perf_counter() - t0
        t0 = time.perf_counter()
        sharded = engine.knn(sim, x, x, 10)
        t_ray = time.perf_counter() - t0
        ok = np.array_equal(local[1], sharded[1]) and np.array_equal(local[0], sharded[0])
        print(f"\nexact search {args.search:,} x {args.search:,} x 128, k=10: "
              f"local {t_local:.1f} s, ray (sharded) {t_ray:.1f} s ({t_ray / t_local:.2f}x); "
              f"identical: {ok}")  # fmt: skip
    print(f"# finished {time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
