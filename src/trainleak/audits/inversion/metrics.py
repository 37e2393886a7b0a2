"""Leakage metrics (PSNR, SSIM, face identity) and split-point defences.

Images are pixel tensors ``(n, C, H, W)`` in [0, 1]. PSNR and SSIM are
scikit-image's, per image, with ``data_range=1``; SSIM uses a 7x7 window
(smaller for tiny images) over each channel.

Defences transform the features a device sends (ours, as the paper
evaluates none):

* ``noise:SIGMA`` adds Gaussian noise of standard deviation ``SIGMA`` times
  the root mean square of the clean features (so one SIGMA means the same
  at every split); seeded.
* ``quantize:BITS`` rounds the features to ``2**BITS`` levels spread evenly
  between the batch's smallest and largest feature value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from trainleak._optional import require

log = logging.getLogger(__name__)


def skimage_metrics() -> ModuleType:
    """Return ``skimage.metrics``, or fail naming the ``invert`` extra."""
    return require("skimage.metrics", extra="invert", needed_for="trainleak invert")


def _pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (
        a.detach().float().clamp(0, 1).cpu().numpy().astype(np.float64),
        b.detach().float().clamp(0, 1).cpu().numpy().astype(np.float64),
    )


def psnr(original: torch.Tensor, reconstruction: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB ``(n,)``; identical images give ``inf``.

    Example:
        >>> a = torch.zeros(1, 1, 4, 4); b = a + 0.1
        >>> round(float(psnr(a, b)[0]), 3)
        20.0

    """
    peak_signal_noise_ratio = skimage_metrics().peak_signal_noise_ratio
    a, b = _pairs(original, reconstruction)
    with np.errstate(divide="ignore"):
        pairs = zip(a, b, strict=True)
        return np.array([peak_signal_noise_ratio(x, y, data_range=1.0) for x, y in pairs])


def ssim(original: torch.Tensor, reconstruction: torch.Tensor) -> np.ndarray:
    """Per-image structural similarity ``(n,)`` (1 = identical).

    Example:
        >>> a = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> ssim(a, a).round(6).tolist()
        [1.0, 1.0]

    """
    structural_similarity = skimage_metrics().structural_similarity
    a, b = _pairs(original, reconstruction)
    side = min(a.shape[2], a.shape[3])
    win = min(7, side if side % 2 else side - 1)
    return np.array(
        [
            structural_similarity(x, y, data_range=1.0, channel_axis=0, win_size=win)
            for x, y in zip(a, b, strict=True)
        ]
    )


def to_uint8_images(
    x: torch.Tensor, sizes: list[tuple[int, int]] | None = None
) -> list[np.ndarray]:
    """Pixel tensors to RGB ``uint8`` arrays, resized to ``sizes`` ``[(height, width)]`` if given.

    Example:
        >>> [a.shape for a in to_uint8_images(torch.zeros(1, 1, 8, 6), [(4, 3)])]
        [(4, 3, 3)]

    """
    from PIL import Image

    arr = (x.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    out = []
    for i, a in enumerate(arr):
        rgb = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a[:3]
        img = np.ascontiguousarray(rgb.transpose(1, 2, 0))
        if sizes is not None and tuple(img.shape[:2]) != tuple(sizes[i]):
            h, w = sizes[i]
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC))
        out.append(img)
    return out


def face_vectors(images: list[np.ndarray], encoder: object) -> list[np.ndarray | None]:
    """Return the ``face`` encoder's unit descriptor per image, ``None`` where no face is found."""
    from trainleak.encoders.base import EncodeSkip

    rows = encoder.encode_batch(images)  # type: ignore[attr-defined]
    return [None if isinstance(r, EncodeSkip) else np.asarray(r)[0] for r in rows]


def identity_similarity(
    originals: list[np.ndarray | None], reconstructions: list[np.ndarray | None]
) -> list[float | None]:
    """Cosine similarity of descriptor pairs; ``None`` where either has no face.

    Example:
        >>> v = np.array([1.0, 0.0])
        >>> identity_similarity([v, None], [v, v])
        [1.0, None]

    """
    return [
        None if a is None or b is None else float(np.dot(a, b))
        for a, b in zip(originals, reconstructions, strict=True)
    ]


def face_rates(
    reconstructions: list[np.ndarray | None],
    originals: list[np.ndarray | None],
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    labels: np.ndarray,
    threshold: float,
) -> dict[str, float]:
    """Rates over all images: a face found, verified against its original, identified rank-1.

    Args:
        reconstructions: descriptor per reconstruction (``None``: no face found).
        originals: descriptor per original image (``None``: no face found).
        gallery: ``(g, d)`` unit descriptors of one photo per known person.
        gallery_labels: ``(g,)`` the person of each gallery row.
        labels: the true person of each reconstruction.
        threshold: cosine at or above which a reconstruction verifies as its original.

    Example:
        >>> e = np.eye(2)
        >>> face_rates([e[0], e[1], None], [e[0], e[0], e[1]], e, np.array([0, 1]),
        ...            np.array([0, 0, 1]), 0.9)
        {'face_found': 0.6666666666666666, 'verified': 0.3333333333333333, 'rank1': 0.3333333333333333}

    """  # noqa: E501
    found = verified = rank1 = 0
    for v, o, label in zip(reconstructions, originals, labels, strict=True):
        if v is None:
            continue
        found += 1
        verified += int(o is not None and float(v @ o) >= threshold)
        rank1 += int(gallery_labels[int(np.argmax(gallery @ v))] == int(label))
    n = len(reconstructions)
    return {"face_found": found / n, "verified": verified / n, "rank1": rank1 / n}


@dataclass(frozen=True)
class Defense:
    """A transform of the features at the split: ``noise:SIGMA`` or ``quantize:BITS``."""

    kind: str
    value: float
    seed: int = 0

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> Defense:
        """Parse ``noise:SIGMA`` or ``quantize:BITS``.

        Example:
            >>> Defense.parse("noise:0.5")
            Defense(kind='noise', value=0.5, seed=0)

        """
        kind, _, raw = spec.partition(":")
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if kind == "noise" and value >= 0:
            return cls(kind, value, seed)
        if kind == "quantize" and value == int(value) and 1 <= value <= 16:
            return cls(kind, int(value), seed)
        raise ValueError(
            f"unknown defence {spec!r}: use noise:SIGMA (SIGMA >= 0, relative to the features' "
            "RMS, e.g. noise:0.5) or quantize:BITS (1-16, e.g. quantize:4)"
        )

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the defence to a batch of features."""
        if self.kind == "noise":
            rms = features.detach().pow(2).mean().sqrt()
            g = torch.Generator().manual_seed(self.seed)
            noise = torch.randn(features.shape, generator=g).to(features)
            return features + self.value * rms * noise
        lo, hi = features.detach().min(), features.detach().max()
        levels = 2 ** int(self.value) - 1
        scale = (hi - lo).clamp_min(1e-12) / levels
        return torch.round((features - lo) / scale) * scale + lo
