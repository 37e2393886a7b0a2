"""Sources at scale: webdataset tar shards and parquet files, streamed, equal to the files.

Shards are made here from the real ORL and COIL-20 images, with bad members
planted: bytes that are no image, a truncated PNG, a member over
--max-file-mb, a sample without an image, a shard cut inside a member.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainleak import audit
from trainleak.archives import iter_inputs, split_key
from trainleak.audits.dedup import dedup
from trainleak.cli import main
from trainleak.config import AuditConfig, CheckConfig, DedupConfig, EmbedConfig, IndexConfig
from trainleak.embedding import embed
from trainleak.gate.index import Index
from trainleak.images import Record, list_records

from conftest import COIL, ORL

TRAIN_PEOPLE, SYNTH_PEOPLE, HOLD_PEOPLE = range(1, 11), range(11, 16), range(31, 37)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _orl(people: range, photos: range) -> list[tuple[str, str, bytes]]:
    """``(person, photo, bytes)`` of ORL photos, in the order their file paths sort.

    Rows in that order make even the k-means of Meehan's C_T (seeded, but
    order-dependent) agree between the files and the shards.
    """
    items = [
        (f"s{s}", str(p), (ORL / f"s{s}" / f"{p}.pgm").read_bytes()) for s in people for p in photos
    ]
    return sorted(items, key=lambda item: f"{item[0]}/{item[1]}")


def _folder(root: Path, items: list[tuple[str, str, bytes]]) -> Path:
    for person, photo, data in items:
        (root / person).mkdir(parents=True, exist_ok=True)
        (root / person / f"{photo}.pgm").write_bytes(data)
    return root


def _shard(path: Path, items: list[tuple[str, str, bytes]], extra=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for person, photo, data in items:
            _add(tar, f"{person}/{photo}.pgm", data)
            _add(tar, f"{person}/{photo}.cls", person.encode())
        for name, data in extra:
            _add(tar, name, data)
    return path


@pytest.fixture(scope="module")
def orl_sets(tmp_path_factory):
    """The same ORL photos as folders and as shards (+ bad members in the shards)."""
    root = tmp_path_factory.mktemp("orl-shards")
    train = _orl(TRAIN_PEOPLE, range(1, 6))
    synth = sorted(
        _orl(TRAIN_PEOPLE, range(6, 9)) + _orl(SYNTH_PEOPLE, range(1, 6)),
        key=lambda item: f"{item[0]}/{item[1]}",
    )
    hold = _orl(HOLD_PEOPLE, range(1, 11))
    png = (COIL / "obj1__0.png").read_bytes()
    files = {
        "train": _folder(root / "files" / "train", train),
        "synthetic": _folder(root / "files" / "synthetic", synth),
        "holdout": _folder(root / "files" / "holdout", hold),
    }
    shards = root / "shards"
    _shard(shards / "train" / "000.tar", train[:25], [
        ("bad/garbage.png", b"this is not an image"),
        ("bad/cut.png", png[: len(png) // 2]),
        ("bad/big.png", png + bytes(1_100_000)),  # over --max-file-mb 1
        ("bad/meta.json", b'{"caption": "no image here"}'),
    ])  # fmt: skip
    _shard(shards / "train" / "001.tar", train[25:], [("cut/last.png", png)])
    raw = (shards / "train" / "001.tar").read_bytes()
    # Cut the shard inside its last member: that member is lost, the rest is read.
    (shards / "train" / "001.tar").write_bytes(raw[: raw.rindex(png[:64]) + 100])
    table = pa.table({
        "key": [f"{person}/{photo}" for person, photo, _ in synth],
        "jpg": pa.array([data for _, _, data in synth], pa.binary()),
        "url": [f"https://example.invalid/{i}" for i in range(len(synth))],
        "caption": ["a face"] * len(synth),
    })  # fmt: skip
    pq.write_table(table, shards / "synthetic.parquet", row_group_size=16)
    _shard(shards / "holdout.tar", hold)
    return {"files": files, "shards": {
        "train": shards / "train",
        "synthetic": shards / "synthetic.parquet",
        "holdout": shards / "holdout.tar",
    }}  # fmt: skip


def _file_id_to_member(ident: str) -> str:
    """``.../files/train/s3/4.pgm`` -> ``s3/4`` (the shard key of the same photo)."""
    person, photo = Path(ident).parts[-2:]
    return f"{person}/{Path(photo).stem}"


def _member_key(ident: str) -> str:
    """``.../000.tar/s3/4`` or ``.../synthetic.parquet/s3/4`` -> ``s3/4``."""
    return ident.split(".tar/", 1)[1] if ".tar/" in ident else ident.split(".parquet/", 1)[1]


def _config(**kw) -> AuditConfig:
    embed = EmbedConfig(encoder="pixel", workers=1, no_cache=True, max_file_mb=1)
    return AuditConfig(embed=embed, **kw)


def test_audit_of_shards_equals_audit_of_files(orl_sets):
    f, s = orl_sets["files"], orl_sets["shards"]
    by_files = audit(f["train"], f["synthetic"], f["holdout"], config=_config(fpr=0.05)).report
    by_shards = audit(s["train"], s["synthetic"], s["holdout"], config=_config(fpr=0.05)).report
    assert by_shards["threshold"] == by_files["threshold"]
    for key in ("flagged", "score", "n_synthetic", "dcr", "meehan_ct"):
        assert by_shards["summary"][key] == by_files["summary"][key], key

    def leaked(report, to_key):
        return [
            (e["identity"], e["n_flagged"], to_key(e["worst"]["synthetic"]),
             to_key(e["worst"]["train"]), e["worst"]["score"])
            for e in report["summary"]["leaked_identities"]
        ]  # fmt: skip

    assert leaked(by_shards, _member_key) == leaked(by_files, _file_id_to_member)

    def rows(report, to_key):
        return sorted(
            (to_key(m["synthetic"]), to_key(m["train"]), m["rank"], m["similarity"], m["flagged"])
            for m in report["matches"]
        )

    assert rows(by_shards, _member_key) == rows(by_files, _file_id_to_member)
    assert by_shards["summary"]["flagged"] > 0  # the 30 same-person photos are there to be found
    reasons = {Path(r["path"]).name: r["reason"] for r in by_shards["skipped"]}
    assert reasons["garbage"] == "not an image (unrecognised format)"
    assert reasons["cut"].startswith("truncated or corrupt image data")
    assert reasons["big"] == "member larger than 1 MB (--max-file-mb)"
    assert reasons["meta"] == "no image in the sample (members: json)"
    assert reasons["last"].startswith("truncated tar member (the shard ends inside 'cut/last'")
    assert len(by_shards["skipped"]) == 5 and not by_files["skipped"]
    assert by_shards["inputs"]["train"]["files"] == 50 + 5


def test_member_and_file_with_the_same_bytes_share_the_cache(orl_sets, tmp_path):
    f, s = orl_sets["files"], orl_sets["shards"]
    cache = tmp_path / "cache"
    by_files = embed(f["train"], "pixel", workers=1, cache=cache, max_file_mb=1)
    shards_before = sorted(cache.rglob("shard-*.npz"))
    by_shards = embed(s["train"], "pixel", workers=1, cache=cache, max_file_mb=1)
    # Every member's image was in the cache: nothing new was embedded or written.
    assert sorted(cache.rglob("shard-*.npz")) == shards_before
    assert sorted(by_shards.digests) == sorted(by_files.digests)
    order = np.argsort([_member_key(i) for i in by_shards.ids])
    ref = np.argsort([_file_id_to_member(i) for i in by_files.ids])
    np.testing.assert_array_equal(by_shards.vectors[order], by_files.vectors[ref])
    assert [by_shards.labels[i] for i in order] == [by_files.labels[i] for i in ref]


def test_dedup_of_parquet_equals_dedup_of_files(tmp_path):
    names = [f"obj{o}__{v}.png" for o in range(1, 4) for v in range(0, 50, 3)]
    folder = tmp_path / "coil"
    folder.mkdir()
    for name in names:
        os.symlink(COIL / name, folder / name)
    # Two planted copies: the same bytes under another name.
    (folder / "copy_a.png").write_bytes((COIL / names[0]).read_bytes())
    (folder / "copy_b.png").write_bytes((COIL / names[20]).read_bytes())
    files = sorted(p.name for p in folder.iterdir())
    table = pa.table({
        "image": [{"bytes": (folder / n).read_bytes(), "path": n} for n in files],
        "key": [Path(n).stem for n in files],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "coil.parquet", row_group_size=10)
    cfg = DedupConfig(embed=EmbedConfig(encoder="tiled", workers=1, no_cache=True))
    by_files = dedup(folder, config=cfg).report
    by_rows = dedup(tmp_path / "coil.parquet", config=cfg).report

    def clusters(report):
        return sorted(
            (Path(c["kept"]).stem, sorted(Path(m["path"]).stem for m in c["members"]))
            for c in report["clusters"]
        )

    assert clusters(by_rows) == clusters(by_files)
    assert by_rows["summary"]["removed"] == by_files["summary"]["removed"] >= 2
    members = [set(m) for _, m in clusters(by_rows)]
    assert {"copy_a", Path(names[0]).stem} <= next(m for m in members if "copy_a" in m)
    assert {"copy_b", Path(names[20]).stem} <= next(m for m in members if "copy_b" in m)


def test_cli_takes_a_shard_and_a_parquet_file(orl_sets, tmp_path, capsys):
    s = orl_sets["shards"]
    code = main([
        "audit", "--train", str(s["train"] / "000.tar"), "--synthetic", str(s["synthetic"]),
        "--encoder", "pixel", "--workers", "1", "--no-cache", "--max-file-mb", "1",
        "--threshold", "0.99", "--out", str(tmp_path / "out"), "-q",
    ])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["inputs"]["train"]["embedded"] == 25
    assert report["inputs"]["synthetic"]["embedded"] == 55
    assert all(".parquet/" in m["synthetic"] for m in report["matches"])


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            _add(tar, name, data)
    return buf.getvalue()


def _read(path: Path, max_file_mb: float = 256) -> list[tuple[str, str | None, str | None]]:
    return [
        (rec.id.removeprefix(f"{path}/"), rec.label, why)
        for rec, why in iter_inputs(list_records(path), max_file_mb)
    ]


def test_labels_keys_and_bad_samples(tmp_path):
    png = (COIL / "obj1__0.png").read_bytes()
    shard = tmp_path / "a.tar"
    shard.write_bytes(_tar_bytes([
        ("x/1.png", png), ("x/1.cls", b" alice \n"),
        ("2.jpg", png), ("2.json", b'{"identity": "bob", "caption": "c"}'),
        ("3.png", png), ("3.txt", b"a cat"), ("3.json", b'{"caption": "a cat"}'),
        ("4.png", png), ("4.txt", b"carol"),
        ("5.webp", png), ("5.png", png),
        ("6.png", png), ("7.png", png), ("6.cls", b"dave"),
    ]))  # fmt: skip
    read = _read(shard)
    got = {key: (label, why) for key, label, why in read[::-1]}  # the first of a repeated key
    assert got["x/1"] == ("alice", None)
    assert got["2"] == ("bob", None)
    assert got["3"] == (None, None)  # img2dataset: .txt repeats the caption
    assert got["4"] == ("carol", None)
    assert got["5"] == (None, None)
    assert got["6"] == (None, None) and got["7"] == (None, None)
    assert [key for key, _, _ in read] == ["x/1", "2", "3", "4", "5", "6", "7", "6"]
    assert read[-1][2].startswith("duplicate key '6' in the shard")
    (tmp_path / "b.tar").write_bytes(b"no tar at all" * 100)
    assert _read(tmp_path / "b.tar")[0][2].startswith("not a tar archive")


def test_member_data_and_ids(tmp_path):
    png = (COIL / "obj2__5.png").read_bytes()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "s.tar").write_bytes(_tar_bytes([("k.png", png)]))
    [(rec, why)] = list(iter_inputs(list_records(tmp_path)))
    assert why is None and rec.data == png
    assert rec.id == str(tmp_path / "d" / "s.tar" / "k") and rec.label == "d"
    assert split_key("a/b.c.d") == ("a/b", "c.d")


def test_parquet_rows_without_key_and_bad_rows(tmp_path):
    png = (COIL / "obj3__0.png").read_bytes()
    rows = {"jpg": [png, None, b"", png + bytes(1_100_000)], "label": ["a", "b", None, "c"]}
    pq.write_table(pa.table(rows), tmp_path / "p.parquet")
    got = _read(tmp_path / "p.parquet", max_file_mb=1)
    assert [g[0] for g in got] == ["0", "1", "2", "3"]
    assert got[0] == ("0", "a", None)
    assert got[1][2] == got[2][2] == "empty member (no image bytes)"
    assert got[3][2] == "member larger than 1 MB (--max-file-mb)"
    pq.write_table(pa.table({"caption": ["x"]}), tmp_path / "q.parquet")
    assert _read(tmp_path / "q.parquet")[0][2].startswith("no image column")
    (tmp_path / "r.parquet").write_bytes(b"PAR1 garbage")
    assert _read(tmp_path / "r.parquet")[0][2].startswith("not a parquet file")


def test_a_fifo_named_like_a_shard_is_skipped_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "pipe.tar")
    [(rec, why)] = list(iter_inputs([Record("pipe.tar", tmp_path / "pipe.tar")]))
    assert why == "not a regular file"


def test_dedup_copy_kept_writes_members_out_as_files(tmp_path):
    names = [f"obj4__{v}.png" for v in range(0, 50, 7)]
    items = [(n, (COIL / n).read_bytes()) for n in names]
    items.append(("copy.png", items[0][1]))  # a planted byte copy
    shard = tmp_path / "in" / "set.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for name, data in items:
            _add(tar, name, data)
    cfg = DedupConfig(embed=EmbedConfig(encoder="pixel", workers=1, no_cache=True))
    result = dedup(shard, config=cfg)
    assert result.report["summary"]["removed"] == 1
    assert result.copy_kept(tmp_path / "kept") == len(names)
    written = sorted(p.relative_to(tmp_path / "kept") for p in (tmp_path / "kept").rglob("*.png"))
    assert len(written) == len(names)
    for path in written:
        original = (COIL / path.name).read_bytes() if path.name != "copy.png" else items[0][1]
        assert (tmp_path / "kept" / path).read_bytes() == original


def test_invert_and_loss_attack_read_shards_as_files(tmp_path):
    from trainleak.audits.inversion.audit import read_images as invert_images
    from trainleak.audits.loss_attack import read_images as loss_images

    names = [f"obj5__{v}.png" for v in range(0, 50, 10)]
    folder = tmp_path / "files"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes((COIL / name).read_bytes())
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for name in names:
            _add(tar, name, (COIL / name).read_bytes())
        _add(tar, "bad.png", b"not an image")
    ids, images, skipped = loss_images(shard, "member")
    ref_ids, ref_images, _ = loss_images(folder, "member")
    assert [Path(i).name for i in ids] == [Path(i).stem for i in ref_ids]
    assert all(np.array_equal(a, b) for a, b in zip(images, ref_images, strict=True))
    assert [s.reason for s in skipped] == ["not an image (unrecognised format)"]
    pixels, rows, skipped = invert_images(shard, "images", 1, None)
    ref_pixels, _, _ = invert_images(folder, "images", 1, None)
    assert np.array_equal(pixels.numpy(), ref_pixels.numpy()) and len(rows) == 5
    assert len(skipped) == 1


def test_index_add_and_check_read_shards_as_files(orl_sets, tmp_path):
    f, s = orl_sets["files"], orl_sets["shards"]
    embed = EmbedConfig("pixel", workers=1, no_cache=True, max_file_mb=1)
    # 0.97: below it most photos, above it the closest same-person photos.
    config = IndexConfig(embed=embed, threshold=0.97, score="nn")
    check_config = CheckConfig(embed=embed)
    with Index.build(tmp_path / "by-files", f["train"], config=config) as by_files:
        want = {_file_id_to_member(v.path): v for v in by_files.check(f["synthetic"])}
    first = sorted(s["train"].glob("*.tar"))[0]
    Index.build(tmp_path / "by-shards", first, config=config).close()
    with Index.open(tmp_path / "by-shards", config=check_config) as by_shards:
        added = by_shards.add([str(p) for p in sorted(s["train"].glob("*.tar"))])
        got = {_member_key(v.path): v for v in by_shards.check(s["synthetic"])}
        assert len(by_shards) == len(by_files)
    # 001.tar's members join (its cut last member is a skip); 000.tar's are already there.
    assert added["added"] == 25 and added["present"] == 25 and added["skipped"] >= 1
    assert {k: (v.verdict, round(v.similarity, 6)) for k, v in got.items()} == {
        k: (v.verdict, round(v.similarity, 6)) for k, v in want.items()
    }
    assert {v.verdict for v in got.values()} == {"block", "release"}
    code = main(["check", "--index", str(tmp_path / "by-shards"), str(s["synthetic"]),
                 "--workers", "1", "--no-cache", "-q"])  # fmt: skip
    assert code == 1  # members are checked, blocked ones exit 1
