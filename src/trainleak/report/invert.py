"""The ``invert`` report: ``report.json`` and a self-contained ``report.html``.

The page shows, per split, how well the input was rebuilt (PSNR, SSIM,
identity similarity), a grid of originals and reconstructions (leave it out
with ``redact``), and the leakage-against-depth curve as inline SVG.
"""

from __future__ import annotations

import io
import os
import shlex
from typing import Any

import numpy as np
import torch
from PIL import Image

from trainleak.report import write_report_files
from trainleak.report.html_parts import data_uri, escape, number, page, skipped_table
from trainleak.report.plots import PALETTE

#: Images shown in the grid (the report holds metrics for all of them).
GRID_IMAGES = 8


def _num(x: Any, digits: int = 3) -> str:
    # This page's numbers (SSIM, similarities) read best with three decimals.
    return number(x, digits)


def png_data_uri(image: torch.Tensor, scale: int = 3) -> str:
    """Return a PNG ``data:`` URI of a pixel tensor ``(C, H, W)`` in [0, 1], ``scale`` x larger.

    Example:
        >>> png_data_uri(torch.zeros(1, 2, 2)).startswith("data:image/png;base64,")
        True

    """
    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr[:3].transpose(1, 2, 0))
    im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return data_uri(buf.getvalue())


def svg_curve(
    series: dict[str, list[tuple[float, float]]],
    baseline: float | None,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 720,
    height: int = 300,
) -> str:
    """Lines with markers, one per series, and a dashed baseline, as an SVG string.

    Example:
        >>> svg_curve({"a": [(1, 30.0), (5, 20.0)]}, 15.0, "t", "depth", "PSNR").startswith("<svg")
        True

    """
    pts = [p for s in series.values() for p in s if p[1] is not None and np.isfinite(p[1])]
    if not pts:
        return "<p><em>nothing to plot</em></p>"
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts] + ([baseline] if baseline is not None else [])
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_lo, y_hi = min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.08 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad
    left, right, top, bottom = 55, 150, 30, 45
    pw, ph = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * pw

    def py(v: float) -> float:
        return top + ph - (v - y_lo) / (y_hi - y_lo) * ph

    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{left}" y="18" font-size="14" font-weight="600">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>',
        f'<text x="{left + pw / 2}" y="{height - 6}" font-size="12" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text x="14" y="{top + ph / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2})">{escape(y_label)}</text>',
    ]
    for tick in np.linspace(y_lo, y_hi, 5):
        parts.append(
            f'<text x="{left - 6}" y="{py(tick) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{tick:.2f}</text>'
        )
    for tick in sorted(set(xs)):
        parts.append(
            f'<text x="{px(tick):.1f}" y="{top + ph + 18}" font-size="11" '
            f'text-anchor="middle">{tick:g}</text>'
        )
    if baseline is not None:
        parts.append(
            f'<line x1="{left}" y1="{py(baseline):.1f}" x2="{left + pw}" y2="{py(baseline):.1f}" '
            'stroke="#555" stroke-dasharray="5,4"/>'
            f'<text x="{left + pw + 6}" y="{py(baseline) + 4:.1f}" font-size="11">'
            "mean-image baseline</text>"
        )
    for n, (name, s) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        ok = sorted(p for p in s if p[1] is not None and np.isfinite(p[1]))
        line = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in ok)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.extend(
            f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3.5" fill="{colour}"/>' for a, b in ok
        )
        parts.append(
            f'<text x="{left + pw + 6}" y="{top + 14 + 16 * n}" font-size="12" '
            f'fill="{colour}">{escape(name)}</text>'
        )
    return "".join(parts) + "</svg>"


def _table(report: dict[str, Any]) -> str:
    head = (
        "<tr><th>split</th><th>depth</th><th>method</th><th>PSNR (dB)</th><th>SSIM</th>"
        "<th>identity similarity</th><th>faces compared</th><th>s / image</th>"
    )
    has_def = any(e.get("defense") for e in report["splits"])
    if has_def:
        head += "<th>defended PSNR</th><th>defended SSIM</th><th>defended identity</th>"
        head += "<th>accuracy (clean &rarr; defended)</th>"
    rows = []
    for e in report["splits"]:
        row = (
            f"<tr><td><code>{escape(e['split'])}</code></td><td>{e['depth']}</td>"
            f"<td>{escape(e['method'])}</td><td>{_num(e['psnr'], 2)}</td><td>{_num(e['ssim'])}</td>"
            f"<td>{_num(e['identity_similarity'])}</td><td>{escape(e.get('identity_compared'))}</td>"
            f"<td>{_num(e.get('seconds_per_image'), 3)}</td>"
        )
        d = e.get("defense")
        if has_def and d:
            row += (
                f"<td>{_num(d['psnr'], 2)}</td><td>{_num(d['ssim'])}</td>"
                f"<td>{_num(d['identity_similarity'])}</td>"
                f"<td>{_num(d['accuracy_clean'])} &rarr; {_num(d['accuracy'])}</td>"
            )
        rows.append(row + "</tr>")
    return f"<table>{head}</tr>{''.join(rows)}</table>"


def _grid(originals: torch.Tensor, recons: dict[str, torch.Tensor], paths: list[str]) -> str:
    n = min(GRID_IMAGES, len(originals))
    head = "<tr><th>image</th><th>original</th>" + "".join(
        f"<th><code>{escape(name)}</code></th>" for name in recons
    )
    rows = []
    for i in range(n):
        cells = "".join(
            f'<td><img src="{png_data_uri(r[i])}" alt="{escape(name)}"></td>'
            for name, r in recons.items()
        )
        rows.append(
            f'<tr><td class="path">{escape(paths[i])}</td>'
            f'<td><img src="{png_data_uri(originals[i])}" alt="original"></td>{cells}</tr>'
        )
    return f"<table>{head}</tr>{''.join(rows)}</table>"


def render_invert_html(
    report: dict[str, Any], originals: torch.Tensor | None, recons: dict[str, torch.Tensor]
) -> str:
    """Render the page; ``originals=None`` embeds no images (redacted)."""
    s = report["summary"]
    best = max(report["splits"], key=lambda e: e["psnr"])
    verdict = (
        f"From the features at <code>{escape(best['split'])}</code> (depth {best['depth']}), "
        f"{escape(s['method'])} rebuilt the {s['n_images']} inputs at {_num(best['psnr'], 1)} dB "
        f"PSNR / SSIM {_num(best['ssim'])}, against {_num(s['baseline']['psnr'], 1)} dB / "
        f"{_num(s['baseline']['ssim'])} for the mean image (no information)."
    )
    psnr_series = {f"PSNR ({s['method']})": [(e["depth"], e["psnr"]) for e in report["splits"]]}
    ssim_series = {f"SSIM ({s['method']})": [(e["depth"], e["ssim"]) for e in report["splits"]]}
    if any(e.get("defense") for e in report["splits"]):
        label = f"with {s['defense']}"
        psnr_series[label] = [(e["depth"], e["defense"]["psnr"]) for e in report["splits"]]
        ssim_series[label] = [(e["depth"], e["defense"]["ssim"]) for e in report["splits"]]
    curves = svg_curve(
        psnr_series,
        s["baseline"]["psnr"],
        "Leakage against split depth",
        "depth (conv/linear layers)",
        "PSNR (dB)",
    ) + svg_curve(ssim_series, s["baseline"]["ssim"], "", "depth (conv/linear layers)", "SSIM")
    grid = (
        '<p class="note">Images omitted (--redact).</p>'
        if originals is None
        else _grid(originals, recons, [r["path"] for r in report["images"]])
    )
    argv = shlex.join(str(a) for a in report.get("argv") or [])
    return page(
        "trainleak invert report",
        f'<h1>trainleak invert report</h1><p class="verdict">{verdict}</p>'
        f"<h2>Per split</h2>{_table(report)}"
        f'<p class="note">{escape(s["identity_note"])}. {escape(s["baseline"]["note"])}.</p>'
        f"<h2>Leakage against depth</h2>{curves}"
        f"<h2>Originals and reconstructions (first {GRID_IMAGES})</h2>{grid}"
        f"<h2>Skipped files</h2>{skipped_table(report)}"
        f"<h2>How it was run</h2><ul><li>trainleak {escape(report['version'])}, "
        f"{escape(report['created'])}, device {escape(report['device'])}</li>"
        f"<li>command: <code>{escape(argv)}</code></li>"
        f"<li>model: <code>{escape(report['model'])}</code></li></ul>"
        "<details><summary>all settings</summary>"
        f"<pre>{escape(report['settings'])}</pre></details>",
    )


def write_invert_report(
    report: dict[str, Any],
    originals: torch.Tensor,
    recons: dict[str, torch.Tensor],
    out: str | os.PathLike[str],
    redact: bool = False,
) -> dict[str, str]:
    """Write ``report.json`` and ``report.html`` into ``out``; return their paths."""
    shown = None if redact else originals
    return write_report_files(
        report, out, lambda clean: render_invert_html(clean, shown, recons), redact
    )
