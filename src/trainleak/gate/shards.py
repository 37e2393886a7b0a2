"""The files of a trainleak index: manifest, shards, tombstones, and how they are committed.

Every file is written under a temporary name, flushed and fsynced, then renamed
into place; a commit then replaces ``manifest.json`` in one ``os.replace``.
Readers see only files the manifest lists, so an index is always the one
before a change or the one after it, whatever interrupts the writer. Nothing
is pickled: vectors and offsets are ``.npy`` files read with
``allow_pickle=False``, rows are JSON lines. JSON is written ASCII-only, so
file names that are not UTF-8 (surrogate escapes in Python) round-trip
exactly. See :mod:`trainleak.gate.index` for the format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from trainleak.encoders.base import EncoderInfo
from trainleak.errors import IndexFormatError, TrainleakError

log = logging.getLogger(__name__)

FORMAT = "trainleak-index"
#: The format this trainleak writes and the newest it reads.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
#: Test hook: seconds to sleep after a change's files are on disk and before
#: the manifest commits it (tests kill the writer there with SIGKILL).
COMMIT_DELAY_ENV = "TRAINLEAK_INDEX_COMMIT_DELAY"

#: Names of the files an index owns; anything else in the folder is left alone.
_OWNED = re.compile(
    r"^(vectors-\d{5}\.npy|rows-\d{5}\.jsonl|offsets-\d{5}\.npy|tombstones-\d{5}\.json"
    r"|holdout-vectors\.npy|holdout-rows\.jsonl|\..+\.tmp-[0-9a-f]{32})$"
)


def shard_names(number: int) -> dict[str, str]:
    """File names of shard ``number``.

    Example:
        >>> shard_names(3)["vectors"]
        'vectors-00003.npy'

    """
    return {
        "vectors": f"vectors-{number:05d}.npy",
        "rows": f"rows-{number:05d}.jsonl",
        "offsets": f"offsets-{number:05d}.npy",
    }


class _Hashing:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        self.size += len(memoryview(data).cast("B"))
        return self.fh.write(data)


def fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file(folder: Path, name: str, write: Callable[[Any], None]) -> dict[str, Any]:
    """Write ``folder/name`` atomically through ``write(fh)``; return its manifest entry.

    Returns:
        ``{"name", "bytes", "sha256"}`` of the file as written.

    """
    tmp = folder / f".{name}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as fh:
            hashing = _Hashing(fh)
            write(hashing)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"name": name, "bytes": hashing.size, "sha256": hashing.sha.hexdigest()}


def write_array(folder: Path, name: str, array: np.ndarray) -> dict[str, Any]:
    """Write a ``.npy`` file atomically (no pickle)."""
    return write_file(folder, name, lambda fh: np.save(fh, array, allow_pickle=False))


def write_jsonl(folder: Path, name: str, rows: Sequence[dict[str, Any]]) -> tuple[dict, np.ndarray]:
    """Write JSON lines atomically; return the entry and the ``len(rows) + 1`` line offsets."""
    lines = [json.dumps(r, sort_keys=True).encode() + b"\n" for r in rows]
    offsets = np.zeros(len(lines) + 1, np.int64)
    np.cumsum([len(line) for line in lines], out=offsets[1:])

    def write(fh: Any) -> None:
        for line in lines:
            fh.write(line)

    return write_file(folder, name, write), offsets


def write_shard(
    folder: Path, number: int, vectors: np.ndarray, rows: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Write one shard (vectors, rows, line offsets); return its manifest entry."""
    names = shard_names(number)
    rows_entry, offsets = write_jsonl(folder, names["rows"], rows)
    files = {
        "vectors": write_array(folder, names["vectors"], np.ascontiguousarray(vectors, np.float32)),
        "rows": rows_entry,
        "offsets": write_array(folder, names["offsets"], offsets),
    }
    return {"number": number, "rows": len(rows), "files": files}


def commit(folder: Path, manifest: dict[str, Any]) -> None:
    """Make ``manifest`` the index's state: the one atomic step of every change."""
    fsync_dir(folder)  # the new files' names are durable before anything points at them
    delay = float(os.environ.get(COMMIT_DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    write_file(folder, MANIFEST, lambda fh: fh.write(text.encode()))
    fsync_dir(folder)


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read and check ``manifest.json``.

    Raises:
        IndexFormatError: no manifest, unreadable JSON, another format, or a
            format version newer than this trainleak reads.

    """
    path = folder / MANIFEST
    if not path.is_file():
        raise IndexFormatError(
            f"{folder} is not a trainleak index (no {MANIFEST}): build one with "
            f"'trainleak index build --train DIR --out {folder}'"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexFormatError(f"{path} is unreadable ({err}): rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a trainleak index manifest: rebuild the index")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{folder} has index format {version!r}, written by a newer trainleak "
            f"(this one reads format {FORMAT_VERSION} and older): upgrade trainleak"
        )
    return manifest


def _check_size(folder: Path, entry: dict[str, Any]) -> Path:
    path = folder / entry["name"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise IndexFormatError(
            f"{path} is missing but the manifest lists it: the index is damaged; "
            "restore it from a copy or rebuild it"
        ) from None
    if size != entry["bytes"]:
        raise IndexFormatError(
            f"{path} has {size} bytes but the manifest says {entry['bytes']}: the file is "
            "truncated or was changed; restore the index from a copy or rebuild it"
        )
    return path


def load_array(folder: Path, entry: dict[str, Any], shape: tuple[int, ...], dtype: str) -> Any:
    """Memory-map a listed ``.npy`` after checking its size, header, shape and dtype."""
    path = _check_size(folder, entry)
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


def read_small(folder: Path, entry: dict[str, Any]) -> bytes:
    """Read a small listed file whole and check its sha256."""
    path = _check_size(folder, entry)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise IndexFormatError(
            f"{path} does not match its checksum in the manifest: the file is corrupted; "
            "restore the index or rebuild it"
        )
    return data


def iter_jsonl(folder: Path, entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield every row of a listed JSON-lines file."""
    path = _check_size(folder, entry)
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            yield parse_row(line, path, n)


def parse_row(line: bytes, path: Path, n: int) -> dict[str, Any]:
    """Parse one row line; a damaged one is an :class:`IndexFormatError`."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        row = None
    if not isinstance(row, dict) or "id" not in row:
        raise IndexFormatError(
            f"{path} line {n} is not a valid row: the index is corrupted; "
            "run 'trainleak index info IDX --verify', restore it or rebuild it"
        )
    return row


def verify_files(folder: Path, entries: list[dict[str, Any]]) -> list[str]:
    """Hash every listed file in full; return one line per file that does not match."""
    problems = []
    for entry in entries:
        path = folder / entry["name"]
        try:
            _check_size(folder, entry)
        except IndexFormatError as err:
            problems.append(str(err))
            continue
        sha = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                sha.update(chunk)
        if sha.hexdigest() != entry["sha256"]:
            problems.append(f"{path}: sha256 does not match the manifest (corrupted)")
    return problems


def listed_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file entry the manifest lists (shards, tombstones, holdout)."""
    entries = [f for shard in manifest["shards"] for f in shard["files"].values()]
    if manifest.get("tombstones"):
        entries.append(manifest["tombstones"])
    if manifest.get("holdout"):
        entries.extend(manifest["holdout"]["files"].values())
    return entries


def remove_unlisted(folder: Path, manifest: dict[str, Any]) -> None:
    """Delete index files the manifest does not list (left by a crash or superseded)."""
    keep = {e["name"] for e in listed_files(manifest)}
    for path in folder.iterdir():
        if _OWNED.match(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)


@contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Hold the index's writer lock (one change at a time; readers never wait)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        yield
        return
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainleakError(
                f"another process is changing the index {folder} (it holds {LOCK}): "
                "wait for it to finish and run this again"
            ) from None
        yield
    finally:
        os.close(fd)


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
    )
    if info.cache_key() != enc.get("cache_key"):
        raise IndexFormatError(f"{folder / MANIFEST}: its encoder entry is inconsistent; rebuild")
    return info


def open_shards(folder: Path, manifest: dict[str, Any]) -> tuple[list[Any], list[Any], Any]:
    """Memory-map every shard's vectors and offsets; read the tombstoned rows.

    Returns:
        ``(vectors, offsets, dead)``: a memory-map per shard of each, and the
        sorted global rows that are tombstoned.

    """
    dim = int(manifest["dim"])
    vectors, offsets = [], []
    for shard in manifest["shards"]:
        n, f = int(shard["rows"]), shard["files"]
        vectors.append(load_array(folder, f["vectors"], (n, dim), "float32"))
        off = load_array(folder, f["offsets"], (n + 1,), "int64")
        if int(off[0]) != 0 or int(off[-1]) != f["rows"]["bytes"]:
            raise IndexFormatError(f"{folder / f['offsets']['name']} does not match its rows file")
        offsets.append(off)
    dead = np.zeros(0, np.int64)
    if manifest.get("tombstones"):
        rows = json.loads(read_small(folder, manifest["tombstones"]))["rows"]
        dead = np.unique(np.asarray(rows, np.int64))
    return vectors, offsets, dead


def lookup_rows(
    folder: Path,
    manifest: dict[str, Any],
    offsets: list[Any],
    starts: np.ndarray,
    wanted: np.ndarray,
) -> list[dict[str, Any] | None]:
    """Read the row records of global rows (``None`` for rows out of range, e.g. -1).

    Each shard's rows file is opened once per call, so calls from several
    threads never share a file position.
    """
    out: list[dict[str, Any] | None] = [None] * len(wanted)
    shard_of = np.searchsorted(starts, wanted, side="right") - 1
    ok = (wanted >= 0) & (wanted < starts[-1])
    for s in np.unique(shard_of[ok]):
        path = folder / manifest["shards"][s]["files"]["rows"]["name"]
        off = offsets[s]
        with open(path, "rb") as fh:
            for j in np.flatnonzero(ok & (shard_of == s)):
                local = int(wanted[j] - starts[s])
                fh.seek(int(off[local]))
                line = fh.read(int(off[local + 1] - off[local]))
                out[j] = dict(parse_row(line, path, local + 1), row=int(wanted[j]))
    return out


def iter_all_rows(folder: Path, manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield every row record in global order (tombstoned ones too), with its ``row``."""
    g = 0
    for shard in manifest["shards"]:
        for row in iter_jsonl(folder, shard["files"]["rows"]):
            yield dict(row, row=g)
            g += 1
