"""GPU benchmarks (issue 14 item 4), for one H100/H200; without a CUDA device it says so and exits.

Measures, with the device, driver and versions printed beside the numbers:
  1. model alone: an IResNet-50 stand-in (ArcFace w600k_r50's architecture,
     random weights; bench/archs.py) as TorchScript, fp16, on device-resident
     batches: images/s;
  2. end to end: the same model as ``--encoder arcface -O aligned=true -O
     device=cuda -O half=true`` embedding a folder of 112x112 JPEG files
     (read, hashed, decoded in a thread ahead of the model, embedded):
     images/s and its ratio to (1) (target >= 0.8);
  3. exact search at d = 512: pairs/s of a blockwise fp16 matmul + top-k
     (target >= 3.9e11 on an H100), and of trainleak.knn (float32) on the GPU;
  4. a 1M x 1M face-vector audit end to end (random unit 512-d vectors,
     audit_embeddings with a fixed threshold, search on the GPU): seconds
     (target < 300 on one H100).

Run on the GPU machine (about 5 minutes):
    python bench/bench_gpu.py
    python bench/bench_gpu.py --only search --n-search 1000000
Check the code paths on a CPU (tiny sizes; the numbers mean nothing):
    python bench/bench_gpu.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from archs import IResNet  # noqa: E402

import trainleak as tl  # noqa: E402
from trainleak.audits._leakage import audit_embeddings  # noqa: E402
from trainleak.config import AuditConfig  # noqa: E402
from trainleak.embedding import EmbeddingSet  # noqa: E402
from trainleak.encoders import EncoderInfo, get_encoder  # noqa: E402

ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces_92x112"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def environment(device: str) -> str:
    import onnxruntime as ort

    parts = [
        f"torch {torch.__version__} (CUDA {torch.version.cuda})",
        f"onnxruntime {ort.__version__} {ort.get_available_providers()}",
        f"trainleak {tl.__version__}",
    ]
    if device.startswith("cuda"):
        parts.insert(0, torch.cuda.get_device_name(device))
        smi = shutil.which("nvidia-smi")
        if smi:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            parts.insert(1, f"driver {out.splitlines()[0] if out else '?'}")
    return ", ".join(parts)


def save_model(folder: Path) -> Path:
    torch.manual_seed(0)
    net = IResNet((3, 4, 14, 3)).eval()
    path = folder / "iresnet50.torchscript.pt"
    torch.jit.trace(net, torch.zeros(2, 3, 112, 112)).save(str(path))
    return path


def model_alone(path: Path, device: str, half: bool, batch: int, seconds: float) -> float:
    net = torch.jit.load(str(path), map_location=device).eval()
    dtype = torch.float16 if half else torch.float32
    net = net.to(dtype)
    x = torch.randn(batch, 3, 112, 112, device=device, dtype=dtype)
    with torch.inference_mode():
        for _ in range(3):
            net(x)
        sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            net(x)
            n += batch
        sync(device)
    return n / (time.perf_counter() - start)


def write_jpegs(folder: Path, n: int) -> None:
    from PIL import Image

    faces = [
        np.asarray(Image.open(p).convert("RGB").resize((112, 112)))
        for p in sorted(ORL.glob("s*/*.pgm"))
    ]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):  # distinct bytes: the cache key is the content
        noisy = faces[i % len(faces)].astype(np.int16) + rng.integers(-3, 4, (112, 112, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        (folder / f"{i:07d}.jpg").write_bytes(buf.getvalue())


def end_to_end(path: Path, folder: Path, device: str, half: bool, batch: int) -> float:
    opts = {
        "weights": str(path),
        "aligned": True,
        "device": device,
        "half": half,
        "batch_size": batch,
    }
    n = sum(1 for _ in folder.iterdir())
    start = time.perf_counter()
    emb = tl.embed(
        folder, "arcface", encoder_options=opts, workers=1, batch_size=batch, cache=False
    )
    took = time.perf_counter() - start
    assert len(emb) == n, (len(emb), n)
    return n / took


def fp16_search(n_q: int, n_db: int, device: str, k: int = 5) -> float:
    """Blockwise fp16 ``q @ db.T`` + running top-k; returns pairs/s."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    db = torch.nn.functional.normalize(torch.randn(n_db, 512, device=device, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(n_q, 512, device=device, generator=g), dim=1)
    db, q = db.to(dtype), q.to(dtype)
    qb, dbb = min(n_q, 16384), min(n_db, 131072)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for q0 in range(0, n_q, qb):
            qs = q[q0 : q0 + qb]
            best = torch.full((len(qs), k), -torch.inf, device=device, dtype=dtype)
            for d0 in range(0, n_db, dbb):
                top = torch.topk(qs @ db[d0 : d0 + dbb].T, k, dim=1).values
                best = torch.topk(torch.cat([best, top], 1), k, dim=1).values
    sync(device)
    return n_q * n_db / (time.perf_counter() - start)


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 512), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def knn_search(n_q: int, n_db: int, device: str) -> float:
    q, db = unit(n_q, 1), unit(n_db, 2)
    start = time.perf_counter()
    tl.knn(q, db, 5, backend="torch", device=device, block_size=65536)
    return n_q * n_db / (time.perf_counter() - start)


def audit_1m(n: int, device: str) -> tuple[float, float]:
    info = EncoderInfo("bench-vectors", 1, 512, "cosine", 0.5, "random unit vectors")

    def vectors(seed: int, prefix: str) -> EmbeddingSet:
        ids = [f"{prefix}/{i:07d}" for i in range(n)]
        return EmbeddingSet(ids, [None] * n, unit(n, seed), [], n, info, prefix)

    train, synth = vectors(3, "train"), vectors(4, "synthetic")
    config = AuditConfig(threshold=0.5, search_device=device, search_backend="torch")
    start = time.perf_counter()
    result = audit_embeddings(train, synth, config=config)
    took = time.perf_counter() - start
    return took, float(result.report["summary"]["flagged"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--only",
        choices=["model", "search", "audit"],
        nargs="+",
        default=["model", "search", "audit"],
    )
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--files", type=int, default=20000, help="JPEG files for end to end")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--n-search", type=int, default=1_000_000, help="queries = database rows")
    ap.add_argument("--n-audit", type=int, default=1_000_000, help="train = synthetic vectors")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    args = ap.parse_args()
    half = True
    if args.cpu_smoke:
        args.device, half = "cpu", False
        args.batch, args.files, args.seconds = 8, 24, 0.5
        args.n_search, args.n_audit = 2048, 3000
    elif not torch.cuda.is_available():
        print(
            f"no CUDA device: torch {torch.__version__} (CUDA build: "
            f"{torch.version.cuda or 'none'}) sees no GPU here, so nothing was measured. "
            "Run this on a machine with an NVIDIA GPU; --cpu-smoke checks the code paths."
        )
        return 2
    print(f"# {environment(args.device)}")
    with tempfile.TemporaryDirectory() as tmp:
        if "model" in args.only:
            path = save_model(Path(tmp))
            get_encoder(
                "arcface", weights=str(path), aligned=True, device=args.device, half=half
            )  # fails here, before the timing, if the device is unusable
            alone = model_alone(path, args.device, half, args.batch, args.seconds)
            write_jpegs(Path(tmp) / "jpegs", args.files)
            e2e = end_to_end(path, Path(tmp) / "jpegs", args.device, half, args.batch)
            print(
                f"model alone (IResNet-50, 112x112, {'fp16' if half else 'fp32'}, batch "
                f"{args.batch}): {alone:,.0f} img/s"
            )
            print(
                f"end to end from {args.files} JPEG files (arcface aligned, in-process, decode "
                f"thread): {e2e:,.0f} img/s = {e2e / alone:.0%} of the model alone "
                "(target >= 80%)"
            )
        if "search" in args.only:
            n = args.n_search
            raw = fp16_search(n, n, args.device)
            lib = knn_search(min(n, 200_000), n, args.device)
            print(
                f"exact search d=512: fp16 matmul+topk {raw:.2e} pairs/s ({n:,} x {n:,}; "
                f"target >= 3.9e11 on an H100); trainleak.knn float32 {lib:.2e} pairs/s"
            )
        if "audit" in args.only:
            took, flagged = audit_1m(args.n_audit, args.device)
            print(
                f"{args.n_audit:,} x {args.n_audit:,} face-vector audit end to end: {took:.1f} s "
                f"(target < 300 s on one H100); flagged {flagged:.0f} at cosine 0.5"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
