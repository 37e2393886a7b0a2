"""Inline SVG plots for self-contained reports (no plotting library, no network)."""

from __future__ import annotations

import html

import numpy as np

# Counting lives in stats (audits put the counts in report.json); drawing lives here.
from trainleak.stats import histogram_counts

#: Colour-blind-safe (Okabe-Ito) palette.
PALETTE = ["#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9"]


def svg_histogram(
    series: dict[str, list[float]],
    threshold: float | None,
    bins: int = 40,
    title: str = "",
    x_label: str = "",
    width: int = 720,
    height: int = 300,
) -> str:
    """Overlaid density histograms with a dashed threshold line, as an SVG string.

    Each series is normalised to unit area so sets of different sizes compare.

    Example:
        >>> svg = svg_histogram({"a": [0.1, 0.2], "b": [0.5]}, 0.3, bins=5)
        >>> svg.startswith("<svg") and "0.300" in svg
        True

    """
    hist = histogram_counts(
        {k: np.asarray(v, np.float64) for k, v in series.items()}, threshold, bins
    )
    return svg_counts(hist, threshold, title, x_label, width, height)


def svg_counts(
    hist: dict[str, object],
    threshold: float | None,
    title: str = "",
    x_label: str = "",
    width: int = 720,
    height: int = 300,
) -> str:
    """Draw what :func:`histogram_counts` returns as overlaid densities, as an SVG string."""
    edges = np.asarray(hist["edges"], np.float64)
    raw = hist["counts"]
    assert isinstance(raw, dict)
    if len(edges) < 2:
        return "<p><em>no scores to plot</em></p>"
    lo, hi = float(edges[0]), float(edges[-1])
    left, right, top, bottom = 50, 20, 30, 45
    pw, ph = width - left - right, height - top - bottom
    dens = {}
    totals = {}
    for name, c in raw.items():
        c = np.asarray(c, np.float64)
        totals[name] = int(c.sum())
        if c.sum() > 0:
            dens[name] = c / c.sum() / np.diff(edges)
    peak = max((float(d.max()) for d in dens.values()), default=1.0) or 1.0

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    def y(d: float) -> float:
        return top + ph - d / peak * ph

    parts = [
        f'<svg viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="18" font-size="14" font-weight="600">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>',
    ]
    for tick in np.linspace(lo, hi, 6):
        parts.append(
            f'<line x1="{x(tick):.1f}" y1="{top + ph}" x2="{x(tick):.1f}" y2="{top + ph + 5}" '
            f'stroke="#333"/><text x="{x(tick):.1f}" y="{top + ph + 18}" font-size="11" '
            f'text-anchor="middle">{tick:.3f}</text>'
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" font-size="12" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
        f'<text x="14" y="{top + ph / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2})">density</text>'
    )
    for n, (name, d) in enumerate(dens.items()):
        colour = PALETTE[n % len(PALETTE)]
        points = [f"{x(edges[0]):.1f},{y(0):.1f}"]
        for i, val in enumerate(d):
            points.append(f"{x(edges[i]):.1f},{y(val):.1f}")
            points.append(f"{x(edges[i + 1]):.1f},{y(val):.1f}")
        points.append(f"{x(edges[-1]):.1f},{y(0):.1f}")
        parts.append(
            f'<polygon points="{" ".join(points)}" fill="{colour}" fill-opacity="0.25" '
            f'stroke="{colour}" stroke-width="1.5"/>'
        )
        ly = top + 8 + 18 * n
        count = totals[name]
        parts.append(
            f'<rect x="{left + pw - 290}" y="{ly}" width="12" height="12" fill="{colour}" '
            f'fill-opacity="0.6"/><text x="{left + pw - 272}" y="{ly + 10}" font-size="12">'
            f"{html.escape(name)} (n={count})</text>"
        )
    if threshold is not None and np.isfinite(threshold):
        tx = x(threshold)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + ph}" stroke="#000" '
            f'stroke-dasharray="5,4" stroke-width="1.5"/><text x="{tx + 4:.1f}" y="{top + 12}" '
            f'font-size="12">threshold {threshold:.3f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
