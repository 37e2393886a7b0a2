"""trainleak serve: every status code, verdicts equal to check, batching, shutdown, a real server.

Indexes are built from real COIL-20 images with the pixel encoder (fast); the
server is the real FastAPI app (TestClient) and, in the end-to-end tests, the
real uvicorn server on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import trainleak as tl
from trainleak.cli import main
from trainleak.config import CheckConfig, EmbedConfig, IndexConfig, ServeConfig
from trainleak.gate.index import Index
from trainleak.service import SERVE_PACKAGES
from trainleak.service.batcher import Batcher, QueueFull
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


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    """An index of COIL objects 1-10 (10 views each), and queries: training views
    (blocked), a brightened and a mirrored copy, views of unseen objects 11-14 (released)."""
    root = tmp_path_factory.mktemp("serve")
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


def _config(**kw) -> ServeConfig:
    return ServeConfig(check=CheckConfig(embed=RUNTIME), **kw)


TOKENS = Tokens(TOKEN, ADMIN)


def _app(gate, tokens=TOKENS, **kw):
    return create_app(gate["idx"], _config(**kw), tokens)


def _files(paths):
    return [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]


def test_verdicts_are_those_of_check(gate):
    expected = tl.check(
        gate["idx"], [str(p) for p in gate["queries"]], config=CheckConfig(embed=RUNTIME)
    )
    assert {v.verdict for v in expected} == {"block", "release"}  # the test can fail both ways
    with TestClient(_app(gate)) as client:
        together = client.post("/v1/check", files=_files(gate["queries"]), headers=AUTH)
        one_by_one = [
            client.post("/v1/check", files=_files([p]), headers=AUTH).json()["results"][0]
            for p in gate["queries"]
        ]
    assert together.status_code == 200
    results = together.json()["results"]
    assert [r["name"] for r in results] == [p.name for p in gate["queries"]]
    for got, alone, want in zip(results, one_by_one, expected, strict=True):
        assert {k: got[k] for k in KEYS} == {k: getattr(want, k) for k in KEYS}
        assert alone == got
    blocked = {r["name"] for r in results if r["verdict"] == "block"}
    assert {"train_obj2__10.png", "train_obj7__35.png", "bright_obj3__20.png"} <= blocked
    assert not any(n.startswith("new_") for n in blocked)  # unseen objects are released


def test_auth_401_403_and_public_health(gate):
    with TestClient(_app(gate)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        files = _files(gate["queries"][:1])
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": f"Basic {TOKEN}"}):  # fmt: skip
            r = client.post("/v1/check", files=files, headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/v1/index").status_code == 401
        assert client.get("/metrics").status_code == 401
        # the check token on the admin route: 403; no token: 401; admin token checks too
        assert client.post("/v1/index/add", files=files, headers=AUTH).status_code == 403
        assert client.post("/v1/index/add", files=files).status_code == 401
        assert client.post("/v1/check", files=files, headers=ADMIN_AUTH).status_code == 200
    with TestClient(_app(gate, tokens=Tokens(TOKEN))) as client:  # no admin token: route off
        r = client.post("/v1/index/add", files=files, headers=AUTH)
        assert r.status_code == 403 and "admin routes are off" in r.json()["detail"]


def test_no_auth_serves_loopback_only(gate, capsys):
    with TestClient(_app(gate, tokens=Tokens(None))) as client:
        assert client.post("/v1/check", files=_files(gate["queries"][:1])).status_code == 200
    argv = ["serve", "--index", str(gate["idx"]), "--no-auth", "--host", "0.0.0.0"]
    assert main(argv) == 2
    assert "--no-auth is for loopback addresses" in capsys.readouterr().err
    env_token = os.environ.pop("TRAINLEAK_TOKEN", None)
    try:
        assert main(["serve", "--index", str(gate["idx"])]) == 2
        assert "a token is required" in capsys.readouterr().err
    finally:
        if env_token is not None:
            os.environ["TRAINLEAK_TOKEN"] = env_token
    with pytest.raises(ValueError, match="at least 16"):
        Tokens("short")
    with pytest.raises(ValueError, match="must differ"):
        Tokens(TOKEN, TOKEN)


def test_413_body_streamed_without_content_length(gate):
    limit = 1 << 20

    def chunks():
        yield PART_HEAD
        for _ in range(3 * limit // 65536):
            yield b"x" * 65536

    with TestClient(_app(gate, max_upload_mb=1.0)) as client:
        headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=b"}
        r = client.post("/v1/check", content=chunks(), headers=headers)
        assert r.status_code == 413
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in r.request.headers
        one = gate["queries"][0].read_bytes()
        big = one * (limit // len(one) + 2)
        r = client.post("/v1/check", files={"file": ("big.png", big)}, headers=AUTH)
        assert r.status_code == 413  # declared by Content-Length: refused unread


def test_413_stops_reading_at_the_limit(gate):
    """At the ASGI level: the app stops pulling body messages once past the limit."""
    app = _app(gate, max_upload_mb=1.0)
    pulled, sent = [], []

    async def receive():
        pulled.append(1)
        if len(pulled) > 1000:  # the body never ends: a limit that is not enforced hangs here
            raise AssertionError("read past the limit")
        body = PART_HEAD + b"y" * (65536 - len(PART_HEAD)) if len(pulled) == 1 else b"y" * 65536
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(message):
        sent.append(message)

    headers = [
        (b"authorization", f"Bearer {TOKEN}".encode()),
        (b"content-type", b"multipart/form-data; boundary=b"),
        (b"transfer-encoding", b"chunked"),
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/check", "raw_path": b"/v1/check", "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 5), "server": ("t", 80),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert len(pulled) == (1 << 20) // 65536 + 1  # the message that crossed the limit is the last


def test_413_decompression_bomb_and_415_not_an_image(gate):
    with TestClient(_app(gate)) as client:
        ok = gate["queries"][0]
        r = client.post(
            "/v1/check",
            files=[("file", ("notes.png", b"not an image at all", "image/png")), *_files([ok])],
            headers=AUTH,
        )
        assert r.status_code == 415 and "notes.png" in r.json()["detail"]
        assert (
            client.post("/v1/check", files={"file": ("e.png", b"")}, headers=AUTH).status_code
            == 415
        )
    small = ServeConfig(
        check=CheckConfig(embed=EmbedConfig(workers=1, no_cache=True, max_pixels=1000))
    )
    with TestClient(create_app(gate["idx"], small, Tokens(TOKEN))) as client:
        r = client.post("/v1/check", files=_files([ok]), headers=AUTH)  # 32x32 > 1000 pixels
        assert r.status_code == 413 and "too many pixels" in r.json()["detail"]


def test_422_missing_file_field(gate):
    with TestClient(_app(gate)) as client:
        r = client.post("/v1/check", files={"image": ("a.png", b"x")}, headers=AUTH)
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "file"]
        assert client.post("/v1/check", headers=AUTH).status_code == 422


def test_429_rate_limit_per_token(gate):
    with TestClient(_app(gate, rate_limit=2.0)) as client:
        codes = [client.get("/v1/index", headers=AUTH).status_code for _ in range(4)]
        assert codes[:2] == [200, 200] and codes[2:] == [429, 429]
        r = client.get("/v1/index", headers=AUTH)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert client.get("/v1/index", headers=ADMIN_AUTH).status_code == 200  # its own bucket
        time.sleep(0.6)
        assert client.get("/v1/index", headers=AUTH).status_code == 200  # refilled


def _wait(condition, timeout=20.0):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_503_when_the_queue_is_full_and_batching(gate):
    app = _app(gate, queue_size=3, max_wait_ms=0.0)
    batcher = app.state.service.batcher
    files = _files(gate["queries"][:1])
    with TestClient(app) as client:
        answers = []

        def post():
            answers.append(client.post("/v1/check", files=files, headers=AUTH))

        threads = [threading.Thread(target=post) for _ in range(4)]
        with batcher.lock:  # the worker takes the first request and waits for the encoder
            threads[0].start()
            _wait(lambda: batcher.pending() == 1 and batcher.depth() == 0)
            for t in threads[1:]:
                t.start()
            _wait(lambda: batcher.depth() == 3)
            r = client.post("/v1/check", files=files, headers=AUTH)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
        for t in threads:
            t.join(30)
        assert [a.status_code for a in answers] == [200] * 4
        assert len({json.dumps(a.json()) for a in answers}) == 1
        text = client.get("/metrics", headers=AUTH).text
    # the first request ran alone, the three that waited together: two batches of 1 + 3
    assert "trainleak_batch_images_count 2.0" in text
    assert "trainleak_batch_images_sum 4.0" in text
    assert 'trainleak_http_requests_total{route="/v1/check",status="503"} 1.0' in text


def test_503_after_the_request_timeout(gate):
    app = _app(gate, request_timeout=0.3)
    with TestClient(app) as client, app.state.service.batcher.lock:
        r = client.post("/v1/check", files=_files(gate["queries"][:1]), headers=AUTH)
        assert r.status_code == 503 and "retry-after" in r.headers


def test_metrics_and_manifest(gate):
    with TestClient(_app(gate)) as client:
        client.post("/v1/check", files=_files(gate["queries"]), headers=AUTH)
        client.post("/v1/check", files=_files(gate["queries"][:1]))
        client.get("/no/such/path", headers=AUTH)
        manifest = client.get("/v1/index", headers=AUTH).json()
        r = client.get("/metrics", headers=AUTH)
    assert manifest == json.loads((gate["idx"] / "manifest.json").read_text())
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'trainleak_http_requests_total{route="/v1/check",status="200"} 1.0' in text
    assert 'trainleak_http_requests_total{route="/v1/check",status="401"} 1.0' in text
    assert 'trainleak_http_requests_total{route="other",status="404"} 1.0' in text
    assert 'trainleak_http_request_duration_seconds_bucket{le="30.0",route="/v1/check"} 2.0' in text
    blocked = sum(1 for p in gate["queries"] if not p.name.startswith("new_"))
    assert (
        f'trainleak_verdicts_total{{verdict="release"}} {len(gate["queries"]) - blocked}.0' in text
    )
    assert "trainleak_queue_requests 0.0" in text


def test_admin_add_then_blocked(gate, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(gate["idx"], idx)
    new = [p for p in gate["queries"] if p.name.startswith("new_")]
    with TestClient(create_app(idx, _config(), Tokens(TOKEN, ADMIN))) as client:
        before = client.post("/v1/check", files=_files(new), headers=AUTH).json()["results"]
        assert {r["verdict"] for r in before} == {"release"}
        r = client.post(
            "/v1/index/add", files=_files(new[:2]) + _files(new[:1]), headers=ADMIN_AUTH
        )
        assert r.status_code == 200, r.text
        assert (r.json()["added"], r.json()["skipped"]) == (2, 1)  # the repeat is skipped
        after = client.post("/v1/check", files=_files(new), headers=AUTH).json()["results"]
    assert [a["verdict"] for a in after] == ["block", "block", "release", "release"]
    assert [a["nearest"] for a in after[:2]] == [p.name for p in new[:2]]
    with Index.open(idx) as index:  # persisted, and check agrees
        assert len(index) == 102
        assert [v.verdict for v in index.check([str(p) for p in new])] == [
            a["verdict"] for a in after
        ]


def test_reloads_an_index_changed_by_another_writer(gate, tmp_path):
    idx, extra = tmp_path / "idx", tmp_path / "extra"
    shutil.copytree(gate["idx"], idx)
    extra.mkdir()
    new = [p for p in gate["queries"] if p.name.startswith("new_")][0]
    shutil.copy(new, extra / new.name)
    with TestClient(create_app(idx, _config(), TOKENS)) as client:
        first = client.post("/v1/check", files=_files([new]), headers=AUTH).json()["results"][0]
        with Index.open(idx, config=CheckConfig(embed=RUNTIME)) as writer:  # e.g. 'index add'
            assert writer.add(extra)["added"] == 1
        second = client.post("/v1/check", files=_files([new]), headers=AUTH).json()["results"][0]
        generation = client.get("/v1/index", headers=AUTH).json()["generation"]
    assert (first["verdict"], second["verdict"]) == ("release", "block")
    assert second["nearest"] == str(extra / new.name) and second["similarity"] == 1.0
    assert generation == json.loads((idx / "manifest.json").read_text())["generation"]


# -- the micro-batcher alone -----------------------------------------------------------


def test_batcher_batches_never_splits_and_drains_on_close():
    calls = []

    def run(items):
        calls.append(list(items))
        return [x * 10 for x in items]

    b = Batcher(run, max_batch=4, max_wait_s=0.0, queue_size=8, queue_bytes=1000)
    b.start()
    with b.lock:
        first = b.submit([1])
        _wait(lambda: b.depth() == 0)
        futures = [b.submit([2, 3]), b.submit([4]), b.submit([5, 6]), b.submit([7, 8, 9, 10, 11])]
    assert first.result(5) == [10]
    assert [f.result(5) for f in futures] == [[20, 30], [40], [50, 60], [70, 80, 90, 100, 110]]
    assert calls == [[1], [2, 3, 4], [5, 6], [7, 8, 9, 10, 11]]  # <= 4 unless one request is larger
    with b.lock:
        late = [b.submit([i]) for i in range(3)]
        closer = threading.Thread(target=b.close)
        closer.start()
        with pytest.raises(QueueFull, match="shutting down"):
            _wait(lambda: b._closing)
            b.submit([99])
    closer.join(10)
    assert [f.result(0) for f in late] == [[0], [10], [20]]  # queued before close: answered
    assert not b.alive()


def test_batcher_bounds_and_errors():
    b = Batcher(
        lambda xs: [1 / x for x in xs], max_batch=2, max_wait_s=0.0, queue_size=2, queue_bytes=10
    )
    with pytest.raises(QueueFull):  # bytes: the queue holds 6, 6 more would pass 10
        b.submit([1], 6)
        b.submit([1], 6)
    b.submit([1])
    with pytest.raises(QueueFull, match="too many requests"):
        b.submit([1])
    b.start()
    assert isinstance(b.submit([0, 1]).exception(5), ZeroDivisionError)
    b.close()


# -- the real server ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_graceful_shutdown_answers_requests_in_flight(gate):
    import uvicorn

    app = _app(gate)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    _wait(lambda: server.started)
    batcher = app.state.service.batcher
    answer = []

    def post():
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            answer.append(c.post("/v1/check", files=_files(gate["queries"][:1]), headers=AUTH))

    with batcher.lock:
        poster = threading.Thread(target=post)
        poster.start()
        _wait(lambda: batcher.pending() == 1)
        server.should_exit = True  # SIGTERM does this
        time.sleep(0.3)
        assert thread.is_alive()  # waiting for the request in flight
    poster.join(30)
    thread.join(30)
    assert not thread.is_alive()
    assert answer[0].status_code == 200 and answer[0].json()["results"][0]["verdict"] == "block"
    assert not batcher.alive()


def _start(idx: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "TRAINLEAK_TOKEN": TOKEN}
    argv = [sys.executable, "-m", "trainleak.cli", "serve", "--index", str(idx),
            "--port", str(port), "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    end = time.monotonic() + 90
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


@pytest.mark.slow
def test_real_server_kill_9_restart_same_answers(gate):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    answers = []
    proc = _start(gate["idx"], port)
    try:
        for _ in range(2):
            r = httpx.post(
                f"{url}/v1/check", files=_files(gate["queries"]), headers=AUTH, timeout=60
            )
            assert r.status_code == 200
            answers.append(r.json())
            assert (
                httpx.post(f"{url}/v1/check", files=_files(gate["queries"][:1])).status_code == 401
            )
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
            proc = _start(gate["idx"], port)
        proc.send_signal(signal.SIGTERM)  # graceful, then uvicorn exits by the signal it got
        assert proc.wait(60) == -signal.SIGTERM
        assert b"Application shutdown complete" in proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert answers[0] == answers[1]
    assert {r["verdict"] for r in answers[0]["results"]} == {"block", "release"}


def test_serve_extra_installs_every_package_the_service_imports():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in ("serve", "test"):
        names = {req.split(">")[0].split("=")[0].strip() for req in extras[extra]}
        assert set(SERVE_PACKAGES.values()) <= names, extra
    assert "httpx" in " ".join(extras["test"])  # FastAPI's TestClient
