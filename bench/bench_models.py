"""CPU throughput of the named models' architectures beside dlib's face encoder (issue 14 item 4).

Real weights are not available here, so each named model is timed as a
stand-in of its published architecture and size with random weights
(bench/archs.py), exported to ONNX and run by onnxruntime, the runtime the
named encoders use for ``.onnx`` files. Throughput does not depend on the
weights' values.

Two numbers per model:
  * model alone: images/s of onnxruntime on preprocessed batches;
  * end to end: images/s of the trainleak encoder on real ORL 92x112 photos
    already decoded (face models: dlib detection + 68 landmarks + alignment +
    model; copy models: resize + model), in-process.
and dlib's face encoder (``face``, the default, and ``face -O flip=false``)
end to end on the same photos.

Run (2 cores, shared machine; the load average is printed with the numbers):
    .venv/bin/python bench/bench_models.py
    .venv/bin/python bench/bench_models.py --models arcface sface --seconds 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).parent))
from archs import ARCHS, build, params  # noqa: E402

from trainleak.encoders import get_encoder  # noqa: E402
from trainleak.encoders.cards import CARDS  # noqa: E402
from trainleak.images import load_image  # noqa: E402

ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces_92x112"


def export(name: str, folder: Path) -> Path:
    """Export the stand-in for ``name`` to ONNX under the card's file name (``.onnx``)."""
    net, side = build(name), ARCHS[name][1]
    path = folder / Path(CARDS[name].file_name).with_suffix("").with_suffix(".onnx").name
    with torch.no_grad():
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, side, side),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            opset_version=17,
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )
    return path


def rate(fn, n_items: int, seconds: float) -> tuple[float, float]:
    """Run ``fn`` (one warm-up) until ``seconds`` pass; return best and median items/s."""
    fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n_items / min(times), n_items / statistics.median(times)


def photos(n: int) -> list[np.ndarray]:
    files = sorted(ORL.glob("s*/*.pgm"), key=lambda p: (int(p.parent.name[1:]), int(p.stem)))
    return [load_image(p) for p in files[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--batch", type=int, default=16, help="images per model call")
    ap.add_argument("--seconds", type=float, default=10.0, help="timing per measurement")
    ap.add_argument("--photos", type=int, default=32, help="ORL photos for end to end")
    args = ap.parse_args()
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    print(
        f"# {platform.processor() or platform.machine()}, {threads} cores available, "
        f"onnxruntime {ort.__version__}, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} (shared machine)"
    )
    images = photos(args.photos)
    head = ("model", "stand-in", "params", "alone img/s", "end-to-end img/s")
    print(f"{head[0]:12} {head[1]:44} {head[2]:>8} {head[3]:>18} {head[4]:>18}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = export(name, Path(tmp))
            side = ARCHS[name][1]
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            x = np.random.default_rng(0).normal(size=(args.batch, 3, side, side)).astype(np.float32)
            alone = rate(lambda s=sess, x=x: s.run(None, {"x": x}), args.batch, args.seconds)
            enc = get_encoder(name, weights=str(path), batch_size=args.batch)
            e2e = rate(lambda e=enc: e.encode_batch(images), len(images), args.seconds)
            print(
                f"{name:12} {ARCHS[name][2]:44} {params(build(name)) / 1e6:7.1f}M "
                f"{alone[0]:8.1f} (med {alone[1]:5.1f}) {e2e[0]:8.1f} (med {e2e[1]:5.1f})",
                flush=True,
            )
            path.unlink()
    faces = (
        ("face", "dlib ResNet, 150x150 chip + mirror (default)", {}),
        ("face flip=0", "dlib ResNet, 150x150 chip, no mirror", {"flip": False}),
    )
    for label, what, opts in faces:
        enc = get_encoder("face", **opts)
        e2e = rate(lambda e=enc: e.encode_batch(images), len(images), args.seconds)
        print(
            f"{label:12} {what:44} {'-':>8} {'-':>18} {e2e[0]:8.1f} (med {e2e[1]:5.1f})", flush=True
        )
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
