"""Parquet files of image bytes, read in row batches bounded by bytes.

A parquet file can pack megabytes per row into a few bytes on disk (zstd of a
repeated pattern, one dictionary value repeated in every row), so the batch
size comes from each row group's metadata: as many rows as fit
:data:`PARQUET_BATCH_BYTES` at the largest size a row may have there (at
least one, at most :data:`PARQUET_BATCH_ROWS`; see :func:`_batch_rows`). A
row over ``max_file_mb`` is a skip, found from the column's lengths before its
bytes become a Python object; a row group of one row over the limit is
skipped unread. Not bounded: one row's own size (pyarrow decodes a value
before its length can be seen), so a single row larger than the limit costs
its size once before it is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from trainleak._optional import require
from trainleak.archives._common import (
    IMAGE_COLUMNS,
    LABEL_FIELDS,
    Read,
    member,
    open_regular,
    unsafe_key,
)
from trainleak.images import DEFAULT_MAX_FILE_MB, ImageSkip, Record

__all__ = ["PARQUET_BATCH_BYTES", "PARQUET_BATCH_ROWS", "iter_parquet"]

log = logging.getLogger(__name__)

#: Most parquet rows read at a time.
PARQUET_BATCH_ROWS = 64
#: Uncompressed bytes of the image column read at a time (ours: 16 MB), above one row.
PARQUET_BATCH_BYTES = 16 * 2**20


def _batch_rows(meta: Any, group: int, column: int | None) -> tuple[int, int]:
    """Rows per batch that fit the budget, and the image column's uncompressed bytes.

    The column chunk's uncompressed size ``S`` is honest about the bytes
    stored, not about the bytes a batch becomes: a dictionary (or a
    prefix-shared ``DELTA_BYTE_ARRAY``) lets every row repeat one large value.
    There, any row may be as large as ``S``; with plain values a batch is at
    most the rows' share of ``S``.
    """
    if column is None:  # an image column of a shape we cannot measure: a row at a time
        return 1, 0
    rg = meta.row_group(group)
    chunk = rg.column(column)
    size = int(chunk.total_uncompressed_size)
    rows = max(1, int(rg.num_rows))
    shared = chunk.has_dictionary_page or "DELTA_BYTE_ARRAY" in chunk.encodings
    per_row = size if shared else -(-size // rows)
    return max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_BYTES // max(1, per_row))), size


def iter_parquet(shard: Record, max_file_mb: float = DEFAULT_MAX_FILE_MB) -> Iterator[Read]:
    """Stream the rows of a parquet file of image bytes (see the module docstring)."""
    pq = require("pyarrow.parquet", extra="parquet", needed_for="parquet sources")
    pc = require("pyarrow.compute", extra="parquet", needed_for="parquet sources")
    limit = int(max_file_mb * 1024 * 1024)
    too_big = f"member larger than {max_file_mb:g} MB (--max-file-mb)"
    with open_regular(shard.path) as fh:
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
        # The leaf column of the image bytes (a struct's "bytes" field is a leaf of its own).
        leaves = [pfile.schema.column(i).path for i in range(len(pfile.schema))]
        leaf = next((i for i, p in enumerate(leaves) if p in (image, f"{image}.bytes")), None)
        seen: set[str] = set()
        row = 0
        try:
            for group in range(pfile.num_row_groups):
                batch_rows, size = _batch_rows(pfile.metadata, group, leaf)
                rows = pfile.metadata.row_group(group).num_rows
                if rows == 1 and size > limit:
                    yield member(shard, str(row), shard.label), too_big
                    row += 1
                    continue
                for batch in pfile.iter_batches(
                    batch_size=batch_rows, row_groups=[group], columns=columns
                ):
                    data, lengths = _image_values(pc, batch.column(image))
                    keys = batch.column(key).to_pylist() if key is not None else None
                    labels = batch.column(label).to_pylist() if label is not None else None
                    for j in range(batch.num_rows):
                        name = keys[j] if keys is not None else None
                        ident = str(name) if name not in (None, "") else str(row)
                        lab = labels[j] if labels is not None else None
                        rec = member(
                            shard, ident, str(lab) if lab not in (None, "") else shard.label
                        )
                        row += 1
                        if (lengths[j] or 0) > limit:
                            yield rec, too_big
                            continue
                        value = data[j].as_py() if data is not None else None
                        yield _parquet_row(rec, value, ident, seen)
        except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways
            log.warning("%s: unreadable after row %d (%s)", shard.id, row, err)
            yield shard, f"parquet file unreadable after row {row}: {err}"


def _image_values(pc: Any, col: Any) -> tuple[Any, list[int | None]]:
    """Return a batch's image bytes (a struct's ``bytes`` field) and lengths, unconverted."""
    if hasattr(col, "field"):  # Hugging Face's Image feature: {"bytes", "path"}
        try:
            col = col.field("bytes")
        except KeyError:
            return None, [None] * len(col)
    try:
        return col, pc.binary_length(col).to_pylist()
    except Exception:  # noqa: BLE001 - not a binary column: each row says what it holds
        return col, [None] * len(col)


def _parquet_row(rec: Record, value: Any, ident: str, seen: set[str]) -> Read:
    unsafe = unsafe_key(ident)
    if unsafe is not None:
        return rec, unsafe
    if ident in seen:
        return rec, f"duplicate key {ident!r} in the parquet file"
    seen.add(ident)
    if not value:
        return rec, "empty member (no image bytes)"
    if not isinstance(value, bytes):
        return rec, f"image column holds {type(value).__name__}, not bytes"
    return replace(rec, data=value), None
