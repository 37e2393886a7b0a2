"""Identity leakage on real faces (Webster et al. 2021; Shahreza & Marcel 2024), on ORL.

Scenario (issue 2): train = s1-s20 photos 1-5; synthetic = photos 6-10 of
s1-s10 (50 same-identity leaks: the same people, different photos) + all
photos of s21-s30 (100 non-members); holdout = all photos of s31-s40.
Prints, per face-encoder variant and leak score, how many leaks and how many
non-members are flagged at a holdout-calibrated 1% false-positive rate.

Reproduce: .venv/bin/python experiments/orl_identity_leak.py [--quick]
(--quick runs only the default encoder settings; the full ablation embeds ORL
four times, about 3 minutes on 2 cores.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from trainleak import audit  # noqa: E402
from trainleak.config import AuditConfig, EmbedConfig  # noqa: E402

from conftest import link_orl  # noqa: E402

VARIANTS = {
    "default (pad 0.3, CNN fallback, flip)": {},
    "no flip averaging": {"flip": False},
    "no CNN fallback": {"cnn_fallback": False},
    "no padding, no CNN fallback, no flip (plain dlib)": {
        "pad": 0.0,
        "cnn_fallback": False,
        "flip": False,
    },
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    link_orl(root / "train", range(1, 21), range(1, 6))
    link_orl(root / "synthetic" / "leaks", range(1, 11), range(6, 11), per_person=False)
    link_orl(root / "synthetic" / "nonmembers", range(21, 31), range(1, 11), per_person=False)
    link_orl(root / "holdout", range(31, 41), range(1, 11))
    cache = args.cache or str(root / "cache")
    variants = dict(list(VARIANTS.items())[:1]) if args.quick else VARIANTS
    print(
        "| face encoder | leak score | leaks flagged (of 50) | non-members flagged (of 100) "
        "| images without a detected face | threshold |"
    )
    print("|---|---|---|---|---|---|")
    for name, options in variants.items():
        for score in ("nn", "identity"):
            cfg = AuditConfig(
                embed=EmbedConfig(encoder_options=options, cache=cache), fpr=0.01, score=score
            )
            res = audit(root / "train", root / "synthetic", root / "holdout", config=cfg)
            flagged = res.flagged
            leaks = sum("/leaks/" in f for f in flagged)
            non = sum("/nonmembers/" in f for f in flagged)
            no_face = sum(s["reason"] == "no face detected" for s in res.report["skipped"])
            t = res.report["threshold"]["value"]
            print(
                f"| {name} | {score} | {leaks} ({leaks / 50:.0%}) | {non} | {no_face} of 350 "
                f"| {t:.4f} |"
            )


if __name__ == "__main__":
    main()
