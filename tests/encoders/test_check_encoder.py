"""Conformance: every registered encoder keeps the encoder contract."""

from __future__ import annotations

import numpy as np
import pytest
from stand_ins import stand_in_folder

from trainleak.encoders import ENCODERS, _load_builtin, get_encoder
from trainleak.images import load_image

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


@pytest.mark.parametrize("name", ["face", "pixel", "tiled", "copy", "onnx", "torchscript", *NAMED])
def test_encoder_contract(specs, name):
    enc = get_encoder(specs[name])
    info = enc.info
    assert info.name == name and info.version >= 1 and info.dim > 0
    assert info.metric in ("cosine", "tiled_l2", "local")
    assert info.kind in ("copy", "identity")
    assert 0 < info.default_threshold < 1 and info.threshold_note
    assert info.cache_key() == get_encoder(specs[name]).info.cache_key()
    images = [
        load_image(ORL / "s1" / "1.pgm"),
        load_image(COIL / "obj1__0.png"),
        load_image(ORL / "s2" / "3.pgm"),
    ]
    if info.metric == "local":  # keypoints: 23 x 28 thumbnails have too few, a 92 x 112 face enough
        images[2] = load_image(DATA / "orl_faces_92x112" / "s2" / "3.pgm")
    results = enc.encode_batch(images)
    assert len(results) == 3
    rows = [r for r in results if isinstance(r, np.ndarray)]
    assert rows, "no image embedded"
    for r in rows:
        assert r.ndim == 2 and r.shape[1] == info.dim and r.dtype == np.float32
        assert np.all(np.isfinite(r))
        if info.metric == "cosine":
            np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, atol=1e-5)
        elif info.metric == "local":  # packed keypoints, as many as the row says
            from trainleak.encoders.keypoints import unpack

            assert len(unpack(r[0])) == int(r[0, 0]) >= int(info.options["min_keypoints"])
        elif info.options.get("normalise"):  # standardised pixels: zero mean, unit spread
            spread = float(r.std())
            assert abs(float(r.mean())) < 1e-4 and spread in (0.0, pytest.approx(1, abs=1e-3))
        else:  # the paper's raw [0, 1] pixels
            assert r.min() >= 0 and r.max() <= 1
    with pytest.raises(ValueError, match="has no option"):
        get_encoder(specs[name], definitely_not_an_option=1)


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
