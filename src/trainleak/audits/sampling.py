"""Generated samples streamed into the embedder: generate a batch, embed it, repeat.

A generator's samples never go through the disk: each batch is encoded as
PNG in memory and handed to :meth:`~trainleak.embedding.Embedder.embed_encoded`.
Each sample's cache key is derived from the generator's fingerprint (its
weights or source file), the seed and the sample index, so a warm re-run
skips both generation and embedding, and an interrupted run resumes after its
last finished batch.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainleak.embedding import Embedder, EmbeddingSet
from trainleak.generators import Generator, sample_seed
from trainleak.images import SkipRecord

log = logging.getLogger(__name__)


@dataclass
class GeneratedSet:
    """Embeddings of a generator's samples ``0..n-1`` (one row per embedded sample).

    Attributes:
        indices: ``(n_embedded,)`` int64 sample index of each row.
        vectors: ``(n_embedded, dim)`` float32.
        skipped: samples the encoder could not embed, with reasons.
        generated: samples actually generated in this run (0 on a warm re-run).
        fingerprint: what identifies the generator in the cache keys.

    """

    indices: np.ndarray
    vectors: np.ndarray
    skipped: list[SkipRecord] = field(default_factory=list)
    generated: int = 0
    fingerprint: str = ""


def sample_id(seed: int, index: int) -> str:
    """Return the report id of a generated sample.

    Example:
        >>> sample_id(0, 12)
        'sample:0:12'

    """
    return f"sample:{seed}:{index}"


def generator_fingerprint(generator: Generator, extra: str = "") -> str:
    """Hash what determines a generator's samples: its files, or its source code.

    ``diffusers:DIR``: every file of the pipeline folder (weights and configs);
    ``python:module:function``: the module's source file. ``extra`` holds
    sampling settings (e.g. denoising steps). A generator whose output depends
    on anything else must not share a cache with its other versions.

    Example:
        >>> from trainleak.generators import PythonGenerator
        >>> len(generator_fingerprint(PythonGenerator("trainleak.generators:to_rgb8")))
        32

    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{generator.name}|{extra}".encode())
    folder = generator.name.partition(":")[2]
    if generator.name.startswith("diffusers:") and Path(folder).is_dir():
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                h.update(path.relative_to(folder).as_posix().encode())
                h.update(hashlib.sha256(path.read_bytes()).digest())
    else:
        func = getattr(generator, "func", None)
        source = inspect.getsourcefile(func) if func is not None else None
        if source and os.path.isfile(source):
            h.update(Path(source).read_bytes())
    return h.hexdigest()


def stream_embed(
    generator: Generator,
    embedder: Embedder,
    n: int,
    seed: int,
    batch_size: int = 32,
    fingerprint: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> GeneratedSet:
    """Generate samples ``0..n-1`` in batches and embed each batch as it is made.

    Args:
        generator: a generator adapter (``sample_at`` is used when it has one,
            so sample ``i`` is the same whatever the batch size).
        embedder: embeds and caches; its encoder decides what a row is.
        n: how many samples.
        seed: the run's seed; sample ``i`` is seeded by ``sample_seed(seed, i)``.
        batch_size: samples generated (and held in memory) at a time.
        fingerprint: the generator's cache identity; computed when omitted.
        progress: called with the number of samples done after each batch.

    Returns:
        A :class:`GeneratedSet`; rows in sample-index order.

    Example:
        >>> from trainleak.generators import PythonGenerator
        >>> gen = PythonGenerator("trainleak.audits.sampling:_grey_squares")
        >>> with Embedder("pixel", workers=1, cache=False) as emb:
        ...     out = stream_embed(gen, emb, n=5, seed=0, batch_size=2)
        >>> out.vectors.shape, out.indices.tolist()
        ((5, 1024), [0, 1, 2, 3, 4])

    """
    fp = fingerprint or generator_fingerprint(generator)
    rows: dict[int, np.ndarray] = {}
    skipped: list[SkipRecord] = []
    generated = 0
    for start in range(0, n, batch_size):
        chunk = list(range(start, min(n, start + batch_size)))
        keys = {i: _key(fp, seed, i) for i in chunk}
        cached = {i: embedder.store.get(keys[i]) for i in chunk}
        todo = [i for i in chunk if cached[i] is None]
        encoded: dict[str, bytes] = {}
        if todo:
            for i, image in zip(todo, sample_images(generator, todo, seed), strict=True):
                encoded[keys[i]] = _png(image)
            generated += len(todo)
        results = embedder.embed_encoded(encoded) if encoded else {}
        for i in chunk:
            res = cached[i] if cached[i] is not None else results[keys[i]]
            if isinstance(res, str):
                skipped.append(SkipRecord("generated", sample_id(seed, i), res))
            else:
                assert res is not None
                rows[i] = np.asarray(res[0], np.float32)  # the largest face of a sample
        if progress is not None:
            progress(chunk[-1] + 1)
    order = sorted(rows)
    dim = embedder.info.dim
    vectors = np.stack([rows[i] for i in order]) if order else np.zeros((0, dim), np.float32)
    return GeneratedSet(np.array(order, np.int64), vectors, skipped, generated, fp)


def folder_as_generated(emb: EmbeddingSet) -> GeneratedSet:
    """Wrap an embedded folder of generated images as a :class:`GeneratedSet`."""
    return GeneratedSet(np.arange(len(emb), dtype=np.int64), emb.vectors, list(emb.skipped))


def sample_images(generator: Generator, indices: list[int], seed: int) -> list[np.ndarray]:
    """Return samples ``indices`` of the run seeded ``seed`` (batch-size independent)."""
    sample_at = getattr(generator, "sample_at", None)
    if sample_at is not None:
        return list(sample_at(indices, seed))
    return [generator.sample(1, sample_seed(seed, i))[0] for i in indices]


def sample_pngs(generator: Generator, indices: list[int], seed: int) -> dict[int, bytes]:
    """Return samples ``indices`` of the run seeded ``seed``, each encoded as PNG.

    Example:
        >>> from trainleak.generators import PythonGenerator
        >>> pngs = sample_pngs(PythonGenerator("trainleak.audits.sampling:_grey_squares"), [3], 0)
        >>> list(pngs), pngs[3][1:4]
        ([3], b'PNG')

    """
    images = sample_images(generator, indices, seed)
    return {i: _png(image) for i, image in zip(indices, images, strict=True)}


def _key(fingerprint: str, seed: int, index: int) -> str:
    return hashlib.blake2b(f"{fingerprint}:{seed}:{index}".encode(), digest_size=16).hexdigest()


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _grey_squares(n: int, seed: int) -> list[Any]:
    """Make flat grey images, shade from the seed (the doctest's generator)."""
    return [np.full((8, 8, 3), seed % 256, np.uint8) for _ in range(n)]
