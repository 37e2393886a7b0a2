"""Identity membership from a generator that makes new photos of its people (issue 16 part 1).

Webster et al. 2021: a face-recognition model, run over a generator's
samples, tells which people the generator was trained on, even from photos
of them that were never in training. The earlier ORL experiment
(``orl_membership.py``, an unconditional 24 x 24 DDPM) stayed at chance; this
one trains a generator conditioned on the person (``tests/identity_gen.py``:
a class-conditional DDPM or a conditional VAE, 48 x 40 grey) on ORL (92 x 112
originals) and asks, at several training lengths:

* identity attack: ``--per-identity`` samples of each of the 20 members
  (s1-s20; the generator trained on their photos 1-7) are the generated set;
  the queries are photos 8-10 of the 20 members (never trained on) and of 20
  non-members (s21-s40); face encoder with ``aligned`` (ORL photos and the
  samples are face crops; the README says why). AUC and TPR at 1% FPR over
  the 40 people, bootstrap 95% intervals (``trainleak.membership``).
* are the samples new photos? ``tl.audit`` of the samples against the 140
  training photos with the ``pixel`` and ``tiled`` encoders at their default
  operating points: the share of samples flagged as copies, and the
  distribution of each sample's similarity to its nearest training photo,
  beside the same for the members' real held-out photos 8-10 (new photos of
  the same people taken in the same session: what "new" looks like here).
* what the face model sees: the share of samples whose nearest training
  photo (face encoder) is of the person the sample was drawn for, their
  similarity to it beside the held-out photos', the members' and
  non-members' identity scores, and the share of samples in which dlib's HOG
  detector finds a face at all (no ``aligned``, no CNN fallback).

* what resolution costs the face model: the same attack with the training
  photos themselves as the samples, at 92 x 112, at the generators' 48 x 40
  and at the earlier experiment's 24 x 24; the same in that experiment's
  own setting (the 23 x 28 copy of ORL squeezed to 24 x 24, queried with
  23 x 28 photos); and the HOG detector's rate on real photos at those sizes.

Training is resumable (``out/ckpt.pt``, atomically every 250 steps): with
``--max-train-s`` the run trains that long, evaluates the snapshots it has,
and the next run continues. Samples are written under ``out/samples/`` and
embeddings cached under ``out/cache``: a re-run recomputes nothing.
``--results FILE`` keeps one entry per generator kind in FILE;
``--grid STEP:FILE`` draws a snapshot's samples beside the person's training
photos (PNG).

Reproduce (see the README for the times it took; the same command resumes,
``--max-train-s 2400`` bounds one sitting):
    nice -n 10 .venv/bin/python experiments/orl_identity_membership.py --kind vae \\
        --out runs/orl_idm/vae --results experiments/results/orl_identity_membership.json
    nice -n 10 .venv/bin/python experiments/orl_identity_membership.py --kind ddpm \\
        --out runs/orl_idm/ddpm --results experiments/results/orl_identity_membership.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import identity_gen as ig  # noqa: E402

import trainleak as tl  # noqa: E402
from trainleak.audits.membership import MembershipConfig, evaluate, membership  # noqa: E402

ORL_BIG = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces_92x112"
ORL_SMALL = ORL_BIG.with_name("orl_faces")  # the 23 x 28 copy the earlier experiment used
MEMBERS = range(1, 21)
NONMEMBERS = range(21, 41)
TRAIN_PHOTOS = range(1, 8)
QUERY_PHOTOS = range(8, 11)
COPY_ENCODERS = ("pixel", "tiled")
QUANTILES = (0.5, 0.9, 0.99, 1.0)


def link(dest: Path, people: range, photos: range, per_person: bool, root: Path = ORL_BIG) -> Path:
    """Symlink ORL photos (of ``root``) into ``dest`` (``dest/sN/P.pgm`` or ``dest/sN_P.pgm``)."""
    if dest.exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for s in people:
        for p in photos:
            target = tmp / f"s{s}" / f"{p}.pgm" if per_person else tmp / f"s{s}_{p}.pgm"
            target.parent.mkdir(exist_ok=True)
            if not target.exists():
                os.symlink(root / f"s{s}" / f"{p}.pgm", target)
    os.replace(tmp, dest)
    return dest


def write_samples(
    model: Any, cfg: ig.TrainConfig, per_identity: int, dest: Path, args: Any
) -> Path:
    """``per_identity`` samples of each member as ``dest/s{N}_{j}.png`` (skipped when present)."""
    done = dest.with_name(dest.name + ".done")
    if done.exists():
        return dest
    t0 = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    labels = [k for k in range(len(MEMBERS)) for _ in range(per_identity)]
    if cfg.kind == "vae":
        images = ig.vae_sample(model, labels, args.seed, args.temperature)
    else:
        images = ig.ddpm_sample(
            model, labels, args.seed, args.ddim_steps, args.guidance, null_class=len(MEMBERS)
        )
    for i, (k, image) in enumerate(zip(labels, images, strict=True)):
        Image.fromarray(image).save(dest / f"s{MEMBERS[k]}_{i % per_identity:03d}.png")
    done.write_text(f"{time.perf_counter() - t0:.1f}")  # seconds it took to sample
    return dest


def sampling_seconds(samples: Path) -> float | None:
    """Seconds :func:`write_samples` took for ``samples`` (None: not recorded)."""
    text = samples.with_name(samples.name + ".done").read_text().strip()
    return float(text) if text else None


def downscaled(dest: Path, size: tuple[int, int], root: Path = ORL_BIG) -> Path:
    """The members' training photos as a generator sees them, at ``size`` (H, W), as PNGs."""
    if dest.exists():
        return dest
    x, y = ig.load_faces(root, MEMBERS, TRAIN_PHOTOS, size)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for i, (image, k) in enumerate(zip(ig.to_uint8(x), y.tolist(), strict=True)):
        Image.fromarray(image).save(tmp / f"s{MEMBERS[k]}_{TRAIN_PHOTOS[i % 7]}.png")
    os.replace(tmp, dest)
    return dest


def hog_rate(images: Path, cache: Path, workers: int) -> float:
    """Share of ``images`` in which dlib's HOG detector finds a face (no ``aligned``, no CNN)."""
    kw: dict[str, Any] = {"workers": workers, "cache": str(cache)}
    det = tl.embed(images, "face", encoder_options={"cnn_fallback": False}, **kw)
    return len(det) / max(1, len(det) + len(det.skipped))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def sample_grid(samples: Path, dest: Path, people: int = 6, per_row: int = 8) -> Path:
    """PNG: per person, training photos 1 and 4 at 48 x 40, a gap, then ``per_row`` samples."""
    rows = []
    gap = np.full((ig.HEIGHT, 6), 255, np.uint8)
    for s in list(MEMBERS)[:people]:
        real = [
            np.asarray(
                Image.open(ORL_BIG / f"s{s}" / f"{p}.pgm")
                .convert("L")
                .resize((ig.WIDTH, ig.HEIGHT), Image.Resampling.BICUBIC)
            )
            for p in (1, 4)
        ]
        fake = [np.asarray(Image.open(samples / f"s{s}_{j:03d}.png")) for j in range(per_row)]
        rows.append(np.concatenate([*real, gap, *fake], 1))
        rows.append(np.full((2, rows[-1].shape[1]), 255, np.uint8))
    grid = np.concatenate(rows[:-1], 0)
    big = Image.fromarray(grid).resize(
        (grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    big.save(dest, optimize=True)
    return dest


def nearest(result: Any) -> dict[str, float]:
    """Path of each audited sample -> similarity to its nearest training image.

    From the audit's full table (``report.json`` lists at most 1,000 samples).
    """
    t = result.table
    sims = t.scored.neighbours.sims[:, 0]
    return {sid: float(sims[i]) for i, sid in enumerate(t.synthetic.ids)}


def quantiles(values: list[float] | np.ndarray) -> dict[str, float]:
    """The ``QUANTILES`` of ``values``, keyed ``"q50"`` .. ``"q100"``."""
    v = np.asarray(values, np.float64)
    return {f"q{round(q * 100)}": float(np.quantile(v, q)) for q in QUANTILES}


def copy_check(train: Path, samples: Path, cache: Path, workers: int) -> dict[str, Any]:
    """Copies of training photos among ``samples``, by ``pixel`` and ``tiled`` at their defaults."""
    out = {}
    for enc in COPY_ENCODERS:
        r = tl.audit(
            train=str(train), synthetic=str(samples), encoder=enc, workers=workers, cache=str(cache)
        )
        s = r.report["summary"]
        sims = list(nearest(r).values())
        out[enc] = {
            "threshold": r.report["threshold"]["value"],
            "copy_fraction": s["flagged_rate"],
            "copy_fraction_ci95": s["flagged_rate_ci95"],
            "copies": s["flagged"],
            "nearest_train_similarity": quantiles(sims),
        }
    return out


def face_view(samples: Path, train: Path, held: Path, cache: Path, workers: int) -> dict[str, Any]:
    """What the face model makes of the samples (see the module docstring)."""
    opts = {"aligned": True}
    kw: dict[str, Any] = {"workers": workers, "cache": str(cache)}
    s = tl.embed(samples, "face", encoder_options=opts, **kw)
    t = tl.embed(train, "face", encoder_options=opts, **kw)
    h = tl.embed(held, "face", encoder_options=opts, **kw)

    def person(path: str) -> str:
        return Path(path).name.split("_")[0] if "_" in Path(path).name else Path(path).parent.name

    t_people = np.array([person(i) for i in t.ids])
    sim_s = s.vectors @ t.vectors.T
    sim_h = h.vectors @ t.vectors.T
    s_people = np.array([person(i) for i in s.ids])
    own_s = np.array([sim_s[i, t_people == p].max() for i, p in enumerate(s_people)])
    own_h = np.array([sim_h[i, t_people == person(p)].max() for i, p in enumerate(h.ids)])
    return {
        "samples_embedded": len(s),
        "nearest_train_is_own_person": float((t_people[sim_s.argmax(1)] == s_people).mean()),
        "heldout_nearest_train_is_own_person": float(
            (t_people[sim_h.argmax(1)] == np.array([person(p) for p in h.ids])).mean()
        ),
        "own_person_best_similarity": quantiles(own_s),
        "heldout_own_person_best_similarity": quantiles(own_h),
        "share_above_face_threshold_0.93": float((own_s >= 0.93).mean()),
        "heldout_share_above_face_threshold_0.93": float((own_h >= 0.93).mean()),
        # HOG detection without the aligned shortcut: does dlib see a face at all?
        "hog_face_detected": hog_rate(samples, cache, workers),
    }


def identity_attack(
    samples: Path, ids: Path, cache: Path, workers: int, n_boot: int
) -> dict[str, Any]:
    """The identity membership attack with ``samples`` as the generated set."""
    cfg = MembershipConfig(n_boot=n_boot)
    cfg.embed.encoder_options = {"aligned": True}
    cfg.embed.workers = workers
    cfg.embed.cache = str(cache)
    result = membership(str(samples), ids, members={f"s{s}" for s in MEMBERS}, config=cfg)
    s = result.report["summary"]
    rows = result.report["identities"]
    is_member = np.array([r["member"] for r in rows], bool)
    topm = np.array([r["score"] for r in rows])
    maxs = np.array([r["score_max"] for r in rows])
    return {
        "auc": s["auc"],
        "auc_ci95": s["auc_ci95"],
        "tpr_at_1pct_fpr": s["tpr_at_fpr"]["0.01"],
        "tpr_at_1pct_fpr_ci95": s["tpr_at_fpr_ci95"]["0.01"],
        "auc_max_score": evaluate(maxs, is_member, n_boot=1)["auc"],
        "member_scores": quantiles(topm[is_member]),
        "nonmember_scores": quantiles(topm[~is_member]),
        "n_samples_embedded": result.report["generator"]["embedded"],
    }


def _ci(v: float, ci: list[float], fmt: str = ".2f") -> str:
    return f"{v:{fmt}} [{ci[0]:.2f}, {ci[1]:.2f}]"


def markdown(summary: dict[str, Any]) -> str:
    """The README's tables for one generator's results (``summary`` as written by :func:`main`)."""
    head = (
        "| training steps | identity AUC [95% CI] | TPR@1%FPR [95% CI] | pixel copies "
        "| tiled copies | tiled similarity to nearest training photo, median / max "
        "| nearest training photo (face) is the person's | own-person face similarity, median "
        "| HOG finds a face |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in summary["rows"]:
        i, c, f = r["identity"], r["copies"], r["face"]
        t = c["tiled"]["nearest_train_similarity"]
        lines.append(
            f"| {r['steps']} | {_ci(i['auc'], i['auc_ci95'], '.3f')} "
            f"| {_ci(i['tpr_at_1pct_fpr'], i['tpr_at_1pct_fpr_ci95'])} "
            f"| {c['pixel']['copy_fraction']:.1%} | {c['tiled']['copy_fraction']:.1%} "
            f"| {t['q50']:.2f} / {t['q100']:.2f} | {f['nearest_train_is_own_person']:.0%} "
            f"| {f['own_person_best_similarity']['q50']:.3f} | {f['hog_face_detected']:.0%} |"
        )
    b, f = summary["baseline"], summary["rows"][-1]["face"]
    t = b["heldout_photos_as_samples_copies"]["tiled"]["nearest_train_similarity"]
    lines.append(
        f"| members' real held-out photos (60) | | | "
        f"{b['heldout_photos_as_samples_copies']['pixel']['copy_fraction']:.1%} "
        f"| {b['heldout_photos_as_samples_copies']['tiled']['copy_fraction']:.1%} "
        f"| {t['q50']:.2f} / {t['q100']:.2f} | {f['heldout_nearest_train_is_own_person']:.0%} "
        f"| {f['heldout_own_person_best_similarity']['q50']:.3f} "
        f"| {b['hog_face_detected']['heldout_photos_92x112']:.0%} |"
    )
    lines += ["", "| samples = the 140 training photos | identity AUC [95% CI] | TPR@1%FPR "
              "| HOG finds a face |", "|---|---|---|---|"]  # fmt: skip
    hog = b["hog_face_detected"]
    for name, key, det in (
        ("92 x 112 (original)", "training_photos_as_samples_identity", None),
        ("48 x 40 (these generators)", "training_photos_48x40_as_samples_identity", "48x40"),
        ("24 x 24, queries 92 x 112", "training_photos_24x24_as_samples_identity", "24x24"),
        ("24 x 24 of the 23 x 28 copy, queries 23 x 28 (the earlier experiment's setting)",
         "earlier_setup_training_photos_24x24_as_samples_identity", None),
    ):  # fmt: skip
        i = b[key]
        rate = f"{hog[f'training_photos_{det}']:.0%}" if det else ""
        lines.append(
            f"| {name} | {_ci(i['auc'], i['auc_ci95'], '.3f')} | {i['tpr_at_1pct_fpr']:.2f} "
            f"| {rate} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("ddpm", "vae"), default="ddpm")
    ap.add_argument("--out", default="runs/orl_idm/ddpm")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default by kind)")
    ap.add_argument("--snapshots", default=None, help="steps evaluated, comma-separated")
    ap.add_argument("--per-identity", type=int, default=16)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0, help="VAE latent scale")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--max-train-s", type=float, default=None, help="train this long, then stop")
    ap.add_argument("--no-train", action="store_true", help="only evaluate existing snapshots")
    ap.add_argument("--train-only", action="store_true", help="only train (resumable)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a busy machine)")
    ap.add_argument("--workers", type=int, default=1, help="embedding processes")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--results", default=None, help="also keep the results in this JSON file")
    ap.add_argument(
        "--table", action="store_true", help="print --results' tables (markdown) and stop"
    )
    ap.add_argument(
        "--grid", default=None, metavar="STEP:FILE", help="draw snapshot STEP's samples (PNG)"
    )
    ap.add_argument(
        "--export-decoder", default=None, metavar="STEP:FILE",
        help="VAE: save snapshot STEP's decoder (float16 safetensors) to FILE, for the golden test",
    )  # fmt: skip
    args = ap.parse_args()
    if args.table:
        for kind, summary in json.loads(Path(args.results).read_text())["generators"].items():
            print(f"{kind}: {summary['steps_done']} steps, {summary['train_seconds']:.0f} s")
            print(markdown(summary), end="\n\n")
        return
    import torch

    torch.set_num_threads(args.threads)
    defaults = {
        "ddpm": (16000, "500,1000,2000,3000,4000,6000,8000,10000,12000,14000,16000"),
        "vae": (6000, "500,1000,2000,4000,6000"),
    }
    steps = args.steps or defaults[args.kind][0]
    snapshots = [int(s) for s in (args.snapshots or defaults[args.kind][1]).split(",")]
    if args.kind == "vae":
        cfg = ig.TrainConfig(kind="vae", steps=steps, batch_size=32, lr=2e-3)
    else:
        cfg = ig.TrainConfig(kind="ddpm", steps=steps)
    out = Path(args.out)
    cache = out / "cache"
    started = time.perf_counter()
    x, y = ig.load_faces(ORL_BIG, MEMBERS, TRAIN_PHOTOS)
    if args.no_train:  # evaluate the snapshots there are (while another process trains)
        meta = json.loads((out / "model" / "train.json").read_text())
    else:
        meta = ig.train(
            x, y, out / "model", cfg, snapshots, ckpt_every=250,
            log=lambda s: print(time.strftime("%H:%M:%S"), s, flush=True),
            stop_after_s=args.max_train_s,
        )  # fmt: skip
    if args.train_only:
        return
    data = out / "data"
    train = link(data / "train", MEMBERS, TRAIN_PHOTOS, per_person=False)
    held = link(data / "heldout", MEMBERS, QUERY_PHOTOS, per_person=False)
    ids = link(data / "ids", range(1, 41), QUERY_PHOTOS, per_person=True)

    if args.export_decoder:
        step, path = args.export_decoder.split(":", 1)
        vae = ig.load_snapshot(
            out / "model" / f"step-{int(step):06d}.safetensors", cfg, len(MEMBERS)
        )
        info = {
            "n_classes": str(len(MEMBERS)), "latent": str(cfg.latent), "width": str(cfg.width),
            "steps": step,
            "trained_on": "ORL 92x112 s1-s20 photos 1-7, 48x40 grey; class k = s(k+1)",
            "made_by": "experiments/orl_identity_membership.py --kind vae --export-decoder",
        }  # fmt: skip
        ig.export_decoder(vae, Path(path), info)  # type: ignore[arg-type]
        return
    rows = []
    tag = f"seed{args.seed}-n{args.per_identity}-g{args.guidance:g}-t{args.temperature:g}"
    if args.grid:
        step, path = args.grid.split(":", 1)
        snap = out / "model" / f"step-{int(step):06d}.safetensors"
        model = ig.load_snapshot(snap, cfg, len(MEMBERS))
        dest = out / "samples" / f"{tag}-step-{int(step):06d}"
        sample_grid(write_samples(model, cfg, args.per_identity, dest, args), Path(path))
        return
    for step in snapshots:
        snap = out / "model" / f"step-{step:06d}.safetensors"
        if not snap.exists():
            continue
        t0 = time.perf_counter()
        model = ig.load_snapshot(snap, cfg, len(MEMBERS))
        samples = write_samples(
            model, cfg, args.per_identity, out / "samples" / f"{tag}-step-{step:06d}", args
        )
        row: dict[str, Any] = {"steps": step, "sample_seconds": sampling_seconds(samples)}
        t0 = time.perf_counter()
        row["identity"] = identity_attack(samples, ids, cache, args.workers, args.n_boot)
        row["copies"] = copy_check(train, samples, cache, args.workers)
        row["face"] = face_view(samples, train, held, cache, args.workers)
        row["eval_seconds"] = time.perf_counter() - t0
        rows.append(row)
        i, c = row["identity"], row["copies"]
        print(
            f"step {step}: identity AUC {i['auc']:.3f} "
            f"[{i['auc_ci95'][0]:.2f}, {i['auc_ci95'][1]:.2f}] "
            f"TPR@1%FPR {i['tpr_at_1pct_fpr']:.2f}; copies pixel {c['pixel']['copy_fraction']:.3f} "
            f"tiled {c['tiled']['copy_fraction']:.3f}; own-person nearest "
            f"{row['face']['nearest_train_is_own_person']:.2f}",
            flush=True,
        )
    # What real new photos of the members look like to the same checks, and the
    # ceiling: the attack when the "samples" are the 140 training photos.
    # What the resolution costs the face model, on real photos: the 48 x 40 of
    # these generators and the 24 x 24 of the earlier, unconditional DDPM; and
    # the earlier experiment's own setting (23 x 28 photos squeezed to 24 x 24,
    # queried with 23 x 28 photos): the best its generator could have done.
    sizes = ((48, 40), (24, 24))
    small = {f"{h}x{w}": downscaled(data / f"train_{h}x{w}", (h, w)) for h, w in sizes}
    earlier_train = downscaled(data / "train_24x24_of_23x28", (24, 24), ORL_SMALL)
    earlier_ids = link(data / "ids_23x28", range(1, 41), QUERY_PHOTOS, True, ORL_SMALL)
    baseline = {
        "heldout_photos_as_samples_copies": copy_check(train, held, cache, args.workers),
        "training_photos_as_samples_identity": identity_attack(
            train, ids, cache, args.workers, args.n_boot
        ),
        **{
            f"training_photos_{k}_as_samples_identity": identity_attack(
                v, ids, cache, args.workers, args.n_boot
            )
            for k, v in small.items()
        },
        "earlier_setup_training_photos_24x24_as_samples_identity": identity_attack(
            earlier_train, earlier_ids, cache, args.workers, args.n_boot
        ),
        "hog_face_detected": {
            "heldout_photos_92x112": hog_rate(held, cache, args.workers),
            **{f"training_photos_{k}": hog_rate(v, cache, args.workers) for k, v in small.items()},
        },
    }
    summary = {
        "kind": args.kind,
        "train_config": meta["config"],
        "steps_done": meta["steps_done"],
        "train_seconds": meta["train_seconds"],
        "loss_at_checkpoints": meta["losses"],
        "sampling": {
            "per_identity": args.per_identity,
            "seed": args.seed,
            "ddim_steps": args.ddim_steps,
            "guidance": args.guidance,
            "temperature": args.temperature,
        },
        "rows": rows,
        "baseline": baseline,
        "total_seconds_this_run": time.perf_counter() - started,
        "argv": sys.argv[1:],
        "hardware": {
            "device": "cpu",
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "note": "cores shared with other jobs; training and sampling on CPU, no GPU",
        },
        "load_average_at_end": os.getloadavg(),
    }
    text = json.dumps(summary, indent=2)
    (out / f"results-{tag}.json").write_text(text, encoding="utf-8")
    if args.results:  # one entry per generator kind, the others kept
        res = Path(args.results)
        both = json.loads(res.read_text()) if res.exists() else {}
        both = {"experiment": __doc__.splitlines()[0], **both}
        both.setdefault("generators", {})[args.kind] = summary
        res.write_text(json.dumps(both, indent=2), encoding="utf-8")
    print(markdown(summary))


if __name__ == "__main__":
    main()
