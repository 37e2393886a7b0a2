"""``membership`` reports: ``report.json`` and one self-contained ``report.html``.

The page shows the ROC curve and the score distributions of members and
non-members (when ``--members`` was given), and for the top identities their
photos beside their closest generated samples. The audit keeps those few
samples' images (a generator's samples are not kept otherwise); the writer
saves them under ``out/closest/`` and renders, it never generates.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainleak.audits.membership_report import SHOWN_IDENTITIES, SHOWN_SAMPLES
from trainleak.report import write_report_files
from trainleak.report.html_parts import (
    Thumbnail,
    embedded_thumbnails,
    escape,
    img_tag,
    page,
    skipped_table,
)
from trainleak.report.plots import PALETTE, svg_histogram

if TYPE_CHECKING:
    from trainleak.audits.membership import MembershipResult


def svg_roc(fpr: list[float], tpr: list[float], auc: float | None, size: int = 320) -> str:
    """ROC curve with log-free linear axes and the chance diagonal, as an SVG string.

    Example:
        >>> svg_roc([0.0, 0.0, 1.0], [0.0, 1.0, 1.0], 1.0).startswith("<svg")
        True

    """
    pad = 40
    side = size - 2 * pad

    def pt(x: float, y: float) -> str:
        return f"{pad + x * side:.1f},{pad + (1 - y) * side:.1f}"

    # Step shape: a ROC from thresholds moves right then up.
    points = [pt(fpr[0], tpr[0])]
    for i in range(1, len(fpr)):
        points += [pt(fpr[i], tpr[i - 1]), pt(fpr[i], tpr[i])]
    label = "" if auc is None else f"AUC {auc:.3f}"
    ticks = "".join(
        f'<text x="{pad + v * side:.1f}" y="{pad + side + 16}" font-size="11" '
        f'text-anchor="middle">{v:.1f}</text>'
        f'<text x="{pad - 6}" y="{pad + (1 - v) * side + 4:.1f}" '
        f'font-size="11" text-anchor="end">{v:.1f}</text>'
        for v in (0.0, 0.5, 1.0)
    )
    return (
        f'<svg viewBox="0 0 {size} {size}" width="{size}" role="img" aria-label="ROC curve">'
        f'<rect x="{pad}" y="{pad}" width="{side}" height="{side}" fill="none" stroke="#333"/>'
        f'<line x1="{pad}" y1="{pad + side}" x2="{pad + side}" y2="{pad}" stroke="#999" '
        f'stroke-dasharray="4,4"/><polyline points="{" ".join(points)}" fill="none" '
        f'stroke="{PALETTE[1]}" stroke-width="2"/>{ticks}'
        f'<text x="{size / 2}" y="{size - 6}" font-size="12" text-anchor="middle">'
        f'false-positive rate</text><text x="12" y="{size / 2}" font-size="12" '
        f'text-anchor="middle" transform="rotate(-90 12 {size / 2})">true-positive rate</text>'
        f'<text x="{pad + 8}" y="{pad + 16}" font-size="13">{html.escape(label)}</text></svg>'
    )


def _cards(report: dict[str, Any]) -> str:
    s = report["summary"]

    def card(title: str, value: str) -> str:
        return f'<div class="card">{escape(title)}<b>{escape(value)}</b></div>'

    def ci(pair: Any) -> str:
        return "" if not pair else f" [{pair[0]:.2f}, {pair[1]:.2f}]"

    if s.get("auc") is None:
        return (
            '<p class="note">No --members file: no evaluation. Scores and p-values are below.</p>'
        )
    t = s["tpr_at_fpr"]
    tc = s.get("tpr_at_fpr_ci95") or {}
    return (
        '<div class="cards">'
        + card("ROC AUC [95% CI]", f"{s['auc']:.3f}{ci(s['auc_ci95'])}")
        + card("TPR @ 1% FPR", f"{t['0.01']:.2f}{ci(tc.get('0.01'))}")
        + card("TPR @ 0.1% FPR", f"{t['0.001']:.2f}{ci(tc.get('0.001'))}")
        + card("members / non-members", f"{s['n_members']} / {s['n_nonmembers']}")
        + "</div>"
        + f'<p class="note">{escape(s.get("fpr_note", ""))}</p>'
    )


def rows_key(report: dict[str, Any]) -> tuple[str, str]:
    """Return the ranked-rows key and each row's name key: identities or samples."""
    return ("identities", "identity") if "identities" in report else ("samples", "sample")


def _plots(report: dict[str, Any]) -> str:
    s = report["summary"]
    key, _ = rows_key(report)
    rows = report[key]
    if s.get("roc") is None:
        series = {"queries": [r["score"] for r in rows]}
        return svg_histogram(series, None, title="scores", x_label="score")
    series = {
        "members": [r["score"] for r in rows if r["member"]],
        "non-members": [r["score"] for r in rows if r["member"] is False],
    }
    return (
        '<div style="display:flex;gap:1rem;align-items:flex-start">'
        + svg_roc(s["roc"]["fpr"], s["roc"]["tpr"], s["auc"])
        + '<div style="flex:1">'
        + svg_histogram(series, None, title="score distributions", x_label="score")
        + "</div></div>"
    )


def _table(
    report: dict[str, Any], photos: dict[str, list[str]], thumbnail: Thumbnail | None
) -> str:
    key, name_key = rows_key(report)
    out = []
    for i, r in enumerate(report[key]):
        member = {True: "member", False: "non-member", None: ""}[r["member"]]
        pv = "n/a" if r["p_value"] is None else f"{r['p_value']:.3g}"
        pics = ""
        if i < SHOWN_IDENTITIES and thumbnail is not None:
            own = photos.get(r[name_key], [r[name_key]] if key == "samples" else [])
            pics = "".join(img_tag(thumbnail, "photo", p) for p in own[:SHOWN_SAMPLES])
            near = [n.get("path") for n in r.get("nearest", [])[:SHOWN_SAMPLES]]
            if near:
                pics += " &rarr; " + "".join(img_tag(thumbnail, "generated", p) for p in near if p)
        out.append(
            f'<tr data-review="{escape(r[name_key])}"><td>{i + 1}</td>'
            f'<td class="review-cell">{escape(r[name_key])} </td><td>{r["score"]:.4f}</td>'
            f"<td>{pv}</td><td>{member}</td><td>{pics}</td></tr>"
        )
    shown = "photos &rarr; closest generated samples" if key == "identities" else "image"
    return (
        f"<table><tr><th>#</th><th>{name_key}</th><th>score</th><th>p-value</th>"
        f"<th>truth</th><th>{shown} (top {SHOWN_IDENTITIES})</th></tr>" + "".join(out) + "</table>"
    )


def render_membership_html(
    report: dict[str, Any], photos: dict[str, list[str]], thumbnail: Thumbnail | None
) -> str:
    """Render the page; ``thumbnail=None`` embeds no images (``--redact``)."""
    s = report["summary"]
    key, _ = rows_key(report)
    what = "identity membership" if key == "identities" else "sample membership (loss attack)"
    return page(
        "trainleak membership report",
        f"<h1>trainleak {what} report</h1>"
        f'<p class="verdict">{len(report[key])} {key} scored. '
        f"{escape(s.get('score_note', ''))}.</p>"
        + ("" if thumbnail else '<p class="note">Thumbnails omitted (--redact).</p>')
        + f"<h2>Evaluation</h2>{_cards(report)}{_plots(report)}"
        + f"<h2>Ranked {key}</h2>{_table(report, photos, thumbnail)}"
        + f"<h2>Skipped</h2>{skipped_table(report)}"
        + f"<h2>Command</h2><pre>{escape(' '.join(report.get('argv', [])))}</pre>",
    )


def _with_closest(result: MembershipResult, folder: Path) -> dict[str, Any]:
    """Save the audit's closest samples into ``folder``; return the report with their paths.

    The shown identities' nearest entries get a ``path``: the saved PNG, or for
    samples from a folder the file itself. ``result.report`` is left as it is.
    """
    report = dict(result.report)
    if "identities" not in report:
        return report
    rows = [dict(r) for r in report["identities"]]
    for row in rows[:SHOWN_IDENTITIES]:
        row["nearest"] = [dict(n) for n in row["nearest"]]
        for n in row["nearest"][:SHOWN_SAMPLES]:
            n["path"] = _closest_path(n["sample"], result.closest, folder)
    report["identities"] = rows
    return report


def _closest_path(sample: str, closest: dict[str, bytes], folder: Path) -> str | None:
    png = closest.get(sample)
    if png is None:
        # A folder's generated images are files already: the id is the path.
        return sample if os.path.exists(sample) else None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sample.replace(':', '-')}.png"
    path.write_bytes(png)
    return str(path)


def write_membership_report(
    result: MembershipResult, out: str | os.PathLike[str], redact: bool = False
) -> dict[str, str]:
    """Write ``report.json`` and ``report.html`` into ``out`` (created).

    Args:
        result: what :func:`~trainleak.audits.membership.membership` or
            :func:`~trainleak.audits.loss_attack.loss_membership` returned.
        out: output folder.
        redact: no images in the HTML and no closest samples written.

    Returns:
        The written paths by kind.

    """
    report = result.report if redact else _with_closest(result, Path(out) / "closest")
    thumbnail = embedded_thumbnails(redact)
    return write_report_files(
        report,
        out,
        lambda clean: render_membership_html(clean, result.photos, thumbnail),
        redact,
    )
