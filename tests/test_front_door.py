"""The front door: README's Python example as users run it, and every audit from ``tl``.

The README example runs as written in a fresh process, unguarded, from a
file and from standard input, with 2 embedding workers. Each audit is
reached from ``tl`` and from the CLI, returns the common result protocol,
writes ``report.json`` with the common header, and refuses an empty input
with a clear error (exit 2 from the CLI).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trainleak as tl
from trainleak.cli import main
from trainleak.errors import TrainleakError
from trainleak.result import Result

from conftest import COIL, link_orl

ROOT = Path(__file__).resolve().parents[1]
HEADER = {"tool", "version", "command", "argv", "created", "device", "settings"}


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no marked python example"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["file", "stdin"])
def test_readme_example_runs_unguarded(how, tmp_path):
    code = readme_example()
    assert "__main__" not in code
    env = {**os.environ, "TRAINLEAK_CACHE": str(tmp_path / "cache")}
    if how == "file":
        script = tmp_path / "script.py"
        script.write_text(code)
        run = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    else:
        run = subprocess.run(
            [sys.executable, "-"],
            input=code,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert re.fullmatch(
        r"\d+ of 18 synthetic samples flagged \(threshold 0\.\d{4}, holdout\)", lines[0]
    )
    assert lines[1] == "400 images: no near-duplicates found"
    report = json.loads((ROOT / "out" / "report.json").read_text())
    flagged = {Path(m["synthetic"]).parent.name for m in report["matches"] if m["flagged"]}
    # Only members (people 1-5) may be flagged; the 4 unseen people never.
    assert flagged and flagged <= {f"s{i}" for i in range(1, 6)}


def test_public_names_are_importable_without_torch():
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, trainleak as tl; print(sorted(tl.__all__)); "
            "print('torch' in sys.modules, 'numpy' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    names, loaded = run.stdout.splitlines()
    for name in ("embed", "knn", "audit", "dedup", "extract", "membership", "invert"):
        assert f"'{name}'" in names
    assert loaded == "False False"


def test_audit_takes_arrays_and_embedding_sets():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(20, 8))
    synth = np.concatenate([train[:3] + 0.01 * rng.normal(size=(3, 8)), rng.normal(size=(5, 8))])
    res = tl.audit(train=train, synthetic=synth, holdout=rng.normal(size=(40, 8)), fpr=0.05)
    assert isinstance(res, Result)
    assert sorted(res.flagged) == ["0", "1", "2"]
    named = tl.embeddings(synth, ids=[f"s{i}" for i in range(8)])
    again = tl.audit(train=tl.embeddings(train), synthetic=named, threshold=0.95)
    assert sorted(again.flagged) == ["s0", "s1", "s2"]
    assert "3 of 8 synthetic samples flagged" in repr(again)
    assert "<table>" in again._repr_html_()
    with pytest.raises(TrainleakError, match="holdout= or threshold="):
        tl.audit(train=train, synthetic=synth)


def test_audit_rejects_sets_from_different_encoders():
    a = tl.embed(COIL / "obj1__0.png", "pixel", workers=1, cache=False)
    b = tl.embed(COIL / "obj1__0.png", "tiled", workers=1, cache=False)
    with pytest.raises(TrainleakError, match="same encoder"):
        tl.audit(train=a, synthetic=b)


def _write_gen_module(folder: Path) -> str:
    """A real generator that copies two COIL images again and again, as a memorising model would."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fd_gen.py").write_text(
        "import numpy as np\nfrom PIL import Image\n"
        f"IMGS = [np.asarray(Image.open(r'{COIL / 'obj3__0.png'}').convert('RGB')),\n"
        f"        np.asarray(Image.open(r'{COIL / 'obj5__0.png'}').convert('RGB'))]\n"
        "def sample(n, seed, prompt=None):\n"
        "    rng = np.random.default_rng(seed)\n"
        "    return [IMGS[int(rng.integers(2))] for _ in range(n)]\n"
    )
    return "python:fd_gen:sample"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fd")
    coil = root / "coil"
    coil.mkdir()
    for obj in (1, 3, 5, 7):
        for v in (0, 30):
            os.symlink(COIL / f"obj{obj}__{v}.png", coil / f"obj{obj}__{v}.png")
    ids = root / "ids"
    link_orl(ids, range(1, 5), range(1, 4))
    gen = root / "gen"
    link_orl(gen, range(1, 3), range(4, 6), per_person=False)
    (root / "empty").mkdir()
    spec = _write_gen_module(root / "mods")
    return {
        "root": root,
        "coil": coil,
        "ids": ids,
        "gen": gen,
        "empty": root / "empty",
        "spec": spec,
    }


def _calls(s: dict, tmp: Path) -> dict:
    """Each audit as one tl call and as one CLI line, on small real inputs."""
    return {
        "audit": (
            lambda: tl.audit(
                train=s["coil"], synthetic=s["coil"], encoder="pixel", workers=1, cache=tmp / "c"
            ),
            ["audit", "--train", "{coil}", "--synthetic", "{coil}", "--encoder", "pixel"],
            "synthetic",
        ),
        "dedup": (
            lambda: tl.dedup(s["coil"], workers=1, cache=tmp / "c"),
            ["dedup", "{coil}"],
            None,
        ),
        "extract": (
            lambda: tl.extract(
                s["spec"],
                s["coil"],
                out=tmp / "x",
                samples_per_prompt=12,
                min_clique=3,
                workers=1,
                cache=tmp / "c",
            ),
            [
                "extract",
                "--generated",
                "{spec}",
                "--train",
                "{coil}",
                "--samples-per-prompt",
                "12",
                "--min-clique",
                "3",
            ],
            "generated",
        ),
        "membership": (
            lambda: tl.membership(
                s["ids"],
                str(s["gen"]),
                encoder="face",
                encoder_options={"aligned": True},
                workers=1,
                cache=tmp / "c",
            ),
            ["membership", "--identities", "{ids}", "--generated", "{gen}", "--aligned"],
            "generated",
        ),
    }


@pytest.mark.parametrize("name", ["audit", "dedup", "extract", "membership"])
def test_every_audit_from_tl_and_cli(name, sets, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(sets["root"] / "mods"))
    call, argv, empty_arg = _calls(sets, tmp_path)[name]
    result = call()
    assert isinstance(result, Result) and result.verdict and result.summary
    paths = result.write(tmp_path / "api")
    report = json.loads((tmp_path / "api" / "report.json").read_text())
    assert set(report) >= HEADER and report["command"] in (name, "identity")
    assert Path(paths["json"]).exists() if "json" in paths else True
    filled = [a.format(**{k: str(v) for k, v in sets.items()}) for a in argv]
    out = tmp_path / "cli"
    code = main(
        [*filled, "--workers", "1", "--cache", str(tmp_path / "c"), "--out", str(out), "-q"]
    )
    assert code == 0, capsys.readouterr().err
    cli_report = json.loads((out / "report.json").read_text())
    assert set(cli_report) >= HEADER and cli_report["argv"][0] == "trainleak"
    assert cli_report["summary"].keys() == report["summary"].keys()


@pytest.mark.parametrize("name", ["audit", "dedup", "membership"])
def test_every_audit_refuses_an_empty_input(name, sets, tmp_path, capsys):
    _, argv, _ = _calls(sets, tmp_path)[name]
    swap = {"audit": "{coil}", "dedup": "{coil}", "membership": "{ids}"}[name]
    filled = [
        str(sets["empty"]) if a == swap else a.format(**{k: str(v) for k, v in sets.items()})
        for a in argv
    ]
    code = main([*filled, "--workers", "1", "--no-cache", "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "trainleak: error:" in err and "Traceback" not in err


def test_extract_refuses_to_mix_generators(sets, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(sets["root"] / "mods"))
    out = tmp_path / "x"
    first = tl.extract(
        sets["spec"],
        sets["coil"],
        out=out,
        samples_per_prompt=12,
        min_clique=3,
        workers=1,
        cache=False,
    )
    assert first.report["summary"]["n_extracted"] == 2
    with pytest.raises(TrainleakError, match="seed differ"):
        tl.extract(
            sets["spec"],
            sets["coil"],
            out=out,
            samples_per_prompt=12,
            seed=1,
            workers=1,
            cache=False,
        )
    (sets["root"] / "mods" / "fd_noise.py").write_text(
        "import numpy as np\n"
        "def sample(n, seed, prompt=None):\n"
        "    rng = np.random.default_rng(seed)\n"
        "    return [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n)]\n"
    )
    with pytest.raises(TrainleakError, match="fingerprint, generator differ"):
        tl.extract(
            "python:fd_noise:sample",
            sets["coil"],
            out=out,
            samples_per_prompt=12,
            workers=1,
            cache=False,
        )
    fresh = tl.extract(
        "python:fd_noise:sample",
        sets["coil"],
        out=tmp_path / "y",
        samples_per_prompt=12,
        min_clique=3,
        workers=1,
        cache=False,
    )
    assert fresh.report["summary"]["n_extracted"] == 0


def test_dedup_of_arrays_needs_a_threshold():
    x = np.eye(3)
    with pytest.raises(TrainleakError, match="--threshold"):
        tl.dedup(x)
    assert tl.dedup(np.stack([x[0], x[0], x[1]]), threshold=0.99).summary["removed"] == 1
