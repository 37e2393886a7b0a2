"""Red team, lower half (issue 11): sources, encoders, store and workers under hostile input.

One test per item, on real files made here (real images from ../shared/data,
a real ONNX model, real FIFOs, devices, sparse files and processes). Runs that
would hang or exhaust memory on a regression run in a subprocess with a time
and memory limit, so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trainleak.embedding as embed_mod
import trainleak.prefetch as prefetch
from trainleak.cli import main
from trainleak.embedding import embed
from trainleak.encoders import get_encoder
from trainleak.images import list_records

from conftest import COIL, ORL, link_orl

SRC = str(Path(embed_mod.__file__).parents[1])


def _python(code: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports this checkout's trainleak."""
    # A private cache: the default one, filled by other tests, is loaded at start-up
    # and would be measured with the run.
    env = dict(os.environ, PYTHONPATH=SRC, TRAINLEAK_CACHE=tempfile.mkdtemp(prefix="tl-cache-"))
    try:
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not finish within {timeout} s (hang)")


def _coil(dest: Path, *names: str) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        shutil.copy(COIL / name, dest / name)
        out.append(dest / name)
    return out


def test_item03_duplicate_list_entries_are_counted_once(tmp_path, capsys, caplog):
    train = tmp_path / "train"
    _coil(train, "obj1__0.png", "obj2__0.png", "obj3__0.png")
    synth = tmp_path / "synth"
    _coil(synth, "obj4__0.png", "obj5__0.png")
    shutil.copy(COIL / "obj1__0.png", synth / "copy1.png")
    shutil.copy(COIL / "obj2__0.png", synth / "copy2.png")
    os.symlink(synth / "copy1.png", synth / "alias1.png")
    shutil.copy(synth / "copy2.png", synth / "same_bytes.png")  # same content, other file
    listing = tmp_path / "synth.txt"
    listing.write_text(
        "synth/copy1.png\n./synth/copy1.png\nsynth/alias1.png\nsynth/copy2.png\n"
        "synth/./copy2.png\nsynth/obj4__0.png\nsynth/obj5__0.png\nsynth/same_bytes.png\n"
    )
    with caplog.at_level(logging.WARNING, logger="trainleak.images"):
        records = list_records(listing)
    assert [Path(r.id).name for r in records] == [
        "copy1.png", "copy2.png", "obj4__0.png", "obj5__0.png", "same_bytes.png"
    ]  # fmt: skip
    assert len(records.duplicates) == 3
    assert "names 3 file(s) more than once" in caplog.text

    emb = embed(listing, "pixel", workers=1, cache=False, set_name="synthetic")
    assert len(emb) == 5 and emb.files == 8
    reasons = sorted(s.reason.split(":")[0] for s in emb.skipped)
    assert reasons == ["duplicate entry"] * 3
    assert emb.counts()["repeated_content"] == 1  # copy2.png and same_bytes.png
    assert [[Path(i).name for i in g] for g in emb.repeated_content()] == [
        ["copy2.png", "same_bytes.png"]
    ]

    # The audit counts each file once: 3 copies of 5 files, not 6 of 8 entries.
    out = tmp_path / "out"
    argv = ["audit", "--train", str(train), "--synthetic", str(listing), "--encoder", "pixel"]
    code = main([*argv, "--workers", "1", "--no-cache", "-q", "--out", str(out)])
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert code == 0
    assert report["summary"]["flagged"] == 3
    assert report["inputs"]["synthetic"]["embedded"] == 5
    assert report["inputs"]["synthetic"]["repeated_content"] == 1
    dupes = [s for s in report["skipped"] if s["reason"].startswith("duplicate entry")]
    assert len(dupes) == 3


def _onnx_with_external_weights(folder: Path, bias: float) -> Path:
    """TinyNet as ONNX with every weight in ``folder/tiny.weights``; ``bias`` shifts fc."""
    import onnx
    import torch

    from models import TinyNet, save_onnx

    net = TinyNet()
    with torch.no_grad():
        net.fc.bias += bias
    folder.mkdir(parents=True, exist_ok=True)
    save_onnx(folder / "inline.onnx", net)
    model = onnx.load(str(folder / "inline.onnx"))
    path = folder / "tiny.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="tiny.weights",
        size_threshold=0,
    )
    (folder / "inline.onnx").unlink()
    return path


def test_item04_changed_onnx_external_weights_are_noticed(tmp_path):
    pytest.importorskip("onnxruntime")
    model = _onnx_with_external_weights(tmp_path / "model", bias=0.0)
    other = _onnx_with_external_weights(tmp_path / "other", bias=5.0)
    assert model.read_bytes() == other.read_bytes()  # only the weights file differs
    images = tmp_path / "images"
    _coil(images, "obj1__0.png", "obj2__0.png", "obj3__0.png")
    spec, opts, cache = f"onnx:{model}", {"size": 32}, tmp_path / "cache"
    before = embed(images, spec, encoder_options=opts, workers=1, cache=cache)
    key = get_encoder(spec, **opts).info.weights_sha256

    shutil.copy(other.with_name("tiny.weights"), model.with_name("tiny.weights"))
    after = embed(images, spec, encoder_options=opts, workers=1, cache=cache)
    fresh = embed(images, spec, encoder_options=opts, workers=1, cache=False)
    assert get_encoder(spec, **opts).info.weights_sha256 != key
    assert not np.allclose(after.vectors, before.vectors)
    np.testing.assert_array_equal(after.vectors, fresh.vectors)

    # The fingerprint reads the locations the model names; one outside its
    # folder is refused before onnxruntime opens anything.
    evil = tmp_path / "evil" / "tiny.onnx"
    evil.parent.mkdir()
    evil.write_bytes(model.read_bytes().replace(b"tiny.weights", b"../x.weights"))
    (tmp_path / "x.weights").write_bytes(model.with_name("tiny.weights").read_bytes())
    with pytest.raises(ValueError, match="outside its folder"):
        get_encoder(f"onnx:{evil}", **opts)


_THIN = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from trainleak.embedding import embed
# Peak resident memory of this process only. ru_maxrss would not do: after
# fork and exec it starts at the parent's peak (pytest's, 1.4 GB in the suite).
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
out = {}
for encoder in ("face", "pixel", "tiled", "onnx:" + sys.argv[2]):
    start = time.time()
    emb = embed(sys.argv[1], encoder, workers=1, cache=False)
    out[encoder.partition(":")[0]] = {
        "embedded": sorted(emb.ids),
        "skipped": {s.path: s.reason for s in emb.skipped},
        "seconds": time.time() - start,
    }
out["max_rss_mb"] = peak_mb()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_item06_thin_image_is_a_skip_in_bounded_memory(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (30000, 1), (120, 50, 20)).save(folder / "thin.png")
    assert (folder / "thin.png").stat().st_size < 300
    # 12 kB: the dense area weights of pixel/tiled took 4.5 GB and 30-50 s.
    Image.new("RGB", (4_000_000, 1), (120, 50, 20)).save(folder / "strip.png")
    shutil.copy(ORL / "s1" / "1.pgm", folder / "face.pgm")
    from models import TinyNet, save_onnx

    save_onnx(tmp_path / "tiny.onnx", TinyNet())
    run = _python(_THIN, str(folder), str(tmp_path / "tiny.onnx"), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    thin, strip = str(folder / "thin.png"), str(folder / "strip.png")
    assert out["face"]["embedded"] == [str(folder / "face.pgm")]
    assert out["face"]["skipped"][thin].startswith("too elongated for face detection: 30000x1")
    assert out["face"]["skipped"][strip].startswith("too elongated for face detection")
    assert out["face"]["seconds"] < 30
    for encoder in ("pixel", "tiled", "onnx"):  # their resizes are bounded by the image
        assert {thin, strip} <= set(out[encoder]["embedded"]), out[encoder]["skipped"]
        assert out[encoder]["seconds"] < 10
    assert out["max_rss_mb"] < 1500

    # The padded and upsampled detector input is bounded by max_pixels too; that
    # skip depends on the setting, so it is not cached: a larger limit embeds it.
    cache = tmp_path / "cache"
    small = embed(folder / "face.pgm", "face", workers=1, cache=cache, max_pixels=100_000)
    assert len(small) == 0  # ORL is 23 x 28 here: 39 x 44 padded, x8 upsampled
    assert small.skipped[0].reason.startswith(
        "too many pixels for face detection: padded and upsampled it is 312x352"
    )
    assert len(embed(folder / "face.pgm", "face", workers=1, cache=cache)) == 1


def test_item07_non_utf8_file_name_is_carried_into_the_report(tmp_path, capsys):
    train, synth = tmp_path / "train", tmp_path / "synth"
    _coil(train, "obj1__0.png", "obj2__0.png")
    _coil(synth, "obj3__0.png")
    raw = os.fsencode(synth) + b"/bad\xff\xfe.png"
    try:
        shutil.copy(COIL / "obj1__0.png", raw)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    (synth / os.fsdecode(b"junk\xff.png")).write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = ["audit", "--train", str(train), "--synthetic", str(synth), "--encoder", "pixel"]
    code = main([*argv, "--workers", "1", "--no-cache", "--out", str(out), "--table", "csv"])
    capsys.readouterr()
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["matches.csv", "report.html", "report.json"]
    text = (out / "report.json").read_text(encoding="utf-8")  # valid UTF-8
    assert "bad\\udcff\\udcfe.png" in text
    report = json.loads(text)
    flagged = [m["synthetic"] for m in report["matches"] if m["flagged"]]
    assert [os.fsencode(p) for p in flagged] == [raw]  # the bytes come back exactly
    skipped = [os.fsencode(s["path"]) for s in report["skipped"]]
    assert skipped == [os.fsencode(synth) + b"/junk\xff.png"]
    assert "bad\\udcff\\udcfe.png" in (out / "matches.csv").read_text(encoding="utf-8")
    assert "bad\\udcff\\udcfe.png" in (out / "report.html").read_text(encoding="utf-8")


_SPECIAL = """
import json, sys
from trainleak.embedding import embed
# Peak resident memory of this process only. ru_maxrss would not do: after
# fork and exec it starts at the parent's peak (pytest's, 1.4 GB in the suite).
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
def reasons(emb):
    return {s.path.rsplit("/", 1)[-1]: s.reason for s in emb.skipped}
out = {
    "default": reasons(embed(sys.argv[1], "pixel", workers=2, cache=False)),
    "small_cap": reasons(embed(sys.argv[2], "pixel", workers=1, cache=False, max_file_mb=1)),
    "embedded": len(embed(sys.argv[1], "pixel", workers=1, cache=False)),
    "max_rss_mb": peak_mb(),
}
print(json.dumps(out))
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and /dev/zero")
def test_item08_special_files_are_skipped_unread(tmp_path):
    folder = tmp_path / "in"
    _coil(folder, "obj1__0.png", "obj2__0.png")
    os.mkfifo(folder / "fifo.png")
    os.symlink("/dev/zero", folder / "zero.png")
    with open(folder / "sparse.png", "wb") as fh:
        fh.truncate(6 << 30)  # 6 GB, no blocks on disk
    small = tmp_path / "small"
    _coil(small, "obj3__0.png")
    with open(small / "sparse3mb.png", "wb") as fh:
        fh.truncate(3 << 20)
    start = time.time()
    run = _python(_SPECIAL, str(folder), str(small), timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["default"] == {
        "fifo.png": "not a regular file: a named pipe (FIFO)",
        "zero.png": "not a regular file: a character device",
        "sparse.png": "file larger than 256 MB (--max-file-mb)",
    }
    assert out["small_cap"] == {"sparse3mb.png": "file larger than 1 MB (--max-file-mb)"}
    assert out["embedded"] == 2
    assert out["max_rss_mb"] < 1000 and time.time() - start < 60


_BUSY = """
import sys
from trainleak.embedding import embed
embed(sys.argv[1], "face", workers=2, batch_size=48, cache=False)
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its entry waits to be reaped


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_item10_workers_exit_when_the_run_is_killed(tmp_path):
    faces = link_orl(tmp_path / "faces", range(1, 41), range(1, 11), per_person=False)
    # A private cache: the default one, filled by other tests, is loaded at start-up
    # and would be measured with the run.
    env = dict(os.environ, PYTHONPATH=SRC, TRAINLEAK_CACHE=tempfile.mkdtemp(prefix="tl-cache-"))
    parent = subprocess.Popen(
        [sys.executable, "-c", _BUSY, str(faces)], env=env, stderr=subprocess.DEVNULL
    )
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        # Busy: both workers past start-up and well into a 48-image chunk (~10 s each).
        while time.time() < deadline:
            workers = _children(parent.pid)
            if len(workers) == 2 and all(_cpu_seconds(w) > 3 for w in workers):
                break
            time.sleep(0.2)
        assert len(workers) == 2, f"expected 2 busy workers, found {workers}"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        gone_by = time.time() + 5
        while time.time() < gone_by and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "workers outlived their parent"
    finally:
        # Only processes this test started: the workers it saw, while alive, and
        # the children of the parent while it runs (its pid is not reused then).
        running = parent.poll() is None
        for pid in [w for w in workers if _alive(w)] + (_children(parent.pid) if running else []):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_item13_list_files_with_a_byte_order_mark(tmp_path):
    _coil(tmp_path / "ids", "obj1__0.png", "obj2__0.png")
    csv_list = tmp_path / "list.csv"
    csv_list.write_text(
        "path,identity\nids/obj1__0.png,cup\nids/obj2__0.png,duck\n", encoding="utf-8-sig"
    )
    assert csv_list.read_bytes().startswith(b"\xef\xbb\xbfpath")
    assert [r.label for r in list_records(csv_list)] == ["cup", "duck"]
    txt_list = tmp_path / "list.txt"
    txt_list.write_text("ids/obj1__0.png\nids/obj2__0.png\n", encoding="utf-8-sig")
    emb = embed(txt_list, "pixel", workers=1, cache=False)
    assert len(emb) == 2 and not emb.skipped


def test_item14_corrupt_cache_shard_is_replaced(tmp_path, monkeypatch, caplog):
    images = tmp_path / "images"
    _coil(images, *[f"obj{k}__0.png" for k in range(1, 7)])
    cache = tmp_path / "cache"
    cold = embed(images, "pixel", workers=1, cache=cache)
    (shard,) = cache.glob("*/shard-*.npz")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="trainleak.store"):
        mended = embed(images, "pixel", workers=1, cache=cache)
    assert shard.name in caplog.text  # said once, with the shard's name
    np.testing.assert_array_equal(mended.vectors, cold.vectors)
    assert shard not in list(cache.glob("*/shard-*.npz"))
    caplog.clear()

    def refuse(*_a, **_k):
        raise AssertionError("the run after the repair recomputed an embedding")

    monkeypatch.setattr(prefetch, "embed_decoded", refuse)  # in-process embedding
    with caplog.at_level(logging.WARNING, logger="trainleak.store"):
        warm = embed(images, "pixel", workers=1, cache=cache)
    assert caplog.text == ""
    np.testing.assert_array_equal(warm.vectors, cold.vectors)
