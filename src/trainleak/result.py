"""The one result protocol every audit returns.

``result.report`` is the dict written as ``report.json``; ``result.summary``
its ``summary``; ``result.verdict`` one sentence in plain words;
``result.write(dir)`` writes the report files. In a notebook a result shows
itself as its verdict and its summary numbers.
"""

from __future__ import annotations

import html
import os
from typing import Any


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
        """Write ``report.json`` and the other report files into ``out``; return their paths."""
        raise NotImplementedError

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
