"""Inline SVG charts for the run report: line charts, a histogram and lane timelines.

Hand-written so the report needs no plotting dependency and opens in any browser
without scripts or network access.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 760
HEIGHT = 250
MARGIN_LEFT = 58
MARGIN_RIGHT = 16
MARGIN_TOP = 44
MARGIN_BOTTOM = 38
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")


@dataclass(frozen=True)
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str = ""
    dashed: bool = False


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    color: str
    label: str  # shown as a tooltip


@dataclass(frozen=True)
class Lane:
    name: str
    segments: Sequence[Segment]


@dataclass(frozen=True)
class Marker:
    x: float
    color: str
    label: str


def _fmt(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 10_000:
        return f"{value:.3g}"
    return f"{value:.2g}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


class _Frame:
    """Maps data coordinates onto the plot area of one chart."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float, height: int = HEIGHT) -> None:
        self.x0, self.x1 = x0, x1 if x1 > x0 else x0 + 1
        self.y0, self.y1 = y0, y1 if y1 > y0 else y0 + 1
        self.height = height
        self.left, self.right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, height - MARGIN_BOTTOM

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def axes(self, title: str, x_label: str, y_label: str, *, y_ticks: bool = True) -> list[str]:
        parts = [
            f'<text x="{self.left}" y="18" class="t">{escape(title)}</text>',
            f'<line x1="{self.left}" y1="{self.bottom}" x2="{self.right}" y2="{self.bottom}" '
            'class="ax"/>',
            f'<text x="{(self.left + self.right) / 2}" y="{self.height - 4}" class="l" '
            f'text-anchor="middle">{escape(x_label)}</text>',
            f'<text x="12" y="{(self.top + self.bottom) / 2}" class="l" text-anchor="middle" '
            f'transform="rotate(-90 12 {(self.top + self.bottom) / 2})">{escape(y_label)}</text>',
        ]
        for tick in _ticks(self.x0, self.x1):
            px = self.x(tick)
            parts.append(
                f'<line x1="{px:.1f}" y1="{self.bottom}" x2="{px:.1f}" y2="{self.bottom + 4}" '
                f'class="ax"/><text x="{px:.1f}" y="{self.bottom + 16}" class="k" '
                f'text-anchor="middle">{_fmt(tick)}</text>'
            )
        if y_ticks:
            for tick in _ticks(self.y0, self.y1, 4):
                py = self.y(tick)
                parts.append(
                    f'<line x1="{self.left}" y1="{py:.1f}" x2="{self.right}" y2="{py:.1f}" '
                    f'class="g"/><text x="{self.left - 6}" y="{py + 4:.1f}" class="k" '
                    f'text-anchor="end">{_fmt(tick)}</text>'
                )
        return parts


def _svg(parts: list[str], height: int = HEIGHT) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img">' + "".join(parts) + "</svg>"
    )


def _no_data(title: str) -> str:
    return _svg([f'<text x="{MARGIN_LEFT}" y="18" class="t">{escape(title)}: no data</text>'], 28)


def _legend(names: Sequence[tuple[str, str]], right: float) -> list[str]:
    parts, x = [], right
    for name, color in reversed(names):
        x -= 12 + 6.5 * len(name)
        parts.append(
            f'<rect x="{x:.0f}" y="25" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 13:.0f}" y="34" class="k">{escape(name)}</text>'
        )
        x -= 10
    return parts


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    markers: Sequence[Marker] = (),
) -> str:
    finite = [(x, y) for s in series for x, y in zip(s.xs, s.ys, strict=True) if math.isfinite(y)]
    if not finite:
        return _no_data(title)
    xs = [x for x, _ in finite]
    ys = [y for _, y in finite]
    low, high = y_range if y_range else (min(ys), max(ys))
    if not y_range:
        pad = (high - low) * 0.05 or abs(high) * 0.1 or 1.0
        low, high = low - pad, high + pad
    frame = _Frame(min(xs), max(xs), low, high)
    parts = frame.axes(title, x_label, y_label)
    for marker in markers:
        px = frame.x(marker.x)
        parts.append(
            f'<line x1="{px:.1f}" y1="{frame.top}" x2="{px:.1f}" y2="{frame.bottom}" '
            f'stroke="{marker.color}" stroke-width="1" opacity="0.6">'
            f"<title>{escape(marker.label)}</title></line>"
        )
    names = []
    for index, s in enumerate(series):
        color = s.color or PALETTE[index % len(PALETTE)]
        names.append((s.name, color))
        points = " ".join(
            f"{frame.x(x):.1f},{frame.y(min(max(y, low), high)):.1f}"
            for x, y in zip(s.xs, s.ys, strict=True)
            if math.isfinite(y)
        )
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>'
        )
    parts.extend(_legend(names, frame.right))
    return _svg(parts)


def histogram(
    values: Sequence[float],
    *,
    title: str,
    x_label: str,
    bins: int = 40,
    markers: Sequence[Marker] = (),
    color: str = PALETTE[0],
) -> str:
    data = [v for v in values if math.isfinite(v)]
    if not data:
        return _no_data(title)
    low, high = min(data), max(max(data), *(m.x for m in markers))
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for v in data:
        counts[min(int((v - low) / width), bins - 1)] += 1
    frame = _Frame(low, low + width * bins, 0, max(counts) * 1.1)
    parts = frame.axes(title, x_label, "steps")
    for i, count in enumerate(counts):
        x0, x1 = frame.x(low + i * width), frame.x(low + (i + 1) * width)
        y = frame.y(count)
        parts.append(
            f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 0.5):.1f}" '
            f'height="{frame.bottom - y:.1f}" fill="{color}"><title>{count} steps in '
            f"[{_fmt(low + i * width)}, {_fmt(low + (i + 1) * width)})</title></rect>"
        )
    for index, marker in enumerate(markers):
        px = frame.x(marker.x)
        parts.append(
            f'<line x1="{px:.1f}" y1="{frame.top}" x2="{px:.1f}" y2="{frame.bottom}" '
            f'stroke="{marker.color}" stroke-width="1.5" stroke-dasharray="4 3"/>'
            f'<text x="{px + 3:.1f}" y="{frame.top + 10 + 13 * index}" class="k" '
            f'fill="{marker.color}">{escape(marker.label)}</text>'
        )
    return _svg(parts)


def timeline(
    lanes: Sequence[Lane],
    *,
    title: str,
    x_label: str,
    x_max: float,
    legend: Sequence[tuple[str, str]] = (),
    markers: Sequence[Marker] = (),
) -> str:
    lane_height = 22
    height = MARGIN_TOP + MARGIN_BOTTOM + lane_height * max(len(lanes), 1) + 6
    frame = _Frame(0, x_max, 0, 1, height)
    frame.left = 120
    parts = frame.axes(title, x_label, "", y_ticks=False)
    for index, lane in enumerate(lanes):
        y = MARGIN_TOP + 4 + index * lane_height
        parts.append(
            f'<text x="{frame.left - 6}" y="{y + 14}" class="k" text-anchor="end">'
            f"{escape(lane.name)}</text>"
        )
        for seg in lane.segments:
            x0, x1 = frame.x(seg.start), frame.x(seg.end)
            parts.append(
                f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1.0):.1f}" '
                f'height="{lane_height - 6}" fill="{seg.color}">'
                f"<title>{escape(seg.label)}</title></rect>"
            )
    for marker in markers:
        px = frame.x(marker.x)
        parts.append(
            f'<line x1="{px:.1f}" y1="{frame.top}" x2="{px:.1f}" y2="{frame.bottom}" '
            f'stroke="{marker.color}" stroke-width="1.2"><title>{escape(marker.label)}'
            "</title></line>"
        )
    parts.extend(_legend(legend, frame.right))
    return _svg(parts, height)


STYLE = (
    "svg .t{font:600 13px sans-serif;fill:#111}"
    "svg .l{font:12px sans-serif;fill:#444}"
    "svg .k{font:11px sans-serif;fill:#555}"
    "svg .ax{stroke:#888;stroke-width:1}"
    "svg .g{stroke:#e5e7eb;stroke-width:1}"
)
