"""Uploaded images: refused early when they are not images or too large, and added to an index.

:func:`refusal` looks at an upload's header only (no pixel is decoded) so the
service answers 415 for content that is not an image, whatever its name or
declared type, and 413 for an image over the decompression-bomb limit,
before the request takes a place in the encoder's queue. Images that pass are
decoded and embedded by the same code as ``trainleak check``; one that turns
out truncated or corrupt gets a ``skip`` verdict with the reason, as there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from trainleak.config import DEFAULT_MAX_PIXELS
from trainleak.decoding import ImageSkip, NotAnImage, TooManyPixels, open_image
from trainleak.embedding import EmbeddingSet
from trainleak.images import SkipRecord

if TYPE_CHECKING:
    from trainleak.gate.index import Index

#: ``set`` name of the skip records of uploads.
UPLOAD_SET = "upload"


def refusal(name: str, data: bytes, max_pixels: int) -> tuple[int, str] | None:
    """Return ``(status, message)`` when an upload is refused before embedding, else ``None``.

    415 when the bytes are not in an image format trainleak reads (decided
    by content, as everywhere in trainleak:
    :data:`trainleak.decoding.FORMATS`); 413 when the image has more than
    ``max_pixels`` pixels.

    Example:
        >>> import io; from PIL import Image
        >>> buf = io.BytesIO(); Image.new("L", (4, 3)).save(buf, "PNG")
        >>> refusal("a.png", buf.getvalue(), 100) is None
        True
        >>> refusal("a.png", b"hello", 100)[0], refusal("a.png", buf.getvalue(), 11)[0]
        (415, 413)

    """
    if not data:
        return 415, f"{name!r} is empty (0 bytes), not an image"
    try:
        open_image(data, max_pixels).close()
    except NotAnImage as err:
        return 415, f"{name!r} is {err}"
    except TooManyPixels as err:
        return 413, f"{name!r} has {err}"
    except ImageSkip:
        return None  # a known format with a damaged header: the embedder says why (skip)
    return None


def upload_set(index: Index, items: Sequence[tuple[str, bytes]], label: str | None) -> EmbeddingSet:
    """Embed uploads ``(name, bytes)`` with the index's encoder into a set for :meth:`Index.add`.

    Row ids are the upload names (``name#k`` for the k-th face when an image
    has several, as ``index add`` names them); every row gets ``label``. An
    upload whose content repeats an earlier one of the same request, or that
    cannot be embedded, becomes a skip record.
    """
    from trainleak.gate.ingest import embed_blobs

    embedder = index.embedder()
    many = bool(index.encoder_info.options.get("all_faces"))
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    paths: list[str] = []
    digests: list[str] = []
    skipped: list[SkipRecord] = []
    first: dict[str, str] = {}
    for item in embed_blobs(embedder, items):
        name = item.record.id
        if item.rows is None or item.digest is None:
            skipped.append(SkipRecord(UPLOAD_SET, name, item.reason))
            continue
        if item.digest in first:
            reason = f"duplicate upload: the same content as {first[item.digest]}"
            skipped.append(SkipRecord(UPLOAD_SET, name, reason))
            continue
        first[item.digest] = name
        for k, row in enumerate(item.rows, 1):
            ids.append(f"{name}#{k}" if many or len(item.rows) > 1 else name)
            vectors.append(np.asarray(row, np.float32))
            paths.append(name)
            digests.append(item.digest)
    dim = embedder.info.dim
    return EmbeddingSet(
        ids=ids,
        labels=[label] * len(ids),
        vectors=np.stack(vectors) if vectors else np.zeros((0, dim), np.float32),
        skipped=skipped,
        files=len(items),
        info=embedder.info,
        root=UPLOAD_SET,
        paths=paths,
        digests=digests,
    )


def pixel_groups(
    items: Sequence[tuple[str, bytes]], budget: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[list[tuple[str, bytes]]]:
    """Split uploads, in order, into groups of at most ``budget`` pixels (read from headers).

    An image over the budget is a group alone; one whose header cannot be
    read, or over ``max_pixels``, counts as none (the embedder skips it
    with the reason, without decoding it).

    Example:
        >>> import io; from PIL import Image
        >>> def png(w, h):
        ...     buf = io.BytesIO(); Image.new("L", (w, h)).save(buf, "PNG"); return buf.getvalue()
        >>> items = [("a", png(10, 10)), ("b", png(10, 10)), ("c", png(30, 10)), ("d", b"?")]
        >>> [[n for n, _ in g] for g in pixel_groups(items, 250)]
        [['a', 'b'], ['c', 'd']]

    """
    groups: list[list[tuple[str, bytes]]] = []
    used = budget + 1
    for name, data in items:
        try:
            with open_image(data, max_pixels) as im:
                pixels = im.width * im.height
        except ImageSkip:
            pixels = 0
        if not groups or (pixels > 0 and used > 0 and used + pixels > budget):
            groups.append([])
            used = 0
        groups[-1].append((name, data))
        used += pixels
    return groups
