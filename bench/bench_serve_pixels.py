"""Peak memory of ``trainleak serve`` answering one request of four 81 MP PNGs (issue 21, low).

Each PNG is one flat colour, 9000 x 9000, a few hundred KB. A real
``trainleak serve`` subprocess (pixel encoder, COIL index) gets all four in
one ``POST /v1/check``; the server's peak RSS growth is read from ``/proc``
(the peak is reset after a warm-up request). Run with ``--decode-mpix 100``
(the default: one such image decoded at a time) and ``--decode-mpix 400``
(all four at once), in one run.

    .venv/bin/python bench/bench_serve_pixels.py
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import serve_helpers as sh  # noqa: E402

SIDE = 9000


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), colour).save(buf, "PNG")
    return buf.getvalue()


def _kb(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in text.splitlines() if ln.startswith(key + ":")).split()[1])


def run(idx: Path, decode_mpix: float, uploads: list[bytes]) -> tuple[float, float]:
    """Return (peak growth MB, seconds) of one request of ``uploads``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TRAINLEAK_TOKEN": sh.TOKEN}
    argv = [sys.executable, "-m", "trainleak.cli", "serve", "--index", str(idx), "--port",
            str(port), "--workers", "1", "--decode-mpix", str(decode_mpix)]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        before = _kb(proc.pid, "VmRSS")
        files = [("file", (f"big{i}.png", d, "image/png")) for i, d in enumerate(uploads)]
        t0 = time.monotonic()
        r = httpx.post(f"{url}/v1/check", files=files, headers=sh.AUTH, timeout=600)
        took = time.monotonic() - t0
        assert r.status_code == 200, r.text
        return (_kb(proc.pid, "VmHWM") - before) / 1024, took
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    """Build the index, make the PNGs, measure both settings, print a table."""
    root = Path(tempfile.mkdtemp())
    gate = sh.build_gate(root)
    uploads = [_png((40 * i, 90, 200)) for i in range(4)]
    print(f"4 PNGs of {SIDE}x{SIDE} ({SIDE * SIDE / 1e6:.0f} MP), "
          f"{', '.join(f'{len(u) / 1e3:.0f} KB' for u in uploads)}")  # fmt: skip
    print("| --decode-mpix | peak growth MB | seconds |\n|---|---|---|")
    for mpix in (100, 400):
        grown, took = run(gate["idx"], mpix, uploads)
        print(f"| {mpix:g} | {grown:.0f} | {took:.1f} |", flush=True)


if __name__ == "__main__":
    main()
