"""Webdataset tar shards, streamed one member at a time.

Memory is bounded by one member, whatever the shard holds: of a sample only
its best image candidate so far and its small label members (``.cls``,
``.json``, ``.txt``, at most :data:`META_MAX_BYTES` each) are kept; every
other member is passed over unread, and a member over ``max_file_mb`` is
never read. A shard that ends without tar's end-of-archive marker (cut at or
inside a member header, or inside a member's data) gives a skip record for
the shard naming the last sample read, so no sample is lost silently.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import IO, Any, Self, cast

from trainleak.archives._common import (
    IMAGE_EXTS,
    LABEL_FIELDS,
    META_EXTS,
    Read,
    member,
    open_regular,
    unsafe_key,
)
from trainleak.images import DEFAULT_MAX_FILE_MB, ImageSkip, Record

__all__ = ["META_MAX_BYTES", "iter_tar", "split_key"]

log = logging.getLogger(__name__)

#: Largest ``.cls``/``.json``/``.txt`` member read for a label (ours: labels are short).
META_MAX_BYTES = 1 << 20
_LABEL_EXTS = ("cls", "json", "txt")
_FALLBACK = len(IMAGE_EXTS)  # rank of a member that is neither image extension nor metadata


def split_key(name: str) -> tuple[str, str]:
    """Split a tar member name into webdataset ``(key, extension)``.

    Example:
        >>> split_key("000/abc.seg.png"), split_key("noext")
        (('000/abc', 'seg.png'), ('noext', ''))

    """
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class _EndAwareInfo(tarfile.TarInfo):
    """Records on its :class:`_Shard` why the member list ended (tarfile keeps it to itself)."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> Self:  # noqa: D102
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as err:
            if isinstance(tf, _Shard):
                tf.end = err
            raise


class _Shard(tarfile.TarFile):
    """A stream-mode tar that remembers the header error that ended it."""

    end: tarfile.HeaderError | None = None
    members: list[tarfile.TarInfo]  # tarfile's own list, not in its type stubs


#: What a damaged shard or its compression raises while it is read.
_DAMAGE = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def _decompressed(fh: IO[bytes]) -> IO[bytes]:
    """Return the shard's tar bytes, decompressed here when they start as gzip, bzip2 or xz.

    tarfile's own stream decompression (``r|gz``) slices its buffer once per
    10 kB block, which is quadratic when a small chunk inflates to megabytes:
    a 400 kB ``.tar.gz`` of 24 x 16 MB of zeros took 56 s to read, 4.6 s
    through :class:`gzip.GzipFile` (one shared core). The stdlib readers used
    here return what is asked for.
    """
    magic = fh.read(6)
    fh.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return cast(IO[bytes], gzip.GzipFile(fileobj=fh, mode="rb"))
    if magic[:3] == b"BZh":
        return cast(IO[bytes], bz2.BZ2File(fh))
    if magic == b"\xfd7zXZ\x00":
        return cast(IO[bytes], lzma.LZMAFile(fh))
    return fh


#: Why a header read ended the member list, for each of tarfile's silent endings
#: (by class name: they are not in tarfile's type stubs). EOFHeaderError is the marker.
_ENDINGS = {
    "EmptyHeaderError": "ends without tar's end-of-archive marker (cut at a member header)",
    "TruncatedHeaderError": "is cut inside a member header",
    "InvalidHeaderError": "has a damaged member header",
}


@dataclass
class _Sample:
    """The members of one tar sample seen so far, holding only what may be used."""

    key: str
    unsafe: str | None
    exts: list[str] = field(default_factory=list)
    image: tuple[int, str, bytes | str] | None = None  # (rank, extension, bytes or reason)
    meta: dict[str, bytes | str] = field(default_factory=dict)


def iter_tar(shard: Record, max_file_mb: float = DEFAULT_MAX_FILE_MB) -> Iterator[Read]:
    """Stream a webdataset shard, one sample at a time (see the module docstring)."""
    limit = int(max_file_mb * 1024 * 1024)
    seen: set[str] = set()
    sample: _Sample | None = None
    count = 0
    with open_regular(shard.path) as raw, _decompressed(raw) as fh:
        try:
            tar = _Shard.open(fileobj=fh, mode="r|", tarinfo=_EndAwareInfo)
        except _DAMAGE as err:
            raise ImageSkip(f"not a tar archive: {err}") from None
        try:
            while (info := tar.next()) is not None:
                tar.members.clear()  # stream mode keeps every header otherwise
                count += 1
                if info.isdir():
                    continue
                key, ext = split_key(info.name)
                if sample is None or key != sample.key:
                    if sample is not None:
                        yield _finish(shard, sample, seen)
                    sample = _Sample(key, unsafe_key(key))
                _take(tar, info, ext, sample, limit, max_file_mb)
        except _DAMAGE as err:
            where = f"the shard ends inside {sample.key!r}" if sample else "the shard is damaged"
            log.warning("%s: %s (%s); the rest of the shard is not read", shard.id, where, err)
            if sample is not None:
                reason = f"truncated tar member ({where}: {err}); the rest of the shard is lost"
                yield member(shard, sample.key, None), reason
            return
        finally:
            tar.close()
    if sample is not None:
        yield _finish(shard, sample, seen)
    ending = _ENDINGS.get(type(tar.end).__name__) if tar.end is not None else None
    if ending is not None:
        last = f"after sample {sample.key!r}" if sample else "before any sample"
        log.warning("%s: truncated tar: the shard %s %s", shard.id, ending, last)
        reason = (
            f"truncated tar: the shard {ending} {last} ({count} members read); any samples "
            "after it are lost: copy the shard again"
        )
        yield shard, reason


def _take(
    tar: tarfile.TarFile, info: tarfile.TarInfo, ext: str, sample: _Sample, limit: int, mb: float
) -> None:
    """Keep what the sample may use of one member; pass over the rest unread."""
    sample.exts.append(ext)
    if sample.unsafe is not None:
        return
    if ext in _LABEL_EXTS:
        if ext not in sample.meta:
            too_big = f"label member larger than {META_MAX_BYTES:,} bytes"
            sample.meta[ext] = _read(tar, info, min(limit, META_MAX_BYTES), too_big)
        return
    if ext in META_EXTS:
        return
    rank = IMAGE_EXTS.index(ext) if ext in IMAGE_EXTS else _FALLBACK
    if sample.image is not None and sample.image[0] <= rank:
        return
    sample.image = None  # dropped before the better one is read: one member held at a time
    too_big = f"member larger than {mb:g} MB (--max-file-mb)"
    sample.image = (rank, ext, _read(tar, info, limit, too_big))


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int, too_big: str) -> bytes | str:
    """Return a member's bytes, or why they are not read (a link, or over ``limit`` bytes)."""
    if not info.isfile():
        return "not a regular file: a tar link or special member"
    if info.size > limit:
        return too_big
    fh = tar.extractfile(info)
    assert fh is not None  # a regular member always has a file object
    return fh.read()


def _finish(shard: Record, sample: _Sample, seen: set[str]) -> Read:
    """Turn one tar sample's members into a record with its image bytes, or a skip."""
    if sample.unsafe is not None:
        return member(shard, sample.key, None), sample.unsafe
    label = _tar_label(sample.meta)
    rec = member(shard, sample.key, label if label is not None else shard.label)
    if sample.key in seen:
        return rec, f"duplicate key {sample.key!r} in the shard (its members are not adjacent)"
    seen.add(sample.key)
    if sample.image is None:
        return rec, f"no image in the sample (members: {', '.join(sorted(set(sample.exts)))})"
    data = sample.image[2]
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
