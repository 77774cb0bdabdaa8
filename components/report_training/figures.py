"""The report's charts as Plotly figures, with every control built in Python by Plotly itself.

Each chart is a `go.Figure` whose own menus (`layout.updatemenus`, drawn by plotly.js) switch
its value axis between linear and log and choose the smoothing of its per-step lines; the
smoothed values are computed here for each choice, with TensorBoard's smoothing (a debiased
exponential moving average: `classicSmoothing` in tensorboard/webapp/widgets/line_chart_v2/
data_transformer.ts, its default weight 0.6 in tensorboard/webapp/metrics/store/
metrics_types.ts), and a choice swaps them in (`restyle`). Epochs are alternating bands
(`layout.shapes`) numbered above the plot. A line of one point (one epoch's validation value, a
test value) has its value written beside it; a value axis never goes below 0 for values that
are not negative, nor past 100% for an accuracy, and one of a single value stays close around
it. Only scatter traces are drawn: the page's plotly.js bundle has scatter, bar and pie only.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence

import plotly.graph_objects as go

from kfp_lightning.components.report_training import scalars
from kfp_lightning.components.report_training.scalars import Chart, Epochs

CHART_POINTS_PER_LINE = 1000  # the most points of one line (see report.MAX_PAGE_BYTES)
SMOOTHING = (0.0, 0.6, 0.9, 0.99)  # the menu's choices; 0.6 first shown, as in TensorBoard
DEFAULT_SMOOTHING = 0.6
MAX_BANDS = 60  # epochs beyond which the bands would be thinner than a line
PAD = 0.05  # of the value span, on either side of a value axis
CLOSE = 0.06  # of an axis: labels of lone points closer than this would overlap
LONE_MARKER = 11  # px; plotly.js places a point's text by its marker's size
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif'
GRID = "#eceff1"
# The epoch numbers above the plot are its only annotations: what they share is the template's
# default, given once per figure rather than in each of them, so that a page stays small.
NUMBER = dict(xref="x", yref="paper", y=1, yanchor="bottom", showarrow=False, font_size=10)
MENU = dict(y=1, xanchor="left", yanchor="bottom", pad_b=16, bgcolor="#fff", bordercolor="#dadce0")
LAYOUT = dict(
    template=dict(layout=dict(annotationdefaults=dict(NUMBER, font_color="#80868b"))),
    height=330,
    margin=dict(l=52, r=8, t=52, b=20),
    hovermode="x unified",
    font=dict(family=FONT, size=11, color="#202124"),
    legend=dict(orientation="h", x=0, y=-0.14, yanchor="top"),
    xaxis=dict(title=dict(text="step", standoff=2), gridcolor=GRID, automargin=True),
    yaxis=dict(exponentformat="e", gridcolor=GRID, zeroline=False, automargin=True),
)
# How each kind of line is drawn beyond its colour and dash (see `chart_figure`).
LOOKS = {
    scalars.EPOCH: dict(mode="lines+markers", marker_size=6),
    scalars.FINAL: dict(mode="markers", marker_size=LONE_MARKER, marker_symbol="diamond"),
    scalars.SCHEDULE: dict(line_shape="hv"),
}
# Plotly's mode bar, less what cannot work in the Kubeflow UI's sandbox (no allow-downloads,
# no network: a download, plotly.js's "Share chart..." upload) and what drag and double-click
# already do, so that it fits beside the menus.
REMOVED_BUTTONS = ["toImage", "select2d", "lasso2d", "zoomIn2d", "zoomOut2d"]
CONFIG = dict(displaylogo=False, showSendToCloud=False, modeBarButtonsToRemove=REMOVED_BUTTONS)


def format_value(value: float, percent: bool = False) -> str:
    """A value as a label: 4 significant digits, or a percentage."""
    if percent and math.isfinite(value):
        return f"{value * 100:.4g}%"
    if value == 0 or 1e-3 <= abs(value) < 1e5 or not math.isfinite(value):
        return f"{value:.4g}"
    return f"{value:.2e}"


def value_range(low: float, high: float, percent: bool) -> tuple[float, float]:
    """The value axis of a chart whose finite values run from `low` to `high`.

    5% of the span is added on either side (of the value itself where every value is the same:
    a single point, a constant), but the axis never crosses a bound the values do not: 0 where
    none is negative, 100% for a fraction where none exceeds it.

    Returns:
        The bottom and top of the axis, bottom < top.
    """
    span = high - low or abs(high) or 1.0
    bottom, top = low - span * PAD, high + span * PAD
    # Held at 0 and at 100% where no value crosses them.
    if low >= 0:
        bottom = max(bottom, 0.0)
    if percent and high <= 1:
        top = min(top, 1.0)
    return bottom, top


def label_sides(
    points: Sequence[tuple[float, float]],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
) -> list[str]:
    """Where the value labels of a chart's lone points go, as Plotly's `textposition`.

    A label points into the plot (above a point in the lower half, to the left of one in the
    right half); of two that would overlap (points close on both axes, labels on the same
    side), the one nearer the plot's edge goes beside its point instead.

    Args:
        points: (step, value) of each lone point.
        x_range: The step axis, first and last.
        y_range: The value axis, bottom and top (see `value_range`).

    Returns:
        "<top|middle|bottom> <left|right>" for each point.
    """
    (x_lo, x_hi), (y_lo, y_hi) = x_range, y_range
    height, width = y_hi - y_lo, (x_hi - x_lo) or 1
    # Into the plot: above a point in its lower half, to the left of one in its right half.
    sides = [["top" if y <= (y_lo + y_hi) / 2 else "bottom"] for _, y in points]
    for side, (x, _) in zip(sides, points, strict=True):
        side.append("left" if x > (x_lo + x_hi) / 2 else "right")
    order = sorted(range(len(points)), key=lambda i: points[i][1])
    for lower, upper in itertools.pairwise(order):
        (x_lower, y_lower), (x_upper, y_upper) = points[lower], points[upper]
        close = y_upper - y_lower < CLOSE * height and abs(x_upper - x_lower) < CLOSE * width
        if close and sides[lower] == sides[upper]:
            sides[lower if sides[lower][0] == "top" else upper][0] = "middle"
    return [" ".join(side) for side in sides]


def smooth(values: Sequence[float | None], weight: float) -> list[float | None]:
    """TensorBoard's smoothing of a line: gaps and a constant line pass through unchanged."""
    if weight == 0 or len({v for v in values if v is not None}) <= 1:
        return list(values)
    last, count, smoothed = 0.0, 0, []
    for value in values:
        if value is not None:
            # Started at 0 and divided by 1 - w^n, so the first points are not pulled to 0.
            last, count = last * weight + (1 - weight) * value, count + 1
            value = _rounded(last / (1 - weight**count))
        smoothed.append(value)
    return smoothed


def _rounded(value: float) -> float | None:
    # Five significant digits are finer than a chart shows; None is Plotly's gap.
    return float(f"{value:.5g}") if math.isfinite(value) else None


def epoch_marks(epochs: Epochs | None) -> tuple[list[dict], list[dict]]:
    """Every other epoch shaded and the epochs numbered above the plot.

    The bands are one shape (an SVG path of rectangles, so that a page of many charts and
    epochs stays small), the numbers annotations (see `LAYOUT`).

    Returns:
        The shapes and the annotations, both empty past `MAX_BANDS` epochs or without any.
    """
    if epochs is None or len(epochs.ends) > MAX_BANDS:
        return [], []
    bands, numbers = "", []
    every = math.ceil(len(epochs.ends) / 20)  # at most 20 numbers, so they never overlap
    for index, (start, end) in enumerate(itertools.pairwise((epochs.first_step, *epochs.ends))):
        if index % 2:  # every other epoch is shaded
            bands += f"M{start},0H{end}V1H{start}Z"
        if index % every == 0:
            numbers.append({"x": (start + end) / 2, "text": str(index + 1)})
    band = dict(type="path", path=bands, xref="x", yref="paper", layer="below", line_width=0)
    return [dict(band, fillcolor="rgba(60,64,67,0.07)")] if bands else [], numbers


def _autorange(chart: Chart, low: float, high: float) -> dict[str, dict[str, float]]:
    """plotly.js's `yaxis.autorangeoptions`, for a linear and for a log axis.

    Where every value is the same, plotly.js's autorange spans the value +- 1 (`getAutoRange`,
    src/plots/cartesian/autorange.js: one point of 98% would get an axis from -2% to 198%), so
    the axis is held to `value_range`'s; elsewhere it is plotly.js's, clipped at 0 and at 100%
    where the values do not cross them. A clip at 0 has no logarithm (plotly.js 4.1 then clips
    a log axis wrongly), so the log axis keeps only the 100% one.
    """
    linear: dict[str, float] = {"clipmin": 0} if low >= 0 else {}
    log: dict[str, float] = {}
    if chart.percent and high <= 1:
        linear["clipmax"] = log["clipmax"] = 1
    if low == high:
        bottom, top = value_range(low, high, chart.percent)
        linear = {"minallowed": bottom, "maxallowed": top}
    return {"linear": linear, "log": log}


def _menus(autorange: dict[str, dict], smoothed: list[tuple[int, list]]) -> list[dict]:
    """A chart's menus: the scale of its value axis, and the smoothing of its per-step lines.

    Each scale brings its autorange options, which are in the axis's units (see
    `_autorange`); each smoothing choice swaps its values, computed here, into the smoothed
    traces.

    Args:
        autorange: The autorange options of each scale ("linear", "log").
        smoothed: The index of each smoothed trace, and the raw values it smooths.
    """
    scales = []
    for kind, options in autorange.items():
        change = {"yaxis.type": kind, "yaxis.autorange": True, "yaxis.autorangeoptions": options}
        scales.append(dict(label=f"{kind} scale", method="relayout", args=[change]))
    choices, traces = [], [index for index, _ in smoothed]
    for weight in SMOOTHING:
        values = {"y": [smooth(raw, weight) for _, raw in smoothed]}
        label = f"smoothing {weight:g}" if weight else "no smoothing"
        choices.append(dict(label=label, method="restyle", args=[values, traces]))
    smoothing = dict(MENU, x=0.3, buttons=choices, active=SMOOTHING.index(DEFAULT_SMOOTHING))
    # The smoothing menu only where there are per-step lines to smooth.
    return [dict(MENU, x=0, buttons=scales), *([smoothing] if smoothed else [])]


def chart_figure(
    chart: Chart,
    epochs: Epochs | None,
    limit: int,
    last_steps: dict[str, int],
    x_range: tuple[int, int],
) -> go.Figure:
    """One chart as a Plotly figure, its menus and epoch bands included.

    A STEP line is two traces: the raw values, faint, and the smoothed ones. EPOCH lines get
    markers, FINAL values a diamond, and a SCHEDULE line is a step function held to its run's
    last step. Names are HTML-escaped: plotly.js reads tags in text (`<a href>` among them).

    Args:
        chart: What to draw; at least one of its values is finite.
        epochs: The epochs, for the bands and the hover text; None leaves both out.
        limit: The most points of a dense (STEP or SCHEDULE) line (see `scalars.thin`).
        last_steps: The last logged step of each run.
        x_range: The first and last step of every chart, so that their epochs line up.

    Returns:
        The validated figure.
    """
    hover = "%{y:.2%}" if chart.percent else "%{y:.4g}"
    hover += " · epoch %{customdata}" if epochs else ""
    figure = go.Figure(layout=LAYOUT).update_yaxes(tickformat=".1%" if chart.percent else "")
    smoothed: list[tuple[int, list]] = []  # a smoothed trace's index, and the raw values
    lone: list[tuple[go.Scatter, tuple[int, float]]] = []  # a trace of one point, and it
    for number, line in enumerate(chart.lines):
        # The dense lines share the page's points (see report.chart_html).
        cap = limit if line.style in scalars.DENSE else CHART_POINTS_PER_LINE
        steps, values = scalars.thin(line.series.steps, line.series.values, cap)
        ys = [_rounded(v) for v in values]
        if line.style == scalars.SCHEDULE and steps[-1] < last_steps[line.series.run]:
            steps, ys = [*steps, last_steps[line.series.run]], [*ys, ys[-1]]
        trace = go.Scatter(
            x=steps,
            y=ys,
            name=html.escape(line.label),
            legendgroup=str(number),  # raw and smoothed: one legend entry
            hovertemplate=hover,
            customdata=[epochs.of_step(step) for step in steps] if epochs else None,
            mode="lines" if len(steps) > 1 else "markers",
            marker_color=line.colour,
            line=dict(color=line.colour, width=2, dash=line.dash),
        )
        if line.style == scalars.STEP:
            raw = dict(name=f"{trace.name} (raw)", line_width=1, opacity=0.3, showlegend=False)
            figure.add_trace(go.Scatter(trace, **raw))
            smoothed.append((len(figure.data), ys))
            trace.y = smooth(ys, DEFAULT_SMOOTHING)
        figure.add_trace(trace.update(LOOKS.get(line.style, {})))
        points = [(x, y) for x, y in zip(steps, ys, strict=True) if y is not None]
        if len(points) == 1:  # the visible trace: the smoothed one of a STEP line
            lone.append((figure.data[-1], points[0]))
    finite = [v for line in chart.lines for v in line.series.finite_values()]
    y_range = value_range(min(finite), max(finite), chart.percent)
    sides = label_sides([point for _, point in lone], x_range, y_range)
    for (trace, (_, y)), side in zip(lone, sides, strict=True):
        # Not clipped at the plot's edge; plotly.js still hides what a zoom leaves outside.
        trace.update(mode=f"{trace.mode}+text", marker_size=LONE_MARKER, cliponaxis=False)
        trace.update(text=[format_value(y, chart.percent)], textposition=side)
        trace.update(textfont=dict(color=trace.marker.color, size=11))
    autorange = _autorange(chart, min(finite), max(finite))
    bands, numbers = epoch_marks(epochs)
    pad = max(1.0, (x_range[1] - x_range[0]) * 0.02)
    figure.update_layout(shapes=bands, annotations=numbers, updatemenus=_menus(autorange, smoothed))
    figure.update_xaxes(range=[x_range[0] - pad, x_range[1] + pad])
    return figure.update_yaxes(autorangeoptions=autorange["linear"])
