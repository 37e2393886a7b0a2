"""Sources at dataset scale: webdataset ``.tar`` shards and parquet files of image bytes.

A source that names such files (a shard, a folder or glob of shards, a list
file) is read member by member, streamed, never unpacked to disk: a tar with
:mod:`tarfile`'s stream mode (``r|*``, so ``.tar.gz`` works too), a parquet
file with pyarrow's ``iter_batches``. Memory is bounded by one member (tar:
:mod:`trainleak.archives._tar`) or one batch of rows bounded by bytes
(parquet: :mod:`trainleak.archives._parquet`), whatever the shard's size.

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
(``truncated tar member``; the rest of the shard is unreadable) or without
its end-of-archive marker (``truncated tar``, a skip record for the shard), a
sample without an image, a repeated key, a key that is no safe relative path
(absolute, ``..``: :func:`unsafe_key`), a shard that is no tar or parquet at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from trainleak.archives._common import IMAGE_COLUMNS as IMAGE_COLUMNS
from trainleak.archives._common import IMAGE_EXTS as IMAGE_EXTS
from trainleak.archives._common import LABEL_FIELDS as LABEL_FIELDS
from trainleak.archives._common import META_EXTS as META_EXTS
from trainleak.archives._common import PARQUET_SUFFIXES as PARQUET_SUFFIXES
from trainleak.archives._common import TAR_SUFFIXES as TAR_SUFFIXES
from trainleak.archives._common import Read as Read
from trainleak.archives._common import is_archive as is_archive
from trainleak.archives._common import unsafe_key as unsafe_key
from trainleak.archives._parquet import PARQUET_BATCH_BYTES as PARQUET_BATCH_BYTES
from trainleak.archives._parquet import PARQUET_BATCH_ROWS as PARQUET_BATCH_ROWS
from trainleak.archives._parquet import iter_parquet as iter_parquet
from trainleak.archives._tar import iter_tar as iter_tar
from trainleak.archives._tar import split_key as split_key
from trainleak.images import (
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_PIXELS,
    ImageSkip,
    Record,
    decode_image,
    read_bytes,
)

log = logging.getLogger(__name__)


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
        >>> import io, tarfile, tempfile
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
    # ImageSkip: the shard as a whole cannot be read (not a tar, no image column).
    try:
        yield from reader(shard, max_file_mb)
    except ImageSkip as skip:
        yield shard, str(skip)
