"""Sources: what a user points at becomes records and decoded RGB images.

A source is a folder (searched recursively), a glob pattern, or a list file
(``.txt`` with one path per line, or ``.csv`` with a ``path`` column and an
optional ``identity`` column; either may start with a UTF-8 byte-order mark,
as spreadsheets save "CSV UTF-8"). A list file names files: the same file
named twice (``a.png`` and ``./a.png``, or through a symlink) is one record,
and the repeats are kept in :attr:`Records.duplicates`. A folder's entries are
its names: symlinks in a folder stay records of their own (datasets are often
assembled so), and files with the same content stay separate records.

A listed file named ``*.tar`` or ``*.parquet`` is a shard whose members are the
inputs: :func:`trainleak.archives.iter_inputs` streams them.

In a folder whose images sit in sub-folders, the first sub-folder under the
root is the identity label (``root/alice/1.jpg`` -> ``alice``), the layout face
datasets use.

Decoding goes by content, never by extension, and only in the documented
formats (:mod:`trainleak.decoding`). A file that cannot be used is
not an error: :func:`decode_image` raises :class:`ImageSkip` with a one-line
reason and the pipeline turns it into a :class:`SkipRecord`. Only regular
files are read, never more than ``max_file_mb`` of one (see :func:`read_bytes`):
a FIFO, a device such as ``/dev/zero`` or a huge sparse file named ``x.png`` is
a skip, not a hang or an out-of-memory.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Both live in light modules so the CLI can use them without numpy; re-exported here.
from trainleak.config import DEFAULT_MAX_FILE_MB as DEFAULT_MAX_FILE_MB
from trainleak.config import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS
from trainleak.decoding import FORMATS as FORMATS
from trainleak.decoding import ImageSkip as ImageSkip
from trainleak.decoding import decode_image as decode_image
from trainleak.errors import SourceError as SourceError

log = logging.getLogger(__name__)

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Record:
    """One input: ``id`` is the path as found under the root the user gave.

    A member of a tar shard or a row of a parquet file (see
    :mod:`trainleak.archives`) has no file of its own: its ``id`` and ``path``
    are ``<shard>/<key>`` and, once read, ``data`` carries its bytes.
    """

    id: str
    path: Path
    label: str | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class SkipRecord:
    """A file (or face) left out of a run, with a one-line reason."""

    set: str
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """Return the JSON form used in ``report.json``."""
        return {"set": self.set, "path": self.path, "reason": self.reason}


class Records(list[Record]):
    """The records of a source (a list), and the list-file entries left out as repeats.

    Attributes:
        duplicates: ``(repeated id, kept id)`` per list-file entry left out
            because another entry names the same file; the kept record is in
            the list, the repeat is not.

    """

    def __init__(
        self, records: Iterable[Record] = (), duplicates: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(records)
        self.duplicates: list[tuple[str, str]] = list(duplicates or [])


def list_records(source: str | os.PathLike[str], identity_depth: int = 1) -> Records:
    """Expand a folder, glob or list file into records, sorted by id.

    Hidden files and folders (names starting with ``.``) are not inputs and are
    left out of folder listings; every other file is listed, image or not, so
    that a non-image shows up as a skip record rather than vanishing.

    A list file that names one file more than once (``a.png`` and ``./a.png``,
    or a symlink to it) gives one record, so that no file is counted twice:
    the file's own path if listed, else the smallest id. The repeats are
    logged and kept in ``duplicates``.

    Args:
        source: a folder, a glob pattern (``*``, ``?``, ``[``), or a ``.txt`` /
            ``.csv`` list file.
        identity_depth: in a folder, which level of sub-folders names the
            person: 1 = the first (``root/alice/1.jpg``), 2 = the second
            (``root/batch1/alice/1.jpg``), -1 = each image's own folder. Files
            above that level have no label. When images sit deeper than the
            chosen level a warning says so (people may be merged).

    Returns:
        Records sorted by id, so input order never changes results.
        File names that are not valid UTF-8 keep their bytes as Python's
        ``surrogateescape`` code points (``os.fsdecode``), so no name is lost.

    Raises:
        SourceError: the path does not exist, a glob matches nothing, or a CSV
            list has no ``path`` column.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "alice").mkdir(); _ = (root / "alice" / "1.png").write_bytes(b"")
        >>> [(r.id.endswith("1.png"), r.label) for r in list_records(root)]
        [(True, 'alice')]

    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        records = _folder_records(text, identity_depth)
    elif path.is_file() and path.suffix.lower() in (".txt", ".csv", ".lst"):
        return _unique_files(_list_file_records(path), text)
    elif path.is_file():
        records = [Record(text, path, None)]
    elif _GLOB_CHARS & set(text):
        matches = sorted(glob.glob(text, recursive=True))
        files = [m for m in matches if os.path.isfile(m)]
        if not files:
            raise SourceError(f"the pattern {text!r} matches no files; check the path and quoting")
        records = [Record(m, Path(m), None) for m in files]
    else:
        raise SourceError(
            f"{text!r} does not exist: give a folder, a glob pattern, or a .txt/.csv list of paths"
        )
    return Records(sorted(records, key=lambda r: r.id))


def _unique_files(records: list[Record], source: str) -> Records:
    """Keep one record per file (by resolved path); note the repeats.

    The record kept is the file's own path if listed (not a symlink to it),
    else the smallest id: chosen from the entries, never from their order.
    """
    # realpath, not resolve(): it never raises (missing files, symlink loops),
    # and those must reach the embedder to become skip records.
    real = {rec.id: os.path.realpath(rec.path) for rec in records}
    kept: dict[str, Record] = {}
    duplicates: list[tuple[str, str]] = []
    for rec in sorted(records, key=lambda r: (os.path.abspath(r.path) != real[r.id], r.id)):
        key = real[rec.id]
        if key in kept:
            duplicates.append((rec.id, kept[key].id))
        else:
            kept[key] = rec
    if duplicates:
        log.warning(
            "%s names %d file(s) more than once (e.g. %r is %r); each file is used once",
            source,
            len(duplicates),
            *duplicates[0],
        )
    return Records(sorted(kept.values(), key=lambda r: r.id), sorted(duplicates))


def _folder_records(root: str, identity_depth: int = 1) -> list[Record]:
    if identity_depth == 0 or identity_depth < -1:
        raise SourceError(f"identity depth must be 1 or more, or -1, got {identity_depth}")
    records = []
    deeper: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        parts = () if rel_dir == "." else Path(rel_dir).parts
        if identity_depth == -1:
            label = parts[-1] if parts else None
        else:
            label = parts[identity_depth - 1] if len(parts) >= identity_depth else None
            if len(parts) > identity_depth and filenames and not deeper:
                deeper.append(os.path.join(rel_dir, sorted(filenames)[0]))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            records.append(Record(full, Path(full), label))
    if deeper and any(r.label for r in records):
        log.warning(
            "%s: identities are taken from sub-folder level %d, but images sit deeper "
            "(e.g. %s), so people in different deeper folders may be merged; if the "
            "person's folder is deeper, pass --identity-depth N (or -1 for each image's folder)",
            root,
            identity_depth,
            deeper[0],
        )
    return records


# List files: utf-8-sig because spreadsheets save "CSV UTF-8" with a byte-order
# mark; surrogateescape so that a name that is not UTF-8 reads as the same str
# os.fsdecode gives it (the file opens, and its bytes are kept), not an error.
_NAMES = "surrogateescape"


def _list_file_records(list_path: Path) -> list[Record]:
    base = list_path.parent

    def resolve(entry: str) -> Path:
        p = Path(entry)
        return p if p.is_absolute() else base / p

    if list_path.suffix.lower() == ".csv":
        with open(list_path, newline="", encoding="utf-8-sig", errors=_NAMES) as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "path" not in fields:
                raise SourceError(
                    f"{list_path} has no 'path' column (columns: {fields}); "
                    "add a header line 'path,identity'"
                )
            rows = [
                {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                for row in reader
            ]
        return [
            Record(str(resolve(r["path"])), resolve(r["path"]), r.get("identity") or None)
            for r in rows
            if r.get("path")
        ]
    lines = list_path.read_text(encoding="utf-8-sig", errors=_NAMES).splitlines()
    entries = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return [Record(str(resolve(e)), resolve(e), None) for e in entries]


_NOT_REGULAR = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_regular(st: os.stat_result, max_file_mb: float) -> None:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise ImageSkip("is a directory, not a file")
    if not stat.S_ISREG(mode):
        what = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
        raise ImageSkip(f"not a regular file: {what}")
    if st.st_size > max_file_mb * 1024 * 1024:
        raise ImageSkip(f"file larger than {max_file_mb:g} MB (--max-file-mb)")


def read_bytes(path: Path, max_file_mb: float = DEFAULT_MAX_FILE_MB) -> bytes:
    """Read a whole regular file, turning anything else into an :class:`ImageSkip` reason.

    The file is checked before it is read: a FIFO would block forever, a
    device such as ``/dev/zero`` never ends, and a huge (or sparse) file would
    be read whole only to be refused. Symlinks are followed.

    Args:
        path: the file.
        max_file_mb: files larger than this many megabytes are skipped unread.

    Raises:
        ImageSkip: the file is missing, unreadable, not a regular file, or too large.

    Example:
        >>> read_bytes(Path("/dev/null"))
        Traceback (most recent call last):
        ...
        trainleak.decoding.ImageSkip: not a regular file: a character device

    """
    limit = int(max_file_mb * 1024 * 1024)
    try:
        _check_regular(os.stat(path), max_file_mb)
        # O_NONBLOCK: should a FIFO be swapped in after the check, opening it
        # does not wait for a writer; fstat below then refuses it.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as fh:
            _check_regular(os.fstat(fh.fileno()), max_file_mb)
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise ImageSkip("file not found") from None
    except IsADirectoryError:
        raise ImageSkip("is a directory, not a file") from None
    except PermissionError:
        raise ImageSkip("unreadable: permission denied") from None
    except OSError as err:
        raise ImageSkip(f"unreadable: {err.strerror or err}") from None
    if len(data) > limit:  # it grew after the check
        raise ImageSkip(f"file larger than {max_file_mb:g} MB (--max-file-mb)")
    return data


def load_image(
    path: str | os.PathLike[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
) -> np.ndarray:
    """Read and decode one file; see :func:`read_bytes` and :func:`decode_image`."""
    return decode_image(read_bytes(Path(path), max_file_mb), max_pixels)
