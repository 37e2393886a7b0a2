"""``trainleak review`` as a real process: the printed token link, deadlines, a busy port.

The report is a real pixel-encoder audit (review_scene.py); the server is the
CLI's own, started as a subprocess on a free loopback port.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

from trainleak.cli import main

from review_scene import free_port, make_audit_report


@pytest.fixture
def report(tmp_path, cache_dir):
    return make_audit_report(tmp_path, cache_dir)


def test_the_printed_link_is_the_only_way_in(report):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TRAINLEAK_TOKEN"}
    argv = [sys.executable, "-m", "trainleak.cli", "review", str(report), "--port", str(port),
            "--reviewer", "ana"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        line = proc.stdout.readline().decode()
        link = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line)
        assert link and "reviewers: ana" in line, line
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/candidates", timeout=10).status_code == 401
        with httpx.Client(base_url=base, timeout=10) as browser:
            opened = browser.get(link.group(1), follow_redirects=False)
            assert opened.status_code == 303 and opened.headers["location"] == "/"
            assert browser.get("/api/candidates").json()["reviewer"] == "ana"
        # A client that never finishes its headers is cut off at the deadline (5 s).
        with socket.create_connection(("127.0.0.1", port), timeout=15) as slow:
            t0 = time.monotonic()
            slow.sendall(b"GET /api/sta")
            answer = slow.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 10
        # Another review on the same port: exit 2 with a message, not a traceback.
        busy = subprocess.run([*argv[:-2]], env=env, capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2
        assert f"port {port} is in use, choose another with --port" in busy.stderr
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_busy_port_in_process_is_exit_2(report, monkeypatch, capsys):
    monkeypatch.setenv("TRAINLEAK_TOKEN", "ana-review-token-0123456789")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["review", str(report), "--port", str(port)]) == 2
    assert "is in use" in capsys.readouterr().err
