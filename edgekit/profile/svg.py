"""Hand-written inline SVG for the HTML trade-off report: latency (x) against image AUROC (y).

No plotting library, no script and no namespace URL (HTML5 does not need one for inline SVG): every mark is an SVG element with a ``<title>`` child, which browsers
show as a hover tooltip, so the report stays one self-contained file that opens offline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

#: Mark shape per precision; anything else is drawn as a diamond.
SHAPES = {"fp32": "circle", "fp16": "square", "int8": "triangle"}

_WIDTH, _LEFT, _TOP, _PLOT_W, _PLOT_H, _BOTTOM = 1180, 72, 24, 760, 420, 58
_LEGEND_X = _LEFT + _PLOT_W + 36


@dataclass(frozen=True)
class ChartPoint:
    """One variant on the chart; ``device`` indexes the series list."""

    latency_ms: float
    auroc: float
    device: int
    label: str  # short id drawn next to the mark, e.g. "A2"
    tooltip: str  # plain text; escaped here
    precision: str
    estimate: bool
    pareto: bool


@dataclass(frozen=True)
class ChartSeries:
    """One device (profile): its legend text and colour."""

    name: str
    colour: str
    estimate: bool


def _nice_step(span: float, count: int = 5) -> float:
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * power * 1.0001:
            return factor * power
    return 10 * power


def _linear_ticks(low: float, high: float) -> tuple[float, float, list[float]]:
    step = _nice_step(high - low)
    start, stop = math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step
    ticks = [start + i * step for i in range(int(round((stop - start) / step)) + 1)]
    return start, stop, [round(t, 10) for t in ticks]


def _x_axis(values: list[float]) -> tuple[bool, float, float, list[float]]:
    """(log scale?, low, high, ticks): log when the latencies span more than a factor of 10."""
    low, high = min(values), max(values)
    if low > 0 and high / low > 10:
        low, high = low / 1.3, high * 1.3
        ticks = [
            m * 10.0**k
            for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
            for m in (1, 2, 5)
            if low <= m * 10.0**k <= high
        ]
        return True, low, high, ticks
    pad = (high - low) * 0.08 or max(high * 0.1, 0.1)
    start, stop, ticks = _linear_ticks(max(low - pad, 0.0), high + pad)
    return False, start, stop, ticks


def _y_axis(values: list[float]) -> tuple[float, float, list[float]]:
    """Zoomed AUROC range: from floor(min - 0.01) in hundredths up to 1.0."""
    low = max(0.0, math.floor(round((min(values) - 0.01) / 0.01, 6)) * 0.01)
    step = _nice_step(1.0 - low)
    ticks = [round(1.0 - i * step, 10) for i in range(int((1.0 - low) / step + 1e-6) + 1)]
    return low, 1.0, sorted(ticks)


def _tick_text(value: float) -> str:
    return f"{value:.6g}"


def _mark(shape: str, x: float, y: float, radius: float, attrs: str) -> str:
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" {attrs}/>'
    if shape == "square":
        s = radius * 0.9
        d = f"M{x - s:.1f},{y - s:.1f}h{2 * s:.1f}v{2 * s:.1f}h{-2 * s:.1f}z"
    elif shape == "triangle":
        s = radius * 1.2
        d = f"M{x:.1f},{y - s:.1f}L{x + s:.1f},{y + s * 0.75:.1f}L{x - s:.1f},{y + s * 0.75:.1f}z"
    else:
        s = radius * 1.2
        d = f"M{x:.1f},{y - s:.1f}L{x + s:.1f},{y:.1f}L{x:.1f},{y + s:.1f}L{x - s:.1f},{y:.1f}z"
    return f'<path d="{d}" {attrs}/>'


def _style(colour: str, *, estimate: bool, pareto: bool) -> str:
    if estimate:
        width = 2.6 if pareto else 1.5
        return f'fill="#ffffff" stroke="{colour}" stroke-width="{width}" stroke-dasharray="3 2"'
    if pareto:
        return f'fill="{colour}" stroke="#1a1a1a" stroke-width="2.2"'
    return f'fill="{colour}" fill-opacity="0.35" stroke="{colour}" stroke-width="1.2"'


def scatter_svg(points: list[ChartPoint], series: list[ChartSeries]) -> str:
    """The combined chart as one ``<svg class="tradeoff-chart">`` element (well-formed XML)."""
    if not points:
        return (
            '<svg class="tradeoff-chart" viewBox="0 0 1180 60" role="img">'
            '<text x="20" y="35" font-size="15">Nothing to plot: no variant has both a latency and an image '
            "AUROC.</text></svg>"
        )
    log_x, x_low, x_high, x_ticks = _x_axis([p.latency_ms for p in points])
    y_low, y_high, y_ticks = _y_axis([p.auroc for p in points])

    def sx(value: float) -> float:
        if log_x:
            frac = (math.log10(value) - math.log10(x_low)) / (math.log10(x_high) - math.log10(x_low))
        else:
            frac = (value - x_low) / (x_high - x_low)
        return _LEFT + frac * _PLOT_W

    y_top = y_high + 0.05 * (y_high - y_low)  # headroom: AUROC 1.0 is common and must not sit on the frame

    def sy(value: float) -> float:
        return _TOP + (y_top - value) / (y_top - y_low) * _PLOT_H

    bottom = _TOP + _PLOT_H
    out = [f'<rect x="{_LEFT}" y="{_TOP}" width="{_PLOT_W}" height="{_PLOT_H}" fill="#fbfbfd" stroke="#c8c8d0"/>']
    for tick in x_ticks:
        x = sx(tick)
        out.append(
            f'<line class="grid" x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{bottom}"/>'
            f'<text x="{x:.1f}" y="{bottom + 18}" text-anchor="middle">{_tick_text(tick)}</text>'
        )
    step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 0.01
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (
        1 if round(step / 10 ** math.floor(math.log10(step) + 1e-9), 6) == 2.5 else 0
    )
    for tick in y_ticks:
        y = sy(tick)
        out.append(
            f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + _PLOT_W}" y2="{y:.1f}"/>'
            f'<text x="{_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{tick:.{decimals}f}</text>'
        )
    scale = " (log scale)" if log_x else ""
    out.append(
        f'<text class="axis-title" x="{_LEFT + _PLOT_W / 2}" y="{bottom + 44}" text-anchor="middle">'
        f"latency, p50 ms per image at batch 1{scale} — left is faster</text>"
        f'<text class="axis-title" transform="translate(20 {_TOP + _PLOT_H / 2}) rotate(-90)" '
        f'text-anchor="middle">image AUROC — up is better</text>'
    )
    for device, info in enumerate(series):
        front = sorted((p for p in points if p.device == device and p.pareto), key=lambda p: (p.latency_ms, p.auroc))
        if len(front) > 1:
            path = f"M{sx(front[0].latency_ms):.1f},{sy(front[0].auroc):.1f}" + "".join(
                f"H{sx(p.latency_ms):.1f}V{sy(p.auroc):.1f}" for p in front[1:]
            )
            dash = ' stroke-dasharray="6 4"' if info.estimate else ""
            out.append(
                f'<path class="front" data-device="{device}" d="{path}" fill="none" stroke="{info.colour}" '
                f'stroke-width="2" stroke-opacity="0.8"{dash}/>'
            )
    for point in sorted(points, key=lambda p: p.pareto):
        colour = series[point.device].colour
        x, y = sx(point.latency_ms), sy(point.auroc)
        kind = "point estimate" if point.estimate else "point measured"
        attrs = _style(colour, estimate=point.estimate, pareto=point.pareto)
        out.append(
            f'<g class="{kind}" data-device="{point.device}" data-pareto="{int(point.pareto)}" '
            f'data-variant="{escape(point.label)}"><title>{escape(point.tooltip)}</title>'
            f"{_mark(SHAPES.get(point.precision, 'diamond'), x, y, 7.0 if point.pareto else 5.5, attrs)}</g>"
        )
    out += _point_labels([(sx(p.latency_ms), sy(p.auroc), p.label) for p in points])
    legend, height = _legend(points, series)
    total = max(bottom + _BOTTOM, height)
    return (
        f'<svg class="tradeoff-chart" viewBox="0 0 {_WIDTH} {total}" '
        f'role="img" aria-label="latency against image AUROC">' + "".join(out) + legend + "</svg>"
    )


def _point_labels(placed: list[tuple[float, float, str]]) -> list[str]:
    """One label per spot (coincident points share it, "B1, B3"); labels that would overlap move up."""
    spots: dict[tuple[int, int], list[str]] = {}
    for x, y, label in placed:
        spots.setdefault((round(x), round(y)), []).append(label)
    boxes: list[tuple[float, float, float]] = []  # x, y, width of labels drawn so far
    out = []
    for (x, y), labels in sorted(spots.items()):
        text = ", ".join(labels)
        width = 8.5 * len(text) + 4  # bold 12 px text, with a gap
        lx, ly = x + 9, y - 7
        while any(abs(ly - by) < 13 and lx < bx + bw and bx < lx + width for bx, by, bw in boxes):
            ly -= 13
        boxes.append((lx, ly, width))
        out.append(f'<text class="point-label" x="{lx:.1f}" y="{ly:.1f}">{escape(text)}</text>')
    return out


def _legend(points: list[ChartPoint], series: list[ChartSeries]) -> tuple[str, int]:
    out, y = [f'<text class="legend-head" x="{_LEGEND_X}" y="{_TOP + 10}">Devices</text>'], _TOP + 32
    for device, info in enumerate(series):
        suffix = " (estimate)" if info.estimate else ""
        short = info.name if len(info.name + suffix) <= 40 else info.name[: 39 - len(suffix)] + "…"
        swatch = (
            f'fill="#ffffff" stroke="{info.colour}" stroke-width="2" stroke-dasharray="3 2"'
            if info.estimate
            else f'fill="{info.colour}"'
        )
        out.append(
            f'<g class="legend-device"><title>{escape(info.name + suffix)}</title>'
            f'<rect x="{_LEGEND_X + 1}" y="{y - 9}" width="13" height="13" rx="3" {swatch}/>'
            f'<text x="{_LEGEND_X + 22}" y="{y + 2}">{escape(short + suffix)}</text></g>'
        )
        y += 22
    y += 12
    out.append(f'<text class="legend-head" x="{_LEGEND_X}" y="{y}">Marks</text>')
    y += 22
    order = list(SHAPES)
    precisions = sorted({p.precision for p in points}, key=lambda s: (order.index(s) if s in order else len(order), s))
    entries = [(SHAPES.get(p, "diamond"), _style("#666666", estimate=False, pareto=False), p) for p in precisions]
    entries.append(("circle", _style("#666666", estimate=False, pareto=True), "Pareto front (ring, step line)"))
    if any(p.estimate for p in points):
        entries.append(("circle", _style("#666666", estimate=True, pareto=False), "estimate (hollow, dashed)"))
    for shape, attrs, text in entries:
        out.append(
            _mark(shape, _LEGEND_X + 7, y - 3, 6.0, attrs)
            + f'<text x="{_LEGEND_X + 22}" y="{y + 2}">{escape(text)}</text>'
        )
        y += 22
    return "".join(out), y + 10
