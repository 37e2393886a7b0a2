"""Conformance: every registered encoder passes trainleak.testing.check_encoder.

The contract itself ships in the package (plugin authors run it on theirs); this file
runs it over every built-in encoder on real photos, adds what only the registry knows
(the name, unknown options), and shows that it catches broken encoders.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from stand_ins import stand_in_folder

from trainleak.encoders import ENCODERS, _load_builtin, get_encoder
from trainleak.encoders.base import Encoder
from trainleak.images import load_image
from trainleak.testing import EncoderContractError, check_encoder

from conftest import COIL, DATA, ORL
from models import save_onnx, save_torchscript

_load_builtin()


NAMED = ["arcface", "adaface", "sface", "sscd", "dinov2-s14"]


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    root = tmp_path_factory.mktemp("m")
    net = save_torchscript(root / "t.pt")
    save_onnx(root / "t.onnx", net)
    # The named models find stand-ins with their published signatures by file name.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAINLEAK_MODELS", str(stand_in_folder(root / "models")))
        yield {
            "face": "face",
            "pixel": "pixel",
            "tiled": "tiled",
            "copy": "copy",
            "onnx": f"onnx:{root / 't.onnx'}",
            "torchscript": f"torchscript:{root / 't.pt'}",
            **{name: name for name in NAMED},
        }


def test_every_registered_encoder_is_covered(specs):
    # Test encoders registered by other test modules (crashing_encoder) are not built in.
    builtin = {n for n in ENCODERS.names() if ENCODERS.get(n).__module__.startswith("trainleak.")}
    assert builtin == set(specs)


def _images(local: bool) -> list[np.ndarray]:
    images = [
        load_image(ORL / "s1" / "1.pgm"),
        load_image(COIL / "obj1__0.png"),
        load_image(ORL / "s2" / "3.pgm"),
    ]
    if local:  # keypoints: 23 x 28 thumbnails have too few, a 92 x 112 face enough
        images[2] = load_image(DATA / "orl_faces_92x112" / "s2" / "3.pgm")
    return images


@pytest.mark.parametrize("name", ["face", "pixel", "tiled", "copy", "onnx", "torchscript", *NAMED])
def test_encoder_contract(specs, name):
    enc = get_encoder(specs[name])
    info = enc.info
    images = _images(info.metric == "local")
    checked = check_encoder(enc, images)
    assert checked["embedded"] >= 1 and checked["name"] == name
    # Only the registry knows these: the registered name, a rebuilt encoder's key, its options.
    assert info.cache_key() == get_encoder(specs[name]).info.cache_key()
    assert 0 < info.default_threshold < 1
    assert checked["mirror_checked"] == (info.mirror is not None)
    rows = [r for r in enc.encode_batch(images) if isinstance(r, np.ndarray)]
    for r in rows:  # what each kind of row holds beyond the shared contract
        if info.metric == "local":  # packed keypoints, as many as the row says
            from trainleak.encoders.keypoints import unpack

            assert len(unpack(r[0])) == int(r[0, 0]) >= int(info.options["min_keypoints"])
        elif info.metric == "tiled_l2" and info.options.get("normalise"):
            spread = float(r.std())  # standardised pixels: zero mean, unit spread
            assert abs(float(r.mean())) < 1e-4 and spread in (0.0, pytest.approx(1, abs=1e-3))
        elif info.metric == "tiled_l2":  # the paper's raw [0, 1] pixels
            assert r.min() >= 0 and r.max() <= 1
    with pytest.raises(ValueError, match="has no option"):
        get_encoder(specs[name], definitely_not_an_option=1)


def test_pixel_and_tiled_declare_their_rule():
    tiled = get_encoder("tiled", grid=2, size=8).info
    assert tiled.tiles == 4 and tiled.mirror is not None
    assert tiled.operating_point == "near-duplicate"
    assert get_encoder("tiled", flip_invariant=False).info.mirror is None
    assert get_encoder("face").info.operating_point == "identity"


class _Broken(Encoder):
    """The pixel encoder with one contract rule broken at a time."""

    def __init__(self, fault: str) -> None:
        self.inner = get_encoder("pixel", size=8)
        self.info = self.inner.info
        self.fault = fault
        if fault == "mirror":  # a permutation that is not the mirror image's
            self.info = replace(self.info, mirror=np.roll(np.arange(64), 1))
        if fault == "tiles":
            self.info = replace(self.info, tiles=3)

    def encode(self, image):
        row = self.inner.encode(image)
        if self.fault == "float64":
            return row.astype(np.float64)
        if self.fault == "unnormalised":
            return row * 2
        if self.fault == "nan":
            row[0, 0] = np.nan
        return row


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("float64", "float32"),
        ("unnormalised", "L2-normalised"),
        ("nan", "NaN"),
        ("mirror", "mirror"),
        ("tiles", "tiles"),
    ],
)
def test_check_encoder_catches_a_broken_encoder(fault, message):
    images = [load_image(COIL / "obj1__0.png"), load_image(COIL / "obj2__0.png")]
    assert check_encoder(get_encoder("pixel", size=8), images)["mirror_checked"]
    with pytest.raises(EncoderContractError, match=message):
        check_encoder(_Broken(fault), images)


def test_cache_key_changes_with_options():
    assert get_encoder("pixel", size=8).info.cache_key() != get_encoder("pixel").info.cache_key()
    aligned = get_encoder("face", aligned=True).info.cache_key()
    assert aligned != get_encoder("face").info.cache_key()


def test_face_encoder_skips_images_without_faces_and_finds_all_faces():
    enc = get_encoder("face")
    coil = load_image(COIL / "obj1__0.png")
    assert str(enc.encode_batch([coil])[0]) == "no face detected"
    a, b = load_image(ORL / "s1" / "1.pgm"), load_image(ORL / "s2" / "1.pgm")
    pair = np.concatenate([a, np.zeros((a.shape[0], 12, 3), np.uint8), b], axis=1)
    assert get_encoder("face", all_faces=True).encode(pair).shape == (2, 128)
    assert enc.encode(pair).shape == (1, 128)
