"""Decoding and embedding, apart, so that one process can overlap them.

An embedding chunk is decoded (:func:`decode_chunk`), then embedded
(:func:`embed_decoded`); :func:`trainleak.workers.encode_chunk` does both in a
worker. In the embedding process itself, the case of an encoder on a CUDA
device (which must run in the process that owns the device),
:func:`encode_overlapped` decodes the next chunk in threads while the
encoder works on the current one: image decoders (PIL) and model runtimes
(onnxruntime, torch) release the GIL, so they overlap. Each image goes
through the same code either way, so the vectors do not change.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from trainleak.encoders import Encoder, EncodeSkip
from trainleak.images import ImageSkip, decode_image

#: A chunk: cache keys and the encoded image bytes, one each per image.
Chunk = tuple[list[str], list[bytes]]
#: ``(key, rows)`` per image, or ``(key, reason)``; a reason starting with
#: ``!`` is not to be cached (decoding failures, crashes).
Results = list[tuple[str, np.ndarray | str]]
#: Decoded images, and per input either ``None`` (decoded) or its ``!reason``.
Decoded = tuple[list[np.ndarray], list[str | None]]


#: Most threads that decode ahead of an encoder on a CUDA device.
MAX_DECODE_THREADS = 8


def decode_one(data: bytes, max_pixels: int) -> np.ndarray | str:
    """Decode one image, or return ``"!" + reason`` when it cannot be decoded."""
    try:
        return decode_image(data, max_pixels)
    except ImageSkip as skip:
        return "!" + str(skip)


def decode_chunk(items: list[bytes], max_pixels: int) -> Decoded:
    """Decode a chunk of encoded images; a failure becomes ``"!" + reason`` in its slot."""
    return _split([decode_one(data, max_pixels) for data in items])


def _split(decoded: list[np.ndarray | str]) -> Decoded:
    images = [d for d in decoded if not isinstance(d, str)]
    return images, [d if isinstance(d, str) else None for d in decoded]


def decode_threads(encoder: Encoder) -> int:
    """Threads that decode ahead: one for a CPU encoder (it needs the cores), more for a GPU."""
    if encoder.device == "cpu":
        return 1
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    return max(1, min(MAX_DECODE_THREADS, cores - 1))


def embed_decoded(decoded: Decoded, max_pixels: int, encoder: Encoder) -> list[np.ndarray | str]:
    """Embed decoded images; see :func:`trainleak.workers.encode_chunk` for the result."""
    images, slots = decoded
    encoder.max_pixels = max_pixels  # bounds what the encoder makes of an image, too
    results = iter(encoder.encode_batch(images))
    final: list[np.ndarray | str] = []
    for slot in slots:
        if slot is not None:
            final.append(slot)
            continue
        res = next(results)
        if isinstance(res, EncodeSkip):
            final.append(("" if res.cache else "!") + str(res))
        else:
            final.append(res)
    return final


_Pending = tuple[list[str], list["Future[np.ndarray | str]"]]


def encode_overlapped(
    chunks: Iterator[Chunk], max_pixels: int, encoder: Encoder, threads: int | None = None
) -> Iterator[Results]:
    """Embed chunks in this process, decoding chunk ``i + 1`` while chunk ``i`` is embedded.

    Files are read by the caller's iterator in this thread; only decoding
    runs in the helper threads (``threads``, default :func:`decode_threads`),
    image by image in order, so at most two chunks are decoded at a time.

    Example:
        >>> from trainleak.encoders import get_encoder
        >>> import io; from PIL import Image
        >>> buf = io.BytesIO(); Image.new("RGB", (8, 8), (9, 90, 200)).save(buf, "PNG")
        >>> out = list(encode_overlapped(iter([(["k"], [buf.getvalue()])]), 10**6,
        ...                              get_encoder("pixel", size=4)))
        >>> out[0][0][0], out[0][0][1].shape
        ('k', (1, 16))

    """
    workers = threads if threads is not None else decode_threads(encoder)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trainleak-decode") as pool:
        pending: _Pending | None = None
        for keys, blobs in chunks:
            ahead = (keys, [pool.submit(decode_one, data, max_pixels) for data in blobs])
            if pending is not None:
                yield _embed(pending, max_pixels, encoder)
            pending = ahead
        if pending is not None:
            yield _embed(pending, max_pixels, encoder)


def _embed(pending: _Pending, max_pixels: int, encoder: Encoder) -> Results:
    keys, futures = pending
    rows = embed_decoded(_split([f.result() for f in futures]), max_pixels, encoder)
    return list(zip(keys, rows, strict=True))
