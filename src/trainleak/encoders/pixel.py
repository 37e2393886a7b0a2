"""Pixel-space encoders for exact and near-exact copies: ``pixel`` and ``tiled``.

``pixel``: grey, box-downsampled to ``size`` x ``size``, mean-centred and
L2-normalised, compared by cosine. Mean-centring and normalising make it blind
to global brightness and contrast changes; the coarse grid absorbs small crops,
shifts and JPEG noise.

``tiled``: Carlini et al. 2023's tiled l2 distance. The image is resized to
``size`` x ``size`` RGB in [0, 1] and cut into a ``grid`` x ``grid`` grid of
tiles; the distance of two images is the largest, over tiles, of the RMS
difference between corresponding tiles (RMS = l2 divided by the square root of
the tile's number of values). A copy must match everywhere, not on average.
Search scores are ``1 - distance``; the paper's delta = 0.15 (on [0, 1] pixels)
is the default operating point, score 0.85. The paper used 32 x 32 CIFAR-10
images and 16 tiles, which are our defaults.

Both are mirror-blind by default (``flip_invariant``): a horizontally flipped
copy is still a copy. ``pixel`` sums the mean-centred vectors of the image and
its mirror; ``tiled`` averages the image with its mirror before tiling. This is
our choice, not the paper's; set ``flip_invariant=False`` to turn it off.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from PIL import Image

from trainleak.encoders import ENCODERS
from trainleak.encoders.base import Encoder, EncoderInfo, l2_normalise, resolve_options


def _resize(image: np.ndarray, size: int, grey: bool) -> np.ndarray:
    im = Image.fromarray(image)
    if grey:
        im = im.convert("L")
    im = im.resize((size, size), Image.Resampling.BOX)
    return np.asarray(im, dtype=np.float32) / 255.0


@ENCODERS.register("pixel")
class PixelEncoder(Encoder):
    """Grey thumbnail, mean-centred, unit length; cosine similarity.

    The default operating point (cosine 0.9) is ours and uncalibrated.

    Example:
        >>> enc = PixelEncoder(size=8)
        >>> img = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
        >>> v = enc.encode(img)
        >>> v.shape, round(float(np.linalg.norm(v)), 4)
        ((1, 64), 1.0)

    """

    defaults: ClassVar[dict[str, Any]] = {"size": 16, "flip_invariant": True}

    def __init__(self, **options: Any) -> None:
        opts = resolve_options("pixel", self.defaults, options)
        self.opts = opts
        size = int(opts["size"])
        self.info = EncoderInfo(
            name="pixel",
            version=1,
            dim=size * size,
            metric="cosine",
            default_threshold=0.9,
            threshold_note=(
                "encoder default operating point (cosine 0.9, chosen by trainleak); "
                "uncalibrated - pass --holdout to calibrate"
            ),
            options=opts,
            paper="exact / near-exact copy detection in pixel space",
        )

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Return one ``(1, size*size)`` unit row."""
        grey = _resize(image, int(self.opts["size"]), grey=True)
        vec = grey - grey.mean()
        if self.opts["flip_invariant"]:
            vec = vec + vec[:, ::-1]
        return l2_normalise(vec.reshape(1, -1))


@ENCODERS.register("tiled")
class TiledEncoder(Encoder):
    """Carlini et al. 2023 tiled l2; rows hold tiles contiguously for the search.

    Example:
        >>> enc = TiledEncoder()
        >>> img = np.zeros((40, 30, 3), dtype=np.uint8)
        >>> enc.encode(img).shape, enc.info.metric
        ((1, 3072), 'tiled_l2')

    """

    defaults: ClassVar[dict[str, Any]] = {"size": 32, "grid": 4, "flip_invariant": True}

    def __init__(self, **options: Any) -> None:
        opts = resolve_options("tiled", self.defaults, options)
        size, grid = int(opts["size"]), int(opts["grid"])
        if size % grid:
            raise ValueError(f"tiled: size {size} must be a multiple of grid {grid}")
        self.opts = opts
        self.info = EncoderInfo(
            name="tiled",
            version=1,
            dim=size * size * 3,
            metric="tiled_l2",
            default_threshold=0.85,
            threshold_note=(
                "Carlini et al. 2023's delta = 0.15 on [0, 1] pixels (score = 1 - distance); "
                "uncalibrated for your data - pass --holdout to calibrate"
            ),
            options=opts,
            paper="Carlini et al. 2023, Extracting Training Data from Diffusion Models",
        )

    @property
    def tiles(self) -> int:
        """Number of tiles per image (``grid`` squared)."""
        return int(self.opts["grid"]) ** 2

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Return one ``(1, size*size*3)`` row of [0, 1] pixels, tile by tile."""
        size, grid = int(self.opts["size"]), int(self.opts["grid"])
        rgb = _resize(image, size, grey=False)
        if self.opts["flip_invariant"]:
            rgb = (rgb + rgb[:, ::-1]) / 2.0
        step = size // grid
        tiles = rgb.reshape(grid, step, grid, step, 3).transpose(0, 2, 1, 3, 4)
        return np.ascontiguousarray(tiles.reshape(1, -1), dtype=np.float32)
