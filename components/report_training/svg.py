"""Static SVG charts: what the report shows where scripts do not run.

The report's charts are Plotly's, drawn by its JavaScript in the browser. A reader with scripts
disabled (or a viewer that strips them) still gets every chart from this module, rendered here
as inline SVG that the page shows until its script has drawn the interactive charts. It is
small hand-written code because the library's own static export (Kaleido) drives a headless
Chrome, far too heavy for the report's image; these charts need only lines, markers, epoch
bands and axis ticks.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence

from kfp_lightning.components.report_training.scalars import (
    EPOCH,
    FINAL,
    SCHEDULE,
    Chart,
    Epochs,
    Line,
    thin,
)

WIDTH, HEIGHT = 480, 250
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 60, 12, 10, 36
PLOT_WIDTH = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
PLOT_HEIGHT = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
MAX_BANDS = 60  # epochs beyond which the bands would be thinner than a line
PAD = 0.05  # of the value span, on either side of the value axis
CLOSE = 0.06  # of the plot's height: labels of points closer than this would overlap
LABEL_GAP = 7  # between a lone point and its value, in px
# A value label's baseline below its point, in px: the 11 px text above, centred on, or below
# it, each line box (13 px) clear of the others.
LABEL_BASELINES = {"top": -10, "middle": 4, "bottom": 18}
# Plotly's dash names as SVG stroke patterns.
DASH_ARRAYS = {"solid": None, "dash": "6 4", "dot": "2 3", "dashdot": "6 3 2 3"}


def format_value(value: float, percent: bool = False) -> str:
    """A value as a chart label: 4 significant digits, or a percentage."""
    if percent and math.isfinite(value):
        return f"{value * 100:.4g}%"
    if value == 0 or 1e-3 <= abs(value) < 1e5 or not math.isfinite(value):
        return f"{value:.4g}"
    return f"{value:.2e}"


def value_range(low: float, high: float, percent: bool) -> tuple[float, float]:
    """The y axis of a chart whose finite values run from `low` to `high`.

    5% of the span is added on either side (of the value itself where every value is the
    same: a single point, a constant), so that no point sits on the frame, but the axis never
    crosses a bound the values do not: 0 where none is negative (a loss, a learning rate, an
    accuracy is never shown below 0), 100% for a fraction where none exceeds it.

    Args:
        low: The smallest finite value.
        high: The largest finite value.
        percent: The values are fractions, shown as percentages.

    Returns:
        The bottom and top of the axis, bottom < top.
    """
    span = high - low or abs(high) or 1.0
    bottom, top = low - span * PAD, high + span * PAD
    if low >= 0:
        bottom = max(bottom, 0.0)
    if percent and high <= 1:
        top = min(top, 1.0)
    return bottom, top


def label_sides(
    points: Sequence[tuple[float, float]],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
) -> list[tuple[str, str]]:
    """Where the value labels of a chart's lone points go, in Plotly's words.

    A line of one point is one marker: its value is written beside it, so that a chart of
    one epoch (one validation point, one test value) does not read as a broken one. A label
    points into the plot (above a point in the lower half, to the left of one in the right
    half); of two labels that would overlap (points close in value on the same side), the one
    farther from the plot's middle goes beside its point instead.

    Args:
        points: (step, value) of each lone point.
        x_range: The step axis, first and last.
        y_range: The value axis, bottom and top (see `value_range`).

    Returns:
        (vertical, horizontal) of each label: "top", "middle" or "bottom", and "left" or
        "right".
    """
    (x_lo, x_hi), (y_lo, y_hi) = x_range, y_range
    middle, height, width = (y_lo + y_hi) / 2, y_hi - y_lo, (x_hi - x_lo) or 1
    sides = [
        ["top" if y <= middle else "bottom", "left" if x > (x_lo + x_hi) / 2 else "right"]
        for x, y in points
    ]
    order = sorted(range(len(points)), key=lambda i: points[i][1])
    for lower, upper in itertools.pairwise(order):
        close = (
            points[upper][1] - points[lower][1] < CLOSE * height
            and abs(points[upper][0] - points[lower][0]) < CLOSE * width
        )
        if close and sides[lower] == sides[upper]:
            sides[lower if sides[lower][0] == "top" else upper][0] = "middle"
    return [(vertical, horizontal) for vertical, horizontal in sides]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick positions covering [low, high], about `count` of them."""
    if not high > low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def element(name: str, text: str = "", /, **attributes: object) -> str:
    """One SVG/HTML element; attribute names use _ for -, values are escaped."""
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{html.escape(str(value))}"'
        for key, value in attributes.items()
    )
    return f"<{name}{attrs}>{text}</{name}>" if text else f"<{name}{attrs}/>"


def render_chart(
    chart: Chart, epochs: Epochs | None, max_points: int, x_range: tuple[int, int] | None = None
) -> str:
    """An inline SVG of one chart, with its legend.

    Args:
        chart: What to draw.
        epochs: Epoch ends, shaded as alternating bands; None draws none.
        max_points: The most points drawn per line (see `scalars.thin`).
        x_range: First and last step of the axis; None fits the chart's own points.

    Returns:
        HTML: the `<svg>` and a legend, or a note when nothing is finite.
    """
    lines = []
    for line in chart.lines:
        steps, values = thin(line.series.steps, line.series.values, max_points)
        points = [(s, v) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
        lines.append((line, line.colour, points))
    finite = [p for _, _, points in lines for p in points]
    if not finite:
        return element("p", "no finite values", class_="empty")
    x_lo, x_hi = min(p[0] for p in finite), max(p[0] for p in finite)
    y_lo, y_hi = value_range(min(p[1] for p in finite), max(p[1] for p in finite), chart.percent)
    if epochs is not None:
        x_lo, x_hi = min(x_lo, epochs.first_step), max(x_hi, epochs.ends[-1])
    if x_range is not None:
        x_lo, x_hi = min(x_lo, x_range[0]), max(x_hi, x_range[1])
    if x_hi == x_lo:  # one step: centre it
        x_lo, x_hi = x_lo - 1, x_hi + 1

    def sx(x: float) -> float:
        return round(MARGIN_LEFT + (x - x_lo) / (x_hi - x_lo) * PLOT_WIDTH, 1)

    def sy(y: float) -> float:
        return round(MARGIN_TOP + (1 - (y - y_lo) / (y_hi - y_lo)) * PLOT_HEIGHT, 1)

    parts = [
        element(
            "rect", x=MARGIN_LEFT, y=MARGIN_TOP, width=PLOT_WIDTH, height=PLOT_HEIGHT, class_="plot"
        )
    ]
    if epochs is not None and len(epochs.ends) <= MAX_BANDS:
        # Every other epoch shaded: one path of rectangles.
        bands, start = [], epochs.first_step
        for number, end in enumerate(epochs.ends, start=1):
            if number % 2 == 0:
                bands.append(
                    f"M{sx(start)},{MARGIN_TOP}H{sx(end)}V{MARGIN_TOP + PLOT_HEIGHT}H{sx(start)}Z"
                )
            start = end
        if bands:
            parts.append(element("path", d="".join(bands), class_="band"))
    for y in nice_ticks(y_lo, y_hi):
        parts.append(
            element(
                "line",
                x1=MARGIN_LEFT,
                x2=MARGIN_LEFT + PLOT_WIDTH,
                y1=sy(y),
                y2=sy(y),
                class_="grid",
            )
        )
        label = format_value(y, chart.percent)
        parts.append(
            element("text", label, x=MARGIN_LEFT - 6, y=sy(y) + 4, class_="tick", text_anchor="end")
        )
    for x in (t for t in nice_ticks(x_lo, x_hi) if float(t).is_integer()):  # steps are integers
        y = MARGIN_TOP + PLOT_HEIGHT + 15
        parts.append(element("text", f"{x:g}", x=sx(x), y=y, class_="tick", text_anchor="middle"))
    axis = "step (epochs shaded in turn)" if epochs is not None else "step"
    parts.append(
        element(
            "text",
            axis,
            x=MARGIN_LEFT + PLOT_WIDTH / 2,
            y=HEIGHT - 4,
            class_="axis",
            text_anchor="middle",
        )
    )

    def is_lone(line: Line, points: list[tuple[int, float]]) -> bool:
        # A schedule's value holds until the axis ends: one value before then is a line.
        return len(points) == 1 and not (line.style == SCHEDULE and points[0][0] < x_hi)

    lone = [(colour, points[0]) for line, colour, points in lines if is_lone(line, points)]
    for line, colour, points in lines:
        if is_lone(line, points) or line.style == FINAL:
            parts.extend(element("circle", cx=sx(x), cy=sy(y), r=4, fill=colour) for x, y in points)
            continue
        if line.style == SCHEDULE:  # the value holds until the next one
            coords = []
            for (x, y), (next_x, _) in zip(points, [*points[1:], (x_hi, None)], strict=True):
                coords += [f"{sx(x)},{sy(y)}", f"{sx(next_x)},{sy(y)}"]
        else:
            coords = [f"{sx(x)},{sy(y)}" for x, y in points]
        dashes = {"stroke_dasharray": DASH_ARRAYS[line.dash]} if DASH_ARRAYS[line.dash] else {}
        parts.append(
            element(
                "polyline",
                points=" ".join(coords),
                fill="none",
                stroke=colour,
                stroke_width=1.6,
                **dashes,
            )
        )
        if line.style == EPOCH:  # markers: zero-length segments with round ends
            dots = "".join(f"M{sx(x)},{sy(y)}h0" for x, y in points)
            parts.append(element("path", d=dots, stroke=colour, stroke_width=5, class_="dots"))
    # Each lone point's value beside it, in its line's colour, over everything else.
    sides = label_sides([point for _, point in lone], (x_lo, x_hi), (y_lo, y_hi))
    for (colour, (x, y)), (vertical, horizontal) in zip(lone, sides, strict=True):
        dx, anchor = (-LABEL_GAP, "end") if horizontal == "left" else (LABEL_GAP, "start")
        dy = LABEL_BASELINES[vertical]
        parts.append(
            element(
                "text",
                html.escape(format_value(y, chart.percent)),
                x=round(sx(x) + dx, 1),
                y=round(sy(y) + dy, 1),
                fill=colour,
                class_="value",
                text_anchor=anchor,
            )
        )
    svg = element(
        "svg",
        "".join(parts),
        xmlns="http://www.w3.org/2000/svg",
        viewBox=f"0 0 {WIDTH} {HEIGHT}",
        role="img",
        aria_label=chart.title,
        class_="static-chart",
    )
    legend = "".join(
        element("span", f"&#9632; {html.escape(line.label)}", class_="key", style=f"color:{colour}")
        for line, colour, _ in lines
    )
    return svg + element("div", legend, class_="legend")
