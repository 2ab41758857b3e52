"""The console's server-side SVG charts: deterministic, script-free, and readable without colour."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from fhir_alliance_service.console.charts import (
    Event,
    Panel,
    Series,
    data_url,
    time_chart,
    time_range,
)

START = datetime(2026, 11, 5, 15, tzinfo=UTC)


def _panel(*series: Series) -> Panel:
    return Panel("SRS", series, y_range=(0, 40), cutoff=36, cutoff_label="cutoff 36")


def _points(*values: float) -> list[tuple[datetime, float]]:
    return [(START + timedelta(days=7 * i), v) for i, v in enumerate(values)]


def test_the_same_data_gives_the_same_svg_without_script() -> None:
    """Two renderings are byte-identical (stable ids, no date) and contain no script or link out."""
    panel = _panel(Series("total", _points(34.5, 28.5, 29.0)))
    first = time_chart([panel], [Event(START + timedelta(days=7), "rupture")])
    assert first == time_chart([panel], [Event(START + timedelta(days=7), "rupture")])
    assert first.lstrip().startswith("<?xml") and "<svg" in first
    assert "<script" not in first and 'href="http' not in first  # nothing fetched from outside
    assert "cutoff 36" in first  # text stays text (svg.fonttype none)


def test_series_differ_by_marker_and_line_style_not_colour_alone() -> None:
    """Two series get different dash patterns; an automated series is drawn with open markers."""
    svg = time_chart(
        [
            _panel(
                Series("human", _points(30, 32)), Series("automated", _points(31, 33), hollow=True)
            )
        ]
    )
    assert "stroke-dasharray" in svg  # the second series is dashed, the first solid
    assert "fill: #ffffff" in svg  # the hollow markers


def test_one_point_still_gets_a_readable_time_axis() -> None:
    """A single moment is padded by a day either side, not stretched over years."""
    start, end = time_range([START]) or (None, None)
    assert start is not None and end is not None
    assert end - start == timedelta(days=2)


def test_data_url_carries_the_svg() -> None:
    """The data URL decodes back to the same SVG text."""
    svg = time_chart([_panel(Series("total", _points(30)))])
    url = data_url(svg)
    assert url.startswith("data:image/svg+xml;base64,")
    assert base64.b64decode(url.partition(",")[2]).decode("utf-8") == svg
