"""The files of a trainleak index: manifest, shards, tombstones, and how they are committed.

Every file is written under a temporary name, flushed and fsynced, then renamed
into place; a commit then replaces ``manifest.json`` in one ``os.replace``.
Readers see only files the manifest lists, so an index is always the one
before a change or the one after it, whatever interrupts the writer. Nothing
is pickled: vectors and offsets are ``.npy`` files read with
``allow_pickle=False``, rows are JSON lines. JSON is written ASCII-only, so
file names that are not UTF-8 (surrogate escapes in Python) round-trip
exactly. See :mod:`trainleak.gate.reader` for the format.
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

from trainleak.errors import AuditInputError, IndexFormatError, TrainleakError

log = logging.getLogger(__name__)

FORMAT = "trainleak-index"
#: The format this trainleak writes and the newest it reads.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
#: Rows checked for finite values at a time (bounds the memory of the check).
FINITE_ROWS = 65536
#: Test hook: seconds to sleep after a change's files are on disk and before
#: the manifest commits it (tests kill the writer there with SIGKILL).
COMMIT_DELAY_ENV = "TRAINLEAK_INDEX_COMMIT_DELAY"

#: Names of the files an index owns; anything else in the folder is left alone.
#: (Shards written before names carried a generation are ``vectors-NNNNN.npy``.)
_OWNED = re.compile(
    r"^((vectors|offsets)-(\d{5}-)?\d{5}\.npy|rows-(\d{5}-)?\d{5}\.jsonl|tombstones-\d{5}\.json"
    r"|holdout-vectors\.npy|holdout-rows\.jsonl|\..+\.tmp-[0-9a-f]{32})$"
)

#: Files derived from a shard's vectors and named after them, ``<vectors name>.<more>``
#: (the copy encoder's descriptor index ``<vectors name>.copy-<digest>.faiss``, see
#: :mod:`trainleak.local_search`), or their temporary names while written
#: (``.<vectors name>.<more>``): they belong to their shard and go when it goes.
_DERIVED = re.compile(r"^\.?(vectors-(?:\d{5}-)?\d{5}\.npy)\..+$")


def shard_names(number: int, generation: int) -> dict[str, str]:
    """File names of shard ``number`` written by the change that commits ``generation``.

    The generation is in the name so that no name is ever used twice in an
    index's life: a reader opened before ``compact`` + ``add`` still holds the
    files it opened, and never finds another shard's rows under a name it knows.

    Example:
        >>> shard_names(3, 12)["vectors"]
        'vectors-00012-00003.npy'

    """
    return {
        "vectors": f"vectors-{generation:05d}-{number:05d}.npy",
        "rows": f"rows-{generation:05d}-{number:05d}.jsonl",
        "offsets": f"offsets-{generation:05d}-{number:05d}.npy",
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


def nonfinite_rows(vectors: np.ndarray) -> np.ndarray:
    """Return the rows of ``(n, dim)`` vectors holding a NaN or an infinity, a block at a time.

    Example:
        >>> nonfinite_rows(np.array([[0.0, 1.0], [np.nan, 0.0]], np.float32)).tolist()
        [1]

    """
    bad = [
        b0 + np.flatnonzero(~np.isfinite(np.asarray(vectors[b0 : b0 + FINITE_ROWS])).all(1))
        for b0 in range(0, len(vectors), FINITE_ROWS)
    ]
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


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
    folder: Path,
    number: int,
    vectors: np.ndarray,
    rows: Sequence[dict[str, Any]],
    generation: int,
) -> dict[str, Any]:
    """Write one shard (vectors, rows, line offsets); return its manifest entry.

    Every vector must be finite: a NaN would make its row's similarities NaN
    and could hide that training image from every check. The entry records
    ``finite: true`` beside the files' checksums (:meth:`Index.verify` checks both).

    Raises:
        AuditInputError: a vector holds a NaN or an infinity.

    """
    vectors = np.ascontiguousarray(vectors, np.float32)
    bad = nonfinite_rows(vectors)
    if len(bad):
        shown = ", ".join(str(rows[int(j)].get("id")) for j in bad[:3])
        raise AuditInputError(
            f"{len(bad)} vector(s) hold NaN or infinite values (e.g. {shown}): an index never "
            "stores them; fix the encoder or the vectors given, or leave those images out"
        )
    names = shard_names(number, generation)
    rows_entry, offsets = write_jsonl(folder, names["rows"], rows)
    files = {
        "vectors": write_array(folder, names["vectors"], vectors),
        "rows": rows_entry,
        "offsets": write_array(folder, names["offsets"], offsets),
    }
    return {"number": number, "rows": len(rows), "finite": True, "files": files}


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


def check_size(folder: Path, entry: dict[str, Any]) -> Path:
    """Return the path of a listed file after checking it exists with the listed size."""
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


def read_small(folder: Path, entry: dict[str, Any]) -> bytes:
    """Read a small listed file whole and check its sha256."""
    path = check_size(folder, entry)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise IndexFormatError(
            f"{path} does not match its checksum in the manifest: the file is corrupted; "
            "restore the index or rebuild it"
        )
    return data


def iter_jsonl(folder: Path, entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield every row of a listed JSON-lines file."""
    path = check_size(folder, entry)
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
            check_size(folder, entry)
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
    """Delete index files the manifest does not list (left by a crash or superseded).

    A file derived from a shard (its descriptor index beside it) goes with the
    shard: ``compact`` retires shards, and a refused ``add`` removes the
    shards it wrote; nothing else reads those files again.
    """
    keep = {e["name"] for e in listed_files(manifest)}
    for path in folder.iterdir():
        if _OWNED.match(path.name):
            if path.name not in keep:
                path.unlink(missing_ok=True)
            continue
        derived = _DERIVED.match(path.name)
        if derived and derived.group(1) not in keep:
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
