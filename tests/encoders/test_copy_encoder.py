"""The ``copy`` encoder on real photos: each edit family found, distinct images never flagged.

Training set: scikit-image's bundled photographs and ORL faces at 92 x 112.
Queries: each edit family of :mod:`copy_edits` applied here to four photos
and three faces; negatives: other photos, other people, a non-overlapping
part of a training photo. Scores are compared with the encoder's default
operating point (no calibration), so a pinned recall is the encoder's own.
"""

from __future__ import annotations

import numpy as np
import pytest
from copy_edits import EDITS, apply
from PIL import Image

from trainleak.encoders import EncodeSkip, get_encoder
from trainleak.encoders.copydetect import CopyEncoder, verify
from trainleak.encoders.keypoints import extract, unpack
from trainleak.similarity import Similarity

from conftest import DATA

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("cv2")

ORL92 = DATA / "orl_faces_92x112"
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]
FACES = ["s1", "s2", "s3"]


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]


def _orl(person: str, photo: int) -> np.ndarray:
    return np.asarray(Image.open(ORL92 / person / f"{photo}.pgm").convert("RGB"))


@pytest.fixture(scope="session")
def copy_scene() -> dict:
    """Training rows, the search rule, and every planted copy's top-1 (score, right image)."""
    enc = CopyEncoder()
    train = {n: _rgb(getattr(skdata, n)()) for n in [*PHOTOS, "hubble_deep_field"]}
    train.update({n: _rgb(getattr(skdata, n)()) for n in ["camera", "moon", "brick"]})
    # The left half of retina only: its right half is a negative (same photo, no overlap).
    retina = skdata.retina()
    train["retina_left"] = np.ascontiguousarray(retina[:, : retina.shape[1] // 2])
    train.update({p: _orl(p, 1) for p in [*FACES, "s4", "s5"]})
    keys = list(train)
    db = np.concatenate([enc.encode(train[k]) for k in keys])
    sim = Similarity.of(enc.info)
    found: dict[tuple[str, str], tuple[float, bool]] = {}
    for e in EDITS:
        for j, name in enumerate(PHOTOS + FACES):
            try:
                q = enc.encode(apply(e, train[name], seed=j))
            except EncodeSkip:
                continue
            s, i = sim.knn(q, db, 1)
            found[(e, name)] = (float(s[0, 0]), keys[int(i[0, 0])] == name)
    return {"enc": enc, "db": db, "keys": keys, "sim": sim, "found": found, "retina": retina}


def _recall(scene: dict, edit: str, names: list[str]) -> float:
    thr = scene["enc"].info.default_threshold
    hits = [scene["found"].get((edit, n), (0.0, False)) for n in names]
    return sum(s >= thr and right for s, right in hits) / len(names)


@pytest.mark.parametrize("edit", list(EDITS))
def test_every_edit_family_of_the_photos_is_found(copy_scene: dict, edit: str) -> None:
    assert _recall(copy_scene, edit, PHOTOS) == 1.0, copy_scene["found"]


#: Pinned below 1 where measured below 1 (none at present: ORL's 92 x 112
#: faces shrunk to 0.3x, 28 x 34 pixels, are enlarged to 256 before SIFT).
FACE_RECALL: dict[str, float] = {}


@pytest.mark.parametrize("edit", list(EDITS))
def test_every_edit_family_of_small_faces_is_found(copy_scene: dict, edit: str) -> None:
    assert _recall(copy_scene, edit, FACES) >= FACE_RECALL.get(edit, 1.0), copy_scene["found"]


def test_distinct_images_are_not_flagged(copy_scene: dict) -> None:
    enc, sim, db = copy_scene["enc"], copy_scene["sim"], copy_scene["db"]
    retina = copy_scene["retina"]
    others = [_rgb(getattr(skdata, n)()) for n in ["text", "page", "gravel", "grass", "coins"]]
    others += [_orl(f"s{p}", 2) for p in range(6, 16)]  # people not in training
    # The right half of a photo whose left half is in training: same scene, no shared pixels.
    others.append(np.ascontiguousarray(retina[:, retina.shape[1] // 2 + 8 :]))
    scores = [float(sim.knn(enc.encode(o), db, 1)[0][0, 0]) for o in others]
    assert max(scores) < enc.info.default_threshold, scores
    # Chance fits stay under the chance floor (score 0), not just under the operating point.
    assert max(scores) == 0.0, scores


def test_a_flat_or_tiny_image_is_a_skip_with_its_reason() -> None:
    enc = get_encoder("copy")
    with pytest.raises(EncodeSkip, match="too few keypoints"):
        enc.encode(np.full((300, 400, 3), 128, np.uint8))
    with pytest.raises(EncodeSkip, match="too few keypoints"):
        enc.encode(np.asarray(Image.fromarray(skdata.astronaut()).resize((12, 12))))


def test_mirrored_keypoints_equal_sift_on_the_mirror_image() -> None:
    img = skdata.chelsea()
    a = extract(img, long_side=512, max_keypoints=300, min_keypoints=8).mirrored()
    b = extract(img[:, ::-1], long_side=512, max_keypoints=300, min_keypoints=8)
    # The same keypoint found in both: same place, descriptor permuted to equal.
    d = np.linalg.norm(a.xy[:, None] - b.xy[None], axis=2)
    close = d.min(1) < 0.5
    desc_err = [
        np.abs(a.desc[i].astype(int) - b.desc[int(d[i].argmin())].astype(int)).mean()
        for i in np.flatnonzero(close)
    ]
    assert close.sum() > 60
    # Most agree to a grey level or two (rounding, interpolation); a few
    # keypoints have two orientations and pair with the other one.
    assert np.median(desc_err) < 2.0


def test_rows_round_trip_and_the_edit_is_estimated() -> None:
    enc = CopyEncoder(max_keypoints=200)
    img = skdata.astronaut()
    row = enc.encode(img)[0]
    assert np.isfinite(row).all() and row.dtype == np.float32
    feat = unpack(row)
    assert len(feat) == 200 and feat.wh == (512.0, 512.0)
    h, w = img.shape[:2]
    query = np.ascontiguousarray(img[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + h // 2][:, ::-1])
    m = verify(unpack(enc.encode(query)[0]), feat)
    edit = m.edit()
    assert m.mirrored and m.inliers >= 30
    # The query is the centre quarter of the area, cut out at its own pixel
    # size (scale 1) and mirrored; the box is the training image's middle.
    assert abs(edit["scale"] - 1.0) < 0.05 and abs(edit["rotation_degrees"]) < 2
    m2 = verify(unpack(enc.encode(np.asarray(Image.fromarray(query).resize((512, 512))))[0]), feat)
    assert abs(m2.edit()["scale"] - 2.0) < 0.1
    assert np.allclose(edit["crop_box_fraction"], [0.25, 0.25, 0.75, 0.75], atol=0.04)


def test_the_copy_encoder_declares_copy_kind_and_a_local_rule() -> None:
    info = get_encoder("copy").info
    assert info.kind == "copy" and info.metric == "local"
    assert Similarity.of(info).rescoring
    assert get_encoder("pixel").info.kind == "copy"


def test_small_faces_blurred_are_found_by_precision_and_other_people_are_not() -> None:
    """ORL's 92 x 112 faces blurred keep too few keypoints for 12 inliers; nearly all agree.

    The precision rule (``PRECISE_INLIERS`` inliers that are most of the
    tentative matches) finds them; its negative control is photos of people
    who are not in training (same camera, pose and background), whose chance
    fits are a minority of their matches and score 0.
    """
    enc = CopyEncoder()
    sim = Similarity.of(enc.info)
    people = [f"s{p}" for p in range(1, 11)]
    db = np.concatenate([enc.encode(_orl(p, 1)) for p in people])
    thr = enc.info.default_threshold
    below_count_floor = 0
    for j, p in enumerate(people):
        q = enc.encode(apply("blur", _orl(p, 1), seed=j))
        s, i = sim.knn(q, db, 1)
        assert int(i[0, 0]) == j and float(s[0, 0]) >= thr, (p, float(s[0, 0]))
        m = verify(unpack(q[0]), unpack(db[j]))
        below_count_floor += m.inliers < int(enc.opts["min_inliers"])
    # Some of them are found only by precision (measured: 3 of these 10).
    assert below_count_floor >= 1
    others = [_orl(f"s{p}", k) for p in range(31, 41) for k in (1, 2, 3)]
    scores = [float(sim.knn(enc.encode(o), db, 1)[0][0, 0]) for o in others]
    assert max(scores) == 0.0, scores
