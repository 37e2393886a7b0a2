"""Report writers picked by result type: the one place that knows which writer each result needs.

Every audit returns a :class:`~trainleak.result.Result`; ``result.write(out)``
reaches :func:`write_result` (installed by ``trainleak/__init__.py``), which picks
the writer for the result's type. The audits never import this layer: it sits
above them (``.importlinter``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from trainleak.config import TableFormat
from trainleak.report import write_audit_report
from trainleak.report.dedup import write_dedup_report
from trainleak.report.evidence import write_evidence_packet
from trainleak.report.extract import write_extract_report
from trainleak.report.membership import write_membership_report
from trainleak.result import Result

PathLike = str | os.PathLike[str]


def _audit(result: Any, out: PathLike, redact: bool, options: dict[str, Any]) -> dict[str, str]:
    fmt: TableFormat = (
        options.get("table") or result.report.get("settings", {}).get("table") or "auto"
    )
    return write_audit_report(result.report, out, redact, result.table.blocks(), fmt)


def _inversion(
    result: Any, out: PathLike, redact: bool, options: dict[str, Any]
) -> dict[str, str]:
    # Its writer imports torch: only a run that has an inversion result to write loads it.
    from trainleak.report.invert import write_invert_report

    return write_invert_report(result.report, result.originals, result.reconstructions, out, redact)


#: Result type, by its dotted name -> its writer ``(result, out, redact, options) -> paths``.
#: Named, not imported: importing every result type would import every audit (the
#: inversion audit imports torch), and a warm face audit must load neither torch nor dlib.
WRITERS: dict[str, Callable[[Any, PathLike, bool, dict[str, Any]], dict[str, str]]] = {
    "trainleak.audits._leakage.AuditResult": _audit,
    "trainleak.audits._evidence.EvidenceResult": (
        lambda r, out, redact, _: write_evidence_packet(r, out, redact=redact)
    ),
    "trainleak.audits.dedup.DedupResult": (
        lambda r, out, redact, _: write_dedup_report(r.report, out, redact=redact)
    ),
    "trainleak.audits.extraction.ExtractResult": (
        lambda r, out, redact, _: write_extract_report(r.report, out, redact=redact)
    ),
    "trainleak.audits.inversion.audit.InversionResult": _inversion,
    "trainleak.audits.membership.MembershipResult": (
        lambda r, out, redact, _: write_membership_report(r, out, redact=redact)
    ),
}


def write_result(
    result: Result, out: PathLike, redact: bool = False, options: dict[str, Any] | None = None
) -> dict[str, str]:
    """Write a result's report files into ``out`` with the writer of its type.

    Args:
        result: what an audit returned.
        out: output folder (created).
        redact: leave every image out of the pages.
        options: writer settings of the result's type (``table`` for ``audit``).

    Returns:
        The written paths by kind (``json``, ``html``, ...).

    Raises:
        TypeError: no writer is known for the result's type.

    """
    for klass in type(result).__mro__:
        writer = WRITERS.get(f"{klass.__module__}.{klass.__qualname__}")
        if writer is not None:
            return writer(result, out, redact, options or {})
    raise TypeError(f"no report writer for {type(result).__name__}: add one to WRITERS")


__all__ = ["WRITERS", "write_result"]
