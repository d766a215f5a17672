"""Small SVG charts drawn on the server: no JavaScript library, no CDN, readable without
scripts. Every text in them is escaped (queries are what shoppers typed)."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

BAR = "#417690"  # the admin's own blue
LINE = "#c96b2c"


def bars(rows: Sequence[tuple[str, float]], *, width: int = 520, value_format: str = "{:g}",
         title: str = "") -> SafeString:
    """Horizontal bars: one row per (label, value), longest first as given."""
    if not rows:
        return SafeString("")
    row_height, label_width, gap = 22, 180, 6
    height = len(rows) * row_height + gap
    largest = max(value for _, value in rows) or 1
    room = width - label_width - 60
    parts = []
    for index, (label, value) in enumerate(rows):
        y = gap + index * row_height
        length = max(1.0, room * value / largest)
        shown = label if len(label) <= 28 else label[:27] + "…"
        number = escape(value_format.format(value))
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 14}" text-anchor="end">{escape(shown)}</text>'
            f'<rect x="{label_width}" y="{y + 2}" width="{length:.1f}" height="{row_height - 8}" '
            f'fill="{BAR}"><title>{escape(label)}: {number}</title></rect>'
            f'<text x="{label_width + length + 4:.1f}" y="{y + 14}">{number}</text>')
    return _svg(width, height, title, "".join(parts))


def columns(days: Sequence[str], counts: Sequence[float], rates: Sequence[float] | None = None, *,
            width: int = 720, height: int = 200, title: str = "", rate_label: str = "") -> SafeString:
    """Columns per day (``counts``) with an optional line of a 0–1 rate (``rates``) over them."""
    if not days:
        return SafeString("")
    left, bottom, top = 40, 24, 10
    plot_width, plot_height = width - left - 10, height - bottom - top
    step = plot_width / len(days)
    largest = max(counts) or 1
    parts = [f'<line x1="{left}" y1="{top + plot_height}" x2="{width - 10}" y2="{top + plot_height}" '
             f'stroke="#999"/>', f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{largest:g}</text>']
    for index, (day, count) in enumerate(zip(days, counts, strict=True)):
        column = plot_height * count / largest
        x = left + index * step
        parts.append(f'<rect x="{x + 1:.1f}" y="{top + plot_height - column:.1f}" '
                     f'width="{max(1.0, step - 2):.1f}" height="{column:.1f}" fill="{BAR}">'
                     f"<title>{escape(day)}: {count:g}</title></rect>")
        if len(days) <= 14 or index % max(1, len(days) // 10) == 0:
            parts.append(f'<text x="{x + step / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                         f"{escape(day[5:])}</text>")
    if rates is not None:
        points = " ".join(f"{left + (i + 0.5) * step:.1f},{top + plot_height * (1 - rate):.1f}"
                          for i, rate in enumerate(rates))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{LINE}" stroke-width="2">'
                     f"<title>{escape(rate_label)}</title></polyline>")
    return _svg(width, height, title, "".join(parts))


def _svg(width: int, height: int, title: str, body: str) -> SafeString:
    label = format_html(' role="img" aria-label="{}"', title) if title else ""
    return mark_safe(  # noqa: S308 - every text inside was escaped above
        f'<svg class="clip-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"{label} font-size="12" font-family="sans-serif">{body}</svg>')
