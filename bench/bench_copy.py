"""Copy detection under edits (issue 23): copy vs pixel vs tiled vs perceptual hash, then speed.

Accuracy (``--part accuracy``): a mini copy-detection set from real images
that ship here. Training "works": scikit-image's bundled photographs (colour
and grey) and 20 ORL people at 92 x 112 (photo 1 each); for two photos only
their left half is a work. Queries: every work through every edit family of
``tests/copy_edits.py`` (crop to 80%/60%, rotation 15 degrees, flip, border,
caption + band, colour, grey, blur, JPEG q30, resize 0.3x/3x, a combination).
Holdout (calibration at FPR 0.01): 100 photos of 10 other ORL people and
other scikit-image textures. Hard negatives, never trained on: 100 photos of
10 further ORL people (same camera, background, pose: "same style"), and the
right halves of the half-photos (same scene, other image); re-photographs
of a training person (ORL photos 2-4 of trained people) are reported on
their own line (the face encoder's question, not a copy). Each method scores
a query by its best training match; a positive counts when it is above the
calibrated threshold and that match is its work. Micro-AP ranks all
positives and hard negatives by score (a positive whose best match is
another image counts as a miss).

Speed (``--part speed --n 1000`` / ``--n 10000``): ``n`` training images
that are real crops (random place, 35-90% of each side, long side 160-400
px) of the scikit-image photos and ORL faces, embedded with 2 workers into a
gate index (``Index.build``, no holdout: the default operating point), then
``index.check`` of 200 query files (150 edited copies of training crops, 50
COIL-20 objects that no crop came from, long side <= 512) end to end:
decode, features, retrieval, verification; peak memory of the checking
process from ``VmHWM`` (build and check run in separate processes).

Profile (``--part profile --work DIR``, on the index and queries a speed
run left in ``DIR``): milliseconds per query of decode, SIFT, the descriptor
vote (``nprobe`` 12 and the default, one search per query and batched) and
verification, in one process, one thread. ``--nprobe N`` runs the speed
check with ``N`` lists probed.

Run: ``.venv/bin/python bench/bench_copy.py --part accuracy`` and
``.venv/bin/python bench/bench_copy.py --part speed --n 1000`` (then 10000).
Needs ``imagehash`` for the hash column (``pip install imagehash``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
ORL92 = ROOT.parent / "shared" / "data" / "orl_faces_92x112"

from copy_edits import EDITS, apply  # noqa: E402

from trainleak.encoders import EncodeSkip, get_encoder  # noqa: E402
from trainleak.similarity import Similarity  # noqa: E402
from trainleak.stats import threshold_at_fpr  # noqa: E402

COLOUR = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field"]
GREY = ["camera", "moon", "coins", "page", "text"]
#: Photos of which only the left half is a work (the right half: a hard negative).
HALVES = ["retina", "immunohistochemistry"]
HOLD_TEX = ["gravel", "grass", "brick", "cell"]


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = (255 * (a.astype(np.float64) / max(1e-9, float(a.max())))).astype(np.uint8)
    return np.repeat(a[..., None], 3, 2) if a.ndim == 2 else np.ascontiguousarray(a[..., :3])


def _sk(name: str) -> np.ndarray | None:
    from skimage import data

    try:
        return _rgb(getattr(data, name)())
    except Exception:  # noqa: BLE001 - a scikit-image image that needs a download is left out
        return None


def _orl(p: int, k: int) -> np.ndarray:
    return np.asarray(Image.open(ORL92 / f"s{p}" / f"{k}.pgm").convert("RGB"))


def build_set() -> dict[str, list[tuple[str, np.ndarray]]]:
    """Works, holdout, hard negatives and re-photographs (see the module docstring)."""
    works: list[tuple[str, np.ndarray]] = []
    hard: list[tuple[str, np.ndarray]] = []
    for n in COLOUR + GREY:
        img = _sk(n)
        if img is not None:
            works.append((n, img))
    for n in HALVES:
        img = _sk(n)
        if img is not None:
            w = img.shape[1]
            works.append((f"{n}_left", np.ascontiguousarray(img[:, : w // 2])))
            hard.append((f"{n}_right", np.ascontiguousarray(img[:, w // 2 + 8 :])))
    works += [(f"orl_s{p}", _orl(p, 1)) for p in range(1, 21)]
    hold = [(f"orl_s{p}_{k}", _orl(p, k)) for p in range(21, 31) for k in range(1, 11)]
    hold += [(n, img) for n in HOLD_TEX if (img := _sk(n)) is not None]
    hard += [(f"orl_s{p}_{k}", _orl(p, k)) for p in range(31, 41) for k in range(1, 11)]
    rephoto = [(f"orl_s{p}_{k}", _orl(p, k)) for p in range(1, 21) for k in (2, 3, 4)]
    return {"works": works, "hold": hold, "hard": hard, "rephoto": rephoto}


class Method:
    """Best training match of each query under one encoder's rule (or a hash)."""

    def __init__(self, name: str, works: list[np.ndarray]) -> None:
        self.name = name
        if name == "phash":
            import imagehash

            self._hash = imagehash.phash
            self.db = [self._hash(Image.fromarray(w)) for w in works]
            return
        self.enc = get_encoder(name)
        self.sim = Similarity.of(self.enc.info)
        rows = [self.enc.encode(w) for w in works]
        self.rows = np.concatenate(rows)

    def best(self, image: np.ndarray) -> tuple[float, int]:
        """(score, training index) of the best match; (0, -1) for a skipped image."""
        if self.name == "phash":
            h = self._hash(Image.fromarray(image))
            d = np.array([h - x for x in self.db])
            i = int(d.argmin())
            return 1.0 - float(d[i]) / 64.0, i
        try:
            q = self.enc.encode(image)
        except EncodeSkip:
            return 0.0, -1
        s, i = self.sim.knn(q, self.rows, 1)
        return float(s[0, 0]), int(i[0, 0])


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve, ties broken against the positives."""
    order = np.lexsort((labels, -scores))
    hits = labels[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def accuracy(methods: list[str]) -> dict:
    sets = build_set()
    works = sets["works"]
    out: dict = {"works": len(works), "holdout": len(sets["hold"]), "hard": len(sets["hard"])}
    queries = [
        (e, j, apply(e, img, seed=1000 * j + k))
        for k, e in enumerate(EDITS)
        for j, (_, img) in enumerate(works)
    ]
    out["queries"] = len(queries)
    for name in methods:
        t0 = time.perf_counter()
        m = Method(name, [w for _, w in works])
        hold = np.array([m.best(img)[0] for _, img in sets["hold"]])
        thr = threshold_at_fpr(hold, 0.01)
        pos = [(e, *m.best(img), j) for e, j, img in queries]
        hard = np.array([m.best(img)[0] for _, img in sets["hard"]])
        reph = np.array([m.best(img)[0] for _, img in sets["rephoto"]])
        per_edit = {}
        for e in EDITS:
            rows = [(s, i == j) for ee, s, i, j in pos if ee == e]
            per_edit[e] = sum(s > thr.value and ok for s, ok in rows) / len(rows)
        found = np.array([s > thr.value and i == j for _, s, i, j in pos])
        pscores = np.array([s if i == j else -1.0 for _, s, i, j in pos])
        ap = average_precision(
            np.concatenate([pscores, hard]),
            np.concatenate([np.ones(len(pscores), bool), np.zeros(len(hard), bool)]),
        )
        out[name] = {
            "threshold": thr.value,
            "holdout_fpr": thr.achieved_fpr,
            "recall": float(found.mean()),
            "per_edit": per_edit,
            "hard_flagged": int((hard > thr.value).sum()),
            "rephoto_flagged": int((reph > thr.value).sum()),
            "micro_ap": ap,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def _crops(n: int, seed: int) -> list[np.ndarray]:
    """``n`` real crops (see the module docstring), deterministic."""
    sources = [img for nm in COLOUR + GREY + HALVES + HOLD_TEX if (img := _sk(nm)) is not None]
    sources += [_orl(p, k) for p in range(1, 41) for k in range(1, 11)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        src = sources[int(rng.integers(len(sources)))]
        h, w = src.shape[:2]
        fh, fw = rng.uniform(0.35, 0.9, 2)
        ch, cw = max(24, int(h * fh)), max(24, int(w * fw))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        im = Image.fromarray(np.ascontiguousarray(src[y : y + ch, x : x + cw]))
        side = int(rng.integers(160, 401))
        scale = side / max(im.size)
        im = im.resize((max(8, round(im.width * scale)), max(8, round(im.height * scale))))
        out.append(np.asarray(im))
    return out


def _vm_hwm_mb() -> float:
    """This process's peak resident memory (``VmHWM``), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _speed_child(args: argparse.Namespace) -> None:
    from trainleak.config import CheckConfig, EmbedConfig, IndexConfig
    from trainleak.gate.index import Index

    work = Path(args.work)
    if args.nprobe:  # the search setting under test (issue 23's speed follow-up)
        import trainleak.local_search

        trainleak.local_search.NPROBE = args.nprobe
    embed = EmbedConfig("copy", workers=2, cache=str(work / "cache"))
    t0 = time.perf_counter()
    if args.stage == "build":
        Index.build(work / "idx", work / "train", config=IndexConfig(embed=embed)).close()
        result = {"build_s": time.perf_counter() - t0}
    else:
        embed = EmbedConfig("copy", workers=2, no_cache=True)
        with Index.open(work / "idx", config=CheckConfig(embed=embed)) as index:
            t_open = time.perf_counter()
            index.warm()
            t_warm = time.perf_counter()
            verdicts = index.check(work / "queries")
            t_end = time.perf_counter()
        blocked = [v for v in verdicts if v.verdict == "block"]
        copies = [v for v in verdicts if Path(v.path).name.startswith("copy_")]
        # Crops overlap: a copy may match another crop of the same region better.
        right = sum(
            v.verdict == "block" and Path(v.nearest or "").stem == Path(v.path).stem.split("__")[1]
            for v in copies
        )
        others = [v for v in verdicts if Path(v.path).name.startswith("other_")]
        result = {
            "open_s": t_open - t0,
            "warm_s": t_warm - t_open,
            "check_s": t_end - t_warm,
            "queries": len(verdicts),
            "queries_per_s": len(verdicts) / (t_end - t_warm),
            "blocked": len(blocked),
            "copies_blocked": f"{sum(v.verdict == 'block' for v in copies)}/{len(copies)}",
            "copies_nearest_is_source": f"{right}/{len(copies)}",
            "distinct": {
                k: sum(v.verdict == k for v in others) for k in ("block", "release", "skip")
            },
        }
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child
    # started by a parent holding 10,000 crops reported the parent's 2 GB.
    result["peak_rss_mb"] = _vm_hwm_mb()
    result["peak_children_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result), flush=True)


def speed(n: int, work: Path, nprobe: int = 0) -> dict:
    train, queries = work / "train", work / "queries"
    if not train.exists():
        train.mkdir(parents=True)
        for i, img in enumerate(_crops(n, seed=n)):
            Image.fromarray(img).save(train / f"t{i:05d}.jpg", quality=92)
    if not queries.exists():
        queries.mkdir()
        rng = np.random.default_rng(7)
        names = sorted(train.iterdir())
        edits = list(EDITS)
        for j in range(150):
            src = names[int(rng.integers(len(names)))]
            e = edits[j % len(edits)]
            img = apply(e, np.asarray(Image.open(src).convert("RGB")), seed=j)
            Image.fromarray(img).save(queries / f"copy_{j:03d}_{e}__{src.stem}.png")
        # Distinct photos no crop came from: COIL-20's objects (32 x 32, shown 4x).
        coil = ROOT.parent / "shared" / "data" / "coil20"
        for j in range(50):
            im = Image.open(coil / f"obj{j % 20 + 1}__{(j // 20) * 20}.png").convert("RGB")
            im.resize((128, 128), Image.BICUBIC).save(queries / f"other_{j:03d}.png")
    out: dict = {"n": n, "nprobe": nprobe or "default"}
    for stage in ("build", "check"):
        if stage == "build" and (work / "idx").exists():
            continue  # built by an earlier run (same crops: the seed is n)
        cmd = [sys.executable, __file__, "--child", stage, "--work", str(work)]
        cmd += ["--nprobe", str(nprobe)] if nprobe else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)  # noqa: S603
        out[stage] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(stage, out[stage], flush=True)
    idx = work / "idx"
    out["index_mb"] = {
        "rows": sum(f.stat().st_size for f in idx.glob("vectors-*.npy")) / 2**20,
        "descriptors": sum(f.stat().st_size for f in idx.glob("*.faiss")) / 2**20,
    }
    return out


def profile(work: Path, k: int = 5) -> dict:
    """Where a check's time goes, stage by stage, in one process (the index of ``speed``).

    Decode, SIFT (the encoder's ``encode``), the descriptor vote (one faiss
    search per query, and the same searches batched over all queries), and
    geometric verification of the shortlist (``verify``: both orientations).
    One thread per stage; ratios within the run are what to read.
    """
    import faiss

    from trainleak.config import CheckConfig, EmbedConfig
    from trainleak.encoders.copydetect import pair_match
    from trainleak.encoders.keypoints import unpack
    from trainleak.gate.index import Index
    from trainleak.images import load_image
    from trainleak.local_search import NPROBE

    faiss.omp_set_num_threads(1)
    files = sorted((work / "queries").iterdir())
    embed = EmbedConfig("copy", workers=1, no_cache=True)
    with Index.open(work / "idx", config=CheckConfig(embed=embed)) as index:
        index.warm()
        shard = index.shards[0]
        sim = index.similarity
        opts = sim.options
        enc = get_encoder("copy", **{k_: v for k_, v in opts.items()})
        t = time.perf_counter()
        images = [load_image(str(f)) for f in files]
        t_decode = time.perf_counter() - t
        t = time.perf_counter()
        rows = []
        for im in images:
            with contextlib.suppress(EncodeSkip):  # too few keypoints: the gate blocks it
                rows.append(enc.encode(im)[0])
        t_sift = time.perf_counter() - t
        rows_a = np.stack(rows)
        dindex = sim.index_for(shard)
        feats = [unpack(r) for r in rows_a]
        n = len(rows)
        neighbours = int(opts["neighbours"])
        vote_ms = {}
        both = [[f, f.mirrored()] for f in feats]
        for nprobe in (12, NPROBE):
            t = time.perf_counter()
            votes = [dindex.votes_many([fm], neighbours, nprobe)[0] for fm in both]
            vote_ms[f"vote_nprobe{nprobe}_one_search_per_query"] = (
                1e3 * (time.perf_counter() - t) / n
            )
            t = time.perf_counter()
            dindex.votes_many(both, neighbours, nprobe)
            vote_ms[f"vote_nprobe{nprobe}_batched"] = 1e3 * (time.perf_counter() - t) / n
        desc_per_query = sum(len(f) for f in feats) * 2 / n
        shortlist, min_votes = int(opts["shortlist"]), int(opts.get("min_votes", 4))
        checks = []
        for v in votes:
            ranked = sorted(v, key=lambda r: (-v[r], r))[:shortlist]
            checks.append([r for r in ranked if v[r] >= min_votes])
        t = time.perf_counter()
        inliers = [[pair_match(rows_a[q], shard[r], opts).inliers for r in c]
                   for q, c in enumerate(checks)]  # fmt: skip
        t_verify = time.perf_counter() - t
        t = time.perf_counter()
        sim.knn(rows_a, shard, k)
        t_knn = time.perf_counter() - t
    fits = sum(len(c) for c in checks)
    return {
        "queries": len(files),
        "scored": n,
        "descriptors_per_query": desc_per_query,
        "ms_per_query": {
            "decode": 1e3 * t_decode / len(files),
            "sift": 1e3 * t_sift / len(files),
            **vote_ms,
            "verify_shortlist": 1e3 * t_verify / n,
            "knn_total (vote + verify)": 1e3 * t_knn / n,
        },
        "verified_pairs_per_query": fits / n,
        "ms_per_verified_pair": 1e3 * t_verify / max(1, fits),
        "nlist": int(getattr(dindex.index, "nlist", 0)),
        "ntotal": int(dindex.index.ntotal),
        "best_inliers_median": float(np.median([max(i) if i else 0 for i in inliers])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["accuracy", "speed", "profile"], default="accuracy")
    ap.add_argument("--methods", default="copy,pixel,tiled,phash")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--work", default=None)
    ap.add_argument("--child", choices=["build", "check"], default=None)
    ap.add_argument("--nprobe", type=int, default=0, help="check with this many IVF lists probed")
    args = ap.parse_args()
    if args.child:
        args.stage = args.child
        _speed_child(args)
        return
    if args.part == "accuracy":
        print(json.dumps(accuracy(args.methods.split(",")), indent=1))
    elif args.part == "profile":
        print(json.dumps(profile(Path(args.work)), indent=1))
    else:
        work = Path(args.work or tempfile.mkdtemp(prefix=f"copybench{args.n}-"))
        print(json.dumps(speed(args.n, work, args.nprobe), indent=1))


if __name__ == "__main__":
    main()
