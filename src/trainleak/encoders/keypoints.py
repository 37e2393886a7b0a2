"""Local features for copy detection: SIFT keypoints packed into one fixed-length row.

The ``copy`` encoder (:mod:`trainleak.encoders.copydetect`) keeps each image's
strongest SIFT keypoints (Lowe 2004) as its "vector", so that the embedding
store, the worker processes, the Ray engine and the gate's index shards carry
them like any other row, cached by encoder identity and file content.

Row layout (``dim = 4 + 2 * K + 43 * K`` for ``K`` = ``max_keypoints``), all
float32 and finite:

* ``[0:4]``: number of keypoints ``n``, working width, working height, and
  the working image's size over the decoded image's (1.0 unless shrunk).
* ``[4 : 4 + 2K]``: ``x, y`` of each keypoint in the working image (the
  decoded image shrunk so its long side is at most ``long_side``).
* ``[4 + 2K :]``: each 128-byte SIFT descriptor packed three bytes per float
  (integers below 2**24 are exact in float32; unlike a bit-cast, no pattern
  can be a NaN that a finiteness check downstream would reject).

Unused keypoint slots are zeros. Rows are not unit length: the ``local``
metric compares them by verified matches, never by a dot product
(:mod:`trainleak.local_search`).

Mirror images: a horizontal flip maps a keypoint at ``x`` to ``w - 1 - x``
and permutes its descriptor (the 4 x 4 spatial cells flip along the
orientation axis' normal and each orientation bin ``o`` becomes ``-o mod 8``;
checked against SIFT run on the flipped image in the tests), so the mirror
test needs no second extraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainleak._optional import require
from trainleak.encoders.base import EncodeSkip

HEADER = 4
DESC_BYTES = 128
#: Floats holding one packed descriptor (3 bytes each, 129 >= 128).
DESC_FLOATS = 43


def row_dim(max_keypoints: int) -> int:
    """Length of a packed row for ``max_keypoints`` keypoints.

    Example:
        >>> row_dim(256)
        11524

    """
    return HEADER + max_keypoints * (2 + DESC_FLOATS)


@dataclass(frozen=True)
class Features:
    """One image's keypoints: ``xy`` ``(n, 2)`` float32, ``desc`` ``(n, 128)`` uint8, size ``wh``.

    ``factor`` is the working image's size over the decoded image's.
    """

    xy: np.ndarray
    desc: np.ndarray
    wh: tuple[float, float]
    factor: float = 1.0

    def __len__(self) -> int:
        return len(self.xy)

    def mirrored(self) -> Features:
        """Return the features of the horizontally flipped image (see the module docstring)."""
        xy = self.xy.copy()
        xy[:, 0] = self.wh[0] - 1.0 - xy[:, 0]
        return Features(xy, self.desc[:, MIRROR_PERMUTATION], self.wh, self.factor)

    def rootsift(self) -> np.ndarray:
        """RootSIFT descriptors (Arandjelovic & Zisserman 2012): ``sqrt`` of L1-normalised SIFT.

        Euclidean distance on them is the Hellinger kernel on the originals,
        which matches better than raw SIFT; ``(n, 128)`` float32, unit rows.
        """
        d = self.desc.astype(np.float32)
        d /= np.maximum(d.sum(1, keepdims=True), 1e-6)
        return np.sqrt(d)


def _mirror_permutation() -> np.ndarray:
    cells = np.arange(DESC_BYTES).reshape(4, 4, 8)
    return np.ascontiguousarray(cells[::-1][:, :, [(8 - o) % 8 for o in range(8)]].reshape(-1))


MIRROR_PERMUTATION = _mirror_permutation()


def working_grey(image: np.ndarray, long_side: int, min_side: int = 0) -> np.ndarray:
    """Grey ``uint8`` image with its long side brought into ``[min_side, long_side]``.

    Shrunk by area averaging; enlarged (a small thumbnail) by cubic interpolation.
    """
    cv2 = require("cv2", extra="copy", needed_for="--encoder copy")
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    scale = long_side / max(h, w)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    elif max(h, w) < min_side:
        scale = min_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_CUBIC)
    return grey


def extract(
    image: np.ndarray,
    *,
    long_side: int,
    max_keypoints: int,
    min_keypoints: int,
    contrast_threshold: float = 0.04,
    min_side: int = 0,
) -> Features:
    """SIFT keypoints of one RGB ``uint8`` image, strongest first.

    Raises:
        EncodeSkip: fewer than ``min_keypoints`` keypoints (a flat colour, a
            tiny thumbnail): such an image cannot be matched either way.

    """
    cv2 = require("cv2", extra="copy", needed_for="--encoder copy")
    grey = working_grey(image, long_side, min_side)
    h, w = grey.shape
    # Single-threaded: the embedder parallelises over images (worker processes).
    cv2.setNumThreads(1)
    sift = cv2.SIFT_create(nfeatures=max_keypoints, contrastThreshold=contrast_threshold)
    kps, desc = sift.detectAndCompute(grey, None)
    n = 0 if desc is None else len(kps)
    if n < min_keypoints:
        raise EncodeSkip(
            f"too few keypoints to match ({n} < {min_keypoints}; a flat or tiny image): "
            "the copy encoder cannot score it"
        )
    order = np.argsort([-k.response for k in kps], kind="stable")[:max_keypoints]
    xy = np.array([kps[i].pt for i in order], np.float32).reshape(-1, 2)
    d = np.clip(np.rint(desc[order]), 0, 255).astype(np.uint8)
    return Features(xy, d, (float(w), float(h)), w / image.shape[1])


def pack(feat: Features, max_keypoints: int) -> np.ndarray:
    """One ``(row_dim(max_keypoints),)`` float32 row holding ``feat``; see the module docstring."""
    row = np.zeros(row_dim(max_keypoints), np.float32)
    n = min(len(feat), max_keypoints)
    row[:4] = (n, feat.wh[0], feat.wh[1], feat.factor)
    row[HEADER : HEADER + 2 * n] = feat.xy[:n].reshape(-1)
    padded = np.zeros((n, DESC_FLOATS * 3), np.uint32)
    padded[:, :DESC_BYTES] = feat.desc[:n]
    triples = padded.reshape(n, DESC_FLOATS, 3)
    packed = (triples[..., 0] << 16) | (triples[..., 1] << 8) | triples[..., 2]
    start = HEADER + 2 * max_keypoints
    row[start : start + DESC_FLOATS * n] = packed.reshape(-1).astype(np.float32)
    return row


def unpack(row: np.ndarray) -> Features:
    """Return the features held in a packed row (inverse of :func:`pack`).

    Example:
        >>> xy, desc = np.array([[1.5, 2.0]], np.float32), np.arange(128, dtype=np.uint8)[None]
        >>> f = Features(xy, desc, (9.0, 7.0))
        >>> g = unpack(pack(f, 4))
        >>> bool((g.desc == f.desc).all()), g.xy.tolist(), g.wh
        (True, [[1.5, 2.0]], (9.0, 7.0))

    """
    row = np.asarray(row, np.float32)
    max_kp = (len(row) - HEADER) // (2 + DESC_FLOATS)
    if len(row) != row_dim(max_kp):
        raise ValueError(f"a copy-encoder row has length 4 + 45*K, not {len(row)}")
    n = int(row[0])
    xy = row[HEADER : HEADER + 2 * n].reshape(n, 2).copy()
    start = HEADER + 2 * max_kp
    packed = row[start : start + DESC_FLOATS * n].astype(np.uint32).reshape(n, DESC_FLOATS)
    triples = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], -1)
    desc = triples.reshape(n, DESC_FLOATS * 3)[:, :DESC_BYTES].astype(np.uint8)
    return Features(xy, desc, (float(row[1]), float(row[2])), float(row[3]) or 1.0)
