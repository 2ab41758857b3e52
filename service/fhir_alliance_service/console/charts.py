"""Charts of the console as SVG, drawn on the server with matplotlib (no pyplot, no JavaScript).

Every series differs by marker and line style as well as colour, so a chart reads in greyscale
and in print; each page shows the same numbers in a table beside the chart. The SVG is deterministic
(fixed ids, no date in its metadata), kept in a small per-process cache, and is embedded as an image (``data:`` URL), so the page needs
no script and the browser runs none inside it.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import matplotlib
import matplotlib.dates as mdates
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

__all__ = ["Event", "Moment", "Panel", "Series", "data_url", "time_chart", "time_range"]

#: Okabe-Ito colours (safe for the common colour-vision deficiencies), then black.
_COLOURS: Final = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_MARKERS: Final = ("o", "s", "^", "D", "v", "P", "X")
_LINES: Final = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)))
_EVENT_STYLE: Final = {
    "rupture": ("--", "#B00020", "rupture"),
    "repair": (":", "#1B5E20", "repair"),
}
_RC: Final[dict[RcKeyType, Any]] = {
    "svg.hashsalt": "fhir-alliance-console",  # stable element ids: the same data, the same SVG
    "svg.fonttype": "none",  # text stays text: smaller, selectable, printed sharp
    "font.size": 9,
    "axes.titlesize": 10,
}

Moment = datetime | date
#: Drawn charts kept per process (least recently used go first); a chart is 15-40 kB of SVG.
CACHE_SIZE: Final = 256
_CACHE: OrderedDict[str, str] = OrderedDict()
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Series:
    """One line: ``hollow`` draws open markers (the console's sign for automated measures)."""

    label: str
    points: Sequence[tuple[Moment, float]]
    hollow: bool = False


@dataclass(frozen=True, slots=True)
class Panel:
    """One set of axes. ``cutoff`` draws a labelled horizontal line; ``notes`` write a short text
    (e.g. "▲ improved") beside a point."""

    title: str
    series: Sequence[Series]
    y_label: str = ""
    y_range: tuple[float, float] | None = None
    cutoff: float | None = None
    cutoff_label: str = ""
    notes: Sequence[tuple[Moment, float, str]] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Event:
    """A moment marked on every panel by a vertical line: ``kind`` is ``rupture`` or ``repair``."""

    at: Moment
    kind: str


def time_range(moments: Sequence[Moment]) -> tuple[datetime, datetime] | None:
    """A time axis around ``moments``, padded by a twentieth of their span and at least a day, so
    that one point or one day still gets a readable axis."""
    if not moments:
        return None
    as_times = [m if isinstance(m, datetime) else datetime(m.year, m.month, m.day) for m in moments]
    naive = [t.replace(tzinfo=None) for t in as_times]
    start, end = min(naive), max(naive)
    pad = max((end - start) / 20, timedelta(days=1))
    return start - pad, end + pad


def time_chart(
    panels: Sequence[Panel],
    events: Sequence[Event] = (),
    *,
    width: float = 9.0,
    x_range: tuple[datetime, datetime] | None = None,
) -> str:
    """Panels side by side over time, as an SVG document (text). ``x_range`` (naive UTC) lets
    several charts share one time axis; by default it is fitted to this chart's points."""
    if x_range is None:
        x_range = time_range(
            [x for p in panels for s in p.series for x, _ in s.points] + [e.at for e in events]
        )
    # The same inputs give the same SVG: a patient page shown again draws nothing anew.
    key = repr((panels, events, width, x_range))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            _CACHE.move_to_end(key)
            return cached
    svg = _draw(panels, events, width, x_range)
    with _CACHE_LOCK:
        _CACHE[key] = svg
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return svg


def _draw(
    panels: Sequence[Panel],
    events: Sequence[Event],
    width: float,
    x_range: tuple[datetime, datetime] | None,
) -> str:
    with matplotlib.rc_context(_RC):
        # Fixed margins rather than a layout engine: one drawing pass instead of two.
        figure = Figure(figsize=(width, 3.2))
        figure.subplots_adjust(left=0.07, right=0.985, bottom=0.13, top=0.9, wspace=0.22)
        axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
        for axes, panel in zip(axes_list, panels, strict=True):
            _draw_panel(axes, panel, events)
            if x_range is not None:
                axes.set_xlim(*x_range)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()


def _draw_panel(axes: matplotlib.axes.Axes, panel: Panel, events: Sequence[Event]) -> None:
    axes.set_title(panel.title)
    if panel.y_label:
        axes.set_ylabel(panel.y_label)
    if panel.y_range is not None:
        axes.set_ylim(*panel.y_range)
    for index, series in enumerate(panel.series):
        if not series.points:
            continue
        colour = _COLOURS[index % len(_COLOURS)]
        xs = [x for x, _ in series.points]
        ys = [y for _, y in series.points]
        axes.plot(
            xs,  # type: ignore[arg-type]  # dates: matplotlib converts them; its stubs say numbers
            ys,
            label=series.label,
            color=colour,
            linestyle=_LINES[index % len(_LINES)],
            marker=_MARKERS[index % len(_MARKERS)],
            markerfacecolor="white" if series.hollow else colour,
            markersize=6,
            linewidth=1.5,
        )
    if panel.cutoff is not None:
        axes.axhline(panel.cutoff, color="#444444", linestyle=(0, (4, 2)), linewidth=1)
        axes.annotate(
            panel.cutoff_label or f"cutoff {panel.cutoff:g}",
            xy=(0.01, panel.cutoff),
            xycoords=("axes fraction", "data"),
            xytext=(0, -11),
            textcoords="offset points",
            fontsize=8,
            color="#222222",
        )
    for x, y, text in panel.notes:
        axes.annotate(
            text,
            xy=(x, y),
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            color="#222222",
        )
    shown: set[str] = set()
    for event in events:
        style, colour, label = _EVENT_STYLE.get(event.kind, ("-.", "#555555", event.kind))
        axes.axvline(
            event.at,  # type: ignore[arg-type]  # a date, converted like the plotted ones
            color=colour,
            linestyle=style,
            linewidth=1.2,
            label=label if label not in shown else None,
        )
        shown.add(label)
    locator = mdates.AutoDateLocator(minticks=2, maxticks=6)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes.grid(True, color="#dddddd", linewidth=0.6)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7, loc="best", framealpha=0.9)


def data_url(svg: str) -> str:
    """The SVG as a ``data:`` URL for an ``<img>`` (the CSP allows ``img-src data:``)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
