"""Hostile image files built from real ones (issue 21): crafted decoder crashes, EPS, mutations.

Every file starts as a real image from ../shared/data re-encoded by Pillow;
the damage is then done by hand, so each case is a real file that a real
decoder meets.
"""

from __future__ import annotations

import io
import random
import struct

from PIL import Image

from conftest import COIL

#: Pillow formats and save options of the fuzzing seeds.
SEED_FORMATS: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("png", "PNG", {}),
    ("jpeg", "JPEG", {"quality": 85}),
    ("jpeg-progressive", "JPEG", {"quality": 85, "progressive": True}),
    ("tiff-raw", "TIFF", {}),
    ("tiff-lzw", "TIFF", {"compression": "tiff_lzw"}),
    ("tiff-deflate", "TIFF", {"compression": "tiff_adobe_deflate"}),
    ("tiff-packbits", "TIFF", {"compression": "packbits"}),
    ("gif", "GIF", {}),
    ("webp", "WEBP", {"quality": 80}),
    ("webp-lossless", "WEBP", {"lossless": True}),
)

TIFF_STRIP_OFFSETS = 273
TIFF_ASCII = 2


def coil_image(obj: int = 1, view: int = 0, size: int = 16) -> Image.Image:
    """A COIL-20 photo, made small so that many variants decode quickly."""
    with Image.open(COIL / f"obj{obj}__{view}.png") as im:
        return im.convert("RGB").resize((size, size))


def encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode ``im`` as ``fmt`` bytes."""
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def seeds(size: int = 16) -> dict[str, bytes]:
    """Real COIL photos encoded in every fuzzed format (a different object per format)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: exercises exif_transpose on damaged tags too
    out = {}
    for i, (name, fmt, options) in enumerate(SEED_FORMATS):
        im = coil_image(obj=1 + i % 20, size=size)
        extra = {"exif": exif} if fmt in ("JPEG", "PNG", "TIFF", "WEBP") else {}
        out[name] = encode(im, fmt, **options, **extra)  # type: ignore[arg-type]
    return out


def _ifd_entries(data: bytes) -> list[int]:
    """Offsets of the first IFD's 12-byte entries in a little-endian TIFF."""
    first = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, first)[0]
    return [first + 2 + 12 * e for e in range(count)]


def retype_tiff_tag(data: bytes, tag: int, field_type: int) -> bytes:
    """Give one IFD entry of a TIFF another field type (the kind of damage fuzzers find)."""
    out = bytearray(data)
    for pos in _ifd_entries(data):
        if struct.unpack_from("<H", out, pos)[0] == tag:
            struct.pack_into("<H", out, pos + 2, field_type)
            return bytes(out)
    raise ValueError(f"tag {tag} not in the TIFF")


def typeerror_tiff() -> bytes:
    """A real small TIFF whose StripOffsets are typed ASCII: Pillow raises ``TypeError``."""
    return retype_tiff_tag(encode(coil_image(3), "TIFF"), TIFF_STRIP_OFFSETS, TIFF_ASCII)


def unknown_pixel_format_dds() -> bytes:
    """A real DDS with an unknown FourCC: Pillow's DDS plugin raises ``NotImplementedError``."""
    out = bytearray(encode(Image.new("RGBA", (4, 4), (10, 20, 30, 255)), "DDS"))
    struct.pack_into("<I", out, 80, 0x4)  # pixel-format flags: DDPF_FOURCC
    out[84:88] = b"ZZZZ"
    return bytes(out)


def eps() -> bytes:
    """A real EPS file (Pillow writes them without Ghostscript) of a COIL photo."""
    return encode(coil_image(5, size=24), "EPS")


def mutate(data: bytes, rng: random.Random, tiff: bool = False) -> bytes:
    """One random mutation: bit flips, a cut, inserted or deleted bytes, or (TIFF) a retyped tag."""
    out = bytearray(data)
    n = len(out)
    op = rng.randrange(6 if tiff else 5)
    if op == 0:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(n)
            out[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        del out[rng.randrange(n) :]
    elif op == 2:
        i = rng.randrange(n)
        out[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif op == 3:
        i = rng.randrange(n)
        del out[i : i + rng.randint(1, 16)]
    elif op == 4:
        for _ in range(rng.randint(1, 3)):  # boundary values in headers
            out[rng.randrange(min(n, 256))] = rng.choice((0, 1, 2, 0x7F, 0x80, 0xFF))
    else:
        pos = rng.choice(_ifd_entries(data))
        struct.pack_into("<H", out, pos + 2, rng.randrange(14))
    return bytes(out)
