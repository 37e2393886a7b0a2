"""Load test of `trainleak serve` on 127.0.0.1: throughput, latency, 5xx, memory; batching on/off.

    .venv/bin/python bench/bench_serve.py                          # pixel, face, onnx on/off
    .venv/bin/python bench/bench_serve.py --only pixel --requests 5000
    .venv/bin/python bench/bench_serve.py --only onnx --onnx-requests 2000

Each case builds an index from real images (../shared/data), starts the real
server (`python -m trainleak.cli serve`, a subprocess, loopback only) and
drives it with a bounded asyncio client: `--clients` keep-alive connections,
each sending one image per request (multipart `file`) and waiting for the
answer, until the request count is reached. The client writes HTTP/1.1 on
asyncio streams (requests prebuilt as bytes): httpx cost 5 ms of client CPU
per request here, 2.5x the server's, and on 2 cores the load generator would
have been what was measured; this one costs about 0.1 ms. Before the count starts, `--warmup`
requests are sent and not counted. Reported: throughput, p50/p99 latency
(client side), status codes, CPU time per request of the server (with its
embedding processes) and of the client, and the server's resident memory
(VmRSS of the server and its embedding processes) after the first and after
the last thousand requests (100 for runs shorter than 2,000 requests). The
encoder runs in the server process (--workers 1), except for the face case
(--workers 2: two embedding processes, the face encoder being the slow part).

Cases:

* pixel: COIL-20 objects 1-10 (720 images) indexed with the pixel encoder;
  queries are all 1,440 COIL-20 images, round robin.
* face: ORL s1-s20 photos 1-5 indexed with the face encoder (dlib),
  calibrated at `--fpr 0.01` on s31-s40; queries are photos 6-10 of s1-s30
  (new photos of members, and of 10 people not in the index).
* onnx: a small conv net (two strided convs + a 16384x512 fully connected
  layer + 512x128, about 8.4M weights), exported with torch.onnx.export,
  as `--encoder onnx:FILE size=64`, calibrated at `--fpr 0.01` on a holdout
  of objects 11-20 (even views); queries as for pixel. Run with
  `--max-batch 32` (micro-batching on) and `--max-batch 1` (off), alternating
  (`--onnx-rounds` pairs); the embedding batch size is 32 in both.

The load generator runs on the same machine, so it competes with the server
for the cores; the numbers are for the machine as a whole.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
COIL, ORL = DATA / "coil20", DATA / "orl_faces"
TOKEN = "bench-token-0123456789abcdef"


def build_index(
    out: Path, train: Path, encoder: str, options: dict | None = None, holdout: Path | None = None
) -> Path:
    from trainleak.config import EmbedConfig, IndexConfig
    from trainleak.gate.index import Index

    embed = EmbedConfig(encoder, encoder_options=options or {}, workers=2, no_cache=True)
    t0 = time.perf_counter()
    Index.build(out, train, holdout, config=IndexConfig(embed=embed, fpr=0.01)).close()
    print(f"  built {out.name} ({encoder}) in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def coil_case(work: Path) -> tuple[Path, list[Path]]:
    train = work / "coil_train"
    train.mkdir()
    for obj in range(1, 11):
        for v in range(72):
            os.symlink(COIL / f"obj{obj}__{v}.png", train / f"obj{obj}__{v}.png")
    return train, sorted(COIL.glob("*.png"))


def coil_holdout(work: Path) -> Path:
    holdout = work / "coil_holdout"
    holdout.mkdir()
    for obj in range(11, 21):
        for v in range(0, 72, 2):
            os.symlink(COIL / f"obj{obj}__{v}.png", holdout / f"obj{obj}__{v}.png")
    return holdout


def face_case(work: Path) -> tuple[Path, Path, list[Path]]:
    train, holdout = work / "orl_train", work / "orl_holdout"
    for s in range(1, 21):
        (train / f"s{s}").mkdir(parents=True)
        for p in range(1, 6):
            os.symlink(ORL / f"s{s}" / f"{p}.pgm", train / f"s{s}" / f"{p}.pgm")
    for s in range(31, 41):
        (holdout / f"s{s}").mkdir(parents=True)
        for p in range(1, 11):
            os.symlink(ORL / f"s{s}" / f"{p}.pgm", holdout / f"s{s}" / f"{p}.pgm")
    queries = [ORL / f"s{s}" / f"{p}.pgm" for s in range(1, 31) for p in range(6, 11)]
    return train, holdout, queries


def export_onnx(path: Path) -> Path:
    """A small conv net whose fully connected layer dominates a call, as a backbone's weights do."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 64, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * 16 * 16, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 128),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            torch.zeros(1, 3, 64, 64),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            dynamo=False,
        )
    params = sum(p.numel() for p in net.parameters())
    print(f"  exported {path.name}: {params / 1e6:.1f}M weights", flush=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(pid: int) -> list[int]:
    """The process and its descendants (the embedding workers of --workers 2)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += tree(int(child))
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of the server and its worker processes, in MB."""
    total = 0.0
    for p in tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def start_server(idx: Path, port: int, args: list[str]) -> subprocess.Popen:
    argv = [sys.executable, "-m", "trainleak.cli", "serve", "--index", str(idx),
            "--port", str(port), "--workers", "1", *args]  # fmt: skip
    env = {**os.environ, "TRAINLEAK_TOKEN": TOKEN}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 300
    while time.monotonic() < end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.communicate()[1].decode()[-2000:]}")


CRLF = b"\r\n"
BOUNDARY = b"trainleak-bench-boundary"


def request_bytes(port: int, name: str, data: bytes) -> bytes:
    """One ``POST /v1/check`` with a multipart ``file``, as bytes on the wire."""
    body = b"".join([
        b"--", BOUNDARY, CRLF,
        b'Content-Disposition: form-data; name="file"; filename="', name.encode(), b'"', CRLF,
        b"Content-Type: application/octet-stream", CRLF, CRLF, data, CRLF,
        b"--", BOUNDARY, b"--", CRLF,
    ])  # fmt: skip
    head = (
        f"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """A keep-alive HTTP/1.1 connection: send a request, read one response (Content-Length)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        writer.write(raw)
        head = (await reader.readuntil(CRLF + CRLF)).split(CRLF)
        headers = dict(line.lower().split(b": ", 1) for line in head[1:] if line)
        body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection") == b"close":
            writer.close()
            self.streams = None
        return int(head[0].split()[1]), body

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


def cpu_seconds(pid: int) -> float:
    """CPU time of the server and its worker processes, in seconds."""
    total = 0
    for p in tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def drive(
    port: int, payloads: list[tuple[str, bytes]], n: int, clients: int, pid: int, warmup: int
) -> dict:
    """Send ``n`` requests from ``clients`` connections, one request at a time each."""
    every = 1000 if n >= 2000 else 100
    raws = [request_bytes(port, name, data) for name, data in payloads]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    verdicts: Counter[str] = Counter()
    rss: dict[int, float] = {}
    counter = itertools.count()

    async def client(limit: int, record: bool) -> None:
        conn = Connection(port)
        try:
            while (i := next(counter)) < limit:
                t0 = time.perf_counter()
                status, body = await conn.send(raws[i % len(raws)])
                if not record:
                    continue
                latencies.append(time.perf_counter() - t0)
                statuses[status] += 1
                if status == 200:
                    for r in json.loads(body)["results"]:
                        verdicts[r["verdict"]] += 1
                if len(latencies) in (every, n):
                    rss[len(latencies)] = rss_mb(pid)
        finally:
            conn.close()

    await asyncio.gather(*[client(warmup, False) for _ in range(clients)])
    counter = itertools.count()
    cpu0, own0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*[client(n, True) for _ in range(clients)])
    wall = time.perf_counter() - t0
    server_cpu, client_cpu = cpu_seconds(pid) - cpu0, time.process_time() - own0
    lat = np.asarray(latencies) * 1000
    first, last = rss[every], rss[n]
    return {
        "requests": n,
        "clients": clients,
        "seconds": round(wall, 2),
        "throughput_rps": round(n / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "statuses": dict(sorted(statuses.items())),
        "errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "verdicts": dict(verdicts),
        "rss_mb": {f"after {every}": round(first, 1), f"after {n}": round(last, 1)},
        "rss_growth": round((last - first) / first, 4),
        "server_cpu_ms_per_request": round(server_cpu / n * 1000, 2),
        "client_cpu_ms_per_request": round(client_cpu / n * 1000, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 1),
    }


def run_case(name: str, idx: Path, queries: list[Path], n: int, args: argparse.Namespace,
             server_args: list[str]) -> dict:  # fmt: skip
    payloads = [(p.name, p.read_bytes()) for p in queries]
    port = free_port()
    proc = start_server(idx, port, server_args)
    try:
        res = asyncio.run(drive(port, payloads, n, args.clients, proc.pid, args.warmup))
        metrics = httpx.get(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        ).text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    count = sum_ = 0.0
    for line in metrics.splitlines():
        if line.startswith("trainleak_batch_images_count"):
            count = float(line.split()[-1])
        elif line.startswith("trainleak_batch_images_sum"):
            sum_ = float(line.split()[-1])
    res["mean_batch_images"] = round(sum_ / count, 2) if count else None
    res["case"] = name
    res["server_args"] = server_args
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["pixel", "face", "onnx"], action="append")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=5000, help="pixel encoder requests")
    p.add_argument("--face-requests", type=int, default=500)
    p.add_argument("--onnx-requests", type=int, default=2000, help="per batching setting")
    p.add_argument("--onnx-rounds", type=int, default=2, help="on/off pairs, alternating")
    p.add_argument("--warmup", type=int, default=64)
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    only = set(args.only or ["pixel", "face", "onnx"])
    results = []
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        if only & {"pixel", "onnx"}:
            coil_train, coil_queries = coil_case(work)
        if "pixel" in only:
            idx = build_index(work / "idx_pixel", coil_train, "pixel")
            results.append(run_case("pixel", idx, coil_queries, args.requests, args, []))
        if "face" in only:
            train, holdout, queries = face_case(work)
            idx = build_index(work / "idx_face", train, "face", holdout=holdout)
            # The face encoder is the slow part: two embedding processes, one per core.
            face_args = ["--workers", "2"]
            results.append(run_case("face", idx, queries, args.face_requests, args, face_args))
        if "onnx" in only:
            model = export_onnx(work / "embed.onnx")
            holdout = coil_holdout(work)
            idx = build_index(work / "idx_onnx", coil_train, f"onnx:{model}", {"size": 64}, holdout)
            # On and off alternate, so that a change in the machine's load hits both.
            for _ in range(args.onnx_rounds):
                for batch in ("32", "1"):
                    server_args = ["--max-batch", batch, "--batch-size", "32"]
                    label = f"onnx max-batch {batch}"
                    results.append(
                        run_case(label, idx, coil_queries, args.onnx_requests, args, server_args)
                    )
                on, off = results[-2]["throughput_rps"], results[-1]["throughput_rps"]
                print(f"micro-batching speed-up: {on / off:.2f}x ({on} vs {off} requests/s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
