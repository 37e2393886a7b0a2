"""onnx: and torchscript: encoders on small real models the tests build."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from trainleak.encoders import get_encoder

from models import save_onnx, save_torchscript


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    net = save_torchscript(root / "tiny.pt")
    save_onnx(root / "tiny.onnx", net)
    return {"net": net, "ts": root / "tiny.pt", "onnx": root / "tiny.onnx", "root": root}


def _images(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_matches_the_torch_model(model_files, kind):
    enc = get_encoder(f"{kind}:{model_files[kind if kind == 'onnx' else 'ts']}", size=32)
    assert enc.info.dim == 16 and enc.info.metric == "cosine"
    img = _images(1)[0]
    x = enc.preprocess([img])
    with torch.no_grad():
        ref = model_files["net"](torch.from_numpy(x)).numpy()
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    got = enc.encode(img)
    assert got.shape == (1, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_batch_invariance(model_files, kind):
    path = model_files[kind if kind == "onnx" else "ts"]
    imgs = _images(5)
    single = np.concatenate([get_encoder(f"{kind}:{path}", size=32).encode(i) for i in imgs])
    for bs in (2, 32):
        batched = np.concatenate(get_encoder(f"{kind}:{path}", size=32, batch_size=bs)
                                 .encode_batch(imgs))
        np.testing.assert_allclose(batched, single, atol=1e-5)


def test_onnx_and_torchscript_agree(model_files):
    imgs = _images(3)
    a = np.concatenate(get_encoder(f"onnx:{model_files['onnx']}", size=32).encode_batch(imgs))
    b = np.concatenate(get_encoder(f"torchscript:{model_files['ts']}", size=32).encode_batch(imgs))
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_flip_option_is_mirror_blind(model_files):
    enc = get_encoder(f"onnx:{model_files['onnx']}", size=32, flip=True)
    img = _images(1)[0]
    np.testing.assert_allclose(enc.encode(img), enc.encode(img[:, ::-1].copy()), atol=1e-5)
    plain = get_encoder(f"onnx:{model_files['onnx']}", size=32)
    assert not np.allclose(plain.encode(img), plain.encode(img[:, ::-1].copy()), atol=1e-4)


def test_unsafe_or_missing_files_refused(model_files):
    bad = model_files["root"] / "pickled.pt"
    bad.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        get_encoder(f"torchscript:{bad}")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        get_encoder("onnx:/nonexistent/model.onnx")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        get_encoder(f"onnx:{bad}")
    with pytest.raises(ValueError, match="has no option"):
        get_encoder(f"onnx:{model_files['onnx']}", colour="yes")
    with pytest.raises(ValueError, match="needs a file after"):
        get_encoder("onnx:")
