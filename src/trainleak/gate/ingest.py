"""Stream images into an index's encoder in batches, with bounded memory.

``check`` and ``index add`` read folders that may hold millions of files, so
nothing here lists a whole tree first: folders are walked lazily (each folder's
names sorted, hidden ones left out, the first sub-folder under the root as the
identity label, as :func:`trainleak.images.list_records` does), files are read,
hashed and embedded a batch at a time through the embedding cache, and a file
that cannot be used becomes a skip with its one-line reason. Webdataset
``.tar`` shards and parquet files are streamed member by member
(:mod:`trainleak.archives`), each member an input of its own
(``shard.tar/key``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trainleak.archives import iter_inputs
from trainleak.embedding import Embedder
from trainleak.images import Record, list_records
from trainleak.store import content_hash

#: Bytes of encoded images held at once, whatever the batch size.
BATCH_BYTES = 256 * 2**20

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Item:
    """One input: the record, the person it belongs to, and what embedding gave.

    ``rows`` is ``(m, dim)`` float32 (one row per face found) or ``None`` with
    the skip ``reason``; ``digest`` is the file's content hash (``None`` when
    the file could not be read).
    """

    record: Record
    person: str
    digest: str | None
    rows: np.ndarray | None
    reason: str


def iter_records(sources: PathLike | Sequence[PathLike]) -> Iterator[tuple[Record, str]]:
    """Yield ``(record, person)`` for every file of the sources, folders walked lazily.

    ``person`` is the record's identity label (its first sub-folder under the
    root) or, without one, the source as given: a folder of one person's
    photos is that person.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "bob").mkdir(); _ = (root / "bob" / "1.png").write_bytes(b"")
        >>> [(r.label, p) for r, p in iter_records(root)]
        [('bob', 'bob')]

    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    for source in sources:
        text = os.fspath(source)
        if os.path.isdir(text):
            for rec in _walk(text):
                yield rec, rec.label or text
        else:
            for rec in list_records(text):
                yield rec, rec.label or text


def _walk(root: str) -> Iterator[Record]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        label = None if rel_dir == "." else Path(rel_dir).parts[0]
        for name in sorted(filenames):
            if not name.startswith("."):
                full = os.path.join(dirpath, name)
                yield Record(full, Path(full), label)


def embed_items(
    embedder: Embedder,
    records: Iterable[tuple[Record, str]],
    batch: int,
    drop: Callable[[str], bool] | None = None,
) -> Iterator[list[Item]]:
    """Read, hash and embed records a batch at a time; yield each batch's items in order.

    Args:
        embedder: embeds through its cache and workers.
        records: ``(record, person)`` pairs, e.g. from :func:`iter_records`.
        batch: records per batch (also capped by :data:`BATCH_BYTES`).
        drop: called with each readable file's content hash; files for which it
            returns ``True`` are not embedded and not yielded (``index add``
            leaves out content already in the index this way).

    """
    pending: list[tuple[Record, str, str | None, bytes | str]] = []
    size = 0
    # The total is unknown while a folder is walked lazily: the bar counts and times.
    bar = tqdm(desc="check", unit="img", disable=not embedder.progress, mininterval=0.5)
    with bar:
        for rec, person, data, reason in _read(records, embedder.max_file_mb):
            bar.update(1)
            if data is None:
                pending.append((rec, person, None, reason))
            else:
                digest = content_hash(data)
                if drop is not None and drop(digest):
                    continue
                pending.append((rec, person, digest, data))
                size += len(data)
            if len(pending) >= batch or size >= BATCH_BYTES:
                yield _embed(embedder, pending)
                pending, size = [], 0
        if pending:
            yield _embed(embedder, pending)


def _read(
    records: Iterable[tuple[Record, str]], max_file_mb: float
) -> Iterator[tuple[Record, str, bytes | None, str]]:
    """Yield ``(record, person, bytes or None, skip reason)``: files whole, shards by member.

    Reading is :func:`trainleak.archives.iter_inputs`: a webdataset ``.tar``
    or a parquet file is streamed member by member; a member's person is its
    own label, else the shard's.
    """
    for rec, person in records:
        for item, reason in iter_inputs([rec], max_file_mb):
            data, item = item.data, replace(item, data=None)
            who = item.label or person
            if reason is None and data is not None:
                yield item, who, data, ""
            else:
                yield item, who, None, reason or "unreadable member"


def _embed(
    embedder: Embedder, pending: list[tuple[Record, str, str | None, bytes | str]]
) -> list[Item]:
    blobs = {d: data for _, _, d, data in pending if d is not None and isinstance(data, bytes)}
    # remember=False: new embeddings go to the cache folder, not into memory, so a
    # stream of a million files holds one batch at a time.
    results = embedder.embed_encoded(blobs, remember=False) if blobs else {}
    items = []
    for rec, person, digest, data in pending:
        if digest is None:
            items.append(Item(rec, person, None, None, str(data)))
            continue
        res = results[digest]
        if isinstance(res, str):
            items.append(Item(rec, person, digest, None, res))
        else:
            items.append(Item(rec, person, digest, np.asarray(res, np.float32), ""))
    return items


def embed_blobs(embedder: Embedder, named: Sequence[tuple[str, bytes]]) -> list[Item]:
    """Embed in-memory encoded images ``(name, bytes)`` (uploads); one item each, in order."""
    pending: list[tuple[Record, str, str | None, bytes | str]] = []
    for name, data in named:
        rec = Record(name, Path(name), None)
        if not data:
            pending.append((rec, name, None, "empty file (0 bytes)"))
        else:
            pending.append((rec, name, content_hash(data), data))
    return _embed(embedder, pending) if pending else []
