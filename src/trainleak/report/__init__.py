"""Report writers: ``report.json`` (stable contract), CSV and self-contained HTML."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainleak.records import (
    ENCODING_ERRORS,
    FORMULA_START,
    clean_json,
    csv_cell,
    needs_quote,
    report_header,
)

if TYPE_CHECKING:
    from trainleak.config import TableFormat

# The neutral helpers live in trainleak.records (below audits and the gate);
# they are re-exported here, where the writers use them.
__all__ = [
    "ENCODING_ERRORS",
    "FORMULA_START",
    "clean_json",
    "csv_cell",
    "needs_quote",
    "report_header",
    "write_json",
    "write_report_files",
    "write_audit_report",
]


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
