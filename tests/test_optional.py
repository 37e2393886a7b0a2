"""Missing optional dependencies: a fix-it message naming the extra, exit code 2.

The CLI runs in a subprocess whose ``sys.modules`` holds ``None`` for the
package, which is how Python itself makes an import fail; everything else is
the real installed package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from trainleak._optional import PACKAGES

from conftest import COIL

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "trainleak"

SHIM = (
    "import sys; sys.modules[sys.argv.pop(1)] = None; "
    "from trainleak.cli import main; raise SystemExit(main(sys.argv[1:]))"
)


def _cli_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SHIM, module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        (
            "skimage",
            ["invert", "--model", "python:trainleak.audits.inversion.nets:small_resnet",
             "--split", "stem", "--images", str(COIL)],
            "trainleak invert needs scikit-image: pip install 'trainleak[invert]'",
        ),
        (
            "onnxruntime",
            ["audit", "--train", str(COIL), "--synthetic", str(COIL),
             "--encoder", f"onnx:{ROOT / 'pyproject.toml'}"],
            "the onnx encoder needs onnxruntime: pip install 'trainleak[onnx]'",
        ),
        (
            "diffusers",
            ["extract", "--generated", "diffusers:missing-pipeline", "--train", str(COIL)],
            "a diffusers:DIR generator needs diffusers: pip install 'trainleak[diffusion]'",
        ),
    ],
)  # fmt: skip
def test_cli_names_the_extra_to_install(module, args, message, tmp_path):
    proc = _cli_without(module, *args, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"trainleak: error: {message}"
    assert "Traceback" not in proc.stderr


def _require_calls() -> list[tuple[Path, str, str]]:
    """Every ``require("module", extra="...")`` call under src/: (file, module, extra)."""
    calls = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
                module = node.args[0]
                extra = next(k.value for k in node.keywords if k.arg == "extra")
                assert isinstance(module, ast.Constant) and isinstance(extra, ast.Constant)
                calls.append((path, str(module.value), str(extra.value)))
    return calls


def test_every_extra_named_is_declared_and_installs_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    calls = _require_calls()
    assert {m.partition(".")[0] for _, m, _ in calls} == set(PACKAGES)  # each one is used
    for path, module, extra in calls:
        package = PACKAGES[module.partition(".")[0]]
        assert extra in extras, f"{path.name}: extra {extra!r} is not in pyproject.toml"
        names = [req.split(">")[0].split("=")[0].strip() for req in extras[extra]]
        assert package in names, f"{path.name}: extra {extra!r} does not install {package}"
    test_names = " ".join(extras["test"])
    assert all(package in test_names for package in PACKAGES.values())


def test_optional_packages_are_imported_only_through_require():
    """A plain ``import skimage`` would bring back the bare ``No module named`` error."""
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(SRC)}:{node.lineno} {n}"
                for n in names
                if n.partition(".")[0] in PACKAGES
            ]
    assert offenders == []
