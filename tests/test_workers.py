"""Worker processes: every entry point, and a crashing worker never kills the run.

Entry points run as real subprocesses (a script without a ``__main__`` guard,
standard input, ``python -c``, a pytest run); crashes are real (the test
encoder in ``crashing_encoder.py`` sends itself SIGKILL or calls ``os._exit``
in a worker process).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trainleak
from trainleak.encoders import get_encoder
from trainleak.errors import WorkerCrashError
from trainleak.store import EmbeddingStore

from conftest import COIL
from crashing_encoder import mark

TESTS = Path(__file__).resolve().parent
TRAINLEAK = Path(sys.executable).with_name("trainleak")

# The README's way: no `if __name__ == "__main__":` guard.
SCRIPT = """\
import hashlib, logging
import trainleak
logging.basicConfig(format="%(name)s: %(message)s")
logging.getLogger("trainleak.workers").setLevel(logging.DEBUG)
emb = trainleak.embed({folder!r}, "pixel", workers=2, batch_size=3, cache=False)
print(len(emb), hashlib.sha256(emb.vectors.tobytes()).hexdigest())
"""


def _checksum(emb: trainleak.EmbeddingSet) -> str:
    return f"{len(emb)} {hashlib.sha256(emb.vectors.tobytes()).hexdigest()}"


def _python(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def coil_few(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("coil-few")
    for view in range(0, 50, 7):
        os.symlink(COIL / f"obj4__{view}.png", folder / f"obj4__{view}.png")
    return folder


@pytest.mark.parametrize("entry", ["script", "stdin", "dash-c", "pytest"])
def test_workers_run_from_every_entry_point(entry, coil_few, tmp_path):
    expected = _checksum(trainleak.embed(coil_few, "pixel", workers=1, cache=False))
    code = SCRIPT.format(folder=str(coil_few))
    if entry == "script":
        (tmp_path / "script.py").write_text(code)
        proc = _python("script.py", cwd=tmp_path)
    elif entry == "stdin":
        proc = _python("-", cwd=tmp_path, stdin=code)
    elif entry == "dash-c":
        proc = _python("-c", code, cwd=tmp_path)
    else:
        body = "".join(f"    {line}\n" for line in code.splitlines())
        (tmp_path / "test_entry.py").write_text(f"def test_embed():\n{body}")
        proc = _python(
            "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:logging", cwd=tmp_path
        )
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout
    # The work really ran in two worker processes, not in-process.
    assert proc.stderr.count("started encoder worker process") == 2, proc.stderr


def test_encoder_defined_in_main_falls_back_to_in_process(coil_few, tmp_path):
    """Workers cannot import ``__main__``: the run goes on in-process and says why."""
    code = (
        "from trainleak.encoders import ENCODERS\n"
        "from trainleak.encoders.pixel import PixelEncoder\n"
        "@ENCODERS.register('main-pixel')\n"
        "class MainPixel(PixelEncoder):\n"
        "    pass\n" + SCRIPT.replace('"pixel"', '"main-pixel"').format(folder=str(coil_few))
    )
    (tmp_path / "script.py").write_text(code)
    proc = _python("script.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _checksum(trainleak.embed(coil_few, "pixel", workers=1, cache=False)) in proc.stdout
    assert "defined in __main__, which worker processes do not import" in proc.stderr
    assert "started encoder worker process" not in proc.stderr


@pytest.fixture(scope="module")
def crash_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """49 COIL photos and one marked copy that crashes the test encoder (50 files)."""
    root = tmp_path_factory.mktemp("crash")
    clean, mixed = root / "clean", root / "mixed"
    clean.mkdir()
    mixed.mkdir()
    for view in range(49):
        name = f"obj5__{view:02d}.png"
        os.symlink(COIL / f"obj5__{view}.png", clean / name)
        os.symlink(COIL / f"obj5__{view}.png", mixed / name)
    marked = mixed / "obj5__20-marked.png"  # sorts among the others, inside a chunk
    mark(Image.open(COIL / "obj6__0.png")).save(marked)
    return {"clean": clean, "mixed": mixed, "marked": marked}


@pytest.mark.parametrize(("how", "reason"), [("sigkill", "signal 9"), ("exit", "exit code 3")])
def test_a_crashing_image_is_skipped_and_the_rest_embedded_and_cached(
    crash_set, tmp_path, how, reason
):
    options = {"how": how}
    cache = tmp_path / "cache"
    # What an in-process run gives for the 49 images that do not crash.
    ref = trainleak.embed(crash_set["clean"], "crash-test", encoder_options=options,
                          workers=1, cache=False)  # fmt: skip
    for _ in ("cold", "warm"):  # the warm run retries only the image that crashed
        emb = trainleak.embed(
            crash_set["mixed"], "crash-test", encoder_options=options,
            workers=2, batch_size=8, cache=cache,
        )  # fmt: skip
        assert emb.files == 50 and len(emb) == 49
        assert [(s.path, s.reason) for s in emb.skipped] == [
            (str(crash_set["marked"]), f"encoder process crashed ({reason})")
        ]
        assert [Path(i).name for i in emb.ids] == [Path(i).name for i in ref.ids]
        np.testing.assert_array_equal(emb.vectors, ref.vectors)
    key = get_encoder("crash-test", **options).info.cache_key()
    assert len(EmbeddingStore(cache, key, 64)) == 49  # a crash is never cached


def test_workers_that_crash_on_every_image_raise_a_clear_error(crash_set):
    with pytest.raises(WorkerCrashError, match="crashed 8 times in a row.*fails on every image"):
        trainleak.embed(crash_set["clean"], "crash-test", encoder_options={"crash_on": "all"},
                        workers=2, batch_size=8, cache=False)  # fmt: skip


def test_workers_that_cannot_start_raise_a_clear_error(crash_set):
    options = {"crash_on": "start", "host_pid": os.getpid(), "how": "exit"}
    with pytest.raises(WorkerCrashError, match=r"cannot start: 3 in a row.*\(exit code 3\)"):
        trainleak.embed(crash_set["clean"], "crash-test", encoder_options=options,
                        workers=2, cache=False)  # fmt: skip


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PYTHONPATH on which the crash-test encoder is an installed plugin (entry point)."""
    site = tmp_path_factory.mktemp("plugin-site")
    dist = site / "crashtest_plugin-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: crashtest-plugin\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[trainleak.encoders]\ncrash-test = crashing_encoder\n")
    return os.pathsep.join([str(site), str(TESTS)])


def _cli(plugin_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=plugin_path)
    return subprocess.run(
        [str(TRAINLEAK), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_cli_run_with_a_crashing_image_exits_0(crash_set, plugin_path, coil_few, tmp_path):
    out = tmp_path / "out"
    proc = _cli(
        plugin_path, "audit", "--train", str(crash_set["mixed"]), "--synthetic", str(coil_few),
        "--encoder", "crash-test", "--threshold", "0.99", "--workers", "2", "--batch-size", "8",
        "--no-cache", "--out", str(out), "-q",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["train"]["embedded"] == 49
    assert report["skipped"] == [
        {"set": "train", "path": str(crash_set["marked"]),
         "reason": "encoder process crashed (signal 9)"}
    ]  # fmt: skip


def test_cli_run_where_every_worker_crashes_exits_2(crash_set, plugin_path, coil_few, tmp_path):
    proc = _cli(
        plugin_path, "audit", "--train", str(crash_set["clean"]), "--synthetic", str(coil_few),
        "--encoder", "crash-test", "-O", "crash_on=all", "--threshold", "0.99",
        "--workers", "2", "--no-cache", "--out", str(tmp_path / "out"), "-q",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("trainleak: error: encoder worker processes crashed 8 times in a row")
