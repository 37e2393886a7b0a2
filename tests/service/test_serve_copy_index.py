"""``trainleak serve`` over an index built with ``--encoder copy``: the same verdicts as ``check``.

Real scikit-image photos; the index is built by the CLI
(``index build --encoder copy``) and calibrated on a holdout of other photos
and ORL faces. A real ``trainleak serve`` process answers ``/v1/check`` over
loopback: an edited copy (rotated 15°; cropped, mirrored, recoloured) is
blocked, an unrelated photo is released (the negative control), and each
verdict and nearest image is the one ``trainleak check`` gives.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from copy_edits import apply
from PIL import Image
from serve_helpers import start_serve

from trainleak.cli import main

from conftest import DATA

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("cv2")

TOKEN = "copy-serve-token-0123456789abcdef"
TRAIN = ["astronaut", "coffee", "chelsea", "camera", "rocket"]
COPIES = {"coffee_rotate15.jpg": ("coffee", "rotate15"), "chelsea_combo.jpg": ("chelsea", "combo")}
UNRELATED = ["text.png", "coins.png"]


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def copy_index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("copyserve")
    train, hold, queries = root / "train", root / "hold", root / "queries"
    for d in (train, hold, queries):
        d.mkdir()
    for n in TRAIN:
        Image.fromarray(_rgb(getattr(skdata, n)())).save(train / f"{n}.png")
    for j, (name, (src, edit)) in enumerate(COPIES.items()):
        out = apply(edit, _rgb(getattr(skdata, src)()), seed=j)
        Image.fromarray(out).save(queries / name, quality=90)
    for name in UNRELATED:
        Image.fromarray(_rgb(getattr(skdata, Path(name).stem)())).save(queries / name)
    for p in range(11, 23):
        face = Image.open(DATA / "orl_faces_92x112" / f"s{p}" / "1.pgm").convert("RGB")
        face.save(hold / f"s{p}.png")
    for n in ["gravel", "brick", "moon", "page"]:
        Image.fromarray(_rgb(getattr(skdata, n)())).save(hold / f"{n}.png")
    args = ["index", "build", "--encoder", "copy", "--train", str(train), "--holdout",
            str(hold), "--fpr", "0.05", "--out", str(root / "idx"), "--workers", "1",
            "--no-cache", "--quiet"]  # fmt: skip
    assert main(args) == 0
    return {"idx": root / "idx", "queries": queries}



def test_serve_blocks_copies_releases_unrelated_as_check_does(
    copy_index: dict[str, Path], tmp_path: Path
) -> None:
    queries = sorted(copy_index["queries"].iterdir())
    out = tmp_path / "verdicts.jsonl"
    args = ["check", "--index", str(copy_index["idx"]), str(copy_index["queries"]), "--jsonl",
            "--out", str(out), "--workers", "1", "--no-cache", "--quiet"]  # fmt: skip
    assert main(args) == 1  # something blocked
    checked = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    port = _free_port()
    proc = start_serve(copy_index["idx"], port, timeout=120, token=TOKEN)
    try:
        body = [("file", (p.name, p.read_bytes(), "image/png")) for p in queries]
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/check",
            files=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=120,
        )
    finally:
        proc.terminate()
        proc.wait(60)
    assert r.status_code == 200, r.text
    served = dict(zip([p.name for p in queries], r.json()["results"], strict=True))
    for name in COPIES:
        assert served[name]["verdict"] == "block", served[name]
    for name in UNRELATED:
        assert served[name]["verdict"] == "release", served[name]
    for name, s in served.items():
        assert s["verdict"] == checked[name]["verdict"], (name, s, checked[name])
        assert Path(s["nearest"] or "").name == Path(checked[name]["nearest"] or "").name
        assert s["similarity"] == pytest.approx(checked[name]["similarity"], abs=1e-6)
    assert {Path(served[n]["nearest"]).stem for n in COPIES} == {src for src, _ in COPIES.values()}
