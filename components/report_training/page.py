"""The report's HTML page: headline numbers, interactive charts, confusion matrix, mistakes.

Kubeflow Pipelines reads an HTML artifact whole and shows it in an iframe with
`sandbox="allow-scripts"` and the page as its `srcdoc`, at least 600 px high and as wide as its
card (kubeflow/pipelines, frontend/src/components/viewers/MetricsVisualizations.tsx and
HTMLViewer.tsx; the card is PlotCard.tsx, in the run page's side panel, half the page wide by
default: frontend/src/pages/RunDetailsV2.tsx). Scripts run, but the page has no origin of its
own and must not reach the network, so everything is inline: the Plotly library (the charts,
with hover values, zoom and pan; plotly_bundle.py), the page's own script (smoothing, log
scale, epoch bands; page_script.py), the style sheet, and the digit images as `data:` PNGs.
Links to `#anchors` are avoided: a srcdoc page resolves them against the Kubeflow UI's
address, so following one would load the UI inside the report. The layout is one column at the
card's width and two where there is room. Static SVG charts (svg.py) are part of the page,
shown until the script has drawn Plotly's: where scripts do not run, or the library fails,
they stay.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence

from kfp_lightning.components.report_training.evaluation import Evaluation, Sample
from kfp_lightning.components.report_training.page_script import DEFAULT_SMOOTHING, SCRIPT, STYLE
from kfp_lightning.components.report_training.plotly_bundle import plotly_js
from kfp_lightning.components.report_training.scalars import (
    EPOCH,
    EPOCH_TAG,
    FINAL,
    KNOWN_CHARTS,
    SCHEDULE,
    STEP,
    Chart,
    ChartPlan,
    Epochs,
    Series,
    runs_of,
    thin,
)
from kfp_lightning.components.report_training.svg import (
    MAX_BANDS,
    element,
    format_value,
    label_sides,
    render_chart,
    value_range,
)

# Points per page, shared among the dense lines of every chart, and the most per line, for the
# interactive charts and for the static ones; with the library's 1.2 MB, they keep a page
# under 1.5 MB however many points were logged (report.MAX_PAGE_BYTES).
CHART_POINTS, CHART_POINTS_PER_LINE = 2000, 1000
STATIC_POINTS, STATIC_POINTS_PER_LINE = 600, 150
MIN_POINTS_PER_LINE = 20
KNOWN_KEYS = {kind.key for kind in KNOWN_CHARTS}
LONE_MARKER = 11  # px, the marker of a line of one point (a FINAL value's diamond included)
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif'


def format_seconds(seconds: float) -> str:
    """A duration for people: "42.1 s", "13 min 32 s", "2 h 05 min"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def headline(
    evaluation: Evaluation | None, series: Sequence[Series], epochs: Epochs | None
) -> list[tuple[str, str]]:
    """The run's headline numbers as (label, text), for the page's header and the Markdown.

    Test accuracy and loss, epochs, training time, throughput and device come from the
    evaluation artifact; without it (or where it has none), test values and epochs come from
    the scalars of the first run.

    Args:
        evaluation: The evaluation artifact's content, if any.
        series: Every scalar series.
        epochs: The epochs found in the scalars, if any.

    Returns:
        The numbers that are known, in display order.
    """
    run = evaluation.run if evaluation else None
    runs = runs_of(series)
    last = {s.name: s.last for s in series if runs and s.run == runs[0]}

    def pick(from_run: float | int | None, tag: str | None = None) -> float | None:
        if from_run is not None:
            return from_run
        value = last.get(tag) if tag else None
        return value if value is not None and math.isfinite(value) else None

    accuracy = pick(run.test_accuracy if run else None, "accuracy/test")
    loss = pick(run.test_loss if run else None, "loss/test")
    count = pick(run.epochs if run else None) or (len(epochs.ends) if epochs else None)
    seconds = pick(run.train_seconds if run else None)
    throughput = pick(run.train_samples_per_second if run else None)
    items = [
        ("test accuracy", None if accuracy is None else f"{accuracy:.2%}"),
        ("test loss", None if loss is None else f"{loss:.4g}"),
        ("epochs", None if count is None else str(int(count))),
        ("training time", None if seconds is None else format_seconds(seconds)),
        ("samples/s", None if throughput is None else f"{throughput:,.0f}"),
        ("device", run.device if run else None),
    ]
    return [(label, text) for label, text in items if text is not None]


def png_data_uri(pixels: Sequence[Sequence[int]]) -> str:
    """A greyscale image as an inline `data:image/png;base64,...` URI.

    Encoded with Pillow, which the images already carry (TensorBoard depends on it) and which
    writes compact PNGs; a `data:` URI is part of the page, not a request.

    Args:
        pixels: Rows of grey levels 0-255, all of one length.
    """
    from PIL import Image

    image = Image.frombytes("L", (len(pixels[0]), len(pixels)), bytes(v for r in pixels for v in r))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _json_number(value: float) -> float | None:
    # Five significant digits are finer than a chart shows; null is Plotly's gap.
    return float(f"{value:.5g}") if math.isfinite(value) else None


def _dense(line_style: str) -> bool:
    return line_style in (STEP, SCHEDULE)


def _limits(charts: Sequence[Chart], total: int, per_line: int) -> int:
    dense = sum(_dense(line.style) for chart in charts for line in chart.lines)
    return max(MIN_POINTS_PER_LINE, min(per_line, total // max(dense, 1)))


def plotly_figure(
    chart: Chart,
    epochs: Epochs | None,
    limit: int,
    last_steps: dict[str, int],
    x_range: tuple[int, int],
) -> dict:
    """One chart as Plotly's JSON (data and layout), validated by the Plotly library.

    A STEP line becomes two traces: the raw values, faint, and the smoothed values, which the
    page's script computes from them (their x and y are left empty here). EPOCH lines get
    markers, FINAL values a diamond, and a SCHEDULE line is a step function held to the run's
    last step.

    Args:
        chart: What to draw.
        epochs: The epochs (the hover text names a point's epoch when known).
        limit: The most points of a dense line (see `scalars.thin`).
        last_steps: The last logged step of each run.
        x_range: The first and last step of every chart, so that their epochs line up.

    Returns:
        `{"data": [...], "layout": {...}, "smooth": [[smoothed trace, raw trace], ...]}`.
    """
    import plotly.graph_objects as go

    value = "%{y:.2%}" if chart.percent else "%{y:.4g}"
    hover = value + (" · epoch %{customdata}" if epochs else "")
    finite = [v for line in chart.lines for v in line.series.finite_values()]
    y_range = value_range(min(finite), max(finite), chart.percent)
    traces, smooth = [], []
    lone: list[tuple[dict, tuple[int, float]]] = []  # a trace of one point, and the point
    for line in chart.lines:
        colour = line.colour
        cap = limit if _dense(line.style) else CHART_POINTS_PER_LINE
        steps, values = thin(line.series.steps, line.series.values, cap)
        ys = [_json_number(v) for v in values]
        if line.style == SCHEDULE and steps[-1] < last_steps[line.series.run]:
            steps, ys = [*steps, last_steps[line.series.run]], [*ys, ys[-1]]
        shared = {"legendgroup": line.label, "hovertemplate": hover}
        mode = "lines" if len(steps) > 1 else "markers"
        points = [(x, y) for x, y in zip(steps, ys, strict=True) if y is not None]
        if line.style == STEP:
            traces.append(
                go.Scatter(
                    x=steps,
                    y=ys,
                    name=f"{line.label} (raw)",
                    mode=mode,
                    line={"color": colour, "width": 1},
                    marker={"color": colour},
                    opacity=0.3,
                    showlegend=False,
                    **shared,
                )
            )
            smooth.append([len(traces), len(traces) - 1])
            traces.append(
                go.Scatter(
                    x=[],
                    y=[],
                    name=line.label,
                    mode=mode,
                    line={"color": colour, "width": 2, "dash": line.dash},
                    marker={"color": colour},
                    **shared,
                )
            )
        elif line.style == EPOCH:
            traces.append(
                go.Scatter(
                    x=steps,
                    y=ys,
                    name=line.label,
                    mode="lines+markers",
                    line={"color": colour, "width": 2, "dash": line.dash},
                    marker={"color": colour, "size": 6},
                    **shared,
                )
            )
        elif line.style == FINAL:
            traces.append(
                go.Scatter(
                    x=steps,
                    y=ys,
                    name=line.label,
                    mode="markers",
                    marker={"color": colour, "size": 11, "symbol": "diamond"},
                    **shared,
                )
            )
        else:
            traces.append(
                go.Scatter(
                    x=steps,
                    y=ys,
                    name=line.label,
                    mode=mode,
                    line={"color": colour, "width": 2, "shape": "hv", "dash": line.dash},
                    marker={"color": colour},
                    **shared,
                )
            )
        if len(points) == 1:  # the visible trace: the smoothed one of a STEP line
            lone.append((traces[-1], points[0]))
    # A lone point carries its value, placed as the static chart places it (svg.label_sides),
    # and a marker of LONE_MARKER px: plotly.js sets text above or below a point by its marker's
    # size (textPointPosition, src/components/drawing/index.js), which keeps a label beside one
    # point clear of one below the other. Not clipped at the plot's edge; plotly.js still hides
    # markers and text outside a zoomed range (Drawing.hideOutsideRangePoints).
    sides = label_sides([point for _, point in lone], x_range, y_range)
    for (trace, (_, y)), (vertical, horizontal) in zip(lone, sides, strict=True):
        trace.update(
            mode=trace.mode + "+text",
            marker={"size": LONE_MARKER},
            text=[format_value(y, chart.percent)],
            textposition=f"{vertical} {horizontal}",
            textfont={"color": trace.marker.color, "size": 11},
            cliponaxis=False,
        )
    axis = {"gridcolor": "#eceff1", "zeroline": False, "automargin": True}
    pad = max(1.0, (x_range[1] - x_range[0]) * 0.02)
    autorange = _autorange_options(chart, finite, y_range)
    yaxis = {
        **axis,
        "tickformat": ".1%" if chart.percent else "",
        "exponentformat": "e",
        "autorangeoptions": autorange["linear"],
    }
    layout = go.Layout(
        template="none",
        height=310,
        # Epoch numbers (page_script.py) above the plot, the mode bar over them on hover, the
        # legend below the step axis.
        margin={"l": 52, "r": 8, "t": 22, "b": 20},
        hovermode="x unified",
        font={"family": FONT, "size": 11, "color": "#202124"},
        legend={"orientation": "h", "x": 0, "y": -0.14, "yanchor": "top", "font": {"size": 11}},
        xaxis={
            **axis,
            "title": {"text": "step", "standoff": 2},
            "range": [x_range[0] - pad, x_range[1] + pad],
        },
        yaxis=yaxis,
    )
    figure = go.Figure(data=traces, layout=layout).to_plotly_json()
    figure["layout"].pop("template", None)  # "none": Plotly's built-in look, nothing to ship
    return {
        "data": figure["data"],
        "layout": figure["layout"],
        "smooth": smooth,
        "autorange": autorange,
    }


def _autorange_options(
    chart: Chart, finite: Sequence[float], y_range: tuple[float, float]
) -> dict[str, dict[str, float]]:
    """plotly.js's `yaxis.autorangeoptions` of a chart, for a linear and for a log axis.

    They give the interactive chart the value axis of the static one (svg.value_range):
    where every value is the same (one point, a constant), plotly.js's autorange spans the
    value +- 1 (`getAutoRange`, src/plots/cartesian/autorange.js: a single point of 98%
    would have an axis from -2% to 198%), so the axis is set to the static chart's; elsewhere
    it is plotly.js's, clipped at 0 and at 100% where the values do not cross them. The options
    are in the axis's own units, and `clipmin` 0 has no logarithm (plotly.js 4.1 then clips
    a log axis wrongly), so a log axis gets only the 100% clip; the page's script swaps the
    two with the log-scale switch.
    """
    low, high = min(finite), max(finite)
    linear: dict[str, float] = {}
    log: dict[str, float] = {}
    if low >= 0:
        linear["clipmin"] = 0
    if chart.percent and high <= 1:
        linear["clipmax"] = log["clipmax"] = 1
    if low == high:
        linear = {"minallowed": y_range[0], "maxallowed": y_range[1]}
    return {"linear": linear, "log": log}


def _parameter_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _header(title: str, evaluation: Evaluation | None, numbers: list[tuple[str, str]]) -> str:
    parts = [element("h1", html.escape(title))]
    if evaluation is not None:
        parts.append(element("p", html.escape(evaluation.run.name), class_="run"))
    if numbers:
        stats = "".join(
            f"<div><dt>{html.escape(label)}</dt><dd>{html.escape(text)}</dd></div>"
            for label, text in numbers
        )
        parts.append(element("dl", stats, class_="stats"))
    if evaluation is not None and evaluation.run.parameters:
        # Folded to one line (they are also on the run's page), unfolded with a click.
        items = [
            (html.escape(str(k)), html.escape(_parameter_text(v)))
            for k, v in evaluation.run.parameters.items()
        ]
        brief = ", ".join(f"{k} {v}" for k, v in items)
        listed = "".join(f"<span>{k} <b>{v}</b></span>" for k, v in items)
        parts.append(
            f'<details class="params"><summary>Parameters ({len(items)})<span>: {brief}</span>'
            f"</summary><p>{listed}</p></details>"
        )
    return element("header", "".join(parts))


def _chart_id(chart: Chart) -> str:
    return f"chart-{chart.key}"


def _charts_section(
    plan: ChartPlan,
    epochs: Epochs | None,
    spec: list[dict],
    reduced: bool,
    x_range: tuple[int, int],
) -> str:
    charts = plan.charts
    static_charts = [c for c in charts if not reduced or c.key in KNOWN_KEYS]
    static_limit = _limits(static_charts, STATIC_POINTS, STATIC_POINTS_PER_LINE)
    drawn = {entry["id"] for entry in spec}
    figures = []
    for chart in charts:
        chart_id = _chart_id(chart)
        if chart_id not in drawn:
            # Nothing finite to draw: an empty plot would read as a broken one, with or
            # without scripts. Its values are in the table.
            body = element(
                "p", "No finite values to draw (NaN or infinite); see the table.", class_="empty"
            )
        else:
            static = (
                render_chart(chart, epochs, static_limit, x_range)
                if chart in static_charts
                else element(
                    "p", "Drawn with JavaScript only; see the table below.", class_="empty"
                )
            )
            body = (
                f'<div class="plotly-chart js-only" id="{chart_id}"></div>'
                f'<div class="static-only">{static}</div>'
            )
        figures.append(
            f'<figure class="chart" id="figure-{chart_id}">'
            f"<figcaption><h3>{html.escape(chart.title)}</h3></figcaption>{body}</figure>"
        )
    controls = (
        '<div class="controls js-only">'
        '<label>Smoothing <input id="smoothing" type="range" min="0" max="0.99" step="0.01" '
        f'value="{DEFAULT_SMOOTHING}"><output id="smoothing-value">{DEFAULT_SMOOTHING:.2f}'
        "</output></label>"
        '<label><input id="log-scale" type="checkbox"> log-scale y axis</label>'
        '<span class="note">drag to zoom, double-click to reset</span></div>'
    )
    note = ""
    if epochs is not None:
        note = element("p", "Epochs are shaded in turn.", class_="note")
    for kind, names in (("scalars", plan.tags_left_out), ("runs", plan.runs_left_out)):
        if names:
            listed = ", ".join(html.escape(name) for name in names)
            note += element("p", f"Not charted, listed below: {kind} {listed}.", class_="note")
    body = controls + element("div", "".join(figures), class_="charts") + note
    return element("section", element("h2", "Training curves") + body)


def _confusion_section(evaluation: Evaluation) -> str:
    labels, matrix = evaluation.labels, evaluation.confusion_matrix
    size = len(labels)
    row_totals = [sum(row) for row in matrix]
    column_totals = [sum(row[c] for row in matrix) for c in range(size)]
    # Off-diagonal cells are shaded relative to the largest confusion, so it stands out.
    worst = max((matrix[r][c] for r in range(size) for c in range(size) if r != c), default=0)

    def percent(part: int, whole: int) -> str:
        return f"{100 * part / whole:.3g}" if whole else "—"

    head = '<tr><th title="rows: true class, columns: predicted class">true ╲ pred.</th>'
    head += "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    head += '<th title="correct / images of the class, %">recall %</th></tr>'
    rows = []
    for r, row in enumerate(matrix):
        cells = []
        for c, count in enumerate(row):
            if r == c:
                shade = 0.12 + 0.5 * (count / row_totals[r] if row_totals[r] else 0)
                colour = f"rgba(46,125,50,{shade:.2f})"
            else:
                colour = f"rgba(197,34,31,{0.7 * count / worst if worst else 0:.2f})"
            tip = f"true {labels[r]}, predicted {labels[c]}: {count}"
            cells.append(
                f'<td style="background:{colour}" title="{html.escape(tip)}">'
                f"{count if count else ''}</td>"
            )
        recall = percent(row[r], row_totals[r])
        rows.append(
            f"<tr><th>{html.escape(labels[r])}</th>{''.join(cells)}"
            f'<td class="total">{recall}</td></tr>'
        )
    precision = "".join(f"<td>{percent(matrix[c][c], column_totals[c])}</td>" for c in range(size))
    rows.append(
        f'<tr><th title="correct / images predicted as the class, %">precision %</th>'
        f"{precision}<td></td></tr>"
    )
    correct = sum(matrix[i][i] for i in range(size))
    caption = (
        f"{html.escape(evaluation.split)} split, {evaluation.samples:,} images, "
        f"{percent(correct, evaluation.samples)}% correct. Rows: true class; columns: predicted."
    )
    table = f'<div class="scroll"><table class="cm">{head}{"".join(rows)}</table></div>'
    return element(
        "section", element("h2", "Confusion matrix") + element("p", caption, class_="note") + table
    )


def _tiles(samples: Sequence[Sample], evaluation: Evaluation, mistakes: bool) -> str:
    labels = evaluation.labels
    tiles = []
    for sample in samples:
        true, predicted = html.escape(labels[sample.label]), html.escape(labels[sample.predicted])
        confidence = f"{sample.confidence:.1%}"
        alt = (
            f"{evaluation.split} image {sample.index}: true {labels[sample.label]}, "
            f"predicted {labels[sample.predicted]} with {confidence} confidence"
        )
        caption = (
            f'{true} → <span class="wrong">{predicted}</span><br>{confidence}'
            if mistakes
            else f"{true}<br>{confidence}"
        )
        image = element("img", src=png_data_uri(sample.pixels), alt=alt, width=48, height=48)
        tiles.append(
            f'<figure class="tile" title="{html.escape(alt)}">{image}'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return element("div", "".join(tiles), class_="tiles")


def _images_sections(evaluation: Evaluation) -> str:
    if evaluation.mistakes:
        mistakes = element(
            "p",
            "The misclassified images the network was most sure of: true → predicted, and the "
            "probability it gave its prediction.",
            class_="note",
        ) + _tiles(evaluation.mistakes, evaluation, mistakes=True)
    else:
        mistakes = element("p", "No image was misclassified.", class_="note")
    examples = element(
        "p", "Correctly classified images, with the probability given.", class_="note"
    ) + _tiles(evaluation.examples, evaluation, mistakes=False)
    return element("section", element("h2", "Most confident mistakes") + mistakes) + (
        element("section", element("h2", "Correctly classified") + examples)
        if evaluation.examples
        else ""
    )


def scalar_rows(series: Sequence[Series]) -> tuple[list[str], list[list[str]]]:
    """The summary table of every scalar (Lightning's `epoch` counter left out).

    Returns:
        The column names and the rows: tag, run (only with several runs), number of points,
        last value, minimum and maximum of the finite values.
    """
    several = len(runs_of(series)) > 1
    columns = ["scalar", *(["run"] if several else []), "points", "last", "min", "max"]
    rows = []
    for s in series:
        if s.tag == EPOCH_TAG:
            continue
        finite = s.finite_values()
        low, high = (format_value(min(finite)), format_value(max(finite))) if finite else ("—",) * 2
        run = [s.run] if several else []
        rows.append([s.tag, *run, str(len(s.steps)), format_value(s.last), low, high])
    return columns, rows


def _scalars_section(series: Sequence[Series]) -> str:
    columns, rows = scalar_rows(series)
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    table = f'<div class="scroll"><table>{head}{body}</table></div>'
    return element("section", element("h2", "Scalars") + table)


def _inline_json(value: object) -> str:
    # Inside <script>, "</" would end the element early; \u escapes keep the JSON equal.
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(
    title: str,
    series: Sequence[Series],
    plan: ChartPlan,
    epochs: Epochs | None,
    evaluation: Evaluation | None,
    reduced: bool = False,
) -> str:
    """The complete, self-contained report page.

    Args:
        title: Heading of the page.
        series: Every scalar series (for the summary table and the headline fallbacks).
        plan: The charts to draw, and what was left out (see `scalars.charts_of`).
        epochs: Epoch ends, drawn as bands; None when the logs have no `epoch` scalar.
        evaluation: The evaluation artifact's content; None leaves out its sections.
        reduced: Half the points per chart, and static charts of the known tags only (for
            logs so large that the full page would exceed its size limit).

    Returns:
        The HTML document.
    """
    numbers = headline(evaluation, series, epochs)
    sections = [_header(title, evaluation, numbers)]
    charts = plan.charts
    if charts:
        last_steps: dict[str, int] = {}
        for s in series:
            last_steps[s.run] = max(s.steps[-1], last_steps.get(s.run, s.steps[-1]))
        charted = [line.series for chart in charts for line in chart.lines]
        x_range = (min(s.steps[0] for s in charted), max(s.steps[-1] for s in charted))
        limit = _limits(charts, CHART_POINTS // (2 if reduced else 1), CHART_POINTS_PER_LINE)
        spec = [
            {"id": _chart_id(chart), **plotly_figure(chart, epochs, limit, last_steps, x_range)}
            for chart in charts
            if any(line.series.finite_values() for line in chart.lines)
        ]
        sections.append(_charts_section(plan, epochs, spec, reduced, x_range))
    else:
        spec = []
        sections.append(element("p", "No scalars were found in the event files.", class_="note"))
    if evaluation is not None:
        sections.append(_confusion_section(evaluation))
        sections.append(_images_sections(evaluation))
    if series:
        sections.append(_scalars_section(series))
    data = {
        "charts": spec,
        "epochs": {
            "first": epochs.first_step,
            "ends": list(epochs.ends),
            "bands": len(epochs.ends) <= MAX_BANDS,
        }
        if epochs
        else None,
    }
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        + "".join(sections)
        + f'<script type="application/json" id="report-data">{_inline_json(data)}</script>'
        # The library first, then the page's script that uses it; both after the content, so
        # the header and tables show while the 1.2 MB library is parsed.
        + f"<script>{plotly_js()}</script><script>{SCRIPT}</script>"
        + "</body></html>\n"
    )
