"""``serve`` as a careless operator would run it (issue 21, the service's Low items).

Each case is made in the test on real files: a real COIL index (pixel
encoder), a real decisions log, real token files, a real busy port, a real
``trainleak serve`` subprocess whose peak memory is read from ``/proc``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time

import pytest
import serve_helpers as sh
from fastapi.testclient import TestClient
from serve_helpers import AUTH, RUNTIME, TOKEN, TOKENS

import trainleak as tl
from trainleak.cli import main
from trainleak.config import CheckConfig, EmbedConfig, IndexConfig
from trainleak.decide.decisions import DB_NAME, Decision, DecisionStore
from trainleak.gate.index import Index
from trainleak.service.serve import create_app
from trainleak.service.uploads import pixel_groups

from conftest import COIL


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    return sh.build_gate(tmp_path_factory.mktemp("hardening"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_index_route_shows_no_host_paths(tmp_path):
    train, hold = tmp_path / "train", tmp_path / "holdout"
    train.mkdir()
    hold.mkdir()
    for obj in range(1, 6):
        os.symlink(COIL / f"obj{obj}__0.png", train / f"obj{obj}.png")
        os.symlink(COIL / f"obj{obj + 5}__0.png", hold / f"obj{obj + 5}.png")
    cache = tmp_path / "cache"
    cfg = IndexConfig(embed=EmbedConfig("pixel", workers=1, cache=str(cache)))
    Index.build(tmp_path / "idx", train, hold, config=cfg).close()
    raw = (tmp_path / "idx" / "manifest.json").read_text()
    assert str(hold) in raw and str(cache) in raw  # the file has them; the route must not
    with TestClient(create_app(tmp_path / "idx", sh.config(), TOKENS)) as client:
        r = client.get("/v1/index", headers=AUTH)
    assert r.status_code == 200
    assert str(tmp_path) not in r.text and "/tmp" not in r.text
    shown = r.json()
    assert shown["holdout"]["n"] == 5 and shown["threshold"]["method"] == "holdout"
    assert shown["encoder"]["name"] == "pixel" and shown["counts"]["live"] == 5


def test_healthz_is_503_on_an_index_built_from_vectors(tmp_path, gate):
    emb = tl.embed(gate["root"] / "train", "pixel", workers=1, cache=False)
    # Vectors from an encoder this machine does not have: the index checks vectors only.
    outside = dataclasses.replace(emb, info=dataclasses.replace(emb.info, name="their-encoder"))
    Index.build(tmp_path / "idx", outside, config=IndexConfig(threshold=0.9)).close()
    with TestClient(create_app(tmp_path / "idx", sh.config(), TOKENS)) as client:
        health = client.get("/healthz")
        check = client.post("/v1/check", files=sh.files(gate["queries"][:1]), headers=AUTH)
    assert health.status_code == 503 and "their-encoder" in health.json()["problems"][0]
    assert check.status_code == 503 and "their-encoder" in check.json()["detail"]


def test_healthz_is_503_while_the_decisions_file_is_broken(tmp_path, gate):
    log = tmp_path / DB_NAME
    DecisionStore(log).add(Decision("s", "t", "pixel-v2-x", "leak", "ana", ""))
    config = sh.config()
    config = dataclasses.replace(config, check=CheckConfig(embed=RUNTIME, decisions=str(log)))
    with TestClient(create_app(gate["idx"], config, TOKENS)) as client:
        assert client.get("/healthz").status_code == 200
        log.write_bytes(b"this is no decisions log\n")
        for wal in tmp_path.glob(f"{DB_NAME}-*"):
            wal.unlink()
        time.sleep(1.2)  # decisions files are looked at once a second
        health = client.get("/healthz")
        check = client.post("/v1/check", files=sh.files(gate["queries"][:1]), headers=AUTH)
    assert health.status_code == 503 and "decisions" in health.json()["problems"][0]
    assert check.status_code == 503  # no verdict, rather than one without the reviewers


def test_a_busy_port_is_exit_2_with_a_message(gate, monkeypatch, capsys):
    monkeypatch.setenv("TRAINLEAK_TOKEN", TOKEN)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--index", str(gate["idx"]), "--port", str(port)]) == 2
    assert f"port {port} is in use, choose another with --port" in capsys.readouterr().err


def test_a_token_file_others_can_read_is_refused(tmp_path, gate, capsys):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    argv = ["serve", "--index", str(gate["idx"]), "--token-file", str(token)]
    assert main(argv) == 2
    assert f"chmod 600 {token}" in capsys.readouterr().err


def test_a_non_ascii_token_is_refused_at_start(tmp_path, gate, capsys):
    token = tmp_path / "token"
    token.write_text("clé-secrète-0123456789abcdef\n", encoding="utf-8")
    token.chmod(0o600)
    argv = ["serve", "--index", str(gate["idx"]), "--token-file", str(token)]
    assert main(argv) == 2
    assert "printable ASCII" in capsys.readouterr().err


_DECODE_PEAK = """
import io, resource, sys
from PIL import Image
from trainleak.decoding import decode_image
buf = io.BytesIO(); Image.new("RGB", (5000, 5000), (90, 20, 200)).save(buf, "PNG")
data = buf.getvalue()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixels = decode_image(data)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(len(data), pixels.shape[0] * pixels.shape[1], grown * 1024)
"""


@pytest.mark.slow
def test_a_small_file_of_many_pixels_costs_few_bytes_per_pixel():
    """A 25 MP PNG of 84 KB: its decode peaked at 13.3 bytes a pixel (334 MB), now under 8.

    The RGB array itself is 3 bytes a pixel and Pillow's image 4; the copies
    of an EXIF transpose and an RGB-to-RGB convert are gone.
    """
    out = subprocess.run(
        [sys.executable, "-c", _DECODE_PEAK], capture_output=True, text=True, check=True
    ).stdout
    size, pixels, grown = (int(x) for x in out.split())
    assert size < 100_000 and pixels == 25_000_000
    assert grown / pixels < 8, f"{grown / pixels:.1f} bytes a pixel"


def test_uploads_are_checked_a_pixel_budget_at_a_time(gate):
    """``--decode-mpix``: large uploads are decoded a group at a time; the verdicts are the same."""
    items = [(p.name, p.read_bytes()) for p in gate["queries"]]
    assert [len(g) for g in pixel_groups(items, 32 * 32)] == [1] * len(items)  # COIL: 32x32
    assert len(pixel_groups(items, 10**9)) == 1
    with TestClient(sh.app(gate, decode_mpix=0.001)) as small, TestClient(sh.app(gate)) as large:
        one_by_one = small.post("/v1/check", files=sh.files(gate["queries"]), headers=AUTH)
        together = large.post("/v1/check", files=sh.files(gate["queries"]), headers=AUTH)
    assert one_by_one.status_code == 200 and one_by_one.json() == together.json()
