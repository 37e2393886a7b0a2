"""Out-of-core exact search: the same answers as the in-memory search, in flat memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from trainleak.embedding import embed
from trainleak.outofcore import NpyWriter, knn_files, open_vectors, read_blocks, write_vectors
from trainleak.similarity import Similarity

from conftest import COIL


@pytest.fixture(scope="module")
def coil_pixels():
    """The 1000 COIL-20 images as pixel-encoder rows (real embeddings, unit rows)."""
    return embed(COIL, "pixel", workers=1, cache=False).vectors


@pytest.mark.parametrize("rows", [1, 97, 4096])
def test_files_search_equals_the_in_memory_search(coil_pixels, tmp_path, rows):
    db, queries = coil_pixels[::2], coil_pixels[1::2]
    write_vectors(tmp_path / "db.npy", [db[:300], db[300:]], db.shape[1])
    np.save(tmp_path / "q.npy", queries)
    s_path, i_path = knn_files(tmp_path / "q.npy", tmp_path / "db.npy", tmp_path / "out", 7,
                               query_rows=rows)  # fmt: skip
    scores, idx = Similarity().knn(queries, db, 7)
    np.testing.assert_array_equal(np.load(i_path), idx)
    np.testing.assert_array_equal(np.load(s_path), scores)


def test_tiled_rule_with_its_mirror_searches_the_same_out_of_core(tmp_path):
    from trainleak.encoders import get_encoder

    enc = get_encoder("tiled")
    sim = Similarity.of(enc.info)
    rows = embed(COIL, "tiled", workers=1, cache=False).vectors[:400]
    write_vectors(tmp_path / "db.npy", [rows[:250]], rows.shape[1])
    np.save(tmp_path / "q.npy", rows[250:])
    s_path, i_path = knn_files(tmp_path / "q.npy", tmp_path / "db.npy", tmp_path / "o", 3,
                               similarity=sim, query_rows=64)  # fmt: skip
    scores, idx = sim.knn(rows[250:], rows[:250], 3)
    np.testing.assert_array_equal(np.load(i_path), idx)
    np.testing.assert_array_equal(np.load(s_path), scores)


def test_writer_and_reader(tmp_path):
    path = tmp_path / "a.npy"
    with NpyWriter(path, 3, np.int64) as out:
        out.write(np.arange(6).reshape(2, 3))
        with pytest.raises(ValueError, match=r"expected \(m, 3\) rows"):
            out.write(np.zeros((1, 4)))
    assert np.load(path).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert [b.tolist() for b in read_blocks(path, 1)] == [[[0, 1, 2]], [[3, 4, 5]]]
    path.write_bytes(path.read_bytes()[:-8])  # one value short
    with pytest.raises(ValueError, match="ends after row 1 of 2"):
        list(read_blocks(path, 1))
    np.save(tmp_path / "f64.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="float32"):
        open_vectors(tmp_path / "f64.npy")


_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from trainleak.outofcore import knn_files

    def peak_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024

    folder, n = sys.argv[1], int(sys.argv[2])
    before = peak_mb()
    knn_files(f"{folder}/q{n}.npy", f"{folder}/db.npy", f"{folder}/out{n}", 10, query_rows=2048,
              backend="numpy")  # one backend for both sizes (auto picks by size)
    print(json.dumps({"before": before, "after": peak_mb()}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_does_not_grow_with_the_queries(tmp_path):
    """20,000 vs 200,000 queries: the results alone would be 24 MB more, the queries 51 MB more."""
    rng = np.random.default_rng(0)
    dim = 64
    write_vectors(tmp_path / "db.npy", [rng.standard_normal((4000, dim), np.float32)], dim)
    for n in (20_000, 200_000):
        with NpyWriter(tmp_path / f"q{n}.npy", dim) as out:
            for _ in range(n // 10_000):
                out.write(rng.standard_normal((10_000, dim), np.float32))
    peaks = {}
    for n in (20_000, 200_000):
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path), str(n)],
            capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        got = json.loads(proc.stdout)
        peaks[n] = got["after"] - got["before"]
    assert np.load(tmp_path / "out200000" / "idx.npy", mmap_mode="r").shape == (200_000, 10)
    # Ten times the queries: the search's own peak grows by less than 10 MB.
    assert peaks[200_000] - peaks[20_000] < 10, peaks
