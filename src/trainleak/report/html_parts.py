"""Pieces every self-contained report page is built from.

One stylesheet, one way to escape, one thumbnail ``<img>`` and one skipped-files
table, so that the audit, dedup, extract, membership and invert pages look
alike and a fix to escaping or redaction lands in all of them at once. No
network: CSS is inline and images are base64 ``data:`` URIs.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageOps

from trainleak.decoding import FORMATS

#: Skipped files a page lists one by one (the reasons are counted over all).
SKIPPED_ROWS = 500
#: ``thumbnail(role, path)`` -> a ``data:`` URI, or ``None`` for an unreadable file.
Thumbnail = Callable[[str, str], "str | None"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1150px;color:#222;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}
.verdict{font-size:1.05rem;background:#f5f7fa;border-left:4px solid #0072B2;padding:.7rem 1rem}
.verdict.leak{border-left-color:#D55E00}.note{color:#555;font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #ddd;border-radius:6px;
padding:.6rem .9rem;min-width:150px}.card b{display:block;font-size:1.3rem}
table{border-collapse:collapse;width:100%;font-size:.88rem}th,td{border-bottom:1px solid #e3e3e3;
padding:.3rem .4rem;text-align:left;vertical-align:middle}th{background:#fafafa}
tr.flagged{background:#fdeee6}td.path{word-break:break-all;max-width:260px}
img.thumb{width:88px;height:88px;object-fit:contain;background:#eee;border-radius:3px}
code,pre{background:#f4f4f4;padding:.1rem .3rem;border-radius:3px;font-size:.85rem}
pre{padding:.6rem;white-space:pre-wrap;word-break:break-all}
svg{max-width:100%;height:auto}code{overflow-wrap:anywhere}a.review-link{margin-left:.3rem}
@media (max-width:700px){body{margin:1rem auto;padding:0 .6rem}
.card{flex:1 1 40%;min-width:0}
table{display:block;overflow-x:auto;max-width:100%}td.path{min-width:9rem}
img.thumb{width:64px;height:64px}}
@media print{body{margin:0}.card{break-inside:avoid}tr{break-inside:avoid}}
"""


def escape(value: Any) -> str:
    """Return ``value`` as HTML text; ``None`` becomes the empty string.

    Example:
        >>> escape("<b>"), escape(None), escape(3)
        ('&lt;b&gt;', '', '3')

    """
    return html.escape("" if value is None else str(value))


def number(x: Any, digits: int = 4) -> str:
    """Return a number with ``digits`` decimals, or ``n/a`` for anything else (None, NaN's null).

    Example:
        >>> number(0.123456), number(2, 1), number(None)
        ('0.1235', '2.0', 'n/a')

    """
    return "n/a" if not isinstance(x, (int, float)) else f"{x:.{digits}f}"


def percent(x: float | None) -> str:
    """Return a rate as a percentage with one decimal, or ``n/a``.

    Example:
        >>> percent(0.0125), percent(None)
        ('1.2%', 'n/a')

    """
    return "n/a" if x is None else f"{100 * x:.1f}%"


def page(title: str, body: str) -> str:
    """Return a whole page: the document head with the stylesheet, then ``body``.

    Example:
        >>> page("trainleak demo report", "<h1>x</h1>").endswith("<h1>x</h1></body></html>")
        True

    """
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>"
    )


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """Return ``data`` as a base64 ``data:`` URI.

    Example:
        >>> data_uri(b"ab")
        'data:image/png;base64,YWI='

    """
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def thumbnail_data_uri(path: str, size: int = 96) -> str | None:
    """Return a JPEG ``data:`` URI thumbnail of an image file, or ``None``.

    A ``#k`` face-index suffix is stripped when the file without it exists.
    Never raises for a bad or missing file.
    """
    if "#" in path and not os.path.exists(path):
        path = path.rsplit("#", 1)[0]
    try:
        with Image.open(path, formats=FORMATS) as src:
            src.seek(0)
            im = ImageOps.exif_transpose(src).convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
    except Exception:  # noqa: BLE001 - a thumbnail is never worth a crash
        return None
    return data_uri(buf.getvalue(), "image/jpeg")


def embedded_thumbnails(redact: bool) -> Thumbnail | None:
    """Return the thumbnail maker for a report page: data URIs, or none when redacted."""
    return None if redact else (lambda _role, path: thumbnail_data_uri(path))


def img_tag(thumbnail: Thumbnail | None, role: str, path: str | None) -> str:
    """Return the ``<img>`` of one file's thumbnail; empty when redacted or without a path.

    Example:
        >>> img_tag(lambda role, path: "data:,", "train", "a.png")
        '<img class="thumb" src="data:," alt="train">'
        >>> img_tag(None, "train", "a.png")
        ''

    """
    if thumbnail is None or not path:
        return ""
    uri = thumbnail(role, path)
    if uri is None:
        return '<span class="note">(unreadable)</span>'
    return f'<img class="thumb" src="{uri}" alt="{escape(role)}">'


def skipped_table(report: dict[str, Any]) -> str:
    """Return the skipped files of a report, reasons counted first, then one row each.

    Example:
        >>> row = {"set": "train", "path": "a.png", "reason": "not an image"}
        >>> "1 &times; not an image" in skipped_table({"skipped": [row]})
        True

    """
    skipped = report.get("skipped") or []
    if not skipped:
        return "<p>No files skipped.</p>"
    reasons = Counter(s["reason"] for s in skipped)
    summary = "".join(f"<li>{n} &times; {escape(r)}</li>" for r, n in reasons.most_common())
    rows = "".join(
        f'<tr><td>{escape(s["set"])}</td><td class="path">{escape(s["path"])}</td>'
        f"<td>{escape(s['reason'])}</td></tr>"
        for s in skipped[:SKIPPED_ROWS]
    )
    more = ""
    if len(skipped) > SKIPPED_ROWS:
        more = f'<p class="note">First {SKIPPED_ROWS} of {len(skipped)}; report.json lists all.</p>'
    return (
        f"<ul>{summary}</ul><table><tr><th>set</th><th>path</th><th>reason</th></tr>{rows}</table>"
        f"{more}"
    )
