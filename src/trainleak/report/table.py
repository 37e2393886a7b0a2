"""Streaming writers for a report's full table: parquet (columnar) or CSV.

A table arrives as blocks of columns (a dict of equal-length lists or
arrays, one per column) and is written one block at a time, so memory holds
one block whatever the table's length. Parquet needs pyarrow (``pip install
'trainleak[parquet]'``); ``auto`` picks it when installed, else CSV. pandas,
polars and duckdb read either file directly
(``pandas.read_parquet("matches.parquet")``).
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainleak.config import TableFormat
from trainleak.records import ENCODING_ERRORS, Coded, csv_cell

#: Column types in the parquet file (CSV writes them as text).
COLUMN_TYPES = {
    "synthetic": "string",
    "train": "string",
    "train_identity": "string",
    "rank": "int32",
    "similarity": "float64",
    "score": "float64",
    "flagged": "bool_",
}


def resolve_format(fmt: TableFormat) -> Literal["parquet", "csv"]:
    """Turn ``auto`` into ``parquet`` (pyarrow installed) or ``csv``.

    Example:
        >>> resolve_format("csv")
        'csv'

    """
    if fmt == "auto":
        return "parquet" if importlib.util.find_spec("pyarrow") is not None else "csv"
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        from trainleak._optional import require

        require("pyarrow", extra="parquet", needed_for="--table parquet")
    return fmt


def write_table(
    blocks: Iterable[dict[str, Any]],
    columns: list[str],
    path: str | os.PathLike[str],
    fmt: Literal["parquet", "csv"],
) -> int:
    """Write ``blocks`` to ``path`` (atomically), one block in memory at a time.

    Args:
        blocks: dicts holding every name of ``columns`` (lists, 1-d arrays or
            :class:`Coded` text).
        columns: the columns, in file order.
        path: the file to write.
        fmt: ``parquet`` or ``csv`` (CSV cells are guarded against
            spreadsheet formulas, see :func:`~trainleak.report.csv_cell`).

    Returns:
        How many rows were written.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> write_table([{"a": [1, 2], "b": ["=x", None]}], ["a", "b"], p, "csv")
        2
        >>> p.read_text().splitlines()
        ['a,b', "1,'=x", '2,']

    """
    tmp = Path(f"{os.fspath(path)}.tmp")
    writer = _ParquetWriter(tmp, columns) if fmt == "parquet" else _CsvWriter(tmp, columns)
    rows = 0
    try:
        for block in blocks:
            rows += writer.write(block)
    finally:
        writer.close()
    os.replace(tmp, path)
    return rows


class _CsvWriter:
    def __init__(self, path: Path, columns: list[str]) -> None:
        self.columns = columns
        self.fh = open(path, "w", newline="", encoding="utf-8", errors=ENCODING_ERRORS)  # noqa: SIM115
        self.writer = csv.writer(self.fh)
        self.writer.writerow(columns)

    def write(self, block: dict[str, Any]) -> int:
        cols = [_as_list(block[c]) for c in self.columns]
        self.writer.writerows([csv_cell(v) for v in row] for row in zip(*cols, strict=True))
        return len(cols[0]) if cols else 0

    def close(self) -> None:
        self.fh.close()


class _ParquetWriter:
    def __init__(self, path: Path, columns: list[str]) -> None:
        from trainleak._optional import require

        pa = require("pyarrow", extra="parquet", needed_for="--table parquet")
        pq = require("pyarrow.parquet", extra="parquet", needed_for="--table parquet")

        self.pa = pa
        self.schema = pa.schema(
            [(c, getattr(pa, COLUMN_TYPES.get(c, "string"))()) for c in columns]
        )
        self.writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, block: dict[str, Any]) -> int:
        pa = self.pa
        arrays = []
        for f in self.schema:
            values = block[f.name]
            if isinstance(values, Coded):
                # each distinct value encoded once, the rows gathered in C++
                codes = _numeric_array(pa, pa.int64(), values.codes)
                arrays.append(_text_array(pa, values.values).take(codes))
            elif pa.types.is_string(f.type):
                arrays.append(_text_array(pa, values))
            else:
                arrays.append(_numeric_array(pa, f.type, values))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        self.writer.write_table(table)
        return table.num_rows

    def close(self) -> None:
        self.writer.close()


def _numeric_array(pa: Any, kind: Any, values: Any) -> Any:
    """Return a fixed-width column without nulls, made from the array's memory."""
    if pa.types.is_boolean(kind):
        x = np.asarray(values, bool)
        data = np.packbits(x, bitorder="little")
    else:
        x = np.ascontiguousarray(values, kind.to_pandas_dtype())
        data = x
    return pa.Array.from_buffers(kind, len(x), [None, pa.py_buffer(data)])


def _text_array(pa: Any, values: list[Any]) -> Any:
    """Return a string column built from its buffers (``pa.array`` would import pandas: 2 s).

    Names that are not UTF-8 are written as in ``report.json`` (see
    :data:`~trainleak.report.ENCODING_ERRORS`).
    """
    encoded = [b"" if v is None else str(v).encode("utf-8", ENCODING_ERRORS) for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    valid = np.array([v is not None for v in values], bool)
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    if offsets[-1] < 2**31:
        kind, offsets = pa.string(), offsets.astype(np.int32)
    else:
        kind = pa.large_string()
    data = pa.py_buffer(b"".join(encoded))
    array = pa.Array.from_buffers(kind, len(encoded), [bitmap, pa.py_buffer(offsets), data])
    return array.cast(pa.string()) if kind != pa.string() else array


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)
