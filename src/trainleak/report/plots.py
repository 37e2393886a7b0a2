"""Inline SVG plots for self-contained reports (no plotting library, no network)."""

from __future__ import annotations

import html
import textwrap

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


#: Width of one character as a share of the font size, on the wide side of common
#: sans-serif fonts (DejaVu Sans averages about 0.6): labels are wrapped to fit with it,
#: since the SVG is written without a font to measure (tests/report/test_plot_labels.py
#: measures the result in Chromium).
CHAR_EM = 0.68


def _wrap(text: str, width_px: float, font_size: float) -> list[str]:
    """Split ``text`` into lines no wider than ``width_px`` at ``font_size`` (estimated)."""
    chars = max(8, int(width_px / (CHAR_EM * font_size)))
    return textwrap.wrap(text, chars, break_long_words=True) or []


def _lines(lines: list[str], x: float, y: float, size: int, step: float, attrs: str = "") -> str:
    """One ``<text>`` per line (each is measured on its own)."""
    return "".join(
        f'<text x="{x:.1f}" y="{y + i * step:.1f}" font-size="{size}"{attrs}>'
        f"{html.escape(line)}</text>"
        for i, line in enumerate(lines)
    )


def svg_counts(
    hist: dict[str, object],
    threshold: float | None,
    title: str = "",
    x_label: str = "",
    width: int = 720,
    height: int = 300,
) -> str:
    """Draw what :func:`histogram_counts` returns as overlaid densities, as an SVG string.

    Labels never overlap and never leave the picture: the title and the
    axis label wrap to the width, the legend has its own band between the
    title and the plot, and the threshold's label sits inside the plot on
    whichever side of its line has room. ``height`` is that of the plot with
    one-line labels; longer labels make the picture taller.

    Example:
        >>> svg = svg_counts({"edges": [0.0, 0.5, 1.0], "counts": {"a": [1, 2]}}, 0.99,
        ...                  x_label="a long label " * 12)
        >>> svg.count('text-anchor="end"')  # the threshold's label left of its line
        1
        >>> 'data-plot="histogram"' in svg
        True

    """
    edges = np.asarray(hist["edges"], np.float64)
    raw = hist["counts"]
    assert isinstance(raw, dict)
    if len(edges) < 2:
        return "<p><em>no scores to plot</em></p>"
    lo, hi = float(edges[0]), float(edges[-1])
    left, right = 50, 30
    pw = width - left - right
    ph = height - 75
    dens = {}
    totals = {}
    for name, c in raw.items():
        c = np.asarray(c, np.float64)
        totals[name] = int(c.sum())
        if c.sum() > 0:
            dens[name] = c / c.sum() / np.diff(edges)
    peak = max((float(d.max()) for d in dens.values()), default=1.0) or 1.0
    titles = _wrap(title, width - left - 10, 14)
    legend = [
        (PALETTE[n % len(PALETTE)], _wrap(f"{name} (n={totals[name]})", pw - 20, 12))
        for n, name in enumerate(dens)
    ]
    # Bands from the top: title lines, legend rows, then the plot.
    y_legend = 8 + 17 * len(titles)
    top = y_legend + sum(16 * len(lines) for _, lines in legend) + 10
    labels = _wrap(x_label, width - 20, 12)
    total_h = top + ph + 32 + 15 * len(labels)

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    def y(d: float) -> float:
        return top + ph - d / peak * ph

    parts = [
        f'<svg viewBox="0 0 {width} {total_h}" data-plot="histogram" '
        f'width="100%" role="img" aria-label="{html.escape(title)}">',
        _lines(titles, left, 18, 14, 17, ' font-weight="600"'),
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
        _lines(labels, width / 2, top + ph + 36, 12, 15, ' text-anchor="middle"')
        + f'<text x="14" y="{top + ph / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2})">density</text>'
    )
    ly = y_legend
    for (colour, lines), d in zip(legend, dens.values(), strict=True):
        points = [f"{x(edges[0]):.1f},{y(0):.1f}"]
        for i, val in enumerate(d):
            points.append(f"{x(edges[i]):.1f},{y(val):.1f}")
            points.append(f"{x(edges[i + 1]):.1f},{y(val):.1f}")
        points.append(f"{x(edges[-1]):.1f},{y(0):.1f}")
        parts.append(
            f'<polygon points="{" ".join(points)}" fill="{colour}" fill-opacity="0.25" '
            f'stroke="{colour}" stroke-width="1.5"/>'
            f'<rect x="{left}" y="{ly}" width="12" height="12" fill="{colour}" '
            f'fill-opacity="0.6"/>' + _lines(lines, left + 18, ly + 10, 12, 16)
        )
        ly += 16 * len(lines)
    if threshold is not None and np.isfinite(threshold):
        tx = min(max(x(threshold), left), left + pw)
        words = f"threshold {threshold:.3f}"
        # Right of the line when it fits inside the plot, else left of it.
        fits = tx + 4 + CHAR_EM * 12 * len(words) <= left + pw
        at = f'x="{tx + 4:.1f}"' if fits else f'x="{tx - 4:.1f}" text-anchor="end"'
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + ph}" stroke="#000" '
            f'stroke-dasharray="5,4" stroke-width="1.5"/><text {at} y="{top + 12}" '
            f'font-size="12">{words}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
