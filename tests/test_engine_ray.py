"""The Ray engine on a local 2-CPU Ray cluster: the same results and the same cache as local.

Real ORL faces and COIL-20 objects, the real pixel, tiled and face encoders.
Every comparison is against the local engine run on the same inputs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from trainleak import audit
from trainleak.audits.dedup import dedup
from trainleak.cli import main
from trainleak.config import AuditConfig, DedupConfig, EmbedConfig
from trainleak.embedding import Embedder
from trainleak.engines import get_engine
from trainleak.engines.ray import RayEngine, shard_rows
from trainleak.similarity import Similarity

from conftest import COIL, ORL

ray = pytest.importorskip("ray")

# Starting Ray, its workers and actors costs seconds per dataset on 2 CPUs: the
# module takes about 3 minutes.
pytestmark = pytest.mark.slow

#: Report keys that differ by design between the engines (the settings and when it ran).
HEADER = ("settings", "argv", "created")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray instance with 2 CPUs for the module (the engine joins it)."""
    if not ray.is_initialized():
        # Ray's workers import the test encoders (crashing_encoder) from here, as a
        # cluster's workers import a user's plugin module from its runtime_env.
        here = str(Path(__file__).parent)
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})  # fmt: skip
    yield
    ray.shutdown()


def _shards(n: int) -> list[int]:
    return [len(part) for part in np.array_split(np.arange(n), max(1, n // 7))]


@pytest.mark.parametrize("rule", ["cosine", "mirror", "tiled"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_sharded_search_equals_the_local_search(rule, exclude_self):
    rng = np.random.default_rng(3)
    db = rng.random((300, 64), dtype=np.float32)
    if rule == "tiled":
        sim = Similarity("tiled_l2", tiles=4)
    else:
        db /= np.linalg.norm(db, axis=1, keepdims=True)
        sim = Similarity("cosine", mirror=np.arange(64)[::-1].copy() if rule == "mirror" else None)
    queries = db if exclude_self else np.clip(db[::3] + rng.normal(0, 0.02, (100, 64)), 0, 1)
    local = sim.knn(queries, db, 9, exclude_self=exclude_self)
    # 37-row shards: a shard holds fewer rows than k + 1 at the end, and 9 shards are merged.
    sharded = RayEngine(shards=37).knn(sim, queries, db, 9, exclude_self=exclude_self)
    np.testing.assert_array_equal(sharded[1], local[1])
    np.testing.assert_array_equal(sharded[0], local[0])
    padded = RayEngine(shards=37).knn(sim, queries[:3], db[:5], 9)  # k above the database
    np.testing.assert_array_equal(padded[1], sim.knn(queries[:3], db[:5], 9)[1])


def test_shard_rows_keeps_every_cpu_busy_and_shards_whole_blocks():
    assert shard_rows(200, 1024, 2) == 50
    assert shard_rows(10**6, 128, 4) % 2048 == 0
    assert shard_rows(10**8, 512, 64) * 512 * 4 <= 256 * 2**20


def _cfg(engine: str, cache: Path | None, **kw) -> AuditConfig:
    embed = EmbedConfig(encoder="pixel", workers=2, engine=engine,
                        cache=str(cache) if cache else None, no_cache=cache is None)  # fmt: skip
    return AuditConfig(embed=embed, **kw)


def _body(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in HEADER}


def _cache_files(cache: Path) -> list[Path]:
    return sorted(cache.rglob("shard-*.npz"))


def test_pixel_audit_on_ray_equals_local_and_shares_the_cache(orl_scenario, tmp_path):
    """350 ORL photos: the report body is identical; a local re-run after Ray embeds nothing."""
    s = orl_scenario
    sets = (s["train"], s["synthetic"], s["holdout"])
    local = audit(*sets, config=_cfg("local", None, fpr=0.01)).report
    cache = tmp_path / "cache"
    on_ray = audit(*sets, config=_cfg("ray", cache, fpr=0.01)).report
    assert _body(on_ray) == _body(local)
    assert on_ray["settings"]["embed"]["engine"] == "ray"
    assert local["summary"]["flagged"] > 0
    written = _cache_files(cache)
    assert written  # the Ray run filled the store
    warm = audit(*sets, config=_cfg("local", cache, fpr=0.01)).report
    assert _cache_files(cache) == written  # nothing embedded, nothing written
    assert _body(warm) == _body(local)


def test_ray_run_after_a_local_run_embeds_nothing(tmp_path):
    folder = tmp_path / "coil"
    folder.mkdir()
    for name in sorted(os.listdir(COIL))[:120]:
        os.symlink(COIL / name, folder / name)
    cache = tmp_path / "cache"
    with Embedder("pixel", workers=1, cache=cache) as emb:
        local = emb.embed(folder, "x")
    written = _cache_files(cache)
    with Embedder("pixel", cache=cache, engine=get_engine("ray")) as emb:
        warm = emb.embed(folder, "x")
    assert _cache_files(cache) == written  # an embedded miss would be a new shard
    np.testing.assert_array_equal(warm.vectors, local.vectors)
    assert warm.ids == local.ids and warm.digests == local.digests


def _coil_with_copies(root: Path) -> Path:
    folder = root / "coil"
    folder.mkdir()
    names = [f"obj{o}__{v}.png" for o in range(1, 21) for v in range(0, 50, 5)]
    for name in names:
        os.symlink(COIL / name, folder / name)
    for n, name in enumerate(names[::40]):
        (folder / f"copy{n}.png").write_bytes((COIL / name).read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


def test_tiled_dedup_on_ray_equals_local(tmp_path):
    """205 COIL images with planted copies; tiled l2 with the mirror rule, sharded search."""
    folder = _coil_with_copies(tmp_path)
    cfg = {e: DedupConfig(embed=EmbedConfig(encoder="tiled", no_cache=True, engine=e))
           for e in ("local", "ray")}  # fmt: skip
    local = dedup(folder, config=cfg["local"]).report
    on_ray = dedup(folder, config=cfg["ray"]).report
    assert _body(on_ray) == _body(local)
    assert local["summary"]["removed"] >= 5
    assert [r["path"] for r in on_ray["skipped"]] == [str(folder / "broken.png")]


def _shard_of(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as tar:
        for path in sorted(folder.iterdir()):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.stem + path.suffix)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("junk.png")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"junk"))
    return out


def test_shards_stream_on_ray_as_they_do_locally(tmp_path):
    folder = _coil_with_copies(tmp_path)
    (tmp_path / "shards").mkdir()
    _shard_of(folder, tmp_path / "shards" / "a.tar")
    with Embedder("pixel", workers=1, cache=False) as emb:
        local = emb.embed(tmp_path / "shards", "x")
    with Embedder("pixel", cache=False, engine=get_engine("ray")) as emb:
        on_ray = emb.embed(tmp_path / "shards", "x")
    assert on_ray.ids == local.ids and on_ray.labels == local.labels
    np.testing.assert_array_equal(on_ray.vectors, local.vectors)
    assert on_ray.skipped == local.skipped and len(local.skipped) == 2
    assert on_ray.files == local.files == 207


def test_face_encoder_on_ray_equals_local(tmp_path):
    """24 ORL photos and a file that is no image, with the real dlib face model."""
    root = tmp_path / "faces"
    for s in range(1, 5):
        (root / f"s{s}").mkdir(parents=True)
        for p in range(1, 7):
            os.symlink(ORL / f"s{s}" / f"{p}.pgm", root / f"s{s}" / f"{p}.pgm")
    (root / "s1" / "notes.txt").write_text("not an image")
    cache = tmp_path / "cache"
    with Embedder("face", workers=1, cache=False) as emb:
        local = emb.embed(root, "train")
    with Embedder("face", cache=cache, engine=get_engine("ray")) as emb:
        on_ray = emb.embed(root, "train")
    assert on_ray.ids == local.ids and on_ray.labels == local.labels
    np.testing.assert_array_equal(on_ray.vectors, local.vectors)
    assert on_ray.skipped == local.skipped
    written = _cache_files(cache)
    with Embedder("face", workers=1, cache=cache) as emb:
        warm = emb.embed(root, "train")
    assert _cache_files(cache) == written
    np.testing.assert_array_equal(warm.vectors, local.vectors)


def _report(folder: Path, name: str = "report.json") -> dict:
    return json.loads((folder / name).read_text())


def test_cli_engine_ray_for_dedup_and_index_build(tmp_path, capsys):
    folder = _coil_with_copies(tmp_path)
    args = [str(folder), "--encoder", "pixel", "--no-cache", "-q"]
    assert main(["dedup", *args, "--out", str(tmp_path / "dl")]) == 0
    assert main(["dedup", *args, "--engine", "ray", "--out", str(tmp_path / "dr")]) == 0
    local, on_ray = (_report(tmp_path / d) for d in ["dl", "dr"])
    assert _body(on_ray) == _body(local)
    for engine in ("local", "ray"):
        code = main(["index", "build", "--train", str(folder), "--out", str(tmp_path / engine),
                     "--encoder", "pixel", "--no-cache", "--engine", engine, "-q"])  # fmt: skip
        assert code == 0
    shards = [_report(tmp_path / e, "manifest.json")["shards"] for e in ("local", "ray")]
    assert shards[0] == shards[1]  # the same vectors, rows and offsets, to the byte (sha256)
    capsys.readouterr()
    assert main(["dedup", *args, "--ray-address", "auto", "--out", str(tmp_path / "x")]) == 2
    assert "--ray-address is for --engine ray" in capsys.readouterr().err


def test_an_image_that_crashes_the_encoder_costs_that_image_on_ray(tmp_path):
    """A marked image kills the encoder's process (SIGKILL); on Ray, as locally, only it is lost."""
    from PIL import Image

    from crashing_encoder import mark

    folder = tmp_path / "mixed"
    folder.mkdir()
    for view in range(0, 48, 2):
        os.symlink(COIL / f"obj5__{view}.png", folder / f"obj5__{view:02d}.png")
    marked = folder / "obj5__20-marked.png"
    mark(Image.open(COIL / "obj6__0.png")).save(marked)
    with Embedder("crash-test", workers=2, batch_size=8, cache=False) as emb:
        local = emb.embed(folder, "x")
    with Embedder("crash-test", batch_size=8, cache=False, engine=get_engine("ray")) as emb:
        on_ray = emb.embed(folder, "x")
    assert [(s.path, s.reason) for s in local.skipped] == [
        (str(marked), "encoder process crashed (signal 9)")
    ]
    assert on_ray.ids == local.ids and on_ray.skipped == local.skipped
    np.testing.assert_array_equal(on_ray.vectors, local.vectors)
