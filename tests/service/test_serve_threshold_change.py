"""``POST /v1/index/add`` refuses to move the calibrated threshold, as ``index add`` does.

Issue 21 item 8 over HTTP: uploads of other views of the holdout's own objects
would recalibrate the gate so that near-copies are released; the service
answers 422 saying old and new thresholds and commits nothing, unless the admin
sends ``accept_threshold_change=true``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from trainleak.config import CheckConfig, EmbedConfig, IndexConfig, ServeConfig
from trainleak.gate.index import Index
from trainleak.gate.shards import MANIFEST
from trainleak.service.guard import Tokens
from trainleak.service.serve import create_app

from conftest import COIL

CHECK, ADMIN = "check-token-0123456789abcdef", "admin-token-0123456789abcdef"


def _views(dest: Path, objects: range, views: range) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for obj in objects:
        for v in views:
            out.append(dest / f"obj{obj}__{v}.png")
            shutil.copyfile(COIL / out[-1].name, out[-1])
    return out


@pytest.fixture(scope="module")
def built(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve_thr")
    _views(root / "train", range(1, 6), range(0, 48, 6))
    _views(root / "holdout", range(11, 21), range(0, 48, 6))
    cfg = IndexConfig(embed=EmbedConfig("pixel", workers=1, cache=str(cache_dir)), fpr=0.02)
    Index.build(root / "idx", root / "train", root / "holdout", config=cfg).close()
    return root / "idx"


def _files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]


def test_http_add_refuses_a_threshold_move_unless_accepted(built, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(built, idx)
    near = _views(tmp_path / "near", range(11, 16), range(1, 48, 8))
    other = _views(tmp_path / "other", range(1, 6), range(3, 48, 24))  # training objects
    config = ServeConfig(check=CheckConfig(embed=EmbedConfig(workers=1, no_cache=True)))
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with TestClient(create_app(idx, config, Tokens(CHECK, ADMIN))) as client:
        before = json.loads((idx / MANIFEST).read_text())
        r = client.post("/v1/index/add", files=_files(near), headers=admin)
        assert r.status_code == 422, r.text
        assert "would move the threshold from" in r.json()["detail"]
        assert json.loads((idx / MANIFEST).read_text()) == before  # nothing committed
        # Negative control: more views of the training objects need no flag.
        r = client.post("/v1/index/add", files=_files(other), headers=admin)
        assert r.status_code == 200 and r.json()["added"] == len(other), r.text
        r = client.post(
            "/v1/index/add",
            files=_files(near),
            data={"accept_threshold_change": "true"},
            headers=admin,
        )
        assert r.status_code == 200 and r.json()["added"] == len(near), r.text
        assert r.json()["threshold"] > before["threshold"]["value"] + 0.01
