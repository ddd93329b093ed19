"""Inline SVG charts for the HTML report: histogram, horizontal bars, scatter map.

Why hand-written SVG instead of a plotting library: the report must open offline as one file, with no
CDN script and no multi-megabyte bundled JS, and it must be testable in a headless browser. A few
hundred bytes of SVG per chart do that, render crisply at any zoom, and carry their exact values in
``<title>`` tooltips (which need no script). Every text is escaped here, since labels and record texts
come from user data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

#: Colour-blind friendly categorical palette (Okabe-Ito + Tableau tones), then grey for "other".
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#17becf")
OTHER_COLOUR = "#bab0ac"
BAR_COLOUR = "#4e79a7"
AXIS_COLOUR = "#8a8f98"
TEXT_COLOUR = "#333"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5, 5 x 10^k steps) covering ``[low, high]``."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if abs(value) >= 10000:
        return f"{value / 1000:.0f}k"
    if float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.3g}"


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def histogram(values: Sequence[float], *, label: str, max_bins: int = 30, width: int = 520, height: int = 220) -> str:
    """Histogram of ``values`` as an SVG string; integer data gets integer-aligned bins."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return '<p class="empty">no values</p>'
    low, high = float(data.min()), float(data.max())
    integer = bool(np.all(np.mod(data, 1) == 0))
    if high == low:
        edges = np.array([low - 0.5, high + 0.5])
    else:
        bins = min(len(np.histogram_bin_edges(data, bins="auto")) - 1, max_bins)
        if integer:  # lengths and counts: bins of whole units, centred on the integers; one per value if they fit
            span = high - low + 1
            step = 1 if span <= max_bins else max(1, math.ceil(span / bins))
            edges = low - 0.5 + step * np.arange(math.ceil((high - low + 1) / step) + 1)
        else:
            edges = np.linspace(low, high, bins + 1)
    counts, edges = np.histogram(data, bins=edges)
    left, right, top, bottom = 48, 12, 12, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    y_ticks = nice_ticks(0, float(counts.max()), 4)
    y_max = max(y_ticks[-1], float(counts.max()), 1.0)
    x0, x1 = float(edges[0]), float(edges[-1])
    span = (x1 - x0) or 1.0

    def x(v: float) -> float:
        return left + (v - x0) / span * plot_w

    def y(v: float) -> float:
        return top + plot_h - v / y_max * plot_h

    parts = [
        f'<svg class="chart histogram" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)} histogram" xmlns="http://www.w3.org/2000/svg">'
    ]
    for tick in y_ticks:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" class="tick">{_fmt(tick)}</text>'
        )
    for count, lo, hi in zip(counts, edges[:-1], edges[1:]):
        if count == 0:
            continue
        bar_x, bar_w = x(lo) + 0.5, max(x(hi) - x(lo) - 1, 1)
        if integer:
            first, last = math.ceil(lo), math.ceil(hi) - 1
            span_text = _fmt(first) if first == last else f"{_fmt(first)}–{_fmt(last)}"
        else:
            span_text = f"{_fmt(lo)}–{_fmt(hi)}"
        parts.append(
            f'<rect class="bar" x="{bar_x:.1f}" y="{y(count):.1f}" width="{bar_w:.1f}" '
            f'height="{plot_h + top - y(count):.1f}"><title>{escape(label)} {span_text}: '
            f"{int(count)} records</title></rect>"
        )
    for tick in nice_ticks(x0, x1, 6):
        if x0 <= tick <= x1:
            parts.append(
                f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" '
                f'class="axis"/><text x="{x(tick):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                f'class="tick">{_fmt(tick)}</text>'
            )
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" class="axis"/>')
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" class="axis-label">'
        f"{escape(label)}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    items: Sequence[tuple[str, int]], *, label: str, width: int = 520, label_chars: int = 26, colour: str = BAR_COLOUR
) -> str:
    """Horizontal bars, one per ``(name, count)``, in the given order; long names are clipped."""
    if not items:
        return '<p class="empty">no values</p>'
    row, top, label_w, right = 22, 6, 190, 48
    height = top * 2 + row * len(items)
    plot_w = width - label_w - right
    biggest = max(count for _, count in items) or 1
    parts = [
        f'<svg class="chart bars" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (name, count) in enumerate(items):
        y = top + i * row
        bar_w = max(count / biggest * plot_w, 1.5)
        full = escape(str(name))
        parts.append(
            f'<g class="bar-row"><title>{full}: {count}</title>'
            f'<text x="{label_w - 8}" y="{y + row * 0.68:.1f}" text-anchor="end" class="bar-label">'
            f"{escape(_clip(name, label_chars))}</text>"
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{bar_w:.1f}" height="{row - 6}" '
            f'style="fill:{colour}"/>'
            f'<text x="{label_w + bar_w + 5:.1f}" y="{y + row * 0.68:.1f}" class="bar-value">{count}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def group_colours(groups: Sequence[str], max_groups: int = len(PALETTE)) -> dict[str, str]:
    """A colour per group, the most frequent groups first; beyond ``max_groups`` all share grey."""
    counts: dict[str, int] = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    ordered = sorted(counts, key=lambda g: (-counts[g], g))
    colours = {}
    for i, g in enumerate(ordered):
        colours[g] = PALETTE[i] if i < max_groups and not g.startswith("(other") else OTHER_COLOUR
    return colours


def scatter(
    points: np.ndarray,
    groups: Sequence[str],
    tooltips: Sequence[str],
    colours: dict[str, str],
    *,
    width: int = 640,
    height: int = 440,
    radius: float | None = None,
    axis_labels: tuple[str, str] = ("", ""),
) -> str:
    """2-D points as circles coloured by group, each with its tooltip; ``data-group`` lets the legend toggle.

    Both axes share one scale, so distances on the page are proportional to distances in the plane.
    ``radius=None`` shrinks the dots as their number grows, so that big datasets do not become one blob.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] == 0:
        return '<p class="empty">no points</p>'
    if radius is None:
        radius = 6.0 if len(pts) <= 100 else 4.0 if len(pts) <= 1000 else 2.5
    pad = 20
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    scale = min((width - 2 * pad) / span[0], (height - 2 * pad) / span[1])  # keep distances undistorted
    off_x = (width - span[0] * scale) / 2
    off_y = (height - span[1] * scale) / 2
    parts = [
        f'<svg class="chart scatter" id="embedding-map" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="2-D map of the embeddings" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" class="frame"/>',
    ]
    # draw big groups first so small groups stay visible on top
    order = sorted(range(len(pts)), key=lambda i: list(colours).index(groups[i]) if groups[i] in colours else 0)
    for i in order:
        cx = off_x + (pts[i, 0] - lo[0]) * scale
        cy = height - (off_y + (pts[i, 1] - lo[1]) * scale)
        group = groups[i]
        parts.append(
            f'<circle class="pt" cx="{cx:.1f}" cy="{cy:.1f}" r="{radius}" '
            f'style="fill:{colours.get(group, OTHER_COLOUR)}" data-group="{escape(group)}">'
            f"<title>{escape(tooltips[i])}</title></circle>"
        )
    if axis_labels[0]:
        parts.append(
            f'<text x="{width - 8}" y="{height - 6}" text-anchor="end" class="tick">{escape(axis_labels[0])} →</text>'
        )
    if axis_labels[1]:
        parts.append(f'<text x="10" y="14" class="tick">↑ {escape(axis_labels[1])}</text>')
    parts.append("</svg>")
    return "".join(parts)
