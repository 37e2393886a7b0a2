"""The micro-batcher alone, and the real uvicorn server: graceful shutdown, kill -9, restart."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import pytest
import serve_helpers as sh
from serve_helpers import AUTH

from trainleak.service.batcher import Batcher, QueueFull


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    return sh.build_gate(tmp_path_factory.mktemp("serve_server"))


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
        sh.wait(lambda: b.depth() == 0)
        futures = [b.submit([2, 3]), b.submit([4]), b.submit([5, 6]), b.submit([7, 8, 9, 10, 11])]
    assert first.result(5) == [10]
    assert [f.result(5) for f in futures] == [[20, 30], [40], [50, 60], [70, 80, 90, 100, 110]]
    assert calls == [[1], [2, 3, 4], [5, 6], [7, 8, 9, 10, 11]]  # <= 4 unless one request is larger
    with b.lock:
        late = [b.submit([i]) for i in range(3)]
        closer = threading.Thread(target=b.close)
        closer.start()
        with pytest.raises(QueueFull, match="shutting down"):
            sh.wait(lambda: b._closing)
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

    app = sh.app(gate)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    sh.wait(lambda: server.started)
    batcher = app.state.service.batcher
    answer = []

    def post():
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            answer.append(c.post("/v1/check", files=sh.files(gate["queries"][:1]), headers=AUTH))

    with batcher.lock:
        poster = threading.Thread(target=post)
        poster.start()
        sh.wait(lambda: batcher.pending() == 1)
        server.should_exit = True  # SIGTERM does this
        time.sleep(0.3)
        assert thread.is_alive()  # waiting for the request in flight
    poster.join(30)
    thread.join(30)
    assert not thread.is_alive()
    assert answer[0].status_code == 200 and answer[0].json()["results"][0]["verdict"] == "block"
    assert not batcher.alive()



@pytest.mark.slow
def test_real_server_kill_9_restart_same_answers(gate):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    answers = []
    proc = sh.start_serve(gate["idx"], port)
    try:
        for _ in range(2):
            r = httpx.post(
                f"{url}/v1/check", files=sh.files(gate["queries"]), headers=AUTH, timeout=60
            )
            assert r.status_code == 200
            answers.append(r.json())
            assert (
                httpx.post(f"{url}/v1/check", files=sh.files(gate["queries"][:1])).status_code
                == 401
            )
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
            proc = sh.start_serve(gate["idx"], port)
        proc.send_signal(signal.SIGTERM)  # graceful, then uvicorn exits by the signal it got
        assert proc.wait(60) == -signal.SIGTERM
        assert b"Application shutdown complete" in proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert answers[0] == answers[1]
    assert {r["verdict"] for r in answers[0]["results"]} == {"block", "release"}
