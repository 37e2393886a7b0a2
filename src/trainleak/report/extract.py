"""``extract`` reports: ``report.json`` and an HTML page of candidate cliques."""

from __future__ import annotations

import os
from typing import Any

from trainleak.report import write_report_files
from trainleak.report.html_parts import (
    Thumbnail,
    embedded_thumbnails,
    escape,
    img_tag,
    page,
    skipped_table,
)

#: Clique members shown per candidate (all are in the JSON).
SHOWN_MEMBERS = 8


def render_extract_html(report: dict[str, Any], thumbnail: Thumbnail | None) -> str:
    """Render the candidates, extracted first; ``thumbnail=None`` embeds no images."""
    s = report["summary"]
    head = (
        f"{s['n_extracted']} training images extracted from {len(s['groups'])} group(s) of "
        f"generations; {s['candidates']} cliques of near-identical generations found. "
        f"Criterion: {escape(s['criterion'])}."
    )
    rows = []
    cands = sorted(report["candidates"], key=lambda c: (not c["extracted"], c["distance"]))
    for c in cands:
        members = "".join(img_tag(thumbnail, "generated", m) for m in c["members"][:SHOWN_MEMBERS])
        rows.append(
            f'<tr class="{"flagged" if c["extracted"] else ""}" '
            f'data-review="{escape(c["representative"])}"><td>{escape(c["group"])}</td>'
            f"<td>{c['clique_size']}</td><td>{members}</td>"
            f"<td>{img_tag(thumbnail, 'train', c['nearest_train'])}"
            f'<div class="note">{escape(c["nearest_train"])}</div></td>'
            f"<td>{c['distance']:.4f}</td><td>{(c['relative_distance'] or 0):.3f}</td>"
            f'<td class="review-cell">{"EXTRACTED" if c["extracted"] else "not confirmed"} </td>'
            "</tr>"
        )
    table = (
        "<table><tr><th>group</th><th>clique</th><th>generations (first "
        f"{SHOWN_MEMBERS})</th><th>nearest training image</th><th>distance</th>"
        "<th>relative</th><th>verdict</th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p>No clique of near-identical generations was found.</p>"
    )
    groups = "".join(
        f"<tr><td>{escape(g['group'])}</td><td>{g['generations']}</td><td>{g['cliques']}</td>"
        f"<td>{g['extracted']}</td></tr>"
        for g in s["groups"]
    )
    return page(
        "trainleak extract report",
        f'<h1>trainleak extract report</h1><p class="verdict leak">{head}</p>'
        + ("" if thumbnail else '<p class="note">Thumbnails omitted (--redact).</p>')
        + f"<h2>Candidates</h2>{table}"
        + "<h2>Groups</h2><table><tr><th>group</th><th>generations</th><th>cliques</th>"
        + f"<th>extracted</th></tr>{groups}</table>"
        + f"<h2>Skipped files</h2>{skipped_table(report)}",
    )


def write_extract_report(
    report: dict[str, Any], out: str | os.PathLike[str], redact: bool = False
) -> dict[str, str]:
    """Write ``report.json`` and ``report.html`` into ``out``."""
    thumbnail = embedded_thumbnails(redact)
    return write_report_files(
        report, out, lambda clean: render_extract_html(clean, thumbnail), redact
    )
