"""Sources -> encoder -> store: the embedding stage every audit starts with.

Files are read and hashed in the main process; cache misses are decoded and
embedded in worker processes (``workers``, see :mod:`trainleak.workers`), one
chunk per worker in flight at a time, so memory stays bounded by the batch
size. Each image is embedded by the same code whatever the worker count or
batch size, so results do not depend on either. A worker that crashes costs
the run only the image that crashed it. The encoder's model is loaded on the
first cache miss, so a warm re-run loads none.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from trainleak.archives import Read, is_archive, iter_inputs
from trainleak.config import EmbedConfig

# EmbeddingSet and assemble live in embedding_set (this module stays small);
# they are imported from here too.
from trainleak.embedding_set import EmbeddingSet as EmbeddingSet
from trainleak.embedding_set import assemble as assemble
from trainleak.encoders import get_encoder
from trainleak.images import (
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_PIXELS,
    Record,
    SkipRecord,
    list_records,
)
from trainleak.prefetch import encode_overlapped
from trainleak.store import EmbeddingStore, content_hash, default_cache_dir
from trainleak.workers import Chunk, Results, WorkerPool, unavailable_reason

log = logging.getLogger(__name__)


class EmbedRunner(Protocol):
    """What an :class:`Embedder` needs of an engine that embeds elsewhere.

    The engine (:mod:`trainleak.engines`, a layer above) is built once per run
    and handed down; this module never imports it.
    """

    name: str

    def embed(
        self, embedder: Embedder, source: str | os.PathLike[str], set_name: str
    ) -> EmbeddingSet:
        """Embed one source with ``embedder``'s encoder, store and limits."""
        ...


class Embedder:
    """Embeds sources with one encoder, one cache and one worker pool.

    Use it as a context manager to embed several sets without starting the
    workers (and loading the model) again for each::

        with Embedder("face", workers=2) as emb:
            train, synth = emb.embed("train/", "train"), emb.embed("synth/", "synthetic")

    Args:
        encoder: registry name, or ``onnx:FILE`` / ``torchscript:FILE``.
        encoder_options: the encoder's options (e.g. ``{"aligned": True}``).
        workers: processes that embed; ``None`` = CPU cores, 1 = in-process
            (where a crash in the encoder ends the run).
        batch_size: images per worker task and per cache shard.
        cache: a cache folder, ``True`` for the default folder, ``False``/``None``
            for none.
        max_pixels: decompression-bomb limit; it also bounds the image an
            encoder works on (the face detector's padded, upsampled image).
        max_file_mb: files larger than this are skipped unread.
        identity_depth: the folder level that names the person (see
            :func:`trainleak.images.list_records`).
        progress: show a progress bar on stderr.
        engine: where :meth:`embed` runs (see :mod:`trainleak.engines`);
            ``None``: here, in this process and its workers.

    """

    def __init__(
        self,
        encoder: str = "face",
        *,
        encoder_options: dict[str, Any] | None = None,
        workers: int | None = None,
        batch_size: int = 16,
        cache: str | os.PathLike[str] | None | bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_file_mb: float = DEFAULT_MAX_FILE_MB,
        identity_depth: int = 1,
        progress: bool = False,
        engine: EmbedRunner | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more, got {batch_size}")
        self.spec = encoder
        self.options = dict(encoder_options or {})
        self.local = get_encoder(encoder, **self.options)
        self.info = self.local.info
        if cache is True:
            cache = default_cache_dir()
        self.store = EmbeddingStore(cache or None, self.info.cache_key(), self.info.dim)
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        if not max_file_mb > 0:
            raise ValueError(f"max_file_mb must be positive, got {max_file_mb}")
        self.max_file_mb = max_file_mb
        self.identity_depth = identity_depth
        self.progress = progress
        self.engine = engine
        self._pool: WorkerPool | None = None
        if self.workers > 1 and self.local.device != "cpu":
            # CUDA is initialised only by the process that owns the device.
            log.info("embedding in-process on %s, decoding in threads", self.local.device)
            self.workers = 1
        if self.workers > 1:
            reason = unavailable_reason(encoder)
            if reason is not None:
                log.warning("embedding in-process, not in %d workers: %s", self.workers, reason)
                self.workers = 1

    @classmethod
    def from_config(cls, config: EmbedConfig, engine: EmbedRunner | None = None) -> Embedder:
        """Build the embedder an :class:`~trainleak.config.EmbedConfig` describes.

        The one place embedding settings become an embedder: the audits, the
        gate, :func:`embed` and the command line all describe them with an
        ``EmbedConfig``.

        Args:
            config: encoder, options, workers, cache and limits.
            engine: where :meth:`embed` runs, built once per run by the caller
                (``config.engine`` names it; this layer never builds engines).

        Example:
            >>> with Embedder.from_config(EmbedConfig("pixel", workers=1, no_cache=True)) as e:
            ...     e.info.name, e.workers, e.store.root
            ('pixel', 1, None)

        """
        return cls(
            config.encoder,
            encoder_options=config.encoder_options,
            workers=config.workers,
            batch_size=config.batch_size,
            cache=config.cache_arg(),
            max_pixels=config.max_pixels,
            max_file_mb=config.max_file_mb,
            identity_depth=config.identity_depth,
            progress=config.progress,
            engine=engine,
        )

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes, if any were started."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def embed(self, source: str | os.PathLike[str], set_name: str = "input") -> EmbeddingSet:
        """Embed every image of a source, using and filling the cache.

        Args:
            source: a folder, glob or list file (see :func:`trainleak.images.list_records`).
            set_name: the name skip records carry (``train``, ``synthetic``...).

        Returns:
            An :class:`EmbeddingSet` with rows in sorted-path order.

        """
        if self.engine is not None and self.engine.name != "local":
            return self.engine.embed(self, source, set_name)
        records = list_records(source, self.identity_depth)
        results: dict[str, np.ndarray | str] = {}
        skipped = [
            SkipRecord(set_name, repeat, f"duplicate entry: the same file as {kept}")
            for repeat, kept in records.duplicates
        ]
        digests: list[str | None] = []
        inputs: list[Record] = []  # files, and the members of shards as they are read
        bar = tqdm(
            total=None if any(is_archive(r.path) for r in records) else len(records),
            desc=f"embed {set_name}",
            unit="img",
            disable=not self.progress,
            mininterval=0.5,
            leave=False,
        )
        reads = iter_inputs(records, self.max_file_mb)
        misses = _scan(reads, self.store, set_name, skipped, inputs, digests, results, bar)
        pending: dict[str, np.ndarray | str] = {}
        for done in self._run(_chunks(misses, self.batch_size)):
            for digest, res in done:
                results[digest] = res
                if not (isinstance(res, str) and res.startswith("!")):
                    pending[digest] = res
                bar.update(1)
            if len(pending) >= self.batch_size:
                self.store.put(pending)
                pending = {}
        self.store.put(pending)
        bar.close()
        order = sorted(range(len(inputs)), key=lambda j: inputs[j].id)
        emb = assemble(
            [inputs[j] for j in order],
            [digests[j] for j in order],
            results, skipped, set_name, self.info, os.fspath(source),
        )  # fmt: skip
        emb.files += len(records.duplicates)
        return emb

    def embed_encoded(
        self, items: dict[str, bytes], *, remember: bool = True
    ) -> dict[str, np.ndarray | str]:
        """Embed in-memory encoded images (e.g. PNG bytes), through the cache.

        For images that never touch the disk, such as a generator's samples
        streamed straight into the embedder.

        Args:
            items: cache key (any 32-hex-digit string, e.g. a content hash) ->
                encoded image bytes. Keys already in the cache are not embedded again.
            remember: keep new embeddings in memory as well as in the cache
                folder; ``False`` bounds memory when streaming (see
                :meth:`EmbeddingStore.put <trainleak.store.EmbeddingStore.put>`).

        Returns:
            key -> ``(m, dim)`` float32 rows, or the skip reason (a string).

        """
        results: dict[str, np.ndarray | str] = {}
        misses = []
        for key, data in items.items():
            hit = self.store.get(key)
            if hit is None:
                misses.append((key, data))
            else:
                results[key] = hit
        chunks = (
            (
                [k for k, _ in misses[i : i + self.batch_size]],
                [d for _, d in misses[i : i + self.batch_size]],
            )
            for i in range(0, len(misses), self.batch_size)
        )
        fresh: dict[str, np.ndarray | str] = {}
        for done in self._run(chunks):
            for key, res in done:
                if isinstance(res, str) and res.startswith("!"):
                    results[key] = res[1:]  # a decoding failure: not cached
                else:
                    results[key] = fresh[key] = res
        self.store.put(fresh, remember=remember)
        return results

    def _run(self, chunks: Iterator[Chunk]) -> Iterator[Results]:
        """Embed chunks in-process or in the worker pool; yield results as chunks finish."""
        if self.workers == 1:  # the next chunk is decoded while this one is embedded
            yield from encode_overlapped(chunks, self.max_pixels, self.local)
            return
        if self._pool is None:
            self._pool = WorkerPool(self.workers, self.spec, self.options)
        yield from self._pool.run(chunks, self.max_pixels)


def embed(
    source: str | os.PathLike[str],
    encoder: str = "face",
    *,
    encoder_options: dict[str, Any] | None = None,
    set_name: str = "input",
    workers: int | None = None,
    batch_size: int = 16,
    cache: str | os.PathLike[str] | None | bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
    progress: bool = False,
) -> EmbeddingSet:
    """Embed every image of one source; see :class:`Embedder` for the arguments.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (8, 8), (9, 90, 200)).save(root / "a.png")
        >>> _ = (root / "b.png").write_bytes(b"not an image")
        >>> emb = embed(root, "pixel", workers=1, cache=False)
        >>> emb.vectors.shape, emb.skipped[0].reason
        ((1, 1024), 'not an image (unrecognised format)')

    """
    config = replace(
        keyword_config(encoder, encoder_options, workers, cache),
        batch_size=batch_size,
        max_pixels=max_pixels,
        max_file_mb=max_file_mb,
        progress=progress,
    )
    with Embedder.from_config(config) as embedder:
        return embedder.embed(source, set_name)


def keyword_config(
    encoder: str,
    encoder_options: dict[str, Any] | None,
    workers: int | None,
    cache: str | os.PathLike[str] | None | bool,
) -> EmbedConfig:
    """Return the :class:`EmbedConfig` of the keywords :func:`embed` and ``tl.*`` share.

    Example:
        >>> c = keyword_config("pixel", None, 1, False)
        >>> c.encoder, c.workers, c.no_cache, c.cache_arg()
        ('pixel', 1, True, False)

    """
    return EmbedConfig(
        encoder=encoder,
        encoder_options=dict(encoder_options or {}),
        workers=workers,
        cache=os.fspath(cache) if isinstance(cache, (str, os.PathLike)) else None,
        no_cache=cache is False or cache is None,
    )


def _scan(
    reads: Iterator[Read],
    store: EmbeddingStore,
    set_name: str,
    skipped: list[SkipRecord],
    inputs: list[Record],
    digests: list[str | None],
    results: dict[str, np.ndarray | str],
    bar: Any,
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(digest, bytes)`` of inputs to embed; fill cache hits and read errors.

    Each input's record (without its bytes) is appended to ``inputs`` and its
    digest, or ``None``, to ``digests``.
    """
    queued: set[str] = set()
    for rec, reason in reads:
        data, rec = rec.data, replace(rec, data=None)
        inputs.append(rec)
        if reason is not None or data is None:
            skipped.append(SkipRecord(set_name, rec.id, reason or "unreadable"))
            digests.append(None)
            bar.update(1)
            continue
        digest = content_hash(data)
        digests.append(digest)
        hit = store.get(digest)
        if hit is not None:
            results[digest] = hit
            bar.update(1)
        elif digest in queued:
            bar.update(1)
        else:
            queued.add(digest)
            yield digest, data


def _chunks(misses: Iterator[tuple[str, bytes]], size: int) -> Iterator[Chunk]:
    while batch := list(itertools.islice(misses, size)):
        yield [digest for digest, _ in batch], [data for _, data in batch]
