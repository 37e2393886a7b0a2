"""Sources: what a user points at becomes records and decoded RGB images.

A source is a folder (searched recursively), a glob pattern, or a list file
(``.txt`` with one path per line, or ``.csv`` with a ``path`` column and an
optional ``identity`` column). In a folder whose images sit in sub-folders, the
first sub-folder under the root is the identity label (``root/alice/1.jpg`` ->
``alice``), the layout face datasets use.

Decoding goes by content, never by extension. A file that cannot be used is
not an error: :func:`decode_image` raises :class:`ImageSkip` with a one-line
reason and the pipeline turns it into a :class:`SkipRecord`.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Both live in light modules so the CLI can use them without numpy; re-exported here.
from trainleak.config import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS
from trainleak.errors import SourceError as SourceError

log = logging.getLogger(__name__)

_GLOB_CHARS = set("*?[")


class ImageSkip(Exception):
    """An image that cannot be used; the message is the skip reason."""


@dataclass(frozen=True)
class Record:
    """One input file: ``id`` is the path as found under the root the user gave."""

    id: str
    path: Path
    label: str | None = None


@dataclass(frozen=True)
class SkipRecord:
    """A file (or face) left out of a run, with a one-line reason."""

    set: str
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """Return the JSON form used in ``report.json``."""
        return {"set": self.set, "path": self.path, "reason": self.reason}


def list_records(source: str | os.PathLike[str]) -> list[Record]:
    """Expand a folder, glob or list file into records, sorted by id.

    Hidden files and folders (names starting with ``.``) are not inputs and are
    left out of folder listings; every other file is listed, image or not, so
    that a non-image shows up as a skip record rather than vanishing.

    Args:
        source: a folder, a glob pattern (``*``, ``?``, ``[``), or a ``.txt`` /
            ``.csv`` list file.

    Returns:
        Records sorted by id, so input order never changes results.

    Raises:
        SourceError: the path does not exist, a glob matches nothing, or a CSV
            list has no ``path`` column.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "alice").mkdir(); _ = (root / "alice" / "1.png").write_bytes(b"")
        >>> [(r.id.endswith("1.png"), r.label) for r in list_records(root)]
        [(True, 'alice')]

    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        records = _folder_records(text)
    elif path.is_file() and path.suffix.lower() in (".txt", ".csv", ".lst"):
        records = _list_file_records(path)
    elif path.is_file():
        records = [Record(text, path, None)]
    elif _GLOB_CHARS & set(text):
        matches = sorted(glob.glob(text, recursive=True))
        files = [m for m in matches if os.path.isfile(m)]
        if not files:
            raise SourceError(f"the pattern {text!r} matches no files; check the path and quoting")
        records = [Record(m, Path(m), None) for m in files]
    else:
        raise SourceError(
            f"{text!r} does not exist: give a folder, a glob pattern, or a .txt/.csv list of paths"
        )
    return sorted(records, key=lambda r: r.id)


def _folder_records(root: str) -> list[Record]:
    records = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        label = None if rel_dir == "." else Path(rel_dir).parts[0]
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            records.append(Record(full, Path(full), label))
    return records


def _list_file_records(list_path: Path) -> list[Record]:
    base = list_path.parent

    def resolve(entry: str) -> Path:
        p = Path(entry)
        return p if p.is_absolute() else base / p

    if list_path.suffix.lower() == ".csv":
        with open(list_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "path" not in fields:
                raise SourceError(
                    f"{list_path} has no 'path' column (columns: {fields}); "
                    "add a header line 'path,identity'"
                )
            rows = [
                {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                for row in reader
            ]
        return [
            Record(str(resolve(r["path"])), resolve(r["path"]), r.get("identity") or None)
            for r in rows
            if r.get("path")
        ]
    lines = list_path.read_text(encoding="utf-8").splitlines()
    entries = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return [Record(str(resolve(e)), resolve(e), None) for e in entries]


def read_bytes(path: Path) -> bytes:
    """Read a file, turning OS errors into :class:`ImageSkip` reasons."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageSkip("file not found") from None
    except IsADirectoryError:
        raise ImageSkip("is a directory, not a file") from None
    except PermissionError:
        raise ImageSkip("unreadable: permission denied") from None
    except OSError as err:
        raise ImageSkip(f"unreadable: {err.strerror or err}") from None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes by content into an RGB ``uint8`` array ``(H, W, 3)``.

    EXIF orientation is applied; the first frame of an animation is used;
    grey, palette, CMYK, 16-bit and float images become 8-bit RGB; transparent
    pixels are composited onto white.

    Args:
        data: the file's bytes.
        max_pixels: images with more pixels are refused (decompression bombs).

    Raises:
        ImageSkip: with a one-line reason when the bytes are not a usable image.

    Example:
        >>> buf = io.BytesIO(); Image.new("L", (4, 3), 7).save(buf, "PNG")
        >>> decode_image(buf.getvalue()).shape
        (3, 4, 3)

    """
    if not data:
        raise ImageSkip("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ImageSkip(
                    f"too many pixels: {width}x{height} exceeds the limit of {max_pixels:,} "
                    "(raise it with --max-pixels if the file is trusted)"
                )
            im.seek(0)
            im.load()
            return _to_rgb8(ImageOps.exif_transpose(im))
    except ImageSkip:
        raise
    except UnidentifiedImageError:
        raise ImageSkip("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageSkip(f"too many pixels (decompression-bomb limit {max_pixels:,})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageSkip(f"truncated or corrupt image data: {message}") from None


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
    rgb = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode one file; see :func:`decode_image`."""
    return decode_image(read_bytes(Path(path)), max_pixels)
