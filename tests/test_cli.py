"""The command line: exit codes, fix-it messages, reports on disk."""

from __future__ import annotations

import json
import os

import pytest

from trainleak.cli import main

from conftest import COIL


@pytest.fixture()
def coil_sets(tmp_path):
    for sub, objs in (("train", range(1, 4)), ("synth", range(3, 6))):
        (tmp_path / sub).mkdir()
        for obj in objs:
            for v in (0, 10, 20):
                os.symlink(COIL / f"obj{obj}__{v}.png", tmp_path / sub / f"obj{obj}__{v}.png")
    return tmp_path


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _audit_args(coil_sets, out, *extra):
    """Arguments of a pixel audit of the COIL sets at a fixed threshold."""
    return [
        "audit",
        "--train",
        str(coil_sets / "train"),
        "--synthetic",
        str(coil_sets / "synth"),
        "--encoder",
        "pixel",
        "--threshold",
        "0.99",
        "--no-cache",
        "--workers",
        "1",
        "--out",
        str(out),
        "-q",
        *extra,
    ]


def test_pixel_audit_writes_reports_and_exit_codes(coil_sets, capsys):
    out = coil_sets / "out"
    base = _audit_args(coil_sets, out)
    code, stdout, _ = _run(capsys, *base)
    assert code == 0
    assert "flagged 3 of 9" in stdout  # object 3's views are in both sets
    rep = json.loads((out / "report.json").read_text())
    assert rep["threshold"]["method"] == "fixed"
    assert (out / rep["table"]["file"]).stat().st_size > 0
    assert _run(capsys, *base, "--table", "csv")[0] == 0
    assert (out / "matches.csv").read_text().startswith("synthetic,train,")
    assert _run(capsys, *base, "--fail-on-leak")[0] == 1


def test_encoder_default_threshold_is_marked_uncalibrated(coil_sets, capsys):
    out = coil_sets / "out2"
    code, stdout, _ = _run(
        capsys,
        "audit",
        "--train",
        str(coil_sets / "train"),
        "--synthetic",
        str(coil_sets / "synth"),
        "--encoder",
        "tiled",
        "--no-cache",
        "--workers",
        "1",
        "--out",
        str(out),
        "-q",
    )
    assert code == 0 and "encoder-default" in stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["threshold"]["calibrated"] is False
    assert "uncalibrated" in rep["threshold"]["note"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--synthetic", "{synth}", "--train", "{missing}"], "does not exist"),
        (["--synthetic", "{synth}", "--train", "{bad}"], "no usable image in train set"),
        (
            ["--synthetic", "{synth}", "--train", "{train}", "--encoder", "pixel", "--aligned"],
            "face encoder only",
        ),
        (
            ["--synthetic", "{synth}", "--train", "{train}", "--encoder", "nope"],
            "unknown encoder 'nope'",
        ),
        (
            ["--synthetic", "{synth}", "--train", "{train}", "--encoder", "pixel", "-O", "sise=8"],
            "its options are: blur, flip_invariant, size",
        ),
        (
            [
                "--synthetic",
                "{synth}",
                "--train",
                "{train}",
                "--holdout",
                "{synth}",
                "--threshold",
                "0.5",
            ],
            "not both",
        ),
        (
            [
                "--synthetic",
                "{synth}",
                "--train",
                "{train}",
                "--encoder",
                "pixel",
                "--score",
                "identity",
            ],
            "needs identity labels",
        ),
    ],
)
def test_usage_errors_exit_2_with_fix(coil_sets, capsys, args, message):
    bad = coil_sets / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "x.png").write_bytes(b"nope")
    paths = {
        "synth": coil_sets / "synth",
        "train": coil_sets / "train",
        "missing": coil_sets / "missing",
        "bad": bad,
    }
    filled = [a.format(**paths) for a in args]
    code, _, err = _run(
        capsys,
        "audit",
        *filled,
        "--no-cache",
        "--workers",
        "1",
        "-q",
        "--out",
        str(coil_sets / "o"),
    )
    assert code == 2
    assert message in err


@pytest.mark.parametrize(
    "args",
    [["audit", "--train", "x"], ["audit", "--fpr", "2"], ["audit", "--k", "0"], ["frobnicate"]],
)
def test_argparse_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_finds_planted_leaks(tmp_path, capsys):
    code, stdout, _ = _run(capsys, "demo", "--out", str(tmp_path / "demo"), "-q")
    assert code == 0
    assert "demo: 10 of 10 planted leaks flagged" in stdout
    rep = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert rep["threshold"]["method"] == "holdout"
    assert (tmp_path / "demo" / "report.html").stat().st_size > 10_000


def test_search_device_is_recorded_and_bad_ones_say_how_to_fix(coil_sets, capsys):
    torch = pytest.importorskip("torch")
    out = coil_sets / "out-device"
    code, _, _ = _run(capsys, *_audit_args(coil_sets, out, "--device", "cpu"))
    assert code == 0
    assert json.loads((out / "report.json").read_text())["device"] == "cpu"
    code, _, err = _run(capsys, *_audit_args(coil_sets, out, "--device", "gpu"))
    assert code == 2 and "use auto, cpu, cuda or cuda:N" in err
    if not torch.cuda.is_available():
        code, _, err = _run(capsys, *_audit_args(coil_sets, out, "--device", "cuda"))
        assert code == 2 and "torch sees no CUDA GPU here: use --device cpu" in err
        code, _, _ = _run(capsys, *_audit_args(coil_sets, out))  # auto falls back to the CPU
        assert code == 0
        assert json.loads((out / "report.json").read_text())["device"] == "cpu"


@pytest.mark.gpu
def test_audit_on_the_gpu_matches_the_cpu(coil_sets, capsys):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reports = {}
    for device in ("cpu", "cuda"):
        out = coil_sets / f"out-{device}"
        assert _run(capsys, *_audit_args(coil_sets, out, "--device", device))[0] == 0
        reports[device] = json.loads((out / "report.json").read_text())
    assert reports["cuda"]["device"] == "cuda"
    assert reports["cuda"]["matches"] == reports["cpu"]["matches"]


def test_a_closed_stdout_pipe_is_not_an_internal_error(tmp_path):
    """``trainleak check ... | head -1``: the reader goes away; exit 141, no traceback file."""
    import subprocess
    import sys

    import trainleak

    # More output (~100 kB of JSON lines) than a pipe holds (64 kB): the run is
    # still writing when the reader goes away, as with a large outbox.
    train = tmp_path / "train"
    train.mkdir()
    for obj in range(1, 10):
        for v in range(50):
            os.symlink(COIL / f"obj{obj}__{v}.png", train / f"obj{obj}__{v}.png")
    assert main(["index", "build", "--train", str(train), "--encoder", "pixel", "--out",
                 str(tmp_path / "idx"), "--workers", "1", "--no-cache", "-q"]) == 0  # fmt: skip
    argv = [sys.executable, "-m", "trainleak.cli", "check", "--index", str(tmp_path / "idx"),
            str(train), "--jsonl", "--workers", "1", "--no-cache", "-q"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(trainleak.__file__))}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # as head does after its first line
    err = proc.stderr.read().decode()
    assert proc.wait(120) == 141, err
    assert "internal error" not in err and "Traceback" not in err
