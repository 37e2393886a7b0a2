"""Named models (issue 14 items 2-3): preprocessing against slow references, weights, terms.

The references are written plainly here, from the publishers' code (numbers
typed in again, not imported from the cards): a per-pixel inverse-mapped
bilinear warp, the similarity transform as a linear least-squares fit, and
per-pixel colour order and normalisation. The models are tiny stand-ins with
the published signatures (tests/stand_ins.py); nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from stand_ins import save_pooled_onnx, stand_in_folder

from trainleak.encoders import get_encoder
from trainleak.encoders.align import five_points, similarity_transform
from trainleak.encoders.cards import CARDS
from trainleak.encoders.face import model_dir
from trainleak.encoders.weights import download
from trainleak.images import load_image

from conftest import COIL, DATA

ORL_BIG = DATA / "orl_faces_92x112"

# insightface utils/face_align.py arcface_dst (OpenCV face_recognize.cpp has the same).
TEMPLATE = [
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
]
# Channel order fed to the model and the value of one 0-255 pixel, per publisher's code.
PUBLISHED = {
    # insightface arcface_onnx.py: blobFromImages(1/127.5, mean 127.5, swapRB=True) of BGR
    "arcface": ("rgb", lambda v: (v - 127.5) / 127.5),
    # AdaFace inference.py to_input: ((rgb[:, :, ::-1] / 255.) - 0.5) / 0.5
    "adaface": ("bgr", lambda v: (v / 255.0 - 0.5) / 0.5),
    # OpenCV FaceRecognizerSF::feature: blobFromImage(scale 1, mean 0, swapRB=true) of BGR
    "sface": ("rgb", lambda v: float(v)),
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return stand_in_folder(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def predictor():
    import dlib

    return dlib.shape_predictor(str(model_dir() / "shape_predictor_68_face_landmarks.dat"))


def weights(models, name):
    return str(models / CARDS[name].file_name)


def tinted(image):
    """A real grey face with a colour cast, so that channel order shows."""
    rgb = image.astype(np.float64) * np.array([1.0, 0.75, 0.45])
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def ref_similarity(src, dst):
    """Least squares over u = a x - b y + tx, v = b x + a y + ty."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return [[a, -b, tx], [b, a, ty]]


def ref_warp(image, m, size=112):
    """Each output pixel mapped back by the inverse, bilinear, zero outside, rounded."""
    (a, b, c), (d, e, f) = m
    det = a * e - b * d
    height, width = image.shape[:2]
    out = np.zeros((size, size, 3), np.uint8)
    for y in range(size):
        for x in range(size):
            px, py = x - c, y - f
            sx, sy = (e * px - b * py) / det, (-d * px + a * py) / det
            x0, y0 = math.floor(sx), math.floor(sy)
            fx, fy = sx - x0, sy - y0
            for ch in range(3):
                acc = 0.0
                for yy, xx, wgt in (
                    (y0, x0, (1 - fx) * (1 - fy)),
                    (y0, x0 + 1, fx * (1 - fy)),
                    (y0 + 1, x0, (1 - fx) * fy),
                    (y0 + 1, x0 + 1, fx * fy),
                ):
                    if 0 <= yy < height and 0 <= xx < width:
                        acc += wgt * int(image[yy, xx, ch])
                out[y, x, ch] = min(255, max(0, round(acc)))
    return out


def ref_five(parts):
    left = [sum(parts[i][k] for i in range(36, 42)) / 6 for k in (0, 1)]
    right = [sum(parts[i][k] for i in range(42, 48)) / 6 for k in (0, 1)]
    return [left, right, list(parts[30]), list(parts[48]), list(parts[54])]


def ref_input(crop, channels, value):
    """``(3, h, w)`` model input; the model's channel ``c`` is RGB channel ``c`` or ``2 - c``."""
    h, w = crop.shape[:2]
    out = np.zeros((3, h, w), np.float64)
    for c in range(3):
        src = c if channels == "rgb" else 2 - c
        for y in range(h):
            for x in range(w):
                out[c, y, x] = value(int(crop[y, x, src]), src)
    return out


def imagenet(v, channel):
    return (v / 255.0 - IMAGENET[0][channel]) / IMAGENET[1][channel]


def run_onnx(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x[None].astype(np.float32)})[0][0].astype(np.float64)
    return y / np.linalg.norm(y)


@pytest.mark.parametrize(
    ("name", "photos"),
    [("arcface", ["s1/1", "s7/3", "s23/5"]), ("adaface", ["s2/1"]), ("sface", ["s3/2"])],
)
def test_face_models_align_and_normalise_as_published(models, predictor, name, photos):
    enc = get_encoder(name, weights=weights(models, name))
    channels, value = PUBLISHED[name]
    for photo in photos:
        image = tinted(load_image(ORL_BIG / f"{photo}.pgm"))
        x = enc.preprocess([image])[0]
        box = enc._aligner._detector.detect(image)[0]  # detection itself is the face encoder's
        parts = [(p.x, p.y) for p in predictor(image, box).parts()]
        m = ref_similarity(ref_five(parts), TEMPLATE)
        np.testing.assert_allclose(similarity_transform(five_points(parts), TEMPLATE), m, atol=1e-9)
        ref = ref_input(ref_warp(image, m), channels, lambda v, _c: value(v))
        one_level = abs(value(1) - value(0))
        diff = np.abs(x - ref)
        assert diff.max() <= one_level + 1e-5, photo  # OpenCV-style rounding: one level at most
        assert (diff > 1e-5).mean() < 0.002, photo
        assert np.abs(x - ref[::-1]).mean() > 20 * one_level  # colour order matters here
        # The aligned face fills the crop (not a black frame) and the eyes stay on their sides.
        mapped = np.array(m)[:, :2] @ np.array(ref_five(parts)).T + np.array(m)[:, 2:]
        assert mapped[0, 0] < mapped[0, 1] and np.abs(mapped.T - TEMPLATE).max() < 8
        got = enc.encode(image)[0].astype(np.float64)
        assert got @ run_onnx(weights(models, name), ref) > 0.9999


def test_aligned_option_takes_crops_as_they_are(models):
    enc = get_encoder("arcface", weights=weights(models, "arcface"))
    crop = enc.crops(tinted(load_image(ORL_BIG / "s1" / "1.pgm")))[0]
    pre = get_encoder("arcface", weights=weights(models, "arcface"), aligned=True)
    np.testing.assert_array_equal(pre.preprocess([crop]), enc.to_input([crop]))
    np.testing.assert_allclose(
        pre.encode(crop), enc.encode(tinted(load_image(ORL_BIG / "s1" / "1.pgm"))), atol=1e-6
    )
    assert str(enc.encode_batch([load_image(COIL / "obj1__0.png")])[0]) == "no face detected"


def test_sscd_square_and_short_edge_as_published(models):
    path = weights(models, "sscd")
    face = tinted(load_image(ORL_BIG / "s5" / "4.pgm"))  # 92 x 112
    enc = get_encoder("sscd", weights=path)
    x = enc.preprocess([face])[0]
    # torchvision Resize([320, 320]) on a PIL image is PIL's bilinear resize.
    resized = np.asarray(Image.fromarray(face).resize((320, 320), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(x, ref_input(resized, "rgb", imagenet), atol=2e-5)
    square = np.asarray(Image.fromarray(face).resize((320, 320)))  # already the input size
    np.testing.assert_allclose(
        enc.preprocess([square])[0], ref_input(square, "rgb", imagenet), atol=2e-5
    )
    short = get_encoder("sscd", weights=path, crop="short").preprocess([face])
    assert short.shape == (1, 3, 350, 288)  # short edge 92 -> 288, 112 -> int(288 * 112 / 92)
    net = torch.jit.load(path)
    want = net(torch.from_numpy(ref_input(resized, "rgb", imagenet)[None]).float())[0].double()
    got = torch.from_numpy(enc.encode(face)[0]).double()
    assert float(got @ (want / want.norm())) > 0.9999


def test_dinov2_resize_256_center_crop_224_as_published(models):
    path = weights(models, "dinov2-s14")
    image = tinted(load_image(ORL_BIG / "s9" / "7.pgm"))  # 92 wide, 112 high
    enc = get_encoder("dinov2-s14", weights=path)
    x = enc.preprocess([image])[0]
    # Resize(256, bicubic): 92 -> 256, 112 -> int(256 * 112 / 92) = 311; CenterCrop(224):
    # top = round((311 - 224) / 2) = round(43.5) = 44 (Python rounds half to even), left = 16.
    big = np.asarray(Image.fromarray(image).resize((256, 311), Image.Resampling.BICUBIC))
    crop = big[44 : 44 + 224, 16 : 16 + 224]
    ref = ref_input(crop, "rgb", imagenet)
    np.testing.assert_allclose(x, ref, atol=2e-5)
    assert enc.encode(image)[0].astype(np.float64) @ run_onnx(path, ref) > 0.9999


def test_weights_come_from_the_option_the_folder_or_a_fix_it_error(models, monkeypatch, tmp_path):
    monkeypatch.delenv("TRAINLEAK_MODELS", raising=False)
    monkeypatch.setenv("TRAINLEAK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"--weights FILE.*TRAINLEAK_MODELS.*buffalo_l"):
        get_encoder("arcface")
    with pytest.raises(ValueError, match="no pinned SHA-256"):
        get_encoder("sscd", allow_download=True)
    monkeypatch.setenv("TRAINLEAK_MODELS", str(models))
    enc = get_encoder("sface")
    assert enc.info.execution["weights"] == weights(models, "sface")
    assert enc.info.execution["is_published_file"] is False  # a stand-in, not the pinned file
    with pytest.raises(ValueError, match="gives 128-d vectors"):
        get_encoder("arcface", weights=weights(models, "sface"))


def test_download_checks_the_pin_and_leaves_nothing_on_a_mismatch(models, tmp_path):
    src = models / CARDS["sface"].file_name
    pin = hashlib.sha256(src.read_bytes()).hexdigest()
    card = dataclasses.replace(CARDS["sface"], url=src.as_uri(), sha256=pin)  # file:, no network
    got = download(card, tmp_path / "dl")
    assert got.read_bytes() == src.read_bytes()
    bad = dataclasses.replace(card, sha256="0" * 64)
    with pytest.raises(ValueError, match="is not the pinned"):
        download(bad, tmp_path / "dl2")
    assert list((tmp_path / "dl2").iterdir()) == []
    with pytest.raises(ValueError, match="only https"):
        download(dataclasses.replace(card, url="http://example.invalid/x.onnx"), tmp_path)


def test_licence_and_non_commercial_reach_the_report(models):
    for name, flagged in [
        ("arcface", True),
        ("sscd", True),
        ("sface", False),
        ("dinov2-s14", False),
        ("adaface", True),
    ]:
        info = get_encoder(name, weights=weights(models, name)).info.to_dict()
        assert info["non_commercial"] is flagged and info["licence"], name
        assert info["weights_sha256"] and info["execution"]["device"] == "cpu"


def test_cache_key_ignores_where_and_how_but_not_what(models, tmp_path):
    other = tmp_path / "copy.onnx"
    other.write_bytes((models / CARDS["arcface"].file_name).read_bytes())
    key = get_encoder("arcface", weights=weights(models, "arcface")).info.cache_key()
    assert get_encoder("arcface", weights=str(other), batch_size=3).info.cache_key() == key
    assert (
        get_encoder("arcface", weights=weights(models, "arcface"), flip=True).info.cache_key()
        != key
    )
    changed = save_pooled_onnx(tmp_path / "w600k_r50.onnx", 112, 512, 8, seed=1)
    assert get_encoder("arcface", weights=str(changed)).info.cache_key() != key


def test_cli_records_the_licence_and_refuses_weights_for_other_encoders(models, tmp_path, capsys):
    from trainleak.cli import main

    for sub, names in (("train", range(2, 6)), ("synthetic", range(4, 8))):
        (tmp_path / sub).mkdir()
        for i in names:
            (tmp_path / sub / f"obj{i}.png").symlink_to(COIL / f"obj{i}__0.png")
    base = [
        "audit",
        "--train",
        str(tmp_path / "train"),
        "--synthetic",
        str(tmp_path / "synthetic"),
        "--threshold",
        "0.99",
        "--workers",
        "1",
        "--no-cache",
        "-q",
    ]
    out = tmp_path / "out"
    sscd = ["--encoder", "sscd", "--weights", weights(models, "sscd")]
    assert main([*base, *sscd, "--out", str(out)]) == 0
    encoder = json.loads((out / "report.json").read_text())["encoder"]
    assert encoder["non_commercial"] is True and "CC-BY-NC" in encoder["licence"]
    assert encoder["execution"]["weights"] == weights(models, "sscd")
    copies = [
        m
        for m in json.loads((out / "report.json").read_text())["matches"]
        if m["rank"] == 1 and Path(m["synthetic"]).name in ("obj4.png", "obj5.png")
    ]
    assert len(copies) == 2  # the planted copies find themselves
    for m in copies:
        assert Path(m["train"]).name == Path(m["synthetic"]).name and m["similarity"] > 0.9999
    capsys.readouterr()
    assert main([*base, "--encoder", "pixel", "--weights", "x.onnx"]) == 2
    assert "apply to the named models" in capsys.readouterr().err


def test_an_index_keeps_the_non_commercial_flag(models, tmp_path, monkeypatch):
    from trainleak.config import EmbedConfig, IndexConfig
    from trainleak.gate.index import Index

    monkeypatch.setenv("TRAINLEAK_MODELS", str(models))
    (tmp_path / "train").mkdir()
    for i in range(1, 4):
        (tmp_path / "train" / f"obj{i}.png").symlink_to(COIL / f"obj{i}__0.png")
    embed = EmbedConfig(encoder="sscd", workers=1, no_cache=True)
    config = IndexConfig(embed=embed, threshold=0.9)
    index = Index.build(tmp_path / "idx", tmp_path / "train", config=config)
    assert index.encoder_info.non_commercial is True
    assert index.encoder_info.cache_key() == get_encoder("sscd").info.cache_key()
