"""The SVG chart builder: bar heights in proportion, links only where given, rate line breaks."""

import re

from core.figures import Figure
from ops.dashboard.charts import HEIGHT, stacked_bars


def column(day, ok, bad, rate, url=None):
    return {
        "label": day,
        "day": day,
        "values": {"ok": Figure(ok, "x.y", url=url), "bad": Figure(bad, "x.y")},
        "rate": rate,
    }


def test_bars_scale_to_the_peak_and_link_where_allowed():
    svg = stacked_bars(
        element_id="c",
        title="t <b>",
        columns=[column("d1", 3, 1, 75.0, url="/admin/x/?a=1&b=2"), column("d2", 1, 0, 100.0)],
        series=[("ok", "ok", "#0a0"), ("bad", "bad", "#a00")],
    )
    heights = [int(h) for h in re.findall(r'height="(\d+)" fill="[^"]+" data-series', svg)]
    assert heights == [HEIGHT * 3 // 4, HEIGHT // 4, HEIGHT // 4]
    assert svg.count("<a href=") == 1 and 'href="/admin/x/?a=1&amp;b=2"' in svg
    assert "t &lt;b&gt;" in svg and "<b>" not in svg  # labels are escaped
    assert "polyline" not in svg  # no rate label asked for


def test_rate_line_only_joins_consecutive_days():
    columns = [
        column("d1", 0, 0, None),
        column("d2", 1, 1, 50.0),
        column("d3", 1, 0, 100.0),
        column("d4", 0, 0, None),
        column("d5", 1, 4, 20.0),
    ]
    svg = stacked_bars(
        element_id="c",
        title="t",
        columns=columns,
        series=[("ok", "ok", "#0a0"), ("bad", "bad", "#a00")],
        rate_label="rate",
    )
    assert svg.count("<polyline") == 1 and svg.count('class="rate-point"') == 3
    points = re.search(r'polyline class="rate" points="([^"]+)"', svg).group(1).split()
    assert len(points) == 2
