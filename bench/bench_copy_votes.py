"""Which faiss index the ``copy`` encoder's descriptor vote should use (issue 23, speed).

On the index and queries a ``bench_copy.py --part speed`` run left in
``--work DIR`` (its gate index of real crops and its 200 query files: 150
edited copies, 50 COIL-20 objects no crop came from), builds each candidate
descriptor index over the shard's descriptors (faiss factory strings, e.g.
``IVF4096,PQ32x4fs``; the index the current code persists beside the shard is
measured as ``current``), then for each ``nprobe``: milliseconds per query of
the batched vote (image + mirror, one thread; two rounds, the candidates in
turn, so load changes hit all alike) and, through the real
``LocalSimilarity.knn`` (vote + verification), how many copies and distinct
objects score at or above the encoder's default operating point.

Run: ``.venv/bin/python bench/bench_copy_votes.py --work /tmp/copybench10k
IVF4096,PQ32x4fs IVF4096,PQ64x4fs`` (after ``bench_copy.py --part speed --n
10000 --work /tmp/copybench10k``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import weakref
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from trainleak.encoders import get_encoder
from trainleak.encoders.base import EncodeSkip
from trainleak.encoders.keypoints import unpack
from trainleak.images import load_image
from trainleak.local_search import DescriptorIndex, LocalSimilarity
from trainleak.similarity import Similarity


def build(shard: np.ndarray, spec: str, sample: np.ndarray) -> tuple[Any, float]:
    """A faiss index of ``spec`` over the shard's RootSIFT descriptors, and its build seconds."""
    t = time.perf_counter()
    index = faiss.index_factory(128, spec, faiss.METRIC_L2)
    index.train(sample)
    for b0 in range(0, len(shard), 1024):
        feats = [unpack(r) for r in np.asarray(shard[b0 : b0 + 1024])]
        desc = np.concatenate([f.rootsift() for f in feats])
        labels = np.concatenate([np.full(len(f), b0 + j, np.int64) for j, f in enumerate(feats)])
        index.add_with_ids(np.ascontiguousarray(desc), labels)
    return index, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--nprobe", default="6,8,12,16,24")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("specs", nargs="*")
    args = ap.parse_args()
    work = Path(args.work)
    shard = np.load(next((work / "idx").glob("vectors-*.npy")), mmap_mode="r")
    enc = get_encoder("copy")
    rows, names = [], []
    for f in sorted((work / "queries").iterdir()):
        with contextlib.suppress(EncodeSkip):  # too few keypoints: the gate blocks it unscored
            rows.append(enc.encode(load_image(str(f)))[0])
            names.append(f.name)
    queries = np.stack(rows)
    threshold = enc.info.default_threshold
    faiss.omp_set_num_threads(1)
    rule = Similarity.of(enc.info)
    assert isinstance(rule, LocalSimilarity)
    indexes = {"current": (rule.index_for(shard), 0.0)}
    counts = np.asarray(shard[:, 0], np.int64)
    sample = DescriptorIndex._sample(shard, counts, 160_000, 0)
    for spec in args.specs:
        index, seconds = build(shard, spec, sample)
        indexes[spec] = (DescriptorIndex(shard, index=index), seconds)
    feats = [[f, f.mirrored()] for f in (unpack(r) for r in queries)]
    out: dict[str, Any] = {
        name: {
            "build_s": round(s, 1),
            "index_mb": round(faiss.serialize_index(di.index).nbytes / 2**20, 1),
            "nlist": int(getattr(di.index, "nlist", 0)),
        }
        for name, (di, s) in indexes.items()
    }
    nprobes = [int(x) for x in args.nprobe.split(",")]
    for rnd in range(args.rounds):
        for name, (di, _) in indexes.items():
            for nprobe in nprobes:
                t = time.perf_counter()
                di.votes_many(feats, int(enc.opts["neighbours"]), nprobe)
                ms = 1e3 * (time.perf_counter() - t) / len(queries)
                row = out[name].setdefault(f"nprobe {nprobe}", {"vote_ms": []})
                row["vote_ms"].append(round(ms, 1))
                if rnd == 0:
                    sim = Similarity.of(enc.info)
                    sim.options["nprobe"] = nprobe
                    sim._cache[id(shard)] = (weakref.ref(shard), di)  # type: ignore[attr-defined]
                    scores, _ = sim.knn(queries, shard, 1)
                    top = dict(zip(names, scores[:, 0].tolist(), strict=True))
                    row["copies"] = sum(s >= threshold for n, s in top.items() if "copy" in n)
                    row["distinct"] = sum(s >= threshold for n, s in top.items() if "other" in n)
                print(rnd, name, nprobe, row, flush=True)
    print(json.dumps(out, indent=1))


main()
