"""Peak memory of the mirror-invariant self-search (what ``dedup`` runs), as a child process.

Random unit rows shaped like an encoder's (``--encoder pixel``: 1,024-d
cosine; ``tiled``: 3,072-d tiled L2), searched against themselves with the
encoder's mirror rule, ``exclude_self=True``, k = 5. Prints the growth of the
child's peak RSS (VmHWM) over the rows it was given, and the seconds.

    python bench/bench_mirror_memory.py --n 60000 --encoder pixel

To compare with an older checkout, run it with ``PYTHONPATH=OLD/src``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
from trainleak.encoders import get_encoder
from trainleak.similarity import Similarity

def vmhwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

n, name = int(sys.argv[1]), sys.argv[2]
sim = Similarity.of(get_encoder(name).info)
dim = get_encoder(name).info.dim
x = np.random.default_rng(0).random((n, dim), dtype=np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
base = vmhwm()
t = time.perf_counter()
s, i = sim.knn(x, x, 5, exclude_self=True)
print(json.dumps({"rows_mb": x.nbytes / 2**20, "grew_mb": vmhwm() - base,
                  "seconds": time.perf_counter() - t, "checksum": int(i[:, 0].sum())}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60_000)
    ap.add_argument("--encoder", default="pixel", choices=("pixel", "tiled"))
    args = ap.parse_args()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(args.n), args.encoder],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    print(json.dumps({"n": args.n, "encoder": args.encoder} | json.loads(out.stdout)))


if __name__ == "__main__":
    main()
