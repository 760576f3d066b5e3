"""Server-side SVG bar charts for the operator pages (no JavaScript, no libraries).

``columns`` draws vertical bars (sales by day), ``bars`` horizontal ones (sales by
product, whose labels are long). Both return an ``<svg>`` element as text with a
``viewBox``, so it scales to the width of a phone; every label is escaped and every
bar has a ``<title>`` (the browser's tooltip) with its exact value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from backend.services import fen

__all__ = ["Bar", "bars", "columns", "nice_max"]

BAR_COLOUR = "#2f7d32"
GRID_COLOUR = "#e3e3e3"


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: int
    note: str = ""  # added to the tooltip ("3 sales")


def nice_max(value: int) -> int:
    """The top of the scale: ``value`` rounded up to 1, 2, 2.5 or 5 times a power of ten."""
    if value <= 0:
        return 1
    power = float(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 2.5, 5, 10):
        top = math.ceil(step * power)
        if top >= value:
            return top
    return value  # unreachable: 10 * power >= value


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _empty(width: int, height: int, label: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" font-size="12" role="img" '
        f'aria-label="{escape(label)}: no sales" xmlns="http://www.w3.org/2000/svg">'
        f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle">No sales yet</text>'
        "</svg>"
    )


def columns(
    data: Sequence[Bar],
    *,
    label: str,
    width: int = 520,
    height: int = 220,
    fmt: Callable[[int], str] = fen,
) -> str:
    """Vertical bars, one per item, left to right, with a scale on the left."""
    if not data or all(b.value <= 0 for b in data):
        return _empty(width, height, label)
    left, right, top, bottom = 60, 8, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    scale = nice_max(max(b.value for b in data))
    slot = plot_w / len(data)
    bar_w = max(1.0, slot * 0.7)
    every = max(1, math.ceil(len(data) * 44 / plot_w))  # room for a label ~44 units wide
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" font-size="12" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{_num(y)}" y2="{_num(y)}" '
            f'stroke="{GRID_COLOUR}"/>'
            f'<text x="{left - 4}" y="{_num(y + 3)}" text-anchor="end">'
            f"{escape(fmt(round(scale * frac)))}</text>"
        )
    for i, b in enumerate(data):
        value = max(0, b.value)
        h = plot_h * value / scale
        x = left + i * slot + (slot - bar_w) / 2
        tip = f"{b.label}: {fmt(b.value)}" + (f" ({b.note})" if b.note else "")
        out.append(
            f'<rect x="{_num(x)}" y="{_num(top + plot_h - h)}" width="{_num(bar_w)}" '
            f'height="{_num(h)}" fill="{BAR_COLOUR}"><title>{escape(tip)}</title></rect>'
        )
        if (len(data) - 1 - i) % every == 0:  # counted from the newest: it is always labelled
            out.append(
                f'<text x="{_num(left + i * slot + slot / 2)}" y="{height - 10}" '
                f'text-anchor="middle">{escape(b.label)}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def bars(
    data: Sequence[Bar],
    *,
    label: str,
    width: int = 520,
    row: int = 26,
    fmt: Callable[[int], str] = fen,
    max_rows: int = 12,
) -> str:
    """Horizontal bars, one row per item in the given order (the first ``max_rows``)."""
    data = list(data[:max_rows])
    if not data or all(b.value <= 0 for b in data):
        return _empty(width, 3 * row, label)
    name_w, value_w, pad = 150, 76, 6
    plot_w = width - name_w - value_w - 2 * pad
    height = row * len(data) + pad
    scale = max(1, max(b.value for b in data))
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" font-size="12" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, b in enumerate(data):
        value = max(0, b.value)
        y = pad + i * row
        w = plot_w * value / scale
        name = b.label if len(b.label) <= 20 else b.label[:19] + "…"
        tip = f"{b.label}: {fmt(b.value)}" + (f" ({b.note})" if b.note else "")
        out.append(
            f'<text x="{name_w - pad}" y="{y + row * 0.6:.0f}" text-anchor="end">'
            f"{escape(name)}</text>"
            f'<rect x="{name_w}" y="{y + 3}" width="{_num(max(w, 1.0))}" height="{row - 8}" '
            f'fill="{BAR_COLOUR}"><title>{escape(tip)}</title></rect>'
            f'<text x="{_num(name_w + w + pad)}" y="{y + row * 0.6:.0f}">'
            f"{escape(fmt(b.value))}</text>"
        )
    out.append("</svg>")
    return "".join(out)
