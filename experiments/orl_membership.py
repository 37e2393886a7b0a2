"""Identity and sample membership on a DDPM trained on real faces (issue 3), on ORL.

Scenario: a small diffusers DDPM (trainleak.ddpm) is trained on CPU on photos
1-7 of ORL people s1-s20 (140 images, 24 x 24 grey). Checkpoints are saved at
several training lengths. At each one:

* identity attack (Webster et al. 2021): ``--samples`` generations are
  streamed through the face encoder; the queries are the held-out photos
  8-10 of the 20 members and photos 8-10 of 20 non-members (s21-s40). AUC
  and TPR at 1% FPR over the 40 identities, bootstrap 95% intervals.
* ceiling: the identity attack with the 140 training photos themselves as
  the "generated" samples (a generator that memorized everything).
* loss attack (Carlini et al. 2023): per-image denoising loss, calibrated on
  photos 1-5 of s21-s30; AUC of the 140 exact training images against
  photos 6-10 of s31-s40 (never seen), and of the members' held-out photos
  8-10 against the same.

The face encoder runs with ``aligned`` (the whole frame is the face box):
ORL images are face crops and so are the DDPM's samples, and dlib's detector
found a face in only 13 of 128 samples of an early checkpoint while its CNN
fallback made embedding 15x slower.

Reproduce (22 minutes on 2 cores shared with other jobs, torch on 1 thread):
    .venv/bin/python experiments/orl_membership.py --out runs/orl_membership --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from trainleak.audits.loss_attack import LossAttack, LossConfig  # noqa: E402
from trainleak.audits.membership import MembershipConfig, evaluate, membership  # noqa: E402
from trainleak.ddpm import DDPMConfig, train_ddpm  # noqa: E402
from trainleak.stats import auc_score, bootstrap_interval  # noqa: E402

from conftest import ORL, link_orl  # noqa: E402

MEMBERS = range(1, 21)
NONMEMBERS = range(21, 41)


def orl(person: int, photo: int) -> np.ndarray:
    """One ORL photo as RGB uint8."""
    return np.asarray(Image.open(ORL / f"s{person}" / f"{photo}.pgm").convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/orl_membership")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--checkpoints", default="500,1000,2000")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy machine)")
    ap.add_argument("--workers", type=int, default=2, help="embedding processes")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_images = [orl(s, p) for s in MEMBERS for p in range(1, 8)]
    cfg = DDPMConfig(size=24, channels=(16, 32, 64), batch_size=16, steps=args.steps)
    checkpoints = [int(c) for c in args.checkpoints.split(",") if c]
    model = out / "ddpm"
    if not (model / "trainleak.json").exists():
        train_ddpm(train_images, model, cfg, checkpoints=checkpoints)
    train_s = time.perf_counter() - started
    folders = {c: model / f"step-{c:06d}" for c in checkpoints} | {args.steps: model}

    root = Path(tempfile.mkdtemp())
    link_orl(root / "ids", range(1, 41), range(8, 11))
    members = {f"s{s}" for s in MEMBERS}
    mcfg = MembershipConfig(n_samples=args.samples, steps=25, gen_batch_size=64, n_boot=1000)
    mcfg.embed.encoder_options = {"aligned": True}
    mcfg.embed.workers = args.workers
    mcfg.embed.cache = str(out / "cache")
    ref = [orl(s, p) for s in range(21, 31) for p in range(1, 6)]
    unseen = [orl(s, p) for s in range(31, 41) for p in range(6, 11)]
    held = [orl(s, p) for s in MEMBERS for p in range(8, 11)]
    rows = []
    for steps, folder in sorted(folders.items()):
        t0 = time.perf_counter()
        result = membership(f"diffusers:{folder}", root / "ids", members=members, config=mcfg)
        s = result.report["summary"]
        ident_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        attack = LossAttack(folder, LossConfig(threads=args.threads)).fit(ref)
        s_train, s_held, s_unseen = (attack.score(x) for x in (train_images, held, unseen))
        loss_s = time.perf_counter() - t0
        is_member = np.array([r["member"] for r in result.report["identities"]], bool)
        max_scores = np.array([r["score_max"] for r in result.report["identities"]])
        rows.append(
            {
                "steps": steps,
                "identity_auc_topm": s["auc"],
                "identity_auc_topm_ci95": s["auc_ci95"],
                "identity_tpr_at_1pct_fpr": s["tpr_at_fpr"]["0.01"],
                "identity_tpr_at_1pct_fpr_ci95": s["tpr_at_fpr_ci95"]["0.01"],
                "identity_auc_max": evaluate(max_scores, is_member, n_boot=1)["auc"],
                "loss_auc_train_vs_unseen": auc_score(s_train, s_unseen),
                "loss_auc_train_vs_unseen_ci95": bootstrap_interval(s_train, s_unseen, auc_score),
                "loss_auc_heldout_members_vs_unseen": auc_score(s_held, s_unseen),
                "loss_auc_train_vs_heldout_members": auc_score(s_train, s_held),
                "identity_seconds": ident_s,
                "loss_seconds": loss_s,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    # Ceiling: a "generator" that returns its 140 training photos verbatim.
    link_orl(root / "copies", MEMBERS, range(1, 8), per_person=False)
    ceiling = membership(str(root / "copies"), root / "ids", members=members, config=mcfg)
    ceiling_auc = ceiling.report["summary"]["auc"]
    total = time.perf_counter() - started
    summary = {
        "rows": rows,
        "identity_auc_ceiling_training_photos_as_samples": ceiling_auc,
        "train_seconds": train_s,
        "total_seconds": total,
        "cores": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "ddpm": str(model),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(
        "| training steps | identity AUC (top-5) [95% CI] | identity TPR@1%FPR | "
        "identity AUC (max) | loss AUC train vs unseen [95% CI] | "
        "loss AUC members' held-out vs unseen | loss AUC train vs members' held-out |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["identity_auc_topm_ci95"]
        llo, lhi = r["loss_auc_train_vs_unseen_ci95"]
        print(
            f"| {r['steps']} | {r['identity_auc_topm']:.3f} [{lo:.2f}, {hi:.2f}] | "
            f"{r['identity_tpr_at_1pct_fpr']:.2f} | {r['identity_auc_max']:.3f} | "
            f"{r['loss_auc_train_vs_unseen']:.3f} [{llo:.2f}, {lhi:.2f}] | "
            f"{r['loss_auc_heldout_members_vs_unseen']:.3f} | "
            f"{r['loss_auc_train_vs_heldout_members']:.3f} |"
        )
    print(f"identity AUC if the samples were the 140 training photos: {ceiling_auc:.3f}")
    print(f"total {total:.0f} s (training {train_s:.0f} s)")


if __name__ == "__main__":
    main()
