"""One source of defaults, shared by the Python API and the command line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from trainleak.images import DEFAULT_MAX_PIXELS

ScoreMode = Literal["auto", "nn", "identity"]


@dataclass
class EmbedConfig:
    """How inputs are embedded; every audit has one."""

    encoder: str = "face"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    batch_size: int = 16
    cache: str | None = None
    no_cache: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = False

    def cache_arg(self) -> str | bool:
        """Return the ``cache`` argument of :func:`trainleak.embed`."""
        if self.no_cache:
            return False
        return self.cache if self.cache else True


@dataclass
class AuditConfig:
    """Settings of ``audit``; the resolved values are written into the report.

    Attributes:
        fpr: target false-positive rate when calibrating on a holdout. 0.001
            by default; a holdout needs 1,000+ samples to resolve it.
        threshold: a fixed threshold, used when no holdout is given.
        k: training neighbours reported per synthetic sample.
        score: ``nn`` = similarity to the nearest training sample; ``identity``
            = best over training identities of the mean of (nearest photo of
            the identity) and (identity's mean embedding); ``auto`` = identity
            when every training sample has an identity label, else nn.
        identity_weight: weight of the nearest photo in the identity score.
        ct_cells: k-means cells for Meehan's C_T.
        seed: seeds the k-means of C_T (the only randomness in an audit).
        search_backend: neighbour search, see :func:`trainleak.neighbors.knn`.
        search_device: where the search runs: ``auto`` (a CUDA GPU when torch
            sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``. Results
            do not depend on it (chosen pairs are re-scored in float64).

    """

    embed: EmbedConfig = field(default_factory=EmbedConfig)
    fpr: float = 0.001
    threshold: float | None = None
    k: int = 5
    score: ScoreMode = "auto"
    identity_weight: float = 0.5
    ct_cells: int = 5
    seed: int = 0
    search_backend: Literal["auto", "torch", "numpy", "faiss"] = "auto"
    search_device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as written into ``report.json``."""
        return asdict(self)


@dataclass
class DedupConfig:
    """Settings of ``dedup``.

    Attributes:
        embed: how images are embedded (default encoder ``tiled``).
        threshold: similarity above which two images are near-duplicates;
            ``None`` = the encoder's default operating point (copy encoders
            only; any other encoder needs one).
        k: neighbours searched per image at first.

    """

    embed: EmbedConfig = field(default_factory=lambda: EmbedConfig(encoder="tiled"))
    threshold: float | None = None
    k: int = 16

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as written into ``report.json``."""
        return asdict(self)
