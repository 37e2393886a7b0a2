"""onnx: and torchscript: encoders on small real models the tests build.

The reference for every embedding is the torch network itself, run on an input
preprocessed here independently of the encoder (PIL bicubic, float64).
"""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

import trainleak.encoders.model  # noqa: F401  (registers onnx/torchscript on its own)
from trainleak.encoders import ENCODERS, EncodeSkip, get_encoder, parse_encoder_name

from models import save_onnx, save_torchscript

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _enc(spec, **options):
    # The registry directly, so these tests do not depend on the sibling encoders.
    name, extra = parse_encoder_name(spec)
    return ENCODERS.get(name)(**extra, **options)


class _Marker:
    """Unpickling this creates a file: proof that a loader ran code from the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _NHWCBGR(torch.nn.Module):
    """TinyNet behind an NHWC, BGR input, like an InsightFace-style export."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2).flip(1))


class _TwoOutputs(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        feats = torch.relu(self.net.conv(x)).mean(dim=(2, 3), keepdim=True)
        return self.net(x), feats


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    net = save_torchscript(root / "scripted.pt")
    torch.jit.trace(net, torch.zeros(1, 3, 32, 32)).save(str(root / "traced.pt"))
    torch.jit.trace(_NHWCBGR(net).eval(), torch.zeros(1, 32, 32, 3)).save(str(root / "nhwc_bgr.pt"))
    torch.jit.trace(_TwoOutputs(net).eval(), torch.zeros(1, 3, 32, 32)).save(str(root / "two.pt"))
    save_onnx(root / "tiny.onnx", net)

    model = onnx.load(str(root / "tiny.onnx"))
    model.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 8, 1, 1]))
    onnx.save(model, str(root / "two.onnx"))

    model = onnx.load(str(root / "tiny.onnx"))
    input_dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(input_dims, [1, 3, 32, 32], strict=True):
        dim.dim_value = value
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(root / "fixed.onnx"))

    nodes = [
        helper.make_node("Sqrt", ["x"], ["s"]),
        helper.make_node("GlobalAveragePool", ["s"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sqrt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(root / "sqrt.onnx"))
    return {
        "net": net,
        "root": root,
        "torchscript": root / "scripted.pt",
        "onnx": root / "tiny.onnx",
    }


def _images(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (30 + 3 * i, 40 - 2 * i, 3), dtype=np.uint8) for i in range(n)]


def _reference_input(img, size=32, mean=(0.5,) * 3, std=(0.5,) * 3, nhwc=False, bgr=False):
    im = Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC)
    x = (np.asarray(im, np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)
    if bgr:
        x = x[:, :, ::-1]
    x = x[None] if nhwc else x[None].transpose(0, 3, 1, 2)
    return torch.tensor(np.ascontiguousarray(x), dtype=torch.float32)


def _unit(y):
    y = y.detach().numpy().reshape(len(y), -1)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def test_registered_under_spec_names(files):
    enc = get_encoder(f"torchscript:{files['torchscript']}", size=32)
    assert type(enc).__name__ == "TorchScriptEncoder"
    assert type(get_encoder(f"onnx:{files['onnx']}", size=32)).__name__ == "OnnxEncoder"


@pytest.mark.parametrize(
    "spec", ["torchscript:scripted.pt", "torchscript:traced.pt", "onnx:tiny.onnx"]
)
def test_matches_the_torch_model(files, spec):
    kind, name = spec.split(":")
    enc = _enc(f"{kind}:{files['root'] / name}", size=32, **IMAGENET)
    assert enc.info.dim == 16
    for img in _images(3):
        with torch.no_grad():
            ref = _unit(files["net"](_reference_input(img, **IMAGENET)))
        got = enc.encode(img)
        assert got.shape == (1, 16) and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got), 1.0, atol=1e-6)
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_layout_and_channel_order(files):
    img = _images(1)[0]
    with torch.no_grad():
        ref = _unit(files["net"](_reference_input(img)))
    path = files["root"] / "nhwc_bgr.pt"
    got = _enc(f"torchscript:{path}", size=32, layout="nhwc", channels="bgr").encode(img)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    wrong = _enc(f"torchscript:{path}", size=32, layout="nhwc", channels="rgb").encode(img)
    assert not np.allclose(wrong, ref, atol=1e-3)


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_output_index_and_flattening(files, kind):
    path = files["root"] / ("two.pt" if kind == "torchscript" else "two.onnx")
    img = _images(1)[0]
    with torch.no_grad():
        feats = _unit(_TwoOutputs(files["net"])(_reference_input(img))[1])
    enc = _enc(f"{kind}:{path}", size=32, output=1)
    assert enc.info.dim == 8
    np.testing.assert_allclose(enc.encode(img), feats, atol=1e-4)
    np.testing.assert_allclose(
        _enc(f"{kind}:{path}", size=32).encode(img),
        _enc(f"{kind}:{files[kind]}", size=32).encode(img),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="output=2 but"):
        _enc(f"{kind}:{path}", size=32, output=2)


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
@pytest.mark.parametrize("flip", [False, True])
def test_batch_invariance(files, kind, flip):
    imgs = _images(5)
    enc = _enc(f"{kind}:{files[kind]}", size=32, flip=flip)
    single = np.concatenate([enc.encode(i) for i in imgs])
    for bs in (1, 2, 32):
        rows = _enc(f"{kind}:{files[kind]}", size=32, flip=flip, batch_size=bs).encode_batch(imgs)
        assert len(rows) == 5 and all(r.shape == (1, 16) for r in rows)
        np.testing.assert_allclose(np.concatenate(rows), single, atol=1e-5)


def test_fixed_batch_onnx_model_is_fed_in_chunks(files):
    imgs = _images(5)
    fixed = _enc(f"onnx:{files['root'] / 'fixed.onnx'}", size=32).encode_batch(imgs)
    dynamic = _enc(f"onnx:{files['onnx']}", size=32).encode_batch(imgs)
    np.testing.assert_allclose(np.concatenate(fixed), np.concatenate(dynamic), atol=1e-6)
    with pytest.raises(ValueError, match="pass size=32"):
        _enc(f"onnx:{files['root'] / 'fixed.onnx'}", size=112)


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_flip_averages_image_and_mirror(files, kind):
    half = _images(1)[0][:, :20]
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    plain = _enc(f"{kind}:{files[kind]}", size=32)
    flip = _enc(f"{kind}:{files[kind]}", size=32, flip=True)
    np.testing.assert_allclose(flip.encode(symmetric), plain.encode(symmetric), atol=1e-5)

    img = _images(1, seed=3)[0]
    mirror = np.ascontiguousarray(img[:, ::-1])
    np.testing.assert_allclose(flip.encode(img), flip.encode(mirror), atol=1e-6)
    assert not np.allclose(plain.encode(img), plain.encode(mirror), atol=1e-3)
    with torch.no_grad():
        both = files["net"](_reference_input(img)) + files["net"](_reference_input(mirror))
    np.testing.assert_allclose(flip.encode(img), _unit(both), atol=1e-4)


def test_non_finite_output_is_a_skip(files):
    enc = _enc(f"onnx:{files['root'] / 'sqrt.onnx'}", size=8)  # sqrt of x < 0 is NaN
    white = np.full((10, 10, 3), 255, np.uint8)
    black = np.zeros((10, 10, 3), np.uint8)
    out = enc.encode_batch([white, black, white])
    assert isinstance(out[1], EncodeSkip) and str(out[1]) == "model produced non-finite embedding"
    np.testing.assert_allclose(out[0], np.full((1, 3), 3**-0.5, np.float32), atol=1e-6)
    np.testing.assert_array_equal(out[0], out[2])
    with pytest.raises(EncodeSkip, match="non-finite"):
        enc.encode(black)


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_info_and_cache_key(files, kind):
    path = files[kind]
    enc = _enc(f"{kind}:{path}", size=32, **IMAGENET)
    info = enc.info
    assert (info.name, info.version, info.dim, info.metric) == (kind, 1, 16, "cosine")
    assert info.default_threshold == 0.5
    assert "uncalibrated" in info.threshold_note and "holdout" in info.threshold_note
    assert info.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.options["path"] == str(path) and info.options["size"] == 32
    assert info.options["mean"] == IMAGENET["mean"] and info.options["channels"] == "rgb"
    key = info.cache_key()
    assert _enc(f"{kind}:{path}", size=32, batch_size=3, **IMAGENET).info.cache_key() == key
    assert _enc(f"{kind}:{path}", size=32).info.cache_key() != key
    assert _enc(f"{kind}:{path}", size=32, flip=True, **IMAGENET).info.cache_key() != key


def test_pickled_models_are_refused_without_running_them(files, tmp_path):
    net = files["net"]
    marker = tmp_path / "code-ran"
    cases = {
        "plain.pkl": lambda p: p.write_bytes(pickle.dumps(_Marker(marker))),
        "module.pt": lambda p: torch.save(net, str(p)),
        "legacy.pth": lambda p: torch.save(net, str(p), _use_new_zipfile_serialization=False),
        "marker.pt": lambda p: torch.save({"m": _Marker(marker)}, str(p)),
    }
    for name, write in cases.items():
        write(tmp_path / name)
        with pytest.raises(ValueError, match="not a TorchScript archive; export with torch.jit"):
            _enc(f"torchscript:{tmp_path / name}")
        with pytest.raises(ValueError, match="not a loadable ONNX model"):
            _enc(f"onnx:{tmp_path / name}")
    assert not marker.exists()


def test_missing_file_and_bad_options(files):
    with pytest.raises(FileNotFoundError, match="/nonexistent/model.onnx"):
        _enc("onnx:/nonexistent/model.onnx")
    with pytest.raises(FileNotFoundError, match="/nonexistent/model.pt"):
        _enc("torchscript:/nonexistent/model.pt")
    with pytest.raises(ValueError, match="needs a file after"):
        get_encoder("onnx:")
    with pytest.raises(ValueError, match="needs a model file"):
        ENCODERS.get("onnx")()
    path = files["onnx"]
    with pytest.raises(ValueError, match="has no option"):
        _enc(f"onnx:{path}", colour="yes")
    for bad in [
        {"layout": "nch"},
        {"channels": "grb"},
        {"size": [32, 32, 3]},
        {"size": 0},
        {"mean": [0.5]},
        {"std": [0.0, 1.0, 1.0]},
        {"batch_size": 0},
        {"output": -1},
    ]:
        with pytest.raises(ValueError):
            _enc(f"onnx:{path}", **bad)


def test_missing_onnxruntime_says_how_to_install(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'trainleak\[onnx\]'"):
        _enc(f"onnx:{files['onnx']}", size=32)


def test_importing_the_module_loads_no_framework():
    code = (
        "import sys, trainleak.encoders.model; "
        "print([m for m in ('torch', 'onnxruntime') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
