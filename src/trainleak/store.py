"""On-disk embedding cache, keyed by encoder identity and file content.

Layout: ``<root>/<encoder cache key>/shard-*.npz``. Each shard holds, for a
batch of distinct file-content hashes, either the file's embedding rows or the
reason it could not be embedded (e.g. "no face detected"), so that a warm run
recomputes nothing. Decoding failures are not cached: they are cheap to find
again and the file may be fixed.

A shard is written to a temporary name, flushed to disk and renamed into place,
so a shard is either whole or absent, whatever interrupts the run (Ctrl-C,
``kill -9``, power loss). A shard whose content is bad (a flipped byte fails
the zip CRC, arrays that disagree) is never trusted: it is logged once and
deleted, so its entries are recomputed and written to a new shard and the next
run is silent and warm. A shard that cannot be read for another reason (an
I/O or permission error) is ignored and left in place.

Opening a cache reads each shard's hashes, counts and skip reasons only, into
one sorted array (about 48 bytes per cached image); a shard's vectors are read
the first time a run asks for one of its entries. A run therefore holds the
vectors of the shards it uses, not the whole cache (measured: a 200 MB cache
of 1024-d vectors, one entry asked for: 10 MB, where reading every shard at
open cost 216 MB). More than :data:`COMPACT_ABOVE` shards are merged on open
into shards of about :data:`COMPACT_SHARD_MB` each, so that few files are
opened and a run that needs one entry reads one small shard. A damaged shard
is found when it is read (at open for its hashes, on first use for its
vectors) and handled as above.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Shards on open above which they are merged.
COMPACT_ABOVE = 256
#: Megabytes of vectors per merged shard (a run reads the shards it uses whole).
COMPACT_SHARD_MB = 32


def content_hash(data: bytes) -> str:
    """Return the cache key of a file's bytes (BLAKE2b, 128 bits, hex).

    Example:
        >>> content_hash(b"abc")
        'cf4ab791c62b8d2b2109c90275287816'

    """
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def default_cache_dir() -> Path:
    """Return the cache folder.

    ``$TRAINLEAK_CACHE``, else ``$XDG_CACHE_HOME/trainleak``, else ``~/.cache/trainleak``.
    """
    if os.environ.get("TRAINLEAK_CACHE"):
        return Path(os.environ["TRAINLEAK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trainleak"


CacheEntry = np.ndarray | str


class EmbeddingStore:
    """Content-addressed cache of embeddings for one encoder identity.

    Args:
        root: the cache folder; ``None`` keeps everything in memory only.
        key: the encoder's :meth:`~trainleak.encoders.base.EncoderInfo.cache_key`.
        dim: the encoder's vector length (shards with another length are ignored).

    Example:
        >>> import tempfile
        >>> store = EmbeddingStore(tempfile.mkdtemp(), "demo-v1-0", dim=2)
        >>> store.put({"h1": np.ones((1, 2), np.float32), "h2": "no face detected"})
        >>> EmbeddingStore(store.root, "demo-v1-0", dim=2).get("h2")
        'no face detected'

    """

    def __init__(self, root: str | os.PathLike[str] | None, key: str, dim: int) -> None:
        self.root = Path(root) if root is not None else None
        self.key = key
        self.dim = dim
        self._entries: dict[str, CacheEntry] = {}  # put by this process
        self._reasons: dict[str, str] = {}  # cached skip reasons, from the shards
        self._paths: list[Path] = []  # shard number -> file
        self._loaded: dict[int, np.ndarray | None] = {}  # shard number -> its vectors
        hashes, shard_of, starts = [], [], []
        self.folder = self.root / key if self.root is not None else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            shards = sorted(self.folder.glob("shard-*.npz"))
            for shard in shards:
                found = self._index(shard)
                if found is not None:
                    n = len(self._paths)
                    self._paths.append(shard)
                    hashes.append(found[0])
                    shard_of.append(np.full(len(found[0]), n, np.int32))
                    starts.append(found[1])
        # One sorted array of the shards' hashes with where each one's rows are:
        # about 48 bytes per cached image, whatever the encoder's dimension.
        all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, "S32")
        order = np.argsort(all_hashes, kind="stable")
        self._hashes = all_hashes[order]
        self._shard = (np.concatenate(shard_of) if shard_of else np.zeros(0, np.int32))[order]
        self._rows = (np.concatenate(starts) if starts else np.zeros((0, 2), np.int64))[order]
        if len(self._paths) > COMPACT_ABOVE:
            self._compact()

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self) -> list[str]:
        """Return the content hashes the store holds (on disk and put by this process)."""
        found = set(self._entries) | set(self._reasons)
        found.update(h.decode() for h in np.unique(self._hashes))
        return list(found)

    def get(self, digest: str) -> CacheEntry | None:
        """Return the cached ``(m, dim)`` rows, the cached skip reason, or ``None``.

        A shard's vectors are read on the first ``get`` that needs them, so a
        run holds the vectors of the shards it uses, not the whole cache.
        """
        hit = self._entries.get(digest)
        if hit is not None:
            return hit
        reason = self._reasons.get(digest)
        if reason is not None:
            return reason
        key = digest.encode()
        i = int(np.searchsorted(self._hashes, key))
        if i == len(self._hashes) or self._hashes[i] != key:
            return None
        vectors = self._vectors(int(self._shard[i]))
        if vectors is None:
            return None
        start, count = (int(x) for x in self._rows[i])
        return vectors[start : start + count]

    def _index(self, shard: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """Read a shard's hashes, counts and reasons (not its vectors); ``None`` to skip it.

        Returns:
            The hashes of its entries with vectors, and their ``(start, count)`` rows.

        """
        try:
            with np.load(shard, allow_pickle=False) as z:
                hashes = z["hashes"]
                counts = z["counts"]
                reasons = z["reasons"]
                shape = _npy_shape(z.zip, "vectors.npy")
        except OSError as err:  # the disk, not the shard: it may read next time
            log.warning("ignoring unreadable cache shard %s: %s", shard, err)
            return None
        except Exception as err:  # noqa: BLE001 - bad zip, CRC, format or missing array
            self._drop(shard, f"corrupt ({err})")
            return None
        valid = (
            len(hashes) == len(counts) == len(reasons)
            and len(shape) == 2
            and int(counts.sum()) == shape[0]
        )
        if not valid:
            self._drop(shard, "inconsistent (its arrays disagree)")
            return None
        if shape[1] != self.dim:  # whole, but not this encoder's: not ours to delete
            log.warning(
                "ignoring cache shard %s: %d-d vectors, not %d-d", shard, shape[1], self.dim
            )
            return None
        skip = counts == 0
        for digest, reason in zip(hashes[skip], reasons[skip], strict=True):
            self._reasons[digest.decode()] = str(reason)
        starts = np.cumsum(counts) - counts
        rows = np.stack([starts, counts], axis=1).astype(np.int64)
        return hashes[~skip].astype("S32"), rows[~skip]

    def _vectors(self, n: int) -> np.ndarray | None:
        """Return shard ``n``'s vectors, read once; ``None`` when they cannot be read."""
        if n not in self._loaded:
            shard = self._paths[n]
            try:
                with np.load(shard, allow_pickle=False) as z:
                    self._loaded[n] = np.asarray(z["vectors"], np.float32)
            except FileNotFoundError:  # compacted away by another run since we opened
                self._loaded[n] = None
            except OSError as err:
                log.warning("ignoring unreadable cache shard %s: %s", shard, err)
                self._loaded[n] = None
            except Exception as err:  # noqa: BLE001 - a flipped byte fails the zip CRC
                self._drop(shard, f"corrupt ({err})")
                self._loaded[n] = None
        return self._loaded[n]

    def put(self, entries: dict[str, CacheEntry], *, remember: bool = True) -> None:
        """Add entries and write them as one new shard (atomically).

        With ``remember=False`` they are written to disk (when there is a
        folder) but not kept in memory: a stream of millions of new images
        (``trainleak check``) then holds one batch at a time.
        """
        if not entries:
            return
        if remember:
            self._entries.update(entries)
        if self.folder is not None:
            self._write(self.folder / f"shard-{uuid.uuid4().hex}.npz", entries)

    def _write(self, path: Path, entries: dict[str, CacheEntry]) -> None:
        hashes = list(entries)
        counts = np.array(
            [0 if isinstance(entries[h], str) else len(entries[h]) for h in hashes], np.int64
        )
        rows = [np.asarray(v, np.float32) for v in entries.values() if not isinstance(v, str)]
        vectors = np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)
        reasons = np.array([v if isinstance(v, str) else "" for v in entries.values()], dtype=str)
        assert path.parent is not None
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    hashes=np.array(hashes, dtype="S32"),
                    counts=counts,
                    vectors=vectors,
                    reasons=reasons,
                )
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _drop(self, shard: Path, why: str) -> None:
        """Delete a shard whose content is bad; its entries are recomputed by this run."""
        try:
            shard.unlink(missing_ok=True)  # another run may have dropped it already
        except OSError as err:
            log.warning("ignoring %s cache shard %s (cannot delete it: %s)", why, shard, err)
            return
        log.warning("deleted %s cache shard %s; its entries will be recomputed", why, shard)

    def _compact(self) -> None:
        """Merge the shards into fewer, each of about :data:`COMPACT_SHARD_MB` of vectors.

        One shard is read at a time and each merged shard written as soon as
        it is full, so compaction holds about one merged shard in memory.
        """
        assert self.folder is not None
        limit = max(1, int(COMPACT_SHARD_MB * 2**20 / (4 * max(1, self.dim))))
        pending: dict[str, CacheEntry] = {}
        rows = 0
        merged: list[Path] = []
        for n in range(len(self._paths)):
            vectors = self._vectors(n)
            if vectors is None:
                continue
            where = np.flatnonzero(self._shard == n)
            for i in where:
                start, count = (int(x) for x in self._rows[i])
                pending[self._hashes[i].decode()] = vectors[start : start + count]
                rows += count
            self._loaded.pop(n, None)
            if rows >= limit:
                merged.append(self._flush(pending))
                pending, rows = {}, 0
        pending.update((digest, reason) for digest, reason in self._reasons.items())
        if pending:
            merged.append(self._flush(pending))
        for shard in self._paths:
            shard.unlink(missing_ok=True)
        log.info(
            "compacted %d cache shards into %d in %s", len(self._paths), len(merged), self.folder
        )
        fresh = EmbeddingStore(self.root, self.key, self.dim)
        self.__dict__.update(fresh.__dict__)

    def _flush(self, entries: dict[str, CacheEntry]) -> Path:
        assert self.folder is not None
        path = self.folder / f"shard-{uuid.uuid4().hex}.npz"
        self._write(path, entries)
        return path


def _npy_shape(archive: zipfile.ZipFile, name: str) -> tuple[int, ...]:
    """Return the shape in an ``.npy`` member's header without reading its data."""
    with archive.open(name) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(fh)
    return tuple(int(x) for x in shape)
