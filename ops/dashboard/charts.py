"""Server-side SVG charts: no CDN, no JavaScript, readable with the network cable pulled.

A stacked bar per day, each segment a link to the admin list of its rows, and an optional
rate line (0–100 %, right axis) drawn over the bars.
"""

from __future__ import annotations

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

BAR, GAP, LEFT, RIGHT, TOP, HEIGHT = 34, 14, 34, 40, 12, 140


def stacked_bars(
    *,
    element_id: str,
    title: str,
    columns: list[dict],
    series: list[tuple[str, str, str]],  # (key in column["values"], legend label, colour)
    rate_label: str | None = None,
) -> SafeString:
    peak = max([sum(c["values"][k].value for k, _l, _c in series) for c in columns] + [1])
    width = LEFT + len(columns) * (BAR + GAP) + RIGHT
    base = TOP + HEIGHT
    parts = [
        format_html(
            '<svg id="{}" class="atlas-chart" xmlns="http://www.w3.org/2000/svg" width="{}" '
            'height="{}" viewBox="0 0 {} {}" role="img" aria-label="{}">',
            element_id,
            width,
            base + 48,
            width,
            base + 48,
            title,
        ),
        format_html("<title>{}</title>", title),
        format_html('<text x="2" y="{}" font-size="10" fill="#666">{}</text>', TOP + 4, peak),
        format_html('<text x="2" y="{}" font-size="10" fill="#666">0</text>', base),
        format_html(
            '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999"/>',
            LEFT - 4,
            base,
            width - RIGHT + 4,
            base,
        ),
    ]
    points = []
    for index, column in enumerate(columns):
        x = LEFT + index * (BAR + GAP)
        y = base
        parts.append(format_html('<g class="bar" data-day="{}">', column.get("day", "")))
        for key, label, colour in series:
            figure = column["values"][key]
            h = round(HEIGHT * figure.value / peak)
            if h:
                y -= h
                rect = format_html(
                    '<rect x="{}" y="{}" width="{}" height="{}" fill="{}" data-series="{}" '
                    'data-value="{}"><title>{} {}: {}</title></rect>',
                    x, y, BAR, h, colour, key, figure.value, column["label"], label, figure.value,
                )  # fmt: skip
                parts.append(_linked(rect, figure.url))
        parts.append(
            format_html(
                '<text x="{}" y="{}" font-size="9" fill="#333">{}</text></g>',
                x + 2,
                base + 12,
                column["label"],
            )
        )
        if rate_label:  # None (no data that day) breaks the line rather than bridging it
            rate = column.get("rate")
            points.append(
                None if rate is None else (x + BAR // 2, base - round(HEIGHT * rate / 100))
            )
    if rate_label:
        parts.append(_rate_line(points, width, base, rate_label))
    parts.append(_legend(series, base + 30, rate_label))
    parts.append(mark_safe("</svg>"))
    return mark_safe("".join(parts))


def _linked(element: SafeString, url: str | None) -> SafeString:
    return format_html('<a href="{}">{}</a>', url, element) if url else element


def _rate_line(points, width, base, label) -> SafeString:
    parts = [
        format_html(
            '<text x="{}" y="{}" font-size="10" fill="#1565c0">100%</text>'
            '<text x="{}" y="{}" font-size="10" fill="#1565c0">0%</text>',
            width - RIGHT + 8,
            TOP + 4,
            width - RIGHT + 8,
            base,
        )
    ]
    runs, run = [], []
    for point in [*points, None]:
        if point is None:
            if len(run) > 1:
                runs.append(run)
            run = []
        else:
            run.append(point)
    for run in runs:
        parts.append(
            format_html(
                '<polyline class="rate" points="{}" fill="none" stroke="#1565c0" '
                'stroke-width="2"><title>{}</title></polyline>',
                " ".join(f"{x},{y}" for x, y in run),
                label,
            )
        )
    for point in points:
        if point is not None:
            parts.append(
                format_html(
                    '<circle class="rate-point" cx="{}" cy="{}" r="3" fill="#1565c0"/>', *point
                )
            )
    return mark_safe("".join(parts))


def _legend(series, y, rate_label) -> SafeString:
    items, x = [], LEFT
    for _key, label, colour in series:
        items.append(
            format_html(
                '<rect x="{}" y="{}" width="10" height="10" fill="{}"/>'
                '<text x="{}" y="{}" font-size="10">{}</text>',
                x,
                y - 9,
                colour,
                x + 14,
                y,
                label,
            )  # fmt: skip
        )
        x += 14 + 7 * len(label) + 12
    if rate_label:
        items.append(
            format_html(
                '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#1565c0" stroke-width="2"/>'
                '<text x="{}" y="{}" font-size="10">{}</text>',
                x,
                y - 4,
                x + 12,
                y - 4,
                x + 16,
                y,
                rate_label,
            )  # fmt: skip
        )
    return mark_safe("".join(items))
