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


def test_compaction_keeps_every_entry_in_bounded_shards(tmp_path, monkeypatch):
    import trainleak.store as store_mod

    rng = np.random.default_rng(0)
    want = {}
    store = EmbeddingStore(tmp_path, "k", dim=64)
    for b in range(12):  # 12 shards of 10 entries, one skip reason each
        batch = {f"{b:02d}{i:030d}": rng.random((1 + i % 2, 64), dtype=np.float32)
                 for i in range(9)}  # fmt: skip
        batch[f"{b:02d}{'r' * 30}"] = f"no face detected {b}"
        store.put(batch)
        want.update(batch)
    monkeypatch.setattr(store_mod, "COMPACT_ABOVE", 4)
    monkeypatch.setattr(store_mod, "COMPACT_SHARD_MB", 0.01)  # about 40 rows of 64-d each
    merged = EmbeddingStore(tmp_path, "k", dim=64)
    shards = sorted((tmp_path / "k").glob("shard-*.npz"))
    assert 4 <= len(shards) < 12  # merged, but not into one file
    assert len(merged) == len(want) == 120
    for digest, value in want.items():
        got = merged.get(digest)
        if isinstance(value, str):
            assert got == value
        else:
            np.testing.assert_array_equal(got, value)


_OPEN_AND_GET = """
import json, sys
from trainleak.store import EmbeddingStore
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
before = hwm()
store = EmbeddingStore(sys.argv[1], "k", dim=1024)
row = store.get(sys.argv[2])
print(json.dumps({"grew_mb": hwm() - before, "n": len(store), "shape": list(row.shape)}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM")
def test_a_run_holds_the_shards_it_uses_not_the_whole_cache(tmp_path):
    """200 MB of cached vectors; a run that needs one image reads one shard."""
    import json

    store = EmbeddingStore(tmp_path, "k", dim=1024)
    block = np.ones((256, 1024), np.float32)
    for b in range(200):
        store.put({f"{b:03d}{i:029d}": block[i : i + 1] for i in range(256)}, remember=False)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(embed_mod.__file__))}
    run = subprocess.run([sys.executable, "-c", _OPEN_AND_GET, str(tmp_path), f"{7:03d}{5:029d}"],
                         capture_output=True, text=True, env=env, check=True)  # fmt: skip
    out = json.loads(run.stdout)
    assert out["n"] == 200 * 256 and out["shape"] == [1, 1024]
    assert out["grew_mb"] < 40, out  # the whole cache is 200 MB; the index about 2.5 MB
