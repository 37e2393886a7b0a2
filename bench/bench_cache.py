"""Cold vs warm-cache audit on the ORL identity-leak scenario, timed as whole CLI processes.

Each run is a separate ``trainleak audit`` process, timed from start to exit,
so interpreter start-up, imports and model loading count: cold with an empty
cache folder, then warm runs with the same folder. Prints a Markdown table and
the cold / warm ratio (warm = median of the warm runs).

Reproduce: .venv/bin/python bench/bench_cache.py [--warm-runs 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import link_orl  # noqa: E402


def scenario(root: Path) -> dict[str, Path]:
    """The identity-leak scenario of tests/conftest.py: 350 ORL photos."""
    link_orl(root / "train", range(1, 21), range(1, 6))
    link_orl(root / "synthetic" / "leaks", range(1, 11), range(6, 11), per_person=False)
    link_orl(root / "synthetic" / "non", range(21, 31), range(1, 11), per_person=False)
    link_orl(root / "holdout", range(31, 41), range(1, 11))
    return {name: root / name for name in ("train", "synthetic", "holdout")}


def cli() -> list[str]:
    """The ``trainleak`` console script beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("trainleak")
    return [str(script)] if script.exists() else [sys.executable, "-m", "trainleak.cli"]


def timed_run(args: list[str], out: Path) -> tuple[float, int]:
    """Run one audit process; return (wall seconds, flagged)."""
    t0 = time.perf_counter()
    subprocess.run([*cli(), *args, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text())
    return seconds, int(report["summary"]["flagged"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        sets = scenario(root)
        args = ["audit", "--fpr", "0.01", "--cache", str(root / "cache"), "-q"]
        args += ["--workers", str(opts.workers)]
        for name, path in sets.items():
            args += [f"--{name}", str(path)]
        runs = [("cold", *timed_run(args, root / "out-cold"))]
        for i in range(opts.warm_runs):
            runs.append((f"warm {i + 1}", *timed_run(args, root / f"out-warm{i}")))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"`{' '.join(['trainleak', *args[:1]])} ...` as separate processes, "
          f"{opts.workers} workers, 350 images\n")  # fmt: skip
    print("| run | seconds | flagged |")
    print("|---|---|---|")
    for label, seconds, flagged in runs:
        print(f"| {label} | {seconds:.2f} | {flagged} |")
    warm = statistics.median(s for label, s, _ in runs[1:])
    print(f"\ncold / warm (median of {opts.warm_runs}): {runs[0][1] / warm:.1f}x")


if __name__ == "__main__":
    main()
