"""Write verdicts as they come: ``verdicts.csv`` or JSON lines, one row per input.

CSV cells go through the reports' :func:`trainleak.report.csv_cell`: text
that a spreadsheet would run as a formula (beginning with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return; file names are chosen by whoever made the
files) gets a leading single quote, as OWASP's "CSV injection" guidance
advises. Numbers are written as numbers.
"""

from __future__ import annotations

import csv
import json
import math
import unicodedata
from typing import IO, Literal

from trainleak.gate.verdict import COLUMNS, Verdict
from trainleak.records import ENCODING_ERRORS, csv_cell

__all__ = ["VerdictWriter", "csv_cell", "for_terminal", "printable"]


def printable(text: str) -> str:
    r"""Return ``text`` writable to any UTF-8 stream: undecodable file-name bytes as escapes.

    File names that are not UTF-8 reach Python as surrogate escapes; as in the
    reports (:data:`trainleak.report.ENCODING_ERRORS`) they are written as
    ``\udcff``, which inside a JSON string is the escape of the same character.

    Example:
        >>> printable("a\udcff.png")
        'a\\udcff.png'

    """
    return text.encode("utf-8", ENCODING_ERRORS).decode("utf-8")


def for_terminal(text: str) -> str:
    r"""Return ``text`` safe to print on a terminal line: control characters as escapes.

    File names are chosen by whoever made the files: a newline in one would
    forge a line of output (``release\tfake.png``), an ANSI escape would
    recolour, move the cursor or retitle the terminal, a bidi override would
    reorder what is shown. Those characters (Unicode categories Cc, Cf, Zl,
    Zp) are written as Python escapes (``\n``, ``\x1b``), so each printed
    line is one record; undecodable bytes as in :func:`printable`.

    Example:
        >>> for_terminal("a\nrelease\x1b[2J.png")
        'a\\nrelease\\x1b[2J.png'

    """
    out = []
    for ch in printable(text):
        if unicodedata.category(ch) in _CONTROL:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


_CONTROL = frozenset({"Cc", "Cf", "Zl", "Zp"})


class VerdictWriter:
    """Write verdicts to an open text stream, one row (or JSON line) at a time.

    Args:
        stream: a text file opened with ``newline=""`` (CSV) or stdout.
        fmt: ``csv`` (header first) or ``jsonl``.

    Example:
        >>> import io
        >>> buf = io.StringIO()
        >>> VerdictWriter(buf, "csv").write(Verdict("=x.png", "release", similarity=0.5))
        >>> header, row = buf.getvalue().splitlines()
        >>> header
        'path,verdict,nearest,similarity,threshold,identity,reason,reviewed,match'
        >>> row
        "'=x.png,release,,0.5,,,,,"

    """

    def __init__(self, stream: IO[str], fmt: Literal["csv", "jsonl"] = "csv") -> None:
        self.stream = stream
        self.fmt = fmt
        self._csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(COLUMNS)

    def write(self, verdict: Verdict) -> None:
        """Write one verdict."""
        row = verdict.to_dict()
        if self._csv is not None:
            cells = [csv_cell(row[c]) for c in COLUMNS]
            self._csv.writerow([printable(c) if isinstance(c, str) else c for c in cells])
            return
        clean = {
            c: None if isinstance(row[c], float) and not math.isfinite(row[c]) else row[c]
            for c in COLUMNS
        }
        self.stream.write(printable(json.dumps(clean, ensure_ascii=False)) + "\n")
