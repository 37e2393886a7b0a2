"""The images a review shows: only the paths the reports list, by number.

The page asks for ``/image/N``, never for a path, so no request can name a
file the reports do not list. A listed path is resolved against the folder
``review`` was started in, then the report folder's parent, then the report
folder. What is sent is a PNG made from the decoded pixels, never the file's
bytes: a report that lists a non-image file (``/etc/passwd``) shows nothing.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path


class ImageTable:
    """Every image path the reports list, by number; resolved once, hashed on demand.

    Args:
        bases: folders a relative path is resolved against, in order.
        max_file_mb: larger files are not read (nor shown, nor hashed).

    """

    def __init__(self, bases: list[Path], max_file_mb: float) -> None:
        self.bases = bases
        self.max_bytes = int(max_file_mb * 2**20)
        self.paths: list[str] = []
        self.files: list[Path | None] = []
        self._number: dict[tuple[str, str], int] = {}
        self._hashes: dict[int, str] = {}

    def add(self, path: str, report_dir: Path) -> int:
        """Return the number of ``path`` (as listed by the report in ``report_dir``)."""
        key = (path, str(report_dir))
        if key not in self._number:
            self._number[key] = len(self.paths)
            self.paths.append(path)
            self.files.append(self._resolve(path, report_dir))
        return self._number[key]

    def _resolve(self, path: str, report_dir: Path) -> Path | None:
        names = [path]
        if "#" in path:  # a face index: path#k is the k-th face of path
            names.append(path.rsplit("#", 1)[0])
        p = Path(path)
        bases = [*self.bases, report_dir.parent, report_dir]
        # A report written to out/ names its own files as out/...: try the part after it too.
        parts = p.parts
        if report_dir.name in parts:
            tail = parts[len(parts) - parts[::-1].index(report_dir.name) :]
            if tail:
                names.append(str(Path(*tail)))
        for name in names:
            q = Path(name)
            for cand in [q] if q.is_absolute() else [b / q for b in bases]:
                if cand.is_file():
                    return cand
        return None

    def read(self, n: int) -> bytes | None:
        """Return the bytes of image ``n``: ``None`` if missing, not a regular file or too big."""
        f = self.files[n]
        if f is None:
            return None
        try:
            with open(f, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_bytes:
                    return None
                return fh.read(self.max_bytes + 1)[: self.max_bytes]
        except OSError:
            return None

    def digest(self, n: int) -> str:
        """Return the content hash of image ``n`` (``missing:PATH`` when it cannot be read)."""
        if n not in self._hashes:
            from trainleak.store import content_hash

            data = self.read(n)
            self._hashes[n] = content_hash(data) if data is not None else f"missing:{self.paths[n]}"
        return self._hashes[n]


def render_png(data: bytes, max_side: int, max_pixels: int) -> bytes | None:
    """Decode image bytes and return them as a PNG of at most ``max_side`` pixels a side.

    Returns:
        The PNG bytes, or ``None`` when the bytes are not a usable image.

    Example:
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("L", (92, 112), 9).save(buf, "PPM")
        >>> render_png(buf.getvalue(), 56, 10**6)[1:4]
        b'PNG'

    """
    from PIL import Image

    from trainleak.images import ImageSkip, decode_image

    try:
        pixels = decode_image(data, max_pixels)
    except ImageSkip:
        return None
    im = Image.fromarray(pixels)
    im.thumbnail((max_side, max_side))
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()
