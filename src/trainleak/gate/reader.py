"""The index format, and how a reader opens it without reading it whole.

Format (version 1), one folder::

    IDX/
      manifest.json          the index's state; replaced atomically by every change
      vectors-GGGGG-NNNNN.npy  (n, dim) float32, C order, memory-mapped; all finite
      rows-GGGGG-NNNNN.jsonl   one JSON object per row: {"id", "label", "digest"}
      offsets-GGGGG-NNNNN.npy  (n + 1,) int64 byte offsets of the rows' lines
      ...                    more shards, appended by 'index add' (never rewritten)
      tombstones-GGGGG.json  {"rows": [global rows], "ids": [...]} removed rows
      holdout-vectors.npy    the calibration holdout, to recalibrate after a change
      holdout-rows.jsonl     its ids and content hashes

``manifest.json`` holds ``format``/``format_version``, ``generation`` (one
more per change), ``created``/``updated``, ``trainleak_version``, the encoder
identity (:meth:`~trainleak.encoders.base.EncoderInfo.to_dict` plus its
``cache_key``, which hashes name, version, options and weights, and the
``spec``/``spec_options`` that rebuild it), ``dim``, ``metric``, ``score``
(``nn`` or ``identity``, as in ``audit``), ``threshold`` (the
:class:`~trainleak.decide.calibration.Calibration` record ``audit`` writes
too, plus holdout counts; a non-finite value refuses to open), ``counts``,
the build ``settings``, and for every file its name, size and sha256 (and
for every shard ``finite: true``: its vectors were checked when written).
``GGGGG`` is the generation that wrote a shard and ``NNNNN`` its number, so
no file name is used twice in an index's life (indexes written before
carry ``vectors-NNNNN.npy`` names, still read). Global row numbers run
through the shards in order; ``digest`` is the file's content hash (the
embedding cache's key); ids are unique among live rows.

Changes are atomic: new files are written under temporary names, fsynced and
renamed, and only then does ``os.replace`` swap in the new manifest, the
commit point. A crash at any moment leaves the old manifest, which lists none
of the new files (they are removed by the next change). One writer at a time
holds ``IDX/.lock``; readers never wait.

Opening memory-maps every shard and checks each listed file's size and each
array's header (shape, dtype), which catches truncation and damaged headers
in constant time; hashing 20 GB of vectors would take longer than the search.
The full sha256 of every file, and every vector's finiteness, are checked by
:meth:`Index.verify` (``trainleak index info IDX --verify``); small files
(tombstones, holdout) are hashed whenever they are read. The first search of
an opened index checks the live shards for NaN too (it reads every row
anyway): see :mod:`trainleak.gate.status`.

A reader holds every file it opened (memory-maps of the vectors and offsets,
the rows files open) for as long as it uses the index, and every file name
carries the generation that wrote it: a change never makes a reader's view
name another image, whatever it removes or adds.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trainleak.encoders import get_encoder
from trainleak.encoders.base import EncoderInfo
from trainleak.errors import IndexFormatError, TrainleakError
from trainleak.gate.shards import MANIFEST, check_size, nonfinite_rows, parse_row, read_small

__all__ = [
    "RowsFile",
    "encoder_info",
    "iter_all_rows",
    "load_array",
    "lookup_rows",
    "nonfinite_rows",
    "open_shards",
]


def load_array(folder: Path, entry: dict[str, Any], shape: tuple[int, ...], dtype: str) -> Any:
    """Memory-map a listed ``.npy`` after checking its size, header, shape and dtype."""
    path = check_size(folder, entry)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise IndexFormatError(
            f"{path} is not a valid array file ({err}): restore the index or rebuild it"
        ) from None
    if array.shape != shape or array.dtype != np.dtype(dtype) or not array.flags.c_contiguous:
        raise IndexFormatError(
            f"{path} holds {array.dtype} {array.shape}, the manifest expects {dtype} {shape}: "
            "restore the index or rebuild it"
        )
    return array


def encoder_info(folder: Path, manifest: dict[str, Any]) -> EncoderInfo:
    """Rebuild the :class:`EncoderInfo` the manifest records (its cache key must match)."""
    enc = manifest["encoder"]
    default = enc.get("default_threshold")
    info = EncoderInfo(
        enc["name"],
        int(enc["version"]),
        int(manifest["dim"]),
        enc["metric"],
        float("nan") if default is None else float(default),
        "",
        dict(enc.get("options") or {}),
        enc.get("weights_sha256"),
        enc.get("paper", ""),
        enc.get("licence", ""),
        bool(enc.get("non_commercial", False)),
        dict(enc.get("execution") or {}),
        kind=enc.get("kind", "copy"),
        operating_point=enc.get("operating_point", "similarity"),
        tiles=int(enc.get("tiles", 1)),
    )
    if info.cache_key() != enc.get("cache_key"):
        raise IndexFormatError(f"{folder / MANIFEST}: its encoder entry is inconsistent; rebuild")
    if "tiles" in enc and not enc.get("mirror"):
        return info  # the manifest records the whole rule
    return _declared_rule(info)


def _declared_rule(info: EncoderInfo) -> EncoderInfo:
    """Take the comparison rule (tiles, mirror) from the encoder itself where it is installed.

    A mirror rule is a permutation the manifest does not store, and indexes
    written before the rule was recorded have none of it: the registered
    encoder, built with the same options (and checked to have the same cache
    key), declares it. An encoder that cannot be built here (a model file given
    by path, a plugin not installed) keeps the manifest's record.
    """
    try:
        live = get_encoder(info.name, **info.options).info
    except (KeyError, ValueError, TypeError, TrainleakError):
        return info
    if live.cache_key() != info.cache_key():
        return info
    return replace(
        info, kind=live.kind, operating_point=live.operating_point, tiles=live.tiles,
        mirror=live.mirror,
    )  # fmt: skip


class RowsFile:
    """A shard's rows file, held open by a reader for as long as it uses the index.

    A change that drops the shard removes the file's name, not the file: the
    reader keeps reading the rows it opened (positional reads, so threads never
    share a file position), consistent with the vectors it memory-mapped.
    """

    def __init__(self, folder: Path, entry: dict[str, Any]) -> None:
        self.path = check_size(folder, entry)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise IndexFormatError(
                f"{self.path} is missing: the index changed; open it again"
            ) from None
        # Closed by close(), or when the last reader holding it is gone.
        self._close = weakref.finalize(self, os.close, self._fd)
        self.size = int(entry["bytes"])
        if os.fstat(self._fd).st_size != self.size:
            self._close()
            raise IndexFormatError(f"{self.path} changed while it was opened: open the index again")

    def read(self, start: int, stop: int) -> bytes:
        """Return the bytes ``start:stop`` of the file."""
        return os.pread(self._fd, stop - start, start)

    def lines(self) -> Iterator[bytes]:
        """Yield the file's lines, read a block at a time."""
        pos, rest = 0, b""
        while pos < self.size:
            block = self.read(pos, min(self.size, pos + (1 << 20)))
            if not block:
                break
            pos += len(block)
            *whole, rest = (rest + block).split(b"\n")
            yield from (line + b"\n" for line in whole)
        if rest:
            yield rest

    def close(self) -> None:
        """Close the file (the reader is done with the index)."""
        self._close()


def open_shards(
    folder: Path, manifest: dict[str, Any]
) -> tuple[list[Any], list[Any], Any, list[RowsFile]]:
    """Memory-map every shard's vectors and offsets, open its rows; read the tombstoned rows.

    Returns:
        ``(vectors, offsets, dead, rows)``: a memory-map per shard of each, the
        sorted global rows that are tombstoned, and each shard's rows file, held open.

    """
    dim = int(manifest["dim"])
    vectors, offsets, rows_files = [], [], []
    for shard in manifest["shards"]:
        n, f = int(shard["rows"]), shard["files"]
        vectors.append(load_array(folder, f["vectors"], (n, dim), "float32"))
        off = load_array(folder, f["offsets"], (n + 1,), "int64")
        if int(off[0]) != 0 or int(off[-1]) != f["rows"]["bytes"]:
            raise IndexFormatError(f"{folder / f['offsets']['name']} does not match its rows file")
        offsets.append(off)
        rows_files.append(RowsFile(folder, f["rows"]))
    dead = np.zeros(0, np.int64)
    if manifest.get("tombstones"):
        rows = json.loads(read_small(folder, manifest["tombstones"]))["rows"]
        dead = np.unique(np.asarray(rows, np.int64))
    return vectors, offsets, dead, rows_files


def lookup_rows(
    rows_files: list[RowsFile],
    offsets: list[Any],
    starts: np.ndarray,
    wanted: np.ndarray,
) -> list[dict[str, Any] | None]:
    """Read the row records of global rows (``None`` for rows out of range, e.g. -1).

    Raises:
        IndexFormatError: a row's line is damaged.

    """
    out: list[dict[str, Any] | None] = [None] * len(wanted)
    shard_of = np.searchsorted(starts, wanted, side="right") - 1
    ok = (wanted >= 0) & (wanted < starts[-1])
    for s in np.unique(shard_of[ok]):
        rf, off = rows_files[s], offsets[s]
        for j in np.flatnonzero(ok & (shard_of == s)):
            local = int(wanted[j] - starts[s])
            line = rf.read(int(off[local]), int(off[local + 1]))
            out[j] = dict(parse_row(line, rf.path, local + 1), row=int(wanted[j]))
    return out


def iter_all_rows(rows_files: list[RowsFile]) -> Iterator[dict[str, Any]]:
    """Yield every row record in global order (tombstoned ones too), with its ``row``."""
    g = 0
    for rf in rows_files:
        for n, line in enumerate(rf.lines(), 1):
            yield dict(parse_row(line, rf.path, n), row=g)
            g += 1
