"""Reports at scale (issue 15 item 4): report.json and report.html stay small, the table is whole.

``report.json`` lists a capped number of samples (flagged first); the full
neighbour table goes to ``matches.parquet`` / ``matches.csv`` a block at a
time and must hold exactly the in-memory search's rows.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import trainleak as tl
from trainleak.audits import leak_table
from trainleak.config import AuditConfig

DIM = 32


def _vectors(n_train: int, n_synth: int, copies: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((n_train, DIM)).astype(np.float32)
    synth = rng.standard_normal((n_synth, DIM)).astype(np.float32)
    # planted near-copies of training rows, spread through the synthetic set
    at = rng.choice(n_synth, copies, replace=False)
    synth[at] = train[:copies] + 0.02 * rng.standard_normal((copies, DIM)).astype(np.float32)
    return train, synth, np.sort(at)


def _audit(n_train: int, n_synth: int, copies: int = 30, cap: int = 60, **cfg):
    train, synth, at = _vectors(n_train, n_synth, copies)
    t = tl.embeddings(train, ids=[f"train/{i}.png" for i in range(n_train)])
    s = tl.embeddings(synth, ids=[f"synth/{i}.png" for i in range(n_synth)])
    config = AuditConfig(threshold=0.9, report_samples=cap, **cfg)
    return tl.audit(t, s, config=config), at


@pytest.fixture(scope="module")
def mid(tmp_path_factory):
    result, at = _audit(3000, 4000)
    out = tmp_path_factory.mktemp("mid")
    return result, at, out, result.write(out)


def test_report_json_lists_flagged_first_up_to_the_cap(mid):
    result, at, out, _ = mid
    rep = json.loads((out / "report.json").read_text())
    listed = {m["synthetic"] for m in rep["matches"]}
    assert len(listed) == 60 == rep["listed"]["synthetic"]
    assert rep["listed"]["of_synthetic"] == 4000
    flagged = {f"synth/{i}.png" for i in at}
    assert rep["summary"]["flagged"] == 30 and set(result.flagged) == flagged
    assert flagged <= listed  # every flagged pair is in report.json
    # the other 30 are the highest-scoring unflagged samples
    score = result.table.scored.score
    others = np.setdiff1d(np.arange(4000), at)
    top = {f"synth/{i}.png" for i in others[np.argsort(-score[others])[:30]]}
    assert listed - flagged == top
    assert len(rep["matches"]) == 60 * 5
    # the histogram counts every sample, not only the listed ones
    assert sum(rep["score_histogram"]["counts"]["synthetic"]) == 4000


def test_table_file_holds_every_row_of_the_in_memory_search(mid):
    result, _, out, paths = mid
    assert paths["table"] == str(out / "matches.parquet")
    table = pq.read_table(paths["table"]).to_pydict()
    nb = result.table.scored.neighbours
    n, k = nb.idx.shape
    assert (
        len(table["synthetic"])
        == n * k
        == json.loads((out / "report.json").read_text())["table"]["rows"]
    )
    assert table["synthetic"] == [f"synth/{i}.png" for i in np.repeat(np.arange(n), k)]
    assert table["train"] == [f"train/{j}.png" for j in nb.idx.reshape(-1)]
    assert table["rank"] == np.tile(np.arange(1, k + 1), n).tolist()
    np.testing.assert_array_equal(np.array(table["similarity"]), nb.sims.reshape(-1))
    flagged_rows = [s for s, f in zip(table["synthetic"], table["flagged"], strict=True) if f]
    assert flagged_rows == sorted(result.flagged, key=lambda p: int(p[6:-4]))
    # report.json's rows are the same rows as the table's
    rep = json.loads((out / "report.json").read_text())
    by_pair = {
        (s, t): (r, sim, f)
        for s, t, r, sim, f in zip(
            table["synthetic"], table["train"], table["rank"], table["similarity"],
            table["flagged"], strict=True,
        )
    }  # fmt: skip
    for m in rep["matches"]:
        assert by_pair[(m["synthetic"], m["train"])] == (m["rank"], m["similarity"], m["flagged"])


def test_csv_table_equals_the_parquet_table(mid, tmp_path):
    result, _, out, _ = mid
    paths = result.write(tmp_path, table="csv")
    assert paths["table"] == paths["csv"] == str(tmp_path / "matches.csv")
    with open(paths["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    par = pq.read_table(out / "matches.parquet").to_pydict()
    assert [r["synthetic"] for r in rows] == par["synthetic"]
    assert [r["train"] for r in rows] == par["train"]
    assert [float(r["similarity"]) for r in rows] == par["similarity"]
    assert [r["flagged"] == "True" for r in rows] == par["flagged"]
    assert json.loads((tmp_path / "report.json").read_text())["table"]["format"] == "csv"


def test_report_json_and_html_do_not_grow_with_the_audit(tmp_path):
    sizes = {}
    for n in (1000, 8000):
        result, _ = _audit(2000, n)
        paths = result.write(tmp_path / str(n), redact=True)
        sizes[n] = {
            kind: (tmp_path / str(n) / name).stat().st_size
            for kind, name in (("json", "report.json"), ("html", "report.html"))
        }
        assert pq.read_metadata(paths["table"]).num_rows == n * 5
    for kind in ("json", "html"):
        assert sizes[8000][kind] < 1.1 * sizes[1000][kind], (kind, sizes)
    assert sizes[8000]["json"] < 200_000


def test_identity_score_rows_past_the_top_k_carry_their_true_rank():
    """The oracle: per sample, the old row-by-row construction (top k, then the verdict's pair)."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    train = np.repeat(centres, 6, axis=0) + 2.0 * rng.standard_normal((240, DIM)).astype(np.float32)
    synth = centres[rng.integers(0, 40, 300)] + 2.0 * rng.standard_normal((300, DIM)).astype(
        np.float32
    )
    labels = [f"id{i}" for i in np.repeat(np.arange(40), 6)]
    t = tl.embeddings(train, labels=labels)
    s = tl.embeddings(synth)
    result = tl.audit(t, s, config=AuditConfig(threshold=0.8, k=3, score="identity"))
    sc = result.table.scored
    expect = []
    for i in range(300):
        listed = sc.neighbours.idx[i].tolist()
        entries = [(r + 1, j) for r, j in enumerate(listed)]
        if int(sc.best[i]) not in listed:
            sims = t.vectors.astype(np.float64) @ s.vectors[i].astype(np.float64)
            sims[sc.best[i]] = -np.inf
            entries.append((int(np.sum(sims > sc.best_sim[i])) + 1, int(sc.best[i])))
        expect += [(s.ids[i], t.ids[j], rank) for rank, j in entries]
    past = sum(r > 3 for _, _, r in expect)
    assert past > 10  # the case is exercised
    got = result.table.block(0, 300)
    cols = (got["synthetic"].tolist(), got["train"].tolist(), got["rank"].tolist())
    assert list(zip(*cols, strict=True)) == expect
    blocks = list(result.table.blocks(samples=7))  # blocks join up to the same rows
    assert sum(len(b["train"]) for b in blocks) == len(expect)
    assert [r for b in blocks for r in b["rank"].tolist()] == [r for *_, r in expect]


def test_listed_samples_adds_the_reviewed_ones():
    score = np.array([0.1, 0.9, 0.5, 0.2, 0.3])
    flagged = np.array([0, 0, 0, 1, 0], bool)
    assert leak_table.listed_samples(score, flagged, 2, also=[0]).tolist() == [0, 1, 3]


def test_odd_file_names_reach_the_parquet_table(tmp_path):
    t = tl.embeddings(np.eye(3, dtype=np.float32), ids=["a.png", "b\udcff.png", "c.png"])
    s = tl.embeddings(np.eye(3, dtype=np.float32)[:2], ids=["=x.png", "y.png"])
    result = tl.audit(t, s, config=AuditConfig(threshold=0.9))
    paths = result.write(tmp_path, table="parquet")
    table = pq.read_table(paths["table"]).to_pydict()
    assert "b\\udcff.png" in table["train"]
    assert "=x.png" in table["synthetic"]  # no spreadsheet guard in a typed column


_PEAK_OF_WRAPPING = r"""
import json, sys
import numpy as np
import trainleak as tl
from trainleak.outofcore import open_vectors

def vmhwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

x = open_vectors(sys.argv[1])
before = vmhwm()
s = tl.embeddings(x)
print(json.dumps({"grew_mb": vmhwm() - before, "kept_map": bool(np.shares_memory(s.vectors, x))}))
"""


@pytest.mark.parametrize("unit", [True, False])
def test_wrapping_memory_mapped_vectors_costs_at_most_one_copy(tmp_path, unit):
    """``tl.embeddings`` on a memory map: unit rows stay on disk, others cost one copy.

    The peak counts the file's pages once read (resident, though the kernel
    can drop them). Measured (300k x 128, 146 MB): before, +472 MB either way
    (norms, quotient and float32 cast of the whole array at once); now +180 MB
    for unit rows (the pages read) and +339 MB for others (pages + one copy).
    """
    import subprocess
    import sys

    from trainleak.outofcore import write_vectors

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300_000, 128), dtype=np.float32)  # 146 MB
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_vectors(tmp_path / "v.npy", [x], 128)
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_WRAPPING, str(tmp_path / "v.npy")],
        check=True,
        capture_output=True,
        text=True,
    )
    r = json.loads(out.stdout)
    size_mb = x.nbytes / 2**20
    if unit:
        assert r["kept_map"] and r["grew_mb"] < 1.25 * size_mb + 40, r
    else:
        assert not r["kept_map"] and r["grew_mb"] < 2.5 * size_mb + 40, r
        got = tl.embeddings(np.load(tmp_path / "v.npy", mmap_mode="r")).vectors
        assert np.array_equal(got[:1000], tl.embeddings(x[:1000]).vectors)
