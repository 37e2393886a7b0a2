"""Model encoders on a device (issue 14 item 1): options, errors here, CUDA checks where a GPU is.

The ``gpu`` tests compare a CUDA run with the CPU run of the same model on
real faces (within 1e-3 cosine, fp16 included) and skip cleanly without CUDA.
The decode-ahead thread of the in-process embedder is checked on the CPU.
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
import torch
from stand_ins import save_stand_in

import trainleak.prefetch as prefetch
from trainleak.embedding import Embedder
from trainleak.encoders import get_encoder
from trainleak.encoders.devices import parse_device
from trainleak.images import load_image
from trainleak.workers import encode_chunk

from conftest import DATA, link_orl
from models import save_onnx, save_torchscript

ORL_BIG = DATA / "orl_faces_92x112"
HAS_CUDA = torch.cuda.is_available()
ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dev")
    net = save_torchscript(root / "t.pt")
    save_onnx(root / "t.onnx", net)
    save_stand_in("arcface", root)
    save_stand_in("sscd", root)
    return root


def faces(n=8):
    return [load_image(ORL_BIG / f"s{i}" / "1.pgm") for i in range(1, n + 1)]


def test_device_names_are_checked():
    assert parse_device("cuda:3") == ("cuda", 3)
    for bad in ("gpu", "cuda:", "cuda:x", "CUDA", 0):
        with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N'"):
            parse_device(bad)


def test_half_needs_a_cuda_device(files):
    with pytest.raises(ValueError, match="half=true .* add device=cuda"):
        get_encoder(f"torchscript:{files / 't.pt'}", half=True)
    with pytest.raises(ValueError, match="has no option"):
        get_encoder(f"onnx:{files / 't.onnx'}", half=True)


@pytest.mark.skipif(ORT_CUDA, reason="this onnxruntime has a CUDA provider")
def test_onnx_on_cuda_without_the_gpu_runtime_names_it(files):
    with pytest.raises(ValueError, match="pip install onnxruntime-gpu"):
        get_encoder(f"onnx:{files / 't.onnx'}", device="cuda")
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        get_encoder("arcface", weights=str(files / "w600k_r50.onnx"), device="cuda:0")


@pytest.mark.skipif(HAS_CUDA, reason="torch sees a CUDA device")
def test_torchscript_on_cuda_without_cuda_says_so(files):
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        get_encoder(f"torchscript:{files / 't.pt'}", device="cuda")


def test_cpu_runs_record_the_device_outside_the_cache_key(files):
    enc = get_encoder(f"onnx:{files / 't.onnx'}", device="cpu")
    assert enc.device == "cpu" and enc.info.execution["device"] == "cpu"
    assert "device" not in enc.info.options
    assert enc.info.cache_key() == get_encoder(f"onnx:{files / 't.onnx'}").info.cache_key()


def test_decoding_overlaps_embedding_and_changes_nothing(files, tmp_path, monkeypatch):
    link_orl(tmp_path / "faces", range(1, 4), range(1, 6))
    threads = set()
    decode = prefetch.decode_image

    def spy(data, max_pixels):
        threads.add(threading.get_ident())
        return decode(data, max_pixels)

    monkeypatch.setattr(prefetch, "decode_image", spy)
    spec = f"onnx:{files / 't.onnx'}"
    with Embedder(spec, workers=1, batch_size=4, cache=False) as emb:
        got = emb.embed(tmp_path / "faces")
    assert threads and threading.get_ident() not in threads  # decoded in the helper thread
    blobs = [p.read_bytes() for p in sorted((tmp_path / "faces").rglob("*.pgm"))]
    want = np.concatenate(encode_chunk(blobs, 10**8, get_encoder(spec)))
    assert len(got) == 15
    np.testing.assert_array_equal(got.vectors, want)


def test_several_decode_threads_keep_every_image_in_its_place(files):
    orl = sorted(ORL_BIG.glob("s1*/*.pgm"))[:23]
    blobs = [p.read_bytes() for p in orl] + [b"not an image"]
    keys = [f"k{i}" for i in range(24)]
    chunks = [(keys[j : j + 5], blobs[j : j + 5]) for j in range(0, 24, 5)]
    enc = get_encoder(f"onnx:{files / 't.onnx'}")
    got = [r for c in prefetch.encode_overlapped(iter(chunks), 10**8, enc, threads=3) for r in c]
    assert [k for k, _ in got] == keys
    want = encode_chunk(blobs, 10**8, enc)
    for (_, a), b in zip(got, want, strict=True):
        if isinstance(b, str):
            assert a == b and b.startswith("!not an image")
        else:
            np.testing.assert_array_equal(a, b)


def _cosines(a, b):
    return np.sum(np.concatenate(a) * np.concatenate(b), axis=1)


@pytest.mark.gpu
@pytest.mark.parametrize("half", [False, True])
def test_torchscript_on_cuda_matches_the_cpu(files, half):
    if not HAS_CUDA:
        pytest.skip("no CUDA device")
    images = faces()
    for spec, opts in [
        (f"torchscript:{files / 't.pt'}", {}),
        ("sscd", {"weights": str(files / "sscd_disc_mixup.torchscript.pt")}),
    ]:
        cpu = get_encoder(spec, **opts)
        gpu = get_encoder(spec, device="cuda", half=half, **opts)
        assert gpu.device == "cuda" and gpu.info.execution["device"] == "cuda"
        assert _cosines(cpu.encode_batch(images), gpu.encode_batch(images)).min() > 1 - 1e-3
        if not half:
            assert gpu.info.cache_key() == cpu.info.cache_key()


@pytest.mark.gpu
def test_onnx_on_cuda_matches_the_cpu(files):
    if not HAS_CUDA or not ORT_CUDA:
        pytest.skip("no CUDA device or no onnxruntime-gpu")
    images = faces()
    for spec, opts in [
        (f"onnx:{files / 't.onnx'}", {}),
        ("arcface", {"weights": str(files / "w600k_r50.onnx")}),
    ]:
        cpu, gpu = get_encoder(spec, **opts), get_encoder(spec, device="cuda", **opts)
        assert gpu.info.execution["runtime"] == "CUDAExecutionProvider"
        assert _cosines(cpu.encode_batch(images), gpu.encode_batch(images)).min() > 1 - 1e-3


@pytest.mark.gpu
def test_a_cuda_encoder_embeds_in_the_process_that_owns_the_device(files, tmp_path):
    if not HAS_CUDA:
        pytest.skip("no CUDA device")
    link_orl(tmp_path / "f", range(1, 3), range(1, 4))
    spec = f"torchscript:{files / 't.pt'}"
    with Embedder(spec, encoder_options={"device": "cuda"}, workers=4, cache=False) as emb:
        assert emb.workers == 1
        got = emb.embed(tmp_path / "f")
    with Embedder(spec, workers=1, cache=False) as emb:
        want = emb.embed(tmp_path / "f")
    assert _cosines([got.vectors], [want.vectors]).min() > 1 - 1e-3
