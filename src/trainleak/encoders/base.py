"""The encoder contract: images in, L2-normalised float32 vectors out.

An encoder owns its preprocessing and its provenance. Its identity (name,
version, options and the hash of any weights file) is part of the embedding
cache key, so a change in behaviour must bump ``version``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from trainleak.config import DEFAULT_MAX_PIXELS

Metric = Literal["cosine", "tiled_l2", "local"]
#: What an encoder looks for: the same picture (``copy``: pixel, tiled, copy,
#: sscd, dinov2) or the same person (``identity``: face, arcface, adaface,
#: sface). Audits read it instead of switching on names (a copy encoder never
#: scores by identity).
Kind = Literal["copy", "identity"]
#: What an encoder's default threshold means: ``near-duplicate`` (the same
#: picture, edits included: pixel, tiled, copy), ``identity`` (the same person:
#: face) or ``similarity`` (a learned similarity with no such meaning). ``dedup``
#: reads it to decide whether the default is safe to group by.
OperatingPoint = Literal["near-duplicate", "identity", "similarity"]


class EncodeSkip(Exception):
    """Raised by an encoder for an image it cannot embed (e.g. no face in it).

    The message becomes the skip record's one-line reason. The reason is cached
    with the file's content unless ``cache`` is false: a skip that depends on
    a run's settings (such as ``max_pixels``) must be found again by a run
    with other settings.
    """

    def __init__(self, reason: str, *, cache: bool = True) -> None:
        super().__init__(reason)
        self.cache = cache


@dataclass(frozen=True)
class EncoderInfo:
    """What an encoder declares about itself; written into every report."""

    name: str
    version: int
    dim: int
    metric: Metric
    default_threshold: float
    threshold_note: str
    options: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None
    paper: str = ""
    licence: str = ""
    #: The weights' licence forbids commercial use (insightface packs, SSCD).
    non_commercial: bool = False
    #: Where and how the vectors were computed (device, execution provider,
    #: weights file): recorded in reports, never part of the cache key.
    execution: dict[str, Any] = field(default_factory=dict)
    #: ``copy`` or ``identity`` (see :data:`Kind`); not part of the cache key.
    kind: Kind = "copy"
    #: What ``default_threshold`` means (see :data:`OperatingPoint`).
    operating_point: OperatingPoint = "similarity"
    #: The comparison rule, declared by the encoder (the search and every audit
    #: read it; nothing switches on names). ``tiles``: equal tiles per row that
    #: ``tiled_l2`` compares tile by tile (1 otherwise).
    tiles: int = 1
    #: Column order that turns a row into its mirror image's row, for encoders
    #: that compare an image and its mirror image alike (``None``: not mirror-blind).
    #: Derived from the options, so not part of the cache key.
    mirror: np.ndarray | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form used in ``report.json``."""
        return {
            "name": self.name,
            "version": self.version,
            "dim": self.dim,
            "metric": self.metric,
            "kind": self.kind,
            "operating_point": self.operating_point,
            "tiles": self.tiles,
            "mirror": self.mirror is not None,
            "options": dict(self.options),
            "default_threshold": self.default_threshold,
            "weights_sha256": self.weights_sha256,
            "paper": self.paper,
            "licence": self.licence,
            "non_commercial": self.non_commercial,
            "execution": dict(self.execution),
        }

    def cache_key(self) -> str:
        """Return a short stable key for the embedding store.

        Example:
            >>> info = EncoderInfo("pixel", 1, 256, "cosine", 0.9, "", {"size": 16})
            >>> info.cache_key().startswith("pixel-v1-"), len(info.cache_key())
            (True, 25)

        """
        ident = json.dumps(
            [self.name, self.version, self.dim, self.options, self.weights_sha256],
            sort_keys=True,
            default=str,
        )
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return f"{self.name}-v{self.version}-{digest}"


class Encoder:
    """Base class: subclasses set ``info`` in ``__init__`` and implement ``encode``.

    ``encode`` maps one RGB ``uint8`` image of shape ``(H, W, 3)`` to an array of
    shape ``(m, dim)`` float32: one row per item found (``m`` is 1 except for the
    face encoder with ``all_faces``), raising :class:`EncodeSkip` when there is
    nothing to embed. ``cosine`` encoders return L2-normalised rows; ``tiled_l2``
    encoders return raw tile pixels in [0, 1] (see :mod:`trainleak.encoders.pixel`);
    ``local`` encoders return packed local features that the search verifies
    pair by pair (see :mod:`trainleak.encoders.keypoints`).
    """

    info: EncoderInfo
    #: Options a user may set, with their defaults; unknown options are rejected.
    defaults: ClassVar[dict[str, Any]] = {}
    #: The most pixels an encoder may make of one image while working on it
    #: (padding, upsampling); over it the image is an :class:`EncodeSkip`, not
    #: an out-of-memory. The pipeline sets it to its decoding limit
    #: (``--max-pixels``). Not part of the identity: it changes which images
    #: are embedded, never a vector.
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Where the encoder computes: ``"cpu"`` or a CUDA device. An encoder on a
    #: CUDA device embeds in the process that owns the device (the embedder
    #: starts no worker processes for it).
    device: str = "cpu"

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Embed one image; see the class docstring for shapes."""
        raise NotImplementedError

    def encode_batch(self, images: list[np.ndarray]) -> list[np.ndarray | EncodeSkip]:
        """Embed several images; a failure is returned in place, not raised."""
        out: list[np.ndarray | EncodeSkip] = []
        for image in images:
            try:
                out.append(self.encode(image))
            except EncodeSkip as skip:
                out.append(skip)
        return out


def resolve_options(name: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Merge user options over defaults, rejecting unknown names with a fix-it message."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"encoder {name!r} has no option(s) {unknown}; its options are: {known}")
    merged = dict(defaults)
    merged.update(given)
    return merged


def file_sha256(path: str | Path) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Return rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
