"""Cold vs warm-cache audit on the ORL identity-leak scenario.

Reproduce: .venv/bin/python bench/bench_cache.py
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from trainleak.audits.leakage import audit  # noqa: E402
from trainleak.config import AuditConfig, EmbedConfig  # noqa: E402

from conftest import link_orl  # noqa: E402


def main() -> None:
    root = Path(tempfile.mkdtemp())
    link_orl(root / "train", range(1, 21), range(1, 6))
    link_orl(root / "synthetic" / "leaks", range(1, 11), range(6, 11), per_person=False)
    link_orl(root / "synthetic" / "non", range(21, 31), range(1, 11), per_person=False)
    link_orl(root / "holdout", range(31, 41), range(1, 11))
    embed_cfg = EmbedConfig(cache=str(root / "cache"), workers=os.cpu_count())
    cfg = AuditConfig(embed=embed_cfg, fpr=0.01)
    times = []
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        res = audit(root / "train", root / "synthetic", root / "holdout", config=cfg)
        times.append((label, time.perf_counter() - t0, res.report["summary"]["flagged"]))
    print("| run | seconds | flagged |")
    print("|---|---|---|")
    for label, dt, flagged in times:
        print(f"| {label} | {dt:.2f} | {flagged} |")
    print(f"\nwarm speed-up: {times[0][1] / times[1][1]:.1f}x")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS main process: {rss:.0f} MB")


if __name__ == "__main__":
    main()
