"""What the tar and parquet readers share: names, the member record, safe keys, opening."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

from trainleak.images import ImageSkip, Record

__all__ = [
    "IMAGE_COLUMNS",
    "IMAGE_EXTS",
    "LABEL_FIELDS",
    "META_EXTS",
    "PARQUET_SUFFIXES",
    "TAR_SUFFIXES",
    "Read",
    "is_archive",
    "member",
    "open_regular",
    "unsafe_key",
]

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


def member(shard: Record, key: str, label: str | None, data: bytes | None = None) -> Record:
    """Return the record of one member: id and path ``<shard id>/<key>``."""
    ident = f"{shard.id}/{key}"
    return Record(ident, Path(ident), label, data)


def unsafe_key(key: str) -> str | None:
    """Why a member's key cannot name a file under a folder, or ``None`` when it can.

    A key becomes a path (``dedup --copy-kept`` writes members out as files,
    ids are split back into shard and key), so a key that is absolute, climbs
    with ``..``, is empty or holds a NUL byte is refused where it is read.

    Example:
        >>> unsafe_key("000/abc"), unsafe_key("../../x")
        (None, "unsafe member name '../../x': it climbs out of the shard ('..')")

    """
    if not key or key.strip("/") == "":
        return f"unsafe member name {key!r}: empty"
    if "\x00" in key:
        return f"unsafe member name {key!r}: holds a NUL byte"
    if key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        return f"unsafe member name {key!r}: an absolute path"
    if any(part == ".." for part in key.replace("\\", "/").split("/")):
        return f"unsafe member name {key!r}: it climbs out of the shard ('..')"
    return None


def open_regular(path: Path) -> IO[bytes]:
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
