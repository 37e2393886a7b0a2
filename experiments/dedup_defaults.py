"""How the copy encoders' default operating points were chosen, and what they do.

Part 1 (calibration): for ``pixel`` and ``tiled``, the closest pair of
distinct photos in ORL at both resolutions (400 photos of 40 people, every
one a separate exposure: the negative control). The rule: threshold distance
= ``--margin`` x that closest distance. The script prints the derived
threshold beside the one shipped in ``trainleak.encoders.pixel``. COIL-20 is
not used to choose: views 5 degrees apart of its rotationally symmetric
objects (obj15, obj16, ...) differ by 1-5 grey levels RMS, less than a JPEG
re-encoding, and a person cannot tell them apart; part 2 lists the COIL
pairs each default joins with their RMS difference.

Part 2 (evaluation, the README's table): ``dedup`` with defaults on each
natural set (removed count), and on each set with 20 planted copies per
transform (noise sigma 3, JPEG 70, resize to 80% and back, +15% brightness,
1-pixel shift, horizontal flip): recall per transform (copy in its
original's cluster) and false merges (clusters holding an image that is
neither a planted original nor one of its copies).

    .venv/bin/python experiments/dedup_defaults.py --out runs/dedup_defaults
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from trainleak.audits.dedup import DedupConfig, dedup
from trainleak.block_search import score_at_distance, score_to_distance
from trainleak.config import EmbedConfig
from trainleak.embedding import embed
from trainleak.encoders import pixel
from trainleak.similarity import Similarity

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {
    "ORL 23x28": ("orl_faces", "*/*.pgm"),
    "ORL 92x112": ("orl_faces_92x112", "*/*.pgm"),
    "COIL-20": ("coil20", "*.png"),
}
TRANSFORMS = ["noise3", "jpeg70", "resize80", "bright15", "shift1", "flip"]
ENCODERS = ["pixel", "tiled"]


def transform(im: Image.Image, kind: str, seed: int) -> Image.Image:
    """One planted near-copy of ``im`` (grey or RGB)."""
    if kind == "noise3":
        a = np.asarray(im, np.float32)
        a = a + np.random.default_rng(seed).normal(0, 3, a.shape)
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    if kind == "jpeg70":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=70)
        return Image.open(io.BytesIO(buf.getvalue())).convert(im.mode)
    if kind == "resize80":
        w, h = im.size
        small = im.resize(
            (max(1, round(w * 0.8)), max(1, round(h * 0.8))), Image.Resampling.BICUBIC
        )
        return small.resize((w, h), Image.Resampling.BICUBIC)
    if kind == "bright15":
        return ImageEnhance.Brightness(im).enhance(1.15)
    if kind == "shift1":
        a = np.asarray(im)
        return Image.fromarray(np.concatenate([a[:, :1], a[:, :-1]], 1))
    if kind == "flip":
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    raise ValueError(kind)


def files_of(name: str) -> list[Path]:
    folder, pattern = SETS[name]
    return sorted((DATA / folder).glob(pattern))


def rms(a: str | Path, b: str | Path) -> float:
    """Raw grey RMS difference of two same-size images, in grey levels."""
    x, y = (np.asarray(Image.open(f).convert("L"), np.float64) for f in (a, b))
    return float(np.sqrt(((x - y) ** 2).mean()))


def calibrate(margin: float) -> dict:
    out: dict = {}
    for enc in ENCODERS:
        closest = []
        for name in ("ORL 23x28", "ORL 92x112"):
            files = files_of(name)
            emb = embed(DATA / SETS[name][0], enc, workers=1, cache=False)
            sim = Similarity.of(emb.info)
            s, i = sim.knn(emb.vectors, emb.vectors, 8, exclude_self=True)
            assert len(files) == len(emb)
            r = int(np.argmax(s[:, 0]))
            best, pair = float(s[r, 0]), (emb.ids[r], emb.ids[int(i[r, 0])])
            # tiled scores 1 / (1 + d) (version 3), cosine 1 - d: read the distance back.
            d = float(score_to_distance(best, emb.info.metric))
            closest.append({"set": name, "score": best, "distance": d, "pair": pair})
        d_min = min(c["distance"] for c in closest)
        out[enc] = {
            "closest_distinct": closest,
            "derived_threshold": round(score_at_distance(margin * d_min, emb.info.metric), 4),
            "shipped_threshold": {"pixel": pixel.PIXEL_THRESHOLD, "tiled": pixel.TILED_THRESHOLD}[
                enc
            ],
        }
    return out


def planted_set(name: str, root: Path, n: int, seed: int) -> dict[str, str]:
    """Symlink the natural set into ``root`` and add copies of ``n`` picked images."""
    src = DATA / SETS[name][0]
    files = files_of(name)
    for f in files:
        target = root / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(f)
    origin: dict[str, str] = {}
    picks = np.random.default_rng(seed).choice(len(files), n, replace=False)
    for k, p in enumerate(sorted(picks)):
        f = files[p]
        im = Image.open(f)
        im.load()
        for kind in TRANSFORMS:
            out = root / "planted" / f"{k:02d}_{kind}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            transform(im, kind, seed + k).save(out)
            origin[str(out)] = str(root / f.relative_to(src))
    return origin


def evaluate(out: Path, n: int, seed: int) -> dict:
    results: dict = {}
    for name in SETS:
        folder = DATA / SETS[name][0]
        root = out / "planted" / name.replace(" ", "_")
        origin = planted_set(name, root, n, seed) if not root.exists() else None
        if origin is None:
            raise SystemExit(f"{root} exists: pass a fresh --out")
        originals = set(origin.values())
        for enc in ENCODERS:
            cfg = DedupConfig(embed=EmbedConfig(encoder=enc, workers=1, no_cache=True))
            t0 = time.perf_counter()
            natural = dedup(folder, config=cfg).report
            rep = dedup(root, config=cfg).report
            cluster_of = {r["path"]: r["cluster"] for r in rep["rows"]}
            found = dict.fromkeys(TRANSFORMS, 0)
            for copy, orig in origin.items():
                c = cluster_of.get(copy)
                if c is not None and c == cluster_of.get(orig):
                    found[Path(copy).stem.split("_", 1)[1]] += 1
            false = []  # clusters mixing a planted group with anything else
            for c in rep["clusters"]:
                members = {m["path"] for m in c["members"]}
                group = {origin.get(p, p) for p in members}
                if group & originals and len(group) > 1:
                    false.append(sorted(members))
            results[f"{name} / {enc}"] = {
                "natural_images": natural["summary"]["images"],
                "natural_removed": natural["summary"]["removed"],
                "natural_clusters": [
                    {
                        "kept": c["kept"].split("/")[-1],
                        "members": {
                            m["path"].split("/")[-1]: round(rms(c["kept"], m["path"]), 2)
                            for m in c["members"]
                            if m["path"] != c["kept"]
                        },
                    }
                    for c in natural["clusters"]
                ],
                "recall": {k: f"{v}/{n}" for k, v in found.items()},
                "false_merges": len(false),
                "false_merge_clusters": false,
                "threshold": rep["threshold"]["value"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(
                name,
                enc,
                json.dumps(
                    {
                        k: v
                        for k, v in results[f"{name} / {enc}"].items()
                        if k not in ("natural_clusters", "false_merge_clusters")
                    }
                ),
                flush=True,
            )
    return results


def table(cal: dict, ev: dict) -> str:
    rows = [
        "| set | encoder | natural: removed | " + " | ".join(TRANSFORMS) + " | false merges |",
        "|---|---|---|" + "---|" * len(TRANSFORMS) + "---|",
    ]
    for key, r in ev.items():
        name, enc = key.split(" / ")
        rows.append(
            f"| {name} | {enc} | {r['natural_removed']} of {r['natural_images']} | "
            + " | ".join(r["recall"][t] for t in TRANSFORMS)
            + f" | {r['false_merges']} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/dedup_defaults"))
    ap.add_argument("--margin", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibrate-only", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cal = calibrate(args.margin)
    print(json.dumps(cal, indent=1))
    if args.calibrate_only:
        return
    ev = evaluate(args.out, args.n, args.seed)
    print(table(cal, ev))
    result = {"calibration": cal, "evaluation": ev, "table": table(cal, ev)}
    dest = Path(__file__).parent / "results" / "dedup_defaults.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(result, indent=1))


main()
