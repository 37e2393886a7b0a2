"""Issue 21 items 4 and 5 in ``serve``: one bad upload fails only its own request.

A crafted TIFF on which Pillow raises ``TypeError`` while decoding shares a
micro-batch with other users' requests: they get their verdicts, it gets a
``skip`` with the reason. A DDS on which Pillow raises ``NotImplementedError``
and an EPS (Ghostscript's format) are not formats trainleak reads: 415.
"""

from __future__ import annotations

import threading

import pytest
import serve_helpers as sh
from fastapi.testclient import TestClient
from hostile_files import eps, typeerror_tiff, unknown_pixel_format_dds
from serve_helpers import AUTH


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    return sh.build_gate(tmp_path_factory.mktemp("serve-bad-uploads"))


def test_dds_and_eps_uploads_are_415(gate):
    with TestClient(sh.app(gate)) as client:
        for name, data in (("texture.png", unknown_pixel_format_dds()), ("poster.eps", eps())):
            r = client.post("/v1/check", files={"file": (name, data, "image/png")}, headers=AUTH)
            assert r.status_code == 415, (name, r.status_code, r.text)
            assert name in r.json()["detail"] and "not an image" in r.json()["detail"]
        good = sh.files(gate["queries"][:1])
        assert client.post("/v1/check", files=good, headers=AUTH).status_code == 200


def test_a_crashing_tiff_fails_only_itself_in_a_shared_micro_batch(gate):
    app = sh.app(gate, max_wait_ms=0.0)
    batcher = app.state.service.batcher
    q = {p.name: p for p in gate["queries"]}
    tiff = typeerror_tiff()
    requests = [
        sh.files([q["new_obj11__7.png"]]),  # taken alone while the encoder is held
        [("file", ("crash.tif", tiff, "image/tiff"))],
        sh.files([q["train_obj2__10.png"], q["train_obj7__35.png"]]),
        [("file", ("crash2.tif", tiff, "image/tiff")), *sh.files([q["new_obj12__7.png"]])],
    ]
    answers: dict[int, object] = {}
    with TestClient(app) as client:

        def post(i):
            answers[i] = client.post("/v1/check", files=requests[i], headers=AUTH)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(requests))]
        with batcher.lock:  # the worker holds the first request; the others queue as one batch
            threads[0].start()
            sh.wait(lambda: batcher.pending() == 1 and batcher.depth() == 0)
            for t in threads[1:]:
                t.start()
            sh.wait(lambda: batcher.depth() == len(requests) - 1)
        for t in threads:
            t.join(60)
        text = client.get("/metrics", headers=AUTH).text
    assert [answers[i].status_code for i in range(len(requests))] == [200] * len(requests)
    results = {i: answers[i].json()["results"] for i in range(len(requests))}
    crash = results[1][0]
    assert crash["name"] == "crash.tif" and crash["verdict"] == "skip"
    assert crash["reason"].startswith("truncated or corrupt image data: TypeError")
    assert [r["verdict"] for r in results[2]] == ["block", "block"]  # training views
    assert [r["verdict"] for r in results[3]] == ["skip", "release"]  # an unseen object
    assert results[3][0]["name"] == "crash2.tif"
    assert "trainleak_batch_images_count 2.0" in text  # the three waiting requests: one batch
