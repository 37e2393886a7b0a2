"""trainleak serve through FastAPI's TestClient: every status code, verdicts equal to check.

The index is built from real COIL-20 images with the pixel encoder (fast);
the app is the real one (:func:`trainleak.service.serve.create_app`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import serve_helpers as sh
from fastapi.testclient import TestClient
from serve_helpers import ADMIN_AUTH, AUTH, KEYS, PART_HEAD, RUNTIME, TOKEN, TOKENS

import trainleak as tl
from trainleak.cli import main
from trainleak.config import CheckConfig, EmbedConfig, ServeConfig
from trainleak.gate.index import Index
from trainleak.service import SERVE_PACKAGES
from trainleak.service.guard import Tokens
from trainleak.service.public import without_paths
from trainleak.service.serve import create_app


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    return sh.build_gate(tmp_path_factory.mktemp("serve"))


def test_verdicts_are_those_of_check(gate):
    expected = tl.check(
        gate["idx"], [str(p) for p in gate["queries"]], config=CheckConfig(embed=RUNTIME)
    )
    assert {v.verdict for v in expected} == {"block", "release"}  # the test can fail both ways
    with TestClient(sh.app(gate)) as client:
        together = client.post("/v1/check", files=sh.files(gate["queries"]), headers=AUTH)
        one_by_one = [
            client.post("/v1/check", files=sh.files([p]), headers=AUTH).json()["results"][0]
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
    with TestClient(sh.app(gate)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        files = sh.files(gate["queries"][:1])
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
    with TestClient(sh.app(gate, tokens=Tokens(TOKEN))) as client:  # no admin token: route off
        r = client.post("/v1/index/add", files=files, headers=AUTH)
        assert r.status_code == 403 and "admin routes are off" in r.json()["detail"]


def test_no_auth_serves_loopback_only(gate, capsys):
    with TestClient(sh.app(gate, tokens=Tokens(None))) as client:
        assert client.post("/v1/check", files=sh.files(gate["queries"][:1])).status_code == 200
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

    with TestClient(sh.app(gate, max_upload_mb=1.0)) as client:
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
    app = sh.app(gate, max_upload_mb=1.0)
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
    with TestClient(sh.app(gate)) as client:
        ok = gate["queries"][0]
        r = client.post(
            "/v1/check",
            files=[("file", ("notes.png", b"not an image at all", "image/png")), *sh.files([ok])],
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
        r = client.post("/v1/check", files=sh.files([ok]), headers=AUTH)  # 32x32 > 1000 pixels
        assert r.status_code == 413 and "too many pixels" in r.json()["detail"]


def test_422_missing_file_field(gate):
    with TestClient(sh.app(gate)) as client:
        r = client.post("/v1/check", files={"image": ("a.png", b"x")}, headers=AUTH)
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "file"]
        assert client.post("/v1/check", headers=AUTH).status_code == 422


def test_429_rate_limit_per_token(gate):
    with TestClient(sh.app(gate, rate_limit=2.0)) as client:
        codes = [client.get("/v1/index", headers=AUTH).status_code for _ in range(4)]
        assert codes[:2] == [200, 200] and codes[2:] == [429, 429]
        r = client.get("/v1/index", headers=AUTH)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert client.get("/v1/index", headers=ADMIN_AUTH).status_code == 200  # its own bucket
        time.sleep(0.6)
        assert client.get("/v1/index", headers=AUTH).status_code == 200  # refilled


def test_503_when_the_queue_is_full_and_batching(gate):
    app = sh.app(gate, queue_size=3, max_wait_ms=0.0)
    batcher = app.state.service.batcher
    files = sh.files(gate["queries"][:1])
    with TestClient(app) as client:
        answers = []

        def post():
            answers.append(client.post("/v1/check", files=files, headers=AUTH))

        threads = [threading.Thread(target=post) for _ in range(4)]
        with batcher.lock:  # the worker takes the first request and waits for the encoder
            threads[0].start()
            sh.wait(lambda: batcher.pending() == 1 and batcher.depth() == 0)
            for t in threads[1:]:
                t.start()
            sh.wait(lambda: batcher.depth() == 3)
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
    app = sh.app(gate, request_timeout=0.3)
    with TestClient(app) as client, app.state.service.batcher.lock:
        r = client.post("/v1/check", files=sh.files(gate["queries"][:1]), headers=AUTH)
        assert r.status_code == 503 and "retry-after" in r.headers


def test_metrics_and_manifest(gate):
    with TestClient(sh.app(gate)) as client:
        client.post("/v1/check", files=sh.files(gate["queries"]), headers=AUTH)
        client.post("/v1/check", files=sh.files(gate["queries"][:1]))
        client.get("/no/such/path", headers=AUTH)
        manifest = client.get("/v1/index", headers=AUTH).json()
        r = client.get("/metrics", headers=AUTH)
    assert manifest == without_paths(Index.open(gate["idx"]).public_manifest())
    assert manifest["threshold"]["value"] > 0 and manifest["counts"]["live"] == 100
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
    with TestClient(create_app(idx, sh.config(), TOKENS)) as client:
        before = client.post("/v1/check", files=sh.files(new), headers=AUTH).json()["results"]
        assert {r["verdict"] for r in before} == {"release"}
        r = client.post(
            "/v1/index/add", files=sh.files(new[:2]) + sh.files(new[:1]), headers=ADMIN_AUTH
        )
        assert r.status_code == 200, r.text
        assert (r.json()["added"], r.json()["skipped"]) == (2, 1)  # the repeat is skipped
        after = client.post("/v1/check", files=sh.files(new), headers=AUTH).json()["results"]
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
    with TestClient(create_app(idx, sh.config(), TOKENS)) as client:
        first = client.post("/v1/check", files=sh.files([new]), headers=AUTH).json()["results"][0]
        with Index.open(idx, config=CheckConfig(embed=RUNTIME)) as writer:  # e.g. 'index add'
            assert writer.add(extra)["added"] == 1
        second = client.post("/v1/check", files=sh.files([new]), headers=AUTH).json()["results"][0]
        generation = client.get("/v1/index", headers=AUTH).json()["generation"]
    assert (first["verdict"], second["verdict"]) == ("release", "block")
    assert second["nearest"] == str(extra / new.name) and second["similarity"] == 1.0
    assert generation == json.loads((idx / "manifest.json").read_text())["generation"]


def test_serve_extra_installs_every_package_the_service_imports():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in ("serve", "test"):
        names = {req.split(">")[0].split("=")[0].strip() for req in extras[extra]}
        assert set(SERVE_PACKAGES.values()) <= names, extra
    assert "httpx" in " ".join(extras["test"])  # FastAPI's TestClient


@pytest.mark.parametrize("module", ["fastapi", "prometheus_client"])
def test_missing_extra_names_the_install(module, gate):
    shim = (
        "import sys; sys.modules[sys.argv.pop(1)] = None; "
        "from trainleak.cli import main; raise SystemExit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "TRAINLEAK_TOKEN": TOKEN}
    argv = [sys.executable, "-c", shim, module, "serve", "--index", str(gate["idx"])]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    package = SERVE_PACKAGES[module]
    assert proc.returncode == 2
    want = f"trainleak: error: trainleak serve needs {package}: pip install 'trainleak[serve]'"
    assert proc.stderr.strip().splitlines()[-1] == want
