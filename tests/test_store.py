"""Embedding store: warm runs recompute nothing, interrupted runs resume exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import trainleak.embedding as embed_mod
import trainleak.prefetch as prefetch
from trainleak.embedding import embed
from trainleak.store import EmbeddingStore

from conftest import link_orl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return link_orl(tmp_path_factory.mktemp("faces"), range(1, 5), range(1, 11))


@pytest.fixture(scope="module")
def reference(faces):
    return embed(faces, "face", workers=2, cache=False)


def _by_id(emb):
    return {i: emb.vectors[k] for k, i in enumerate(emb.ids)}


def test_worker_and_batch_invariance(faces, reference):
    one = embed(faces, "face", workers=1, batch_size=3, cache=False)
    assert one.ids == reference.ids
    np.testing.assert_array_equal(one.vectors, reference.vectors)


def test_input_order_invariance(faces, reference, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(sorted(reference.ids, reverse=True)))
    shuffled = embed(lst, "face", workers=2, cache=False)
    a, b = _by_id(shuffled), _by_id(reference)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_warm_run_recomputes_nothing(faces, reference, tmp_path, monkeypatch):
    cold = embed(faces, "face", workers=2, cache=tmp_path / "c")
    np.testing.assert_array_equal(cold.vectors, reference.vectors)

    def refuse(*_a, **_k):
        raise AssertionError("warm run recomputed an embedding")

    monkeypatch.setattr(prefetch, "embed_decoded", refuse)  # in-process embedding
    monkeypatch.setattr(embed_mod.Embedder, "_run", lambda self, chunks: (refuse() for _ in chunks))
    warm = embed(faces, "face", workers=2, cache=tmp_path / "c")
    np.testing.assert_array_equal(warm.vectors, reference.vectors)


_CHILD = """
import sys
from trainleak.embedding import embed
embed(sys.argv[1], "face", workers=1, batch_size=2, cache=sys.argv[2])
"""


def test_resume_after_kill_9(faces, reference, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(Path(embed_mod.__file__).parents[1]))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(faces), str(cache)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("*/shard-*.npz"))) < 3:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    shards = list(cache.glob("*/shard-*.npz"))
    assert len(shards) >= 3, "child never wrote a shard"
    folder = shards[0].parent
    done = len(EmbeddingStore(cache, folder.name, 128))
    assert 0 < done < 40, f"kill came too late to test resume ({done} cached)"
    # A half-written shard and a stray temp file must never be trusted.
    good = shards[0].read_bytes()
    (folder / "shard-half.npz").write_bytes(good[: len(good) // 2])
    (folder / ".tmp-zzz.npz").write_bytes(good[:10])
    resumed = embed(faces, "face", workers=2, cache=cache)
    assert resumed.ids == reference.ids
    np.testing.assert_array_equal(resumed.vectors, reference.vectors)
    assert len(EmbeddingStore(cache, folder.name, 128)) == 40


def test_store_ignores_inconsistent_shard(tmp_path):
    store = EmbeddingStore(tmp_path, "k", dim=3)
    store.put({"a": np.ones((2, 3), np.float32), "b": "no face detected"})
    np.savez(
        tmp_path / "k" / "shard-bad.npz",
        hashes=np.array([b"c"], "S32"),
        counts=np.array([5]),
        vectors=np.zeros((1, 3), np.float32),
        reasons=np.array([""]),
    )
    again = EmbeddingStore(tmp_path, "k", dim=3)
    assert again.get("c") is None
    assert again.get("b") == "no face detected"
    assert again.get("a").shape == (2, 3)
    assert EmbeddingStore(tmp_path, "k", dim=4).get("a") is None  # other dim: ignored
