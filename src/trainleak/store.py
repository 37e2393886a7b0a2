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
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Shards on open above which they are merged into one.
COMPACT_ABOVE = 256


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
        self._entries: dict[str, CacheEntry] = {}
        self.folder = self.root / key if self.root is not None else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            shards = sorted(self.folder.glob("shard-*.npz"))
            for shard in shards:
                self._load(shard)
            if len(shards) > COMPACT_ABOVE:
                self._compact(shards)

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        """Return the content hashes the store holds (in memory)."""
        return list(self._entries)

    def get(self, digest: str) -> CacheEntry | None:
        """Return the cached ``(m, dim)`` rows, the cached skip reason, or ``None``."""
        return self._entries.get(digest)

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

    def _load(self, shard: Path) -> None:
        try:
            with np.load(shard, allow_pickle=False) as z:
                hashes = [h.decode() for h in z["hashes"]]
                counts = z["counts"]
                vectors = z["vectors"]
                reasons = z["reasons"]
            valid = (
                len(hashes) == len(counts) == len(reasons)
                and vectors.ndim == 2
                and int(counts.sum()) == len(vectors)
            )
        except OSError as err:  # the disk, not the shard: it may read next time
            log.warning("ignoring unreadable cache shard %s: %s", shard, err)
            return
        except Exception as err:  # noqa: BLE001 - bad zip, CRC, format or missing array
            self._drop(shard, f"corrupt ({err})")
            return
        if not valid:
            self._drop(shard, "inconsistent (its arrays disagree)")
            return
        if vectors.shape[1] != self.dim:  # whole, but not this encoder's: not ours to delete
            log.warning(
                "ignoring cache shard %s: %d-d vectors, not %d-d", shard, vectors.shape[1], self.dim
            )
            return
        start = 0
        for digest, count, reason in zip(hashes, counts, reasons, strict=True):
            if count == 0:
                self._entries[digest] = str(reason)
            else:
                self._entries[digest] = vectors[start : start + count]
                start += int(count)

    def _drop(self, shard: Path, why: str) -> None:
        """Delete a shard whose content is bad; its entries are recomputed by this run."""
        try:
            shard.unlink(missing_ok=True)  # another run may have dropped it already
        except OSError as err:
            log.warning("ignoring %s cache shard %s (cannot delete it: %s)", why, shard, err)
            return
        log.warning("deleted %s cache shard %s; its entries will be recomputed", why, shard)

    def _compact(self, shards: list[Path]) -> None:
        assert self.folder is not None
        self._write(self.folder / f"shard-{uuid.uuid4().hex}.npz", self._entries)
        for shard in shards:
            shard.unlink(missing_ok=True)
        log.info("compacted %d cache shards in %s", len(shards), self.folder)
