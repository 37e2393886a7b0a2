"""The face encoder's torch runtime gives dlib's descriptors; batches equal single images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trainleak.encoders.base import EncodeSkip
from trainleak.encoders.face import FaceEncoder

from conftest import DATA

ORL_FULL = DATA / "orl_faces_92x112"


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Three real ORL photos (three people) at 92 x 112."""
    return [np.asarray(Image.open(ORL_FULL / f"s{p}" / "1.pgm").convert("RGB")) for p in (1, 7, 23)]


def test_torch_runtime_equals_dlib(photos: list[np.ndarray]) -> None:
    new, old = FaceEncoder(), FaceEncoder(runtime="dlib")
    chips = [c for im in photos for c in new.chips(im)]
    # The same chips through both networks (mirror descriptors included).
    a, b = new.describe(chips), old.describe(chips)
    assert a.shape == (3, 128) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=2e-6)
    # Different people stay apart: the runtime is not a constant.
    assert float(a[0] @ a[1]) < 0.93


def test_encode_batch_equals_encode(photos: list[np.ndarray]) -> None:
    enc = FaceEncoder(cnn_fallback=False)  # the CNN on the blank image costs seconds
    blank = np.full((120, 120, 3), 128, np.uint8)  # nothing to find: a skip in place
    out = enc.encode_batch([photos[0], blank, photos[1]])
    assert isinstance(out[1], EncodeSkip)
    np.testing.assert_allclose(out[0], enc.encode(photos[0]), atol=1e-6)
    np.testing.assert_allclose(out[2], enc.encode(photos[1]), atol=1e-6)


def test_face_options_are_checked() -> None:
    with pytest.raises(ValueError, match="runtime"):
        FaceEncoder(runtime="onnx")
    with pytest.raises(ValueError, match="jitter needs runtime='dlib'"):
        FaceEncoder(jitter=2)
    assert FaceEncoder().info.version == 3
    assert FaceEncoder().info.cache_key() != FaceEncoder(cheap_first=False).info.cache_key()
