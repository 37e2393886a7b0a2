"""Pixel-space encoders for exact and near-exact copies: ``pixel`` and ``tiled``.

Both look for the same picture, not the same subject: a copy that went
through re-encoding (JPEG), resizing, sensor-level noise or a brightness
change, never another photo of the same person or object.

``pixel``: grey, box-downsampled to ``size`` x ``size``, smoothed with a
Gaussian of ``blur`` pixels, then zero mean and unit length, compared by
cosine (= Pearson correlation of the smoothed thumbnails). Removing the mean
and the scale makes it blind to global brightness and contrast; the smoothing
takes away the pixel-level noise that JPEG, resizing and sensor noise add.

``tiled``: Carlini et al. 2023's tiled l2 distance. The image is resized to
``size`` x ``size`` RGB and cut into a ``grid`` x ``grid`` grid of tiles; the
distance of two images is the largest, over tiles, of the RMS difference
between corresponding tiles. A copy must match everywhere, not on average.
Search scores are ``1 / (1 + distance)``, a similarity in ``(0, 1]`` (1 for
identical images; version 3, was ``1 - distance``, which went negative for
distinct images), ordered exactly as the distance. The paper compares raw [0, 1] pixels of
32 x 32 CIFAR-10 images with 16 tiles and delta = 0.15; with
``normalise=False, blur=0`` this encoder is exactly that (``extract`` uses it
so). By default (ours) each image is first smoothed like ``pixel`` and
standardised (zero mean, unit standard deviation over all its pixels), so the
distance is in units of the image's own contrast and a brightness change is
not a difference.

Mirror images (``flip_invariant``, on by default, ours): the score of two
images is the better of (image, other) and (mirror image, other) — a max over
the two, never a blend, so nothing that tells left from right is lost. It is
done in the search (:mod:`trainleak.similarity`), the vectors themselves are
not mirrored. Neither encoder is shift-invariant by design (the paper's
tiled l2 is not either): a shift by one pixel of a small image is a change,
see the README's dedup table for what it costs.

Default operating points (ours, chosen from data by ``experiments/dedup_defaults.py``,
whose table is in the README). Rule: a default must never join two distinct
photographs, so it sits at half the distance of the closest pair of distinct
photos in ORL (400 separate exposures of 40 people, at 23 x 28 and at
92 x 112: two photos of one person a second apart are the hardest natural
negatives we have); recall on planted copies is then measured, not tuned
for. On COIL-20 the defaults join views 5 degrees apart of rotationally
symmetric objects, which differ by a few grey levels RMS and look the same
to a person; the README lists them. imagededup and fastdup pick fixed hash/cosine
thresholds on the same principle (a distance below which images look the
same); Carlini et al.'s delta = 0.15 on raw pixels joins distinct ORL photos
of one person and is kept only for ``extract``, where the paper uses it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from trainleak.encoders import ENCODERS
from trainleak.encoders.base import Encoder, EncoderInfo, l2_normalise, resolve_options

#: Default operating points (scores); see the module docstring for how they were chosen.
PIXEL_THRESHOLD = 0.9983
#: ``tiled``: the score of the tiled distance 0.0624 (``1 / 1.0624``; 0.9376 as
#: ``1 - d`` before version 3), so exactly the same pairs pass as before.
TILED_THRESHOLD = 1.0 / (1.0 + 0.0624)
_TILED_SHOWN = (
    f"{TILED_THRESHOLD:.4f} (score = 1 / (1 + tiled l2 distance), in (0, 1]: distance 0.0624)"
)

_HOW_CHOSEN = (
    "encoder default operating point {value} (trainleak's, chosen from data: half the "
    "distance of the closest pair of distinct photos in ORL at 23x28 and 92x112; "
    "experiments/dedup_defaults.py); uncalibrated for your data: calibrate it with a holdout "
    "(audit --holdout, index build --holdout) or set --threshold"
)


def _thumbnail(image: np.ndarray, size: int, grey: bool, blur: float) -> np.ndarray:
    im = Image.fromarray(image)
    a = np.asarray(im.convert("L") if grey else im.convert("RGB"))
    a = area_resize(a, size) / np.float32(255.0)
    return gaussian_blur(a, blur) if blur > 0 else a


#: Most weights (output bins x input pixels) held at once; above it an axis is
#: averaged bin by bin and a strip's long side goes first, so a tiny PNG of
#: 4,000,000 x 1 pixels costs megabytes, not gigabytes. Every image with sides
#: under 131,072 pixels takes the dense path, whose numbers are unchanged.
_DENSE_WEIGHTS = 1 << 22


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights: how much of each input pixel falls in each output bin."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo = np.clip(edges[:-1, None] - np.arange(n_in)[None], 0.0, 1.0)
    hi = np.clip(edges[1:, None] - np.arange(n_in)[None], 0.0, 1.0)
    w = hi - lo
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def _resize_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Area-average ``x`` along ``axis`` into ``size`` bins; other axes are kept."""
    n_in = x.shape[axis]
    if n_in * size <= _DENSE_WEIGHTS:
        return np.moveaxis(np.tensordot(_area_weights(n_in, size), x, axes=(1, axis)), 0, axis)
    edges = np.linspace(0.0, n_in, size + 1)
    bins = []
    for e0, e1 in zip(edges[:-1], edges[1:], strict=True):
        first, stop = int(np.floor(e0)), min(n_in, int(np.ceil(e1)))
        pixels = np.arange(first, stop)
        w = np.clip(e1 - pixels, 0.0, 1.0) - np.clip(e0 - pixels, 0.0, 1.0)
        part = np.take(x, pixels, axis=axis)
        bins.append(np.tensordot((w / w.sum()).astype(np.float32), part, axes=(0, axis)))
    return np.stack(bins, axis=axis)


def area_resize(a: np.ndarray, size: int) -> np.ndarray:
    """Average ``a`` (``(H, W)`` or ``(H, W, C)``) over a ``size`` x ``size`` grid of bins.

    Exact area averaging with fractional pixel weights. Unlike PIL's box
    filter (up to 51 grey levels apart on a 92 x 112 face), it commutes with
    mirroring, which the mirror-blind search relies on.

    Example:
        >>> img = np.random.default_rng(0).integers(0, 255, (112, 92), dtype=np.uint8)
        >>> mirrored = area_resize(img[:, ::-1], 32)
        >>> bool(np.allclose(area_resize(img, 32)[:, ::-1], mirrored, atol=1e-3))
        True

    """
    h, w = a.shape[:2]
    x = np.asarray(a, np.float32)
    # Height first; width first only for a strip so wide that the intermediate
    # (size x width) would be large. Either way the same bin averages.
    first, second = (1, 0) if w > h and size * w > _DENSE_WEIGHTS else (0, 1)
    return np.ascontiguousarray(_resize_axis(_resize_axis(x, first, size), second, size))


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian smoothing of the first two axes, edges mirrored.

    Done on floats (PIL's filter needs 8-bit images and would round).

    Example:
        >>> out = gaussian_blur(np.eye(5, dtype=np.float32), 1.0)
        >>> out.shape, round(float(out.sum()), 4)
        ((5, 5), 5.0)

    """
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.asarray(a, np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(j, j + n), axis=axis) for j, w in enumerate(kernel))
    return np.asarray(out, np.float32)


def mirror_permutation(info: EncoderInfo) -> np.ndarray | None:
    """Column order that turns a ``pixel``/``tiled`` row into its mirror image's row.

    ``None`` when the encoder is not mirror-blind (or not one of these two).

    Example:
        >>> enc = TiledEncoder(size=4, grid=2, blur=0)
        >>> img = np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8)
        >>> v = enc.encode(img)[0]
        >>> bool(np.allclose(v[mirror_permutation(enc.info)], enc.encode(img[:, ::-1])[0]))
        True

    """
    if info.name not in ("pixel", "tiled") or not info.options.get("flip_invariant"):
        return None
    size = int(info.options["size"])
    channels = 1 if info.name == "pixel" else 3
    grid = int(info.options.get("grid", 1))
    cells = np.arange(size * size * channels).reshape(size, size, channels)
    # Position p of a row holds raw pixel layout[p]; its mirror image holds the
    # raw pixel mirrored[p], which sits at position where[mirrored[p]] of the row.
    layout = _tile_layout(cells, grid).reshape(-1)
    mirrored = _tile_layout(cells[:, ::-1], grid).reshape(-1)
    where = np.argsort(layout)
    return where[mirrored]


def _tile_layout(a: np.ndarray, grid: int) -> np.ndarray:
    size, channels = a.shape[0], a.shape[2]
    step = size // grid
    tiles = a.reshape(grid, step, grid, step, channels).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(tiles.reshape(1, -1))


@ENCODERS.register("pixel")
class PixelEncoder(Encoder):
    """Smoothed grey thumbnail, zero mean, unit length; cosine similarity.

    Example:
        >>> enc = PixelEncoder(size=8)
        >>> img = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
        >>> v = enc.encode(img)
        >>> v.shape, round(float(np.linalg.norm(v)), 4)
        ((1, 64), 1.0)

    """

    defaults: ClassVar[dict[str, Any]] = {"size": 32, "blur": 1.0, "flip_invariant": True}

    def __init__(self, **options: Any) -> None:
        opts = resolve_options("pixel", self.defaults, options)
        self.opts = opts
        size = int(opts["size"])
        self.info = EncoderInfo(
            name="pixel",
            version=2,
            dim=size * size,
            metric="cosine",
            default_threshold=PIXEL_THRESHOLD,
            threshold_note=_HOW_CHOSEN.format(value=PIXEL_THRESHOLD),
            options=opts,
            paper="exact / near-exact copy detection in pixel space",
            operating_point="near-duplicate",
        )
        self.info = replace(self.info, mirror=mirror_permutation(self.info))

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Return one ``(1, size*size)`` unit row."""
        grey = _thumbnail(image, int(self.opts["size"]), True, float(self.opts["blur"]))
        return l2_normalise((grey - grey.mean()).reshape(1, -1))


@ENCODERS.register("tiled")
class TiledEncoder(Encoder):
    """Carlini et al. 2023 tiled l2; rows hold tiles contiguously for the search.

    Example:
        >>> enc = TiledEncoder()
        >>> img = np.zeros((40, 30, 3), dtype=np.uint8)
        >>> enc.encode(img).shape, enc.info.metric
        ((1, 3072), 'tiled_l2')

    """

    defaults: ClassVar[dict[str, Any]] = {
        "size": 32,
        "grid": 4,
        "flip_invariant": True,
        "normalise": True,
        "blur": 1.0,
    }

    def __init__(self, **options: Any) -> None:
        opts = resolve_options("tiled", self.defaults, options)
        size, grid = int(opts["size"]), int(opts["grid"])
        if size % grid:
            raise ValueError(f"tiled: size {size} must be a multiple of grid {grid}")
        self.opts = opts
        paper_form = not opts["normalise"] and not float(opts["blur"])
        self.info = EncoderInfo(
            name="tiled",
            version=3,
            dim=size * size * 3,
            metric="tiled_l2",
            default_threshold=1.0 / 1.15 if paper_form else TILED_THRESHOLD,
            threshold_note=(
                "Carlini et al. 2023's delta = 0.15 on [0, 1] pixels (score = 1 / (1 + "
                "distance) = 0.8696); "
                "uncalibrated for your data: calibrate it with a holdout (audit --holdout, "
                "index build --holdout) or set --threshold"
                if paper_form
                else _HOW_CHOSEN.format(value=_TILED_SHOWN)
            ),
            options=opts,
            paper="Carlini et al. 2023, Extracting Training Data from Diffusion Models",
            operating_point="near-duplicate",
            tiles=grid * grid,
        )
        self.info = replace(self.info, mirror=mirror_permutation(self.info))

    @property
    def tiles(self) -> int:
        """Number of tiles per image (``grid`` squared)."""
        return int(self.opts["grid"]) ** 2

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Return one ``(1, size*size*3)`` row of pixels, tile by tile."""
        size, grid = int(self.opts["size"]), int(self.opts["grid"])
        rgb = _thumbnail(image, size, False, float(self.opts["blur"]))
        if self.opts["normalise"]:
            rgb = (rgb - rgb.mean()) / max(float(rgb.std()), 1e-3)
        return _tile_layout(rgb.astype(np.float32), grid).astype(np.float32)
