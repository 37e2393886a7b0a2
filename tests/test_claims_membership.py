"""Claim (issue 16 part 1): identity membership from a generator that makes new photos.

Webster et al. 2021: a face-recognition model run over a generator's samples
tells which people were in its training set, from photos of them that were
never in it. ``experiments/orl_identity_membership.py`` shows it on ORL with a
generator conditioned on the person; this is its reduced golden version.

The generator is the committed decoder of that experiment's conditional VAE
(``tests/data/orl_cvae_decoder.safetensors``, float16, under 1 MB; trained on
photos 1-7 of s1-s20 of ORL at 92 x 112, downscaled to 48 x 40, and exported
with ``--export-decoder``). The test draws 16 samples of each of the 20
members and checks, on real ORL photos with the real face model:

* the attack: photos 8-10 (never trained on) of the 20 members against those
  of 20 non-members (s21-s40) - AUC with its bootstrap interval above 0.5;
* the samples are new photos: ``pixel`` and ``tiled`` at their default
  operating points flag none of them as a copy of a training photo;
* the negative control: the same attack on two groups of people the
  generator never saw (s21-s30 called "members", s31-s40 not) finds nothing.

About 100 s of CPU on one core (97 s measured on 2 shared cores): sampling
is one decoder pass; the face model embeds the 320 samples and 120 query
photos once (the session's embedding cache) and the bootstrap does the rest.
Marked ``slow``, which ``make test`` still runs (it deselects nothing).
"""

from __future__ import annotations

from pathlib import Path

import identity_gen as ig
import numpy as np
import pytest
from PIL import Image

import trainleak as tl
from trainleak.audits.membership import MembershipConfig, membership

from conftest import DATA

ORL_BIG = DATA / "orl_faces_92x112"
DECODER = Path(__file__).parent / "data" / "orl_cvae_decoder.safetensors"
MEMBERS = range(1, 21)
PER_IDENTITY = 16
#: Pinned from this test's own run with the committed decoder. Its float16
#: weights move some sample pixels by one grey level from the experiment's
#: float32 snapshot (step 4000: AUC 0.797, TPR 0.05): enough to move the AUC
#: by two of its 1/400 steps and one member over the highest non-member.
AUC = 0.805
TPR_1PCT = 0.10


def _link(dest: Path, people: range, photos: range, per_person: bool) -> Path:
    for s in people:
        for p in photos:
            target = dest / f"s{s}" / f"{p}.pgm" if per_person else dest / f"s{s}_{p}.pgm"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(ORL_BIG / f"s{s}" / f"{p}.pgm")
    return dest


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not ORL_BIG.is_dir():
        raise RuntimeError(f"test data missing: {ORL_BIG}")
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("claims_membership")
    labels = [k for k in range(len(MEMBERS)) for _ in range(PER_IDENTITY)]
    images = ig.vae_sample(ig.load_decoder(DECODER), labels, seed=0)
    (root / "samples").mkdir()
    for i, (k, image) in enumerate(zip(labels, images, strict=True)):
        Image.fromarray(image).save(root / "samples" / f"s{MEMBERS[k]}_{i % PER_IDENTITY:03d}.png")
    return {
        "samples": root / "samples",
        "ids": _link(root / "ids", range(1, 41), range(8, 11), per_person=True),
        "unseen": _link(root / "unseen", range(21, 41), range(8, 11), per_person=True),
        "train": _link(root / "train", MEMBERS, range(1, 8), per_person=False),
    }


def _attack(samples: Path, ids: Path, members: set[str], cache: Path) -> dict:
    cfg = MembershipConfig(n_boot=1000)
    cfg.embed.encoder_options = {"aligned": True}
    cfg.embed.workers = 1
    cfg.embed.cache = str(cache)
    return membership(str(samples), ids, members=members, config=cfg).report


@pytest.mark.slow
def test_identity_attack_finds_members_from_new_photos(scene, cache_dir):
    report = _attack(scene["samples"], scene["ids"], {f"s{s}" for s in MEMBERS}, cache_dir)
    s = report["summary"]
    assert report["generator"]["embedded"] == len(MEMBERS) * PER_IDENTITY
    assert s["auc_ci95"][0] > 0.5, s  # the claim: the interval excludes chance
    assert s["auc"] == pytest.approx(AUC, abs=0.02)
    assert s["tpr_at_fpr"]["0.01"] == pytest.approx(TPR_1PCT, abs=0.051)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["pixel", "tiled"])
def test_samples_are_not_copies_of_training_photos(scene, cache_dir, encoder):
    r = tl.audit(
        train=str(scene["train"]), synthetic=str(scene["samples"]), encoder=encoder,
        workers=1, cache=str(cache_dir),
    )  # fmt: skip
    s = r.report["summary"]
    assert r.report["threshold"]["method"] == "encoder-default"
    assert s["flagged"] == 0, s
    # Every sample is further from its nearest training photo than the
    # operating point (the experiment reports how close: nearer than the
    # members' real held-out photos are, but under the threshold).
    nearest = np.array([m["similarity"] for m in r.report["matches"] if m["rank"] == 1])
    assert len(nearest) == len(MEMBERS) * PER_IDENTITY
    assert nearest.max() < r.report["threshold"]["value"]


@pytest.mark.slow
def test_negative_control_unseen_people_are_not_members(scene, cache_dir):
    report = _attack(scene["samples"], scene["unseen"], {f"s{s}" for s in range(21, 31)}, cache_dir)
    lo, hi = report["summary"]["auc_ci95"]
    assert lo < 0.5 < hi, report["summary"]
