"""A warm re-run (everything cached) loads no model and, without a GPU, no torch."""

from __future__ import annotations

import json
import subprocess
import sys

from trainleak.cli import main

from conftest import link_orl

CHILD = """
import json, sys
from trainleak.device import gpu_possible
gpu = gpu_possible()  # before anything could import torch
from trainleak.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "gpu": gpu, "torch": "torch" in sys.modules,
                  "dlib": "dlib" in sys.modules}))
"""


def test_warm_face_audit_loads_neither_the_face_model_nor_torch(tmp_path, capsys):
    link_orl(tmp_path / "train", range(1, 3), range(1, 3))
    link_orl(tmp_path / "synthetic", range(1, 3), range(3, 4), per_person=False)
    link_orl(tmp_path / "holdout", range(3, 4), range(1, 3))
    args = ["audit", "--cache", str(tmp_path / "cache"), "--workers", "1", "-q"]
    for name in ("train", "synthetic", "holdout"):
        args += [f"--{name}", str(tmp_path / name)]
    assert main([*args, "--out", str(tmp_path / "cold")]) == 0  # fills the cache
    capsys.readouterr()

    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args, "--out", str(tmp_path / "warm")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["code"] == 0
    assert not seen["dlib"], "the warm run loaded the face model"
    assert seen["torch"] == seen["gpu"], "torch was imported without a GPU to ask about"
    cold, warm = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("cold", "warm"))
    assert warm["matches"] == cold["matches"] and warm["summary"] == cold["summary"]
