"""Sources at dataset scale: webdataset ``.tar`` shards and parquet files of image bytes.

A source that names such files (a shard, a folder or glob of shards, a list
file) is read member by member, streamed, never unpacked to disk: a tar with
:mod:`tarfile`'s stream mode (``r|*``, so ``.tar.gz`` works too), a parquet
file with pyarrow's ``iter_batches``. Memory is bounded by one member (tar) or
one batch of rows (parquet), whatever the shard's size.

* **webdataset tar:** members are grouped by key, the member name up to the
  first dot of its base name (``000/abc.jpg`` and ``000/abc.cls`` are the
  sample ``000/abc``). A sample's image is its member with an image
  extension (``jpg``, ``png``, ... in that order of preference), else its
  first member that is not metadata, decoded by content like any file. Its
  label is ``key.cls``, else the ``identity``/``label``/``cls`` field of
  ``key.json``, else ``key.txt``, except a ``.txt`` that repeats the
  ``.json``'s ``caption`` (img2dataset writes both: that is a caption, not a
  person); else the label the shard's own folder gives.
* **parquet** (img2dataset's ``parquet`` output, Hugging Face image
  columns): the image is the first column among ``jpg``, ``jpeg``, ``png``,
  ``webp``, ``image``, ``img``, ``bytes`` (binary, or a struct with a
  ``bytes`` field); the label the first among ``identity``, ``label``,
  ``cls``; ``url`` and ``caption`` are never labels.

A member's id is ``<shard id>/<key>`` (parquet: the ``key`` column, else the
row number), its record's ``path`` the same virtual path, its content hash
that of its bytes, so a member and a file with the same bytes share one cache
entry. A member that cannot be used becomes a skip record, as a file does: a
member over ``max_file_mb`` (not read), a tar that ends inside a member
(``truncated tar member``; the rest of the shard is unreadable), a sample
without an image, a repeated key, a shard that is no tar or parquet at all.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from trainleak._optional import require
from trainleak.images import (
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_PIXELS,
    ImageSkip,
    Record,
    decode_image,
    read_bytes,
)

log = logging.getLogger(__name__)

#: File name endings read as webdataset shards.
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: File name endings read as parquet files.
PARQUET_SUFFIXES = (".parquet",)
#: Member extensions taken as a sample's image, in order of preference.
IMAGE_EXTS = (
    "jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm", "pnm", "img",
)  # fmt: skip
#: Member extensions that are metadata, never the image.
META_EXTS = ("json", "txt", "cls", "cls2", "idx", "id", "key")
#: Parquet columns that may hold the image bytes, in order of preference.
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img", "bytes")
#: Parquet columns (and ``.json`` fields) that may hold the identity label.
LABEL_FIELDS = ("identity", "label", "cls")
#: Parquet rows read at a time.
PARQUET_BATCH_ROWS = 64

#: What reading one input gives: the record with its bytes in ``data``, and
#: ``None``; or the record without bytes and the reason it is skipped.
Read = tuple[Record, str | None]


def is_archive(path: str | os.PathLike[str]) -> bool:
    """Whether a file name is read as a shard of members (tar or parquet).

    Example:
        >>> is_archive("shards/000.tar"), is_archive("a.parquet"), is_archive("a.png")
        (True, True, False)

    """
    name = os.fspath(path).lower()
    return name.endswith(TAR_SUFFIXES + PARQUET_SUFFIXES)


def iter_inputs(
    records: Iterable[Record], max_file_mb: float = DEFAULT_MAX_FILE_MB
) -> Iterator[Read]:
    """Read every input of a source, a file whole or a shard member by member.

    Args:
        records: the source's records (:func:`trainleak.images.list_records`).
        max_file_mb: files and members larger than this are skipped unread.

    Yields:
        ``(record, None)`` with the bytes in ``record.data``, or
        ``(record, reason)`` for an input that cannot be used. Members come in
        shard order after their shard's place among the records.

    Example:
        >>> import io, tempfile
        >>> shard = Path(tempfile.mkdtemp()) / "s.tar"
        >>> with tarfile.open(shard, "w") as tar:
        ...     for name in ("a.png", "a.cls", "b.json"):
        ...         info = tarfile.TarInfo(name); info.size = 1
        ...         tar.addfile(info, io.BytesIO(b"7"))
        >>> for rec, why in iter_inputs([Record("s.tar", shard)]):
        ...     print(rec.id, rec.label, rec.data, why)
        s.tar/a 7 b'7' None
        s.tar/b None None no image in the sample (members: json)

    """
    for rec in records:
        if is_archive(rec.path):
            yield from iter_archive(rec, max_file_mb)
            continue
        try:
            yield replace(rec, data=read_bytes(rec.path, max_file_mb)), None
        except ImageSkip as skip:
            yield rec, str(skip)


def decode_inputs(
    records: Iterable[Record],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
) -> Iterator[tuple[Record, np.ndarray | str]]:
    """Read and decode every input of a source (files, and shard members, streamed).

    Yields:
        ``(record, rgb)`` with the decoded ``(H, W, 3)`` uint8 image, or
        ``(record, reason)`` for an input that cannot be used; records come
        without their bytes.

    """
    for rec, reason in iter_inputs(records, max_file_mb):
        data, rec = rec.data, replace(rec, data=None)
        if reason is not None or data is None:
            yield rec, reason or "unreadable"
            continue
        try:
            yield rec, decode_image(data, max_pixels)
        except ImageSkip as skip:
            yield rec, str(skip)


def member_of(ident: str) -> tuple[str, str] | None:
    """Split a member's id into ``(shard id, key)``; ``None`` for anything else.

    Example:
        >>> import tempfile
        >>> shard = Path(tempfile.mkdtemp()) / "s.tar"; _ = shard.write_bytes(b"")
        >>> member_of(f"{shard}/a/1") == (str(shard), "a/1"), member_of(str(shard))
        (True, None)

    """
    parts = ident.split("/")
    for cut in range(1, len(parts)):
        head = "/".join(parts[:cut])
        if is_archive(head) and os.path.isfile(head):
            return head, "/".join(parts[cut:])
    return None


def read_members(ids: Iterable[str], max_file_mb: float = DEFAULT_MAX_FILE_MB) -> dict[str, bytes]:
    """Read the bytes of shard members by id, streaming each shard once.

    Ids that are no member, and members that cannot be read, are left out.
    """
    wanted: dict[str, set[str]] = {}
    for ident in ids:
        where = member_of(ident)
        if where is not None:
            wanted.setdefault(where[0], set()).add(ident)
    found: dict[str, bytes] = {}
    for shard, names in sorted(wanted.items()):
        for rec, reason in iter_archive(Record(shard, Path(shard)), max_file_mb):
            if rec.id in names and reason is None and rec.data is not None:
                found[rec.id] = rec.data
    return found


def iter_archive(shard: Record, max_file_mb: float = DEFAULT_MAX_FILE_MB) -> Iterator[Read]:
    """Read the members of one shard (tar or parquet); see the module docstring."""
    name = os.fspath(shard.path).lower()
    reader = iter_parquet if name.endswith(PARQUET_SUFFIXES) else iter_tar
    try:
        yield from reader(shard, max_file_mb)
    except ImageSkip as skip:
        yield shard, str(skip)


def _open_regular(path: Path) -> IO[bytes]:
    """Open a shard for reading, refusing what is not a regular file (a FIFO would block)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ImageSkip("not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        fh = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            fh.close()
            raise ImageSkip("not a regular file")
    except FileNotFoundError:
        raise ImageSkip("file not found") from None
    except OSError as err:
        raise ImageSkip(f"unreadable: {err.strerror or err}") from None
    return fh


def split_key(name: str) -> tuple[str, str]:
    """Split a tar member name into webdataset ``(key, extension)``.

    Example:
        >>> split_key("000/abc.seg.png"), split_key("noext")
        (('000/abc', 'seg.png'), ('noext', ''))

    """
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


@dataclass
class _Sample:
    """The members of one tar sample read so far."""

    key: str
    parts: dict[str, bytes | str]  # extension -> bytes, or the reason it was not read


def iter_tar(shard: Record, max_file_mb: float = DEFAULT_MAX_FILE_MB) -> Iterator[Read]:
    """Stream a webdataset shard, one sample at a time."""
    limit = int(max_file_mb * 1024 * 1024)
    seen: set[str] = set()
    sample: _Sample | None = None
    with _open_regular(shard.path) as fh:
        try:
            tar = tarfile.open(fileobj=fh, mode="r|*")  # noqa: SIM115 - closed below
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ImageSkip(f"not a tar archive: {err}") from None
        try:
            for member in tar:
                if member.isdir():
                    continue
                key, ext = split_key(member.name)
                if sample is None or key != sample.key:
                    if sample is not None:
                        yield _finish(shard, sample, seen)
                    sample = _Sample(key, {})
                sample.parts[ext] = _member_bytes(tar, member, limit, max_file_mb)
        except (tarfile.TarError, EOFError, OSError) as err:
            where = f"the shard ends inside {sample.key!r}" if sample else "the shard is damaged"
            log.warning("%s: %s (%s); the rest of the shard is not read", shard.id, where, err)
            if sample is not None:
                yield _member(shard, sample.key, None), f"truncated tar member ({where}: {err})"
            return
        finally:
            tar.close()
    if sample is not None:
        yield _finish(shard, sample, seen)


def _member_bytes(
    tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int, mb: float
) -> bytes | str:
    if not member.isfile():
        return "not a regular file: a tar link or special member"
    if member.size > limit:
        return f"member larger than {mb:g} MB (--max-file-mb)"
    fh = tar.extractfile(member)
    assert fh is not None  # a regular member always has a file object
    return fh.read()


def _member(shard: Record, key: str, label: str | None, data: bytes | None = None) -> Record:
    ident = f"{shard.id}/{key}"
    return Record(ident, Path(ident), label, data)


def _finish(shard: Record, sample: _Sample, seen: set[str]) -> Read:
    """Turn one tar sample's members into a record with its image bytes, or a skip."""
    parts = sample.parts
    label = _tar_label(parts)
    rec = _member(shard, sample.key, label if label is not None else shard.label)
    if sample.key in seen:
        return rec, f"duplicate key {sample.key!r} in the shard (its members are not adjacent)"
    seen.add(sample.key)
    ext = next((e for e in IMAGE_EXTS if e in parts), None)
    if ext is None:
        ext = next((e for e in parts if e not in META_EXTS), None)
    if ext is None:
        return rec, f"no image in the sample (members: {', '.join(sorted(parts))})"
    data = parts[ext]
    if isinstance(data, str):
        return rec, data
    return replace(rec, data=data), None


def _text(value: bytes | str | None) -> str | None:
    if not isinstance(value, bytes):
        return None
    text = value.decode("utf-8", errors="replace").strip()
    return text or None


def _tar_label(parts: dict[str, bytes | str]) -> str | None:
    if _text(parts.get("cls")) is not None:
        return _text(parts.get("cls"))
    meta: dict[str, Any] = {}
    raw = parts.get("json")
    if isinstance(raw, bytes):
        try:
            loaded = json.loads(raw)
        except ValueError:
            loaded = None
        meta = loaded if isinstance(loaded, dict) else {}
    for name in LABEL_FIELDS:
        if meta.get(name) not in (None, ""):
            return str(meta[name])
    txt = _text(parts.get("txt"))
    caption = meta.get("caption")
    if txt is not None and isinstance(caption, str) and caption.strip() == txt:
        return None  # img2dataset's caption, written to .txt and .json alike
    return txt


def iter_parquet(shard: Record, max_file_mb: float = DEFAULT_MAX_FILE_MB) -> Iterator[Read]:
    """Stream the rows of a parquet file of image bytes, one batch of rows at a time."""
    pq = require("pyarrow.parquet", extra="parquet", needed_for="parquet sources")
    limit = int(max_file_mb * 1024 * 1024)
    with _open_regular(shard.path) as fh:
        try:
            pfile = pq.ParquetFile(fh)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds
            raise ImageSkip(f"not a parquet file: {err}") from None
        names = pfile.schema_arrow.names
        image = next((c for c in IMAGE_COLUMNS if c in names), None)
        if image is None:
            raise ImageSkip(f"no image column (one of {', '.join(IMAGE_COLUMNS)}) in {names}")
        key = "key" if "key" in names else None
        label = next((c for c in LABEL_FIELDS if c in names), None)
        columns = [c for c in (image, key, label) if c is not None]
        seen: set[str] = set()
        row = 0
        try:
            for batch in pfile.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                table = batch.to_pydict()
                for j in range(batch.num_rows):
                    name = table[key][j] if key is not None else None
                    ident = str(name) if name not in (None, "") else str(row)
                    lab = table[label][j] if label is not None else None
                    rec = _member(shard, ident, str(lab) if lab not in (None, "") else shard.label)
                    row += 1
                    yield _parquet_row(rec, table[image][j], ident, seen, limit, max_file_mb)
        except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways
            log.warning("%s: unreadable after row %d (%s)", shard.id, row, err)
            yield shard, f"parquet file unreadable after row {row}: {err}"


def _parquet_row(
    rec: Record, value: Any, ident: str, seen: set[str], limit: int, mb: float
) -> Read:
    if ident in seen:
        return rec, f"duplicate key {ident!r} in the parquet file"
    seen.add(ident)
    if isinstance(value, dict):  # Hugging Face's Image feature: {"bytes", "path"}
        value = value.get("bytes")
    if not value:
        return rec, "empty member (no image bytes)"
    if not isinstance(value, bytes):
        return rec, f"image column holds {type(value).__name__}, not bytes"
    if len(value) > limit:
        return rec, f"member larger than {mb:g} MB (--max-file-mb)"
    return replace(rec, data=value), None
