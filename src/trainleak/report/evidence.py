"""The evidence packet: ``evidence.json`` and one self-contained ``evidence.html``.

The page says the verdict in plain words first, then shows the matched pairs
(near-copies and look-alikes apart), where the owner stands among the
reference owners, the test and its assumptions, and how to check the run:
the command, the versions, and the SHA-256 of every input file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainleak.report import ENCODING_ERRORS, clean_json, write_json
from trainleak.report.html_parts import (
    data_uri,
    escape,
    number,
    page,
    skipped_table,
    thumbnail_data_uri,
)

if TYPE_CHECKING:
    from trainleak.audits._evidence import EvidenceResult

#: One line under each tile, in words a non-expert reads.
TILE_NOTES = {
    "p": "how likely a match this close is for someone whose images were not used",
    "reference": "people (or artists) never trained on, compared the same way",
    "matches": "searched images the encoder matches to yours",
    "near": "the same picture as one of yours, possibly edited",
    "look": "a different picture the encoder matches to yours: you, or someone who looks alike",
}


def _tile(value: str, title: str, note: str) -> str:
    return (
        f'<div class="card"><b>{value}</b>{escape(title)}'
        f'<div class="note">{escape(note)}</div></div>'
    )


def _tiles(s: dict[str, Any]) -> str:
    return (
        '<div class="cards">'
        + "".join(
            [
                _tile(f"{s['p_value']:.3g}", "p-value", TILE_NOTES["p"]),
                _tile(str(s["n_reference"]), "reference owners", TILE_NOTES["reference"]),
                _tile(str(s["n_matches"]), "matched images", TILE_NOTES["matches"]),
                _tile(str(s["n_near_copies"]), "near-copies", TILE_NOTES["near"]),
                _tile(str(s["n_look_alikes"]), "look-alikes", TILE_NOTES["look"]),
            ]
        )
        + "</div>"
    )


def svg_strip(owner: float, reference: list[float], width: int = 640, height: int = 70) -> str:
    """Draw the reference owners' statistics as grey ticks and the owner's as a red bar.

    Example:
        >>> svg_strip(0.9, [0.2, 0.5]).count("<line")
        3

    """
    values = [owner, *reference]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    pad = 20

    def x(v: float) -> float:
        return pad + (v - lo) / span * (width - 2 * pad)

    ticks = "".join(
        f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="18" y2="44" stroke="#888" stroke-width="2"/>'
        for v in reference
    )
    you = (
        f'<line x1="{x(owner):.1f}" x2="{x(owner):.1f}" y1="8" y2="50" stroke="#D55E00" '
        f'stroke-width="4"/><text x="{x(owner):.1f}" y="64" text-anchor="middle" '
        'font-size="12">you</text>'
    )
    return (
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        'aria-label="your statistic among the reference owners">'
        f'<text x="{pad}" y="12" font-size="11">{lo:.3f}</text>'
        f'<text x="{width - pad}" y="12" font-size="11" text-anchor="end">{hi:.3f}</text>'
        f"{ticks}{you}</svg>"
    )


def _pairs(report: dict[str, Any], pngs: dict[str, bytes], redact: bool) -> str:
    rows = []
    for r in report["pairs"]:
        mine = against = ""
        if not redact:
            uri = thumbnail_data_uri(r["mine"])
            mine = f'<img class="thumb" src="{uri}" alt="yours">' if uri else ""
            theirs = (
                data_uri(pngs[r["against"]])
                if r["against"] in pngs
                else thumbnail_data_uri(r["against_path"] or r["against"])
            )
            against = f'<img class="thumb" src="{theirs}" alt="found">' if theirs else ""
        cls = ' class="flagged"' if r["label"] == "near-copy" else ""
        rows.append(
            f"<tr{cls}><td>{r['rank']}</td><td>{mine}</td><td>{against}</td>"
            f"<td><b>{escape(r['label'])}</b></td><td>{number(r['score'])}</td>"
            f"<td>{number(r['pixel_similarity'])}</td>"
            f'<td class="path">{escape(r["mine"])}</td><td class="path">{escape(r["against"])}</td>'
            "</tr>"
        )
    return (
        "<table><tr><th>#</th><th>yours</th><th>found</th><th>what it is</th><th>match score</th>"
        "<th>pixel similarity</th><th>your file</th><th>found image</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _files(report: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{escape(f['set'])}</td><td class='path'>{escape(f['path'])}</td>"
        f"<td><code>{escape(f['sha256'])}</code></td></tr>"
        for f in report["files"]
    )
    return (
        f"<details><summary>SHA-256 of the {len(report['files'])} input files</summary>"
        f"<table><tr><th>set</th><th>file</th><th>SHA-256</th></tr>{rows}</table></details>"
    )


def render_evidence_html(report: dict[str, Any], pngs: dict[str, bytes], redact: bool) -> str:
    """Return the whole page of one evidence packet."""
    s = report["summary"]
    leak = " leak" if report["verdict"]["key"] == "used" else ""
    ref = [r["statistic"] for r in report["reference"]]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    body = (
        "<h1>Was my data used?</h1>"
        f'<p class="verdict{leak}">{escape(report["verdict"]["text"])}</p>'
        f"{_tiles(s)}"
        "<h2>You among the reference owners</h2>"
        f"<p>Your statistic ({escape(s['statistic'])}: "
        f"{number(s['owner_statistic'])}) against those of the {s['n_reference']} reference "
        "owners; the further right of the grey ticks, the stronger the evidence.</p>"
        f"{svg_strip(float(s['owner_statistic']), ref) if ref else '<p>No reference.</p>'}"
        "<h2>Closest matches</h2>"
        f'<p class="note">{escape(report["method"]["copy_rule"])}. Match threshold '
        f"{number(report['threshold']['value'])} ({escape(report['threshold']['method'])}).</p>"
        f"{_pairs(report, pngs, redact)}"
        "<h2>The test</h2>"
        f"<p>{escape(report['method']['test'])}.</p><p>{escape(report['method']['assumptions'])}</p>"
        "<h2>Check it yourself</h2>"
        "<p>Re-run this command on the same files (their SHA-256 below) "
        "to get the same numbers:</p>"
        f"<pre>{escape(report['command_line'])}</pre>"
        f'<p class="note">{escape(versions)}; encoder {escape(report["encoder"]["name"])} '
        f"v{escape(report['encoder']['version'])}.</p>"
        f"{_files(report)}<h2>Skipped files</h2>{skipped_table(report)}"
    )
    return page("trainleak evidence", body)


def write_evidence_packet(
    result: EvidenceResult, out: str | os.PathLike[str], redact: bool = False
) -> dict[str, str]:
    """Write ``evidence.json`` and ``evidence.html`` into ``out`` (created).

    Args:
        result: what :func:`trainleak.evidence` returned.
        out: output folder.
        redact: leave the images out of the page (the JSON never holds any).

    Returns:
        The written paths, ``{"json": ..., "html": ...}``.

    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(folder / "evidence.json"), "html": str(folder / "evidence.html")}
    clean = clean_json(dict(result.report, redacted=redact))
    write_json(clean, paths["json"])
    Path(paths["html"]).write_text(
        render_evidence_html(clean, result.pngs, redact), encoding="utf-8", errors=ENCODING_ERRORS
    )
    return paths


__all__ = ["TILE_NOTES", "render_evidence_html", "svg_strip", "write_evidence_packet"]
