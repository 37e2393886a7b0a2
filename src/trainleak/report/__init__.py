"""Report writers: ``report.json`` (stable contract), CSV and self-contained HTML."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainleak.config import TableFormat


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
    from trainleak._version import __version__

    return {
        "tool": "trainleak",
        "version": __version__,
        "command": command,
        "argv": list(argv) if argv is not None else list(sys.argv),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device,
        "settings": settings,
    }


#: How the writers encode text that UTF-8 cannot hold: file names that are not
#: UTF-8 reach the report as Python's surrogate escapes (``b"\xff"`` ->
#: ``"\udcff"``). In JSON they become the escape ``\udcff`` (what
#: ``ensure_ascii`` would write), so ``os.fsencode(json.load(...)["path"])``
#: gives back the file's bytes; in CSV and HTML the same text is shown.
ENCODING_ERRORS = "backslashreplace"


def write_json(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a report as UTF-8 JSON, atomically; see :data:`ENCODING_ERRORS` for odd names."""
    _write_clean_json(clean_json(report), path)


def _write_clean_json(clean: dict[str, Any], path: str | os.PathLike[str]) -> None:
    tmp = Path(f"{os.fspath(path)}.tmp")
    tmp.write_text(
        json.dumps(clean, indent=2, allow_nan=False, ensure_ascii=False) + "\n",
        encoding="utf-8",
        errors=ENCODING_ERRORS,
    )
    os.replace(tmp, path)


def write_report_files(
    report: dict[str, Any],
    out: str | os.PathLike[str],
    render: Callable[[dict[str, Any]], str],
    redact: bool,
) -> dict[str, str]:
    """Create ``out`` and write ``report.json`` (atomically) and ``report.html`` into it.

    Args:
        report: the report dict; written with ``redacted`` set to ``redact``.
        out: output folder (created).
        render: makes the HTML page from the JSON-clean report.
        redact: whether the page leaves images out (recorded in the report).

    Returns:
        The written paths, ``{"json": ..., "html": ...}``.

    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(folder / "report.json"), "html": str(folder / "report.html")}
    clean = clean_json(dict(report, redacted=redact))
    _write_clean_json(clean, paths["json"])
    Path(paths["html"]).write_text(render(clean), encoding="utf-8", errors=ENCODING_ERRORS)
    return paths


#: First characters that make a spreadsheet read a cell as a formula (OWASP's list,
#: a newline, and the fullwidth = + - @ that some spreadsheets fold to ASCII).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


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


MATCH_COLUMNS = ["synthetic", "train", "train_identity", "rank", "similarity", "score", "flagged"]


def write_audit_report(
    report: dict[str, Any],
    out: str | os.PathLike[str],
    redact: bool = False,
    blocks: Iterable[dict[str, Any]] | None = None,
    table: TableFormat = "auto",
) -> dict[str, str]:
    """Write the full neighbour table, ``report.json`` and ``report.html`` into ``out``.

    Args:
        report: the audit report dict.
        out: output folder (created).
        redact: leave every image out of the HTML (reports of face audits show
            training faces).
        blocks: every sample's rows as column blocks (``MatchTable.blocks()``),
            streamed to ``matches.parquet`` or ``matches.csv``; ``None``
            writes ``report["matches"]`` as ``matches.csv``.
        table: the table's format (see :func:`trainleak.report.table.resolve_format`).

    Returns:
        The written paths by kind: ``json``, ``html``, ``table``, and ``csv``
        when the table is CSV.

    """
    from trainleak.report.html import render_audit_html
    from trainleak.report.html_parts import embedded_thumbnails
    from trainleak.report.table import resolve_format, write_table

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    fmt = resolve_format(table) if blocks is not None else "csv"
    name = f"matches.{fmt}"
    rows = write_table(
        blocks if blocks is not None else [_columns(report["matches"])],
        MATCH_COLUMNS,
        folder / name,
        fmt,
    )
    report = dict(
        report,
        table={
            "file": name,
            "format": fmt,
            "rows": rows,
            "columns": MATCH_COLUMNS,
            "note": "every synthetic sample's top-k training neighbours, one row per pair "
            "(pandas.read_parquet / read_csv, polars, duckdb read it as it is)",
        },
    )
    matched = ""
    if report.get("encoder", {}).get("metric") == "local":
        # Local-feature encoders (--encoder copy) show where each flagged pair matches.
        from trainleak.report.copy_evidence import evidence_html, write_copy_evidence

        entries = write_copy_evidence(report, folder, redact)
        report = dict(report, copy_evidence=entries)
        matched = evidence_html(entries, folder, redact)
    thumbnail = embedded_thumbnails(redact)
    paths = write_report_files(
        report, out, lambda clean: render_audit_html(clean, thumbnail, matched), redact
    )
    paths["table"] = str(folder / name)
    if fmt == "csv":
        paths["csv"] = paths["table"]
    return paths


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {c: [r.get(c) for r in rows] for c in MATCH_COLUMNS}
