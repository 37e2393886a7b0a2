"""The one result protocol every audit returns.

``result.report`` is the dict written as ``report.json``; ``result.summary``
its ``summary``; ``result.verdict`` one sentence in plain words;
``result.write(dir)`` writes the report files. In a notebook a result shows
itself as its verdict and its summary numbers.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from typing import Any

from trainleak.errors import TrainleakError

#: Writes a result's files into a folder and returns their paths by kind; picked by
#: the result's type (:func:`trainleak.report.writers.write_result`).
Writer = Callable[["Result", "str | os.PathLike[str]", bool, dict[str, Any]], dict[str, str]]

# How to find the writers: installed once, at the top (``trainleak/__init__.py``), so
# that the audits, which make results, never import the report writers above them.
_find_writer: list[Callable[[], Writer]] = []


def install_writers(find: Callable[[], Writer]) -> None:
    """Install the function that returns the report writer (the package does it on import)."""
    _find_writer[:] = [find]


class Result:
    """Base of every audit's result; subclasses set ``report`` and implement ``write``.

    Example:
        >>> r = Result({"command": "demo", "summary": {"flagged": 0}})
        >>> r.summary, repr(r)
        ({'flagged': 0}, "<Result demo: {'flagged': 0}>")

    """

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    @property
    def summary(self) -> dict[str, Any]:
        """The report's ``summary`` block (the headline numbers)."""
        return dict(self.report.get("summary", {}))

    @property
    def verdict(self) -> str:
        """What was found, in one sentence."""
        return str(self.summary)

    def write(self, out: str | os.PathLike[str], redact: bool = False) -> dict[str, str]:
        """Write ``report.json`` and the other report files into ``out``; return their paths.

        The writer is chosen by the result's type in :mod:`trainleak.report.writers`.
        """
        return self._write(out, redact, {})

    def _write(
        self, out: str | os.PathLike[str], redact: bool, options: dict[str, Any]
    ) -> dict[str, str]:
        if not _find_writer:
            raise TrainleakError("no report writers installed: import trainleak first")
        return _find_writer[0]()(self, out, redact, options)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.report.get('command', '')}: {self.verdict}>"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
            f"<td>{html.escape(_short(v))}</td></tr>"
            for k, v in self.summary.items()
        )
        command = html.escape(str(self.report.get("command", "")))
        return (
            f"<div><b>trainleak {command}</b>: {html.escape(self.verdict)}"
            f"<table>{rows}</table></div>"
        )


def _short(value: Any, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
