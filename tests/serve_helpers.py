"""What the serve tests share: tokens, a real COIL-20 index with queries, request helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

from trainleak.config import CheckConfig, EmbedConfig, IndexConfig, ServeConfig
from trainleak.gate.index import Index
from trainleak.service.guard import Tokens
from trainleak.service.serve import create_app

from conftest import COIL

TOKEN = "check-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
KEYS = ("verdict", "nearest", "similarity", "threshold", "identity", "reason")
RUNTIME = EmbedConfig(workers=1, no_cache=True)
#: The start of a multipart body (boundary ``b``) whose file part never ends.
PART_HEAD = (
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


def build_gate(root: Path) -> dict:
    """An index of COIL objects 1-10 (10 views each), and queries: training views
    (blocked), a brightened and a mirrored copy, views of unseen objects 11-14 (released)."""
    train, queries = root / "train", root / "queries"
    train.mkdir()
    queries.mkdir()
    for obj in range(1, 11):
        for v in range(0, 50, 5):
            os.symlink(COIL / f"obj{obj}__{v}.png", train / f"obj{obj}__{v}.png")
    for obj, v in ((2, 10), (7, 35)):
        shutil.copy(COIL / f"obj{obj}__{v}.png", queries / f"train_obj{obj}__{v}.png")
    im = Image.open(COIL / "obj3__20.png").convert("L")
    im.point(lambda p: min(255, int(p * 1.1))).save(queries / "bright_obj3__20.png")
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(queries / "flip_obj3__20.png")
    for obj in range(11, 15):
        shutil.copy(COIL / f"obj{obj}__7.png", queries / f"new_obj{obj}__7.png")
    cfg = IndexConfig(embed=EmbedConfig("pixel", workers=1, no_cache=True))
    Index.build(root / "idx", train, config=cfg).close()
    return {"root": root, "idx": root / "idx", "queries": sorted(queries.iterdir())}


def config(**kw) -> ServeConfig:
    return ServeConfig(check=CheckConfig(embed=RUNTIME), **kw)


TOKENS = Tokens(TOKEN, ADMIN)


def app(gate, tokens=TOKENS, **kw):
    return create_app(gate["idx"], config(**kw), tokens)


def files(paths):
    return [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]


def wait(condition, timeout=20.0):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.01)


def start_serve(
    idx: Path, port: int, *extra: str, timeout: float = 90.0, token: str = TOKEN
) -> subprocess.Popen:
    """Start ``trainleak serve`` as a real process on 127.0.0.1; return it once /healthz says 200.

    Raises:
        AssertionError: it exited or did not answer within ``timeout`` (with its output).

    """
    env = {**os.environ, "TRAINLEAK_TOKEN": token}
    argv = [sys.executable, "-m", "trainleak.cli", "serve", "--index", str(idx),
            "--port", str(port), "--workers", "1", *extra]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    end = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise AssertionError(proc.communicate()[0].decode(errors="replace"))
        time.sleep(0.1)
