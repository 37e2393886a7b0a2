"""``dedup`` reports: ``report.json``, ``dedup.csv`` and an HTML gallery of clusters."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from trainleak.report import ENCODING_ERRORS, csv_cell, write_report_files
from trainleak.report.html_parts import (
    Thumbnail,
    embedded_thumbnails,
    escape,
    img_tag,
    page,
    skipped_table,
)

#: Clusters shown in the gallery (all are in the JSON and CSV).
GALLERY_CLUSTERS = 100


def render_dedup_html(report: dict[str, Any], thumbnail: Thumbnail | None) -> str:
    """Render the gallery; ``thumbnail=None`` embeds no images."""
    s, t = report["summary"], report["threshold"]
    head = (
        f"{s['images']} images: {s['clusters']} near-duplicate clusters holding "
        f"{s['in_clusters']} images; keeping one per cluster removes {s['removed']} and keeps "
        f"{s['kept']}. Near-duplicate = {escape(report['encoder']['name'])} similarity above "
        f"{t['value']:.4f} ({escape(t['method'])})."
    )
    blocks = []
    for c in report["clusters"][:GALLERY_CLUSTERS]:
        cells = []
        for m in c["members"]:
            is_kept = m["path"] == c["kept"]
            style = "border:3px solid #009E73" if is_kept else "border:3px solid transparent"
            review = "" if is_kept else f' data-review="{escape(m["path"])}"'
            cells.append(
                f'<figure style="display:inline-block;margin:4px;{style}"{review}>'
                f"{img_tag(thumbnail, 'input', m['path'])}"
                f'<figcaption class="note" style="max-width:120px;word-break:break-all">'
                f"{'KEPT ' if is_kept else ''}{escape(m['path'])}<br>{m['similarity_to_kept']:.4f}"
                "</figcaption></figure>"
            )
        blocks.append(
            f"<h3>cluster {c['cluster']} &middot; {c['size']} images</h3>"
            f"<div>{''.join(cells)}</div>"
        )
    more = len(report["clusters"]) - GALLERY_CLUSTERS
    return page(
        "trainleak dedup report",
        f'<h1>trainleak dedup report</h1><p class="verdict">{head}</p>'
        f'<p class="note">{escape(t["note"])}. Kept image outlined in green; the number is its '
        "similarity to the kept image. Keep rule: "
        f"{escape(s['keep_rule'])}.</p>"
        + ("" if thumbnail else '<p class="note">Thumbnails omitted (--redact).</p>')
        + "".join(blocks)
        + (f"<p>{more} more clusters in report.json and dedup.csv.</p>" if more > 0 else "")
        + f"<h2>Skipped files</h2>{skipped_table(report)}",
    )


def write_dedup_report(
    report: dict[str, Any], out: str | os.PathLike[str], redact: bool = False
) -> dict[str, str]:
    """Write ``report.json``, ``dedup.csv`` and ``report.html`` into ``out``."""
    thumbnail = embedded_thumbnails(redact)
    paths = write_report_files(
        report, out, lambda clean: render_dedup_html(clean, thumbnail), redact
    )
    paths["csv"] = str(Path(out) / "dedup.csv")
    with open(paths["csv"], "w", newline="", encoding="utf-8", errors=ENCODING_ERRORS) as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "cluster", "kept"])
        for row in report["rows"]:
            cluster = "" if row["cluster"] is None else row["cluster"]
            writer.writerow([csv_cell(row["path"]), cluster, int(row["kept"])])
    return paths
