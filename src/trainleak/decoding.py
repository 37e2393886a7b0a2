"""Decoding image bytes: only the documented formats, and one bad input costs only itself.

Every image trainleak reads (files, archive members, uploads, report
thumbnails) is opened here, through :func:`open_image`, which hands Pillow the
list of formats trainleak documents (:data:`FORMATS`). Pillow's other plugins
never run: its EPS plugin, for one, starts Ghostscript on the file's
PostScript when Ghostscript is installed, and formats nobody asked for (DDS,
PSD, ...) widen what a crafted file can reach.

A decoder may fail in any way on crafted bytes (Pillow raises ``TypeError``,
``NotImplementedError``, ``struct.error``, ... as well as ``OSError``), so
anything raised while decoding one input becomes that input's
:class:`ImageSkip` with a one-line reason, never an error of the run.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from trainleak.config import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

#: Pillow format names decoded (JPEG, PNG, PGM/PPM/PBM, GIF, WebP, TIFF, BMP).
#: A camera's MPO (a JPEG with a second picture after the first) opens as JPEG.
FORMATS = ("JPEG", "PNG", "PPM", "GIF", "WEBP", "TIFF", "BMP")

_LIMIT_LOCK = threading.Lock()


class ImageSkip(Exception):
    """An image that cannot be used; the message is the skip reason."""


class NotAnImage(ImageSkip):
    """The bytes are in none of the decoded :data:`FORMATS` (an upload gets 415)."""


class TooManyPixels(ImageSkip):
    """The image has more pixels than the limit (an upload gets 413)."""


def _allow_pixels(max_pixels: int) -> None:
    """Raise Pillow's own decompression-bomb limit to ``max_pixels`` if it is lower.

    Pillow refuses images over its process-wide ``Image.MAX_IMAGE_PIXELS``
    (a warning) or twice that (an error) while opening, before trainleak sees
    the size. Our ``max_pixels`` is the limit that counts (checked on the
    header, with the real size in the message), so Pillow's may never be
    lower, or ``--max-pixels`` above it would have no effect. It is only ever
    raised, never lowered: other code in the process keeps at least its guard.
    """
    with _LIMIT_LOCK:
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and current < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


def _too_many(width: int, height: int, max_pixels: int) -> TooManyPixels:
    return TooManyPixels(
        f"too many pixels: {width}x{height} exceeds the limit of {max_pixels:,} "
        "(raise it with --max-pixels if the file is trusted)"
    )


def _reason(err: BaseException) -> str:
    """One line: the message of an ``OSError`` (Pillow's usual), else the type too."""
    text = str(err).strip()
    first = text.splitlines()[0][:200] if text else ""
    if first and isinstance(err, OSError):
        return first
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open image bytes in one of :data:`FORMATS` and check the size on the header.

    No pixel is decoded: Pillow reads the header only.

    Args:
        data: the encoded image.
        max_pixels: images with more pixels are refused.

    Returns:
        The opened (lazy) image.

    Raises:
        NotAnImage: empty, or in no decoded format (an EPS, a DDS, a text file).
        TooManyPixels: over ``max_pixels``.
        ImageSkip: a known format whose header is damaged.

    Example:
        >>> buf = io.BytesIO(); Image.new("L", (4, 3)).save(buf, "EPS")
        >>> open_image(buf.getvalue())
        Traceback (most recent call last):
        ...
        trainleak.decoding.NotAnImage: not an image (unrecognised format)

    """
    if not data:
        raise NotAnImage("empty file (0 bytes)")
    _allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow's limit is at least ours (_allow_pixels): an image over it is
            # over ours too, and the size check below says so with its size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise NotAnImage("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as err:
        # Over twice Pillow's limit, which is at least max_pixels: over ours.
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)):,} pixels" if found else "the image"
        raise TooManyPixels(
            f"too many pixels: {size} exceeds the limit of {max_pixels:,} "
            "(raise it with --max-pixels if the file is trusted)"
        ) from None
    except Exception as err:  # noqa: BLE001 - crafted headers raise anything; one input's skip
        raise ImageSkip(f"damaged image header: {_reason(err)}") from None
    width, height = im.size
    if width * height > max_pixels:
        raise _too_many(width, height, max_pixels)
    return im


def image_format(data: bytes) -> str | None:
    """Pillow's name of the format of image bytes (``"PNG"``, ...), ``None`` if not decoded.

    Example:
        >>> buf = io.BytesIO(); Image.new("L", (4, 3)).save(buf, "PNG")
        >>> image_format(buf.getvalue()), image_format(b"%!PS-Adobe-3.0 EPSF-3.0")
        ('PNG', None)

    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                return im.format
    except Exception:  # noqa: BLE001 - not an image we read: no format to name
        return None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes by content into an RGB ``uint8`` array ``(H, W, 3)``.

    EXIF orientation is applied; the first frame of an animation is used;
    grey, palette, CMYK, 16-bit and float images become 8-bit RGB; transparent
    pixels are composited onto white. Only :data:`FORMATS` are decoded.

    Args:
        data: the file's bytes.
        max_pixels: images with more pixels are refused (decompression bombs).

    Raises:
        ImageSkip: with a one-line reason when the bytes are not a usable image;
            nothing else, whatever the bytes.

    Example:
        >>> buf = io.BytesIO(); Image.new("L", (4, 3), 7).save(buf, "PNG")
        >>> decode_image(buf.getvalue()).shape
        (3, 4, 3)

    """
    im = open_image(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.seek(0)
            im.load()
            # In place, and no RGB-to-RGB convert below: each copy of an 81 MP
            # image is 324 MB more at the peak (measured: 13 -> 6 bytes a pixel).
            ImageOps.exif_transpose(im, in_place=True)
            return _to_rgb8(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooManyPixels(f"too many pixels (more than the limit of {max_pixels:,})") from None
    except Exception as err:  # noqa: BLE001 - decoders raise anything on crafted data
        raise ImageSkip(f"truncated or corrupt image data: {_reason(err)}") from None
    finally:
        im.close()


def _to_rgb8(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
