"""Neutral record helpers every layer may use: JSON-clean values, report headers, CSV cells.

They sit low so that the decision core, the gate and the audits can build
records without importing the report writers (:mod:`trainleak.report`, which
sits above them and re-exports these names).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from trainleak._version import __version__

#: How the writers encode text that UTF-8 cannot hold: file names that are not
#: UTF-8 reach the report as Python's surrogate escapes (``b"\xff"`` ->
#: ``"\udcff"``). In JSON they become the escape ``\udcff`` (what
#: ``ensure_ascii`` would write), so ``os.fsencode(json.load(...)["path"])``
#: gives back the file's bytes; in CSV and HTML the same text is shown.
ENCODING_ERRORS = "backslashreplace"

#: First characters that make a spreadsheet read a cell as a formula (OWASP's list,
#: a newline, and the fullwidth = + - @ that some spreadsheets fold to ASCII).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def clean_json(value: Any) -> Any:
    """Replace NaN/inf by ``None`` and numpy scalars by Python ones, recursively.

    Example:
        >>> clean_json({"a": float("nan"), "b": [1.5, float("inf")]})
        {'a': None, 'b': [1.5, None]}

    """
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_header(
    command: str, argv: Sequence[str] | None, settings: dict[str, Any], device: str = "cpu"
) -> dict[str, Any]:
    """Return the keys every ``report.json`` starts with: tool, version, how it was run.

    Example:
        >>> head = report_header("audit", ["trainleak", "audit"], {"k": 5})
        >>> head["tool"], head["command"], head["argv"], head["settings"]
        ('trainleak', 'audit', ['trainleak', 'audit'], {'k': 5})

    """
    return {
        "tool": "trainleak",
        "version": __version__,
        "command": command,
        "argv": list(argv) if argv is not None else list(sys.argv),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device,
        "settings": settings,
    }


def needs_quote(text: str) -> bool:
    """Whether :func:`csv_cell` puts a ``'`` before ``text``.

    A formula character, any leading white space (a spreadsheet may trim a
    space or NBSP and then read ``=``), or a ``'`` of the text's own (quoted
    too, so that reading the file back removes exactly one).
    """
    first = text[:1]
    return bool(first) and (first in FORMULA_START or first.isspace() or first == "'")


def csv_cell(value: Any) -> Any:
    """Return a CSV cell that no spreadsheet runs as a formula (file names are user data).

    ``trainleak.decide.decisions`` removes the quote again when it reads an
    export back, so every text round-trips.

    Example:
        >>> csv_cell("=HYPERLINK(1)"), csv_cell("a.png"), csv_cell(-0.5), csv_cell(None)
        ("'=HYPERLINK(1)", 'a.png', -0.5, '')
        >>> csv_cell(" =1"), csv_cell("\uff1d1"), csv_cell("'a")
        ("' =1", "'\uff1d1", "''a")

    """
    if value is None:
        return ""
    if isinstance(value, str) and needs_quote(value):
        return "'" + value
    return value


@dataclass
class Coded:
    """A text column as its distinct values and one code per row (a block repeats ids k times).

    Example:
        >>> Coded(["a", "b"], np.array([0, 0, 1])).tolist()
        ['a', 'a', 'b']

    """

    values: list[Any]
    codes: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)

    def tolist(self) -> list[Any]:
        """Return the column's value row by row."""
        return [self.values[c] for c in self.codes.tolist()]


__all__ = [
    "ENCODING_ERRORS",
    "FORMULA_START",
    "Coded",
    "clean_json",
    "csv_cell",
    "needs_quote",
    "report_header",
]
