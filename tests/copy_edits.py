"""Edits an image tool or a generator makes to a copied picture, for the copy tests and bench.

Each edit takes an RGB ``uint8`` array and a seeded ``numpy`` generator and
returns the edited RGB ``uint8`` array. Written here with PIL and numpy (no
augmentation library), parameters at the hard end of what issue 23 names:
crop to 60% of each side, rotation up to 15 degrees, JPEG quality 30,
resizing 0.3x and 3x, and combinations.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

Edit = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")


def crop(fraction: float) -> Edit:
    """Keep ``fraction`` of each side at a random place, at its new (smaller) size."""

    def edit(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = a.shape[:2]
        ch, cw = int(h * fraction), int(w * fraction)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return np.ascontiguousarray(a[y : y + ch, x : x + cw])

    return edit


def rotate(max_degrees: float) -> Edit:
    """Rotate by +-``max_degrees`` (the sign drawn), corners filled black, same size."""

    def edit(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        deg = max_degrees * (1 if rng.random() < 0.5 else -1)
        return np.asarray(_pil(a).rotate(deg, resample=Image.BICUBIC))

    return edit


def flip(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror left to right."""
    return np.ascontiguousarray(a[:, ::-1])


def border(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shrink to 80% and pad onto a light border of a random colour."""
    im = _pil(a)
    w, h = im.size
    small = im.resize((int(w * 0.8), int(h * 0.8)), Image.BILINEAR)
    colour = tuple(int(c) for c in rng.integers(190, 256, 3))
    canvas = Image.new("RGB", (w, h), colour)
    canvas.paste(small, ((w - small.width) // 2, (h - small.height) // 2))
    return np.asarray(canvas)


def caption(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A black band with white caption text along the bottom, and a logo-like box on top."""
    im = _pil(a)
    w, h = im.size
    draw = ImageDraw.Draw(im)
    band = max(12, h // 7)
    draw.rectangle([0, h - band, w, h], fill=(0, 0, 0))
    draw.text((6, h - band + 2), "generated with model v2 - do not share", fill=(255, 255, 255))
    x = int(rng.integers(0, max(1, w - w // 5)))
    draw.rectangle([x, 4, x + w // 5, 4 + h // 10], fill=(240, 30, 30))
    return np.asarray(im)


def colour(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation changed, hue rotated."""
    im = ImageEnhance.Brightness(_pil(a)).enhance(float(rng.uniform(0.65, 1.35)))
    im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.7, 1.4)))
    im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.3, 1.8)))
    hsv = np.asarray(im.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.integers(20, 60))) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def grey(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Greyscale (kept as three equal channels)."""
    return np.asarray(ImageOps.grayscale(_pil(a)).convert("RGB"))


def blur(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of radius 2 at the image's own size."""
    return np.asarray(_pil(a).filter(ImageFilter.GaussianBlur(2)))


def jpeg(quality: int) -> Edit:
    """Re-encoded as JPEG at ``quality``."""

    def edit(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        buf = io.BytesIO()
        _pil(a).save(buf, "JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    return edit


def resize(factor: float) -> Edit:
    """Resized by ``factor`` on both sides."""

    def edit(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = a.shape[:2]
        size = (max(8, round(w * factor)), max(8, round(h * factor)))
        return np.asarray(_pil(a).resize(size, Image.LANCZOS))

    return edit


def combo(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Crop to 70%, mirror, rotate 10 degrees, recolour, JPEG q40: several edits at once."""
    out = crop(0.7)(a, rng)
    out = flip(out, rng)
    out = rotate(10)(out, rng)
    out = colour(out, rng)
    return jpeg(40)(out, rng)


#: Edit families by name, in the order the tests and the bench report them.
EDITS: dict[str, Edit] = {
    "crop80": crop(0.8),
    "crop60": crop(0.6),
    "rotate15": rotate(15),
    "flip": flip,
    "border": border,
    "caption": caption,
    "colour": colour,
    "grey": grey,
    "blur": blur,
    "jpeg30": jpeg(30),
    "resize0.3": resize(0.3),
    "resize3": resize(3.0),
    "combo": combo,
}


def apply(name: str, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply edit ``name`` to ``image`` with its own seeded generator."""
    return EDITS[name](image, np.random.default_rng(seed))
