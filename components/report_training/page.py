"""The report's HTML page: headline numbers, interactive charts, confusion matrix, mistakes.

Kubeflow Pipelines reads an HTML artifact whole and shows it in an iframe with
`sandbox="allow-scripts"` and the page as its `srcdoc`, at least 600 px high and as wide as its
card (kubeflow/pipelines, frontend/src/components/viewers/MetricsVisualizations.tsx and
HTMLViewer.tsx; the card is PlotCard.tsx, half the run page wide by default). Scripts run, but
the page has no origin of its own and must not reach the network, so everything is inline: the
Plotly library (plotly_bundle.py), each chart as Plotly's own `to_html` writes it (figures.py),
the style sheet and the digit images as `data:` PNGs. The page is rendered from
templates/report.html.j2 by Jinja with autoescape on, so every string from a run (its name,
tags, parameters, labels) is escaped. Without scripts the headline numbers and the tables still
show, and a note says the charts need scripts. Links to `#anchors` are avoided: a srcdoc page
resolves them against the Kubeflow UI's address.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence

import jinja2
from markupsafe import Markup

from kfp_lightning.components.common.evaluation import Evaluation
from kfp_lightning.components.report_training import scalars
from kfp_lightning.components.report_training.figures import CONFIG, chart_figure, format_value
from kfp_lightning.components.report_training.plotly_bundle import plotly_js

# Points per page, shared among the dense lines of every chart: with the library's 1.2 MB and
# each smoothing choice's values, they keep a page under 1.5 MB (report.MAX_PAGE_BYTES).
CHART_POINTS = 2000
MIN_POINTS_PER_LINE = 20
# Each chart without the library, which the page inlines once, before the first of them.
TO_HTML = dict(include_plotlyjs=False, full_html=False, config=CONFIG)
# The templates of this package: the page's, templates/report.html.j2, autoescaped; the Markdown
# summary's, not. Jinja caches each once loaded.
TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader(__package__),
    autoescape=jinja2.select_autoescape(["html.j2"]),
    undefined=jinja2.StrictUndefined,
)


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
    evaluation: Evaluation | None, series: Sequence[scalars.Series], epochs: scalars.Epochs | None
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
    known = {k: v for k, v in evaluation.run if v is not None} if evaluation else {}
    first = scalars.runs_of(series)[:1]
    last = {s.name: s.last for s in series if s.run in first and math.isfinite(s.last)}
    items = [  # (label, value, how it is shown)
        ("test accuracy", known.get("test_accuracy", last.get("accuracy/test")), "{:.2%}".format),
        ("test loss", known.get("test_loss", last.get("loss/test")), "{:.4g}".format),
        ("epochs", known.get("epochs") or (len(epochs.ends) if epochs else None), str),
        ("training time", known.get("train_seconds"), format_seconds),
        ("samples/s", known.get("train_samples_per_second"), "{:,.0f}".format),
        ("device", known.get("device"), str),
    ]
    return [(label, show(value)) for label, value, show in items if value is not None]


def png_data_uri(pixels: Sequence[Sequence[int]]) -> str:
    """A greyscale image as an inline `data:image/png;base64,...` URI (Pillow's compact PNG).

    Args:
        pixels: Rows of grey levels 0-255, all of one length.
    """
    from PIL import Image

    image = Image.frombytes("L", (len(pixels[0]), len(pixels)), bytes(v for r in pixels for v in r))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def scalar_rows(series: Sequence[scalars.Series]) -> tuple[list[str], list[list[str]]]:
    """The summary table of every scalar (Lightning's `epoch` counter left out).

    Returns:
        The column names and the rows: tag, run (only with several runs), number of points,
        last value, minimum and maximum of the finite values.
    """
    several = len(scalars.runs_of(series)) > 1
    columns = ["scalar", *(["run"] if several else []), "points", "last", "min", "max"]
    rows = []
    for s in (s for s in series if s.tag != scalars.EPOCH_TAG):
        finite = s.finite_values()
        low, high = (format_value(min(finite)), format_value(max(finite))) if finite else ("—",) * 2
        run = [s.run] if several else []
        rows.append([s.tag, *run, str(len(s.steps)), format_value(s.last), low, high])
    return columns, rows


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.3g}" if whole else "—"


def confusion_table(matrix: Sequence[Sequence[int]]) -> dict[str, list]:
    """What the confusion matrix's table shows beside its counts.

    Returns:
        `colours`: each cell's background, the diagonal green by the class's recall, the
        other cells red relative to the largest confusion, so that it stands out; `recall`
        and `precision` of each class and `correct`, all in percent.
    """
    size = len(matrix)
    worst = max((matrix[r][c] for r in range(size) for c in range(size) if r != c), default=0)
    diagonal = [matrix[i][i] for i in range(size)]
    totals = [sum(row) for row in matrix]
    predicted = [sum(col) for col in zip(*matrix, strict=True)]

    def colour(r: int, c: int) -> str:
        if r == c:
            recall = diagonal[r] / totals[r] if totals[r] else 0
            return f"rgba(46,125,50,{0.12 + 0.5 * recall:.2f})"
        return f"rgba(197,34,31,{0.7 * matrix[r][c] / worst if worst else 0:.2f})"

    return {
        "colours": [[colour(r, c) for c in range(size)] for r in range(size)],
        "recall": list(map(_percent, diagonal, totals)),
        "precision": list(map(_percent, diagonal, predicted)),
        "correct": _percent(sum(diagonal), sum(totals)),
    }


def chart_html(
    plan: scalars.ChartPlan,
    series: Sequence[scalars.Series],
    epochs: scalars.Epochs | None,
    reduced: bool,
) -> list[tuple[scalars.Chart, Markup]]:
    """Each chart, and its HTML as Plotly's `to_html` writes it: an element and the call that
    draws it.

    A chart with nothing finite has none: an empty plot would read as a broken one, and the
    table of scalars lists its values. Every chart spans the same steps, so that their epochs
    line up.

    Args:
        plan: The charts (see `scalars.charts_of`).
        series: Every scalar series (for the last step of each run).
        epochs: The epochs, if any.
        reduced: Half the points (see `render_html`).
    """
    if not plan.charts:
        return []
    last_steps: dict[str, int] = {}  # the last step of each run
    for s in series:
        last_steps[s.run] = max(s.steps[-1], last_steps.get(s.run, s.steps[-1]))
    charted = [line.series for chart in plan.charts for line in chart.lines]
    x_range = (min(s.steps[0] for s in charted), max(s.steps[-1] for s in charted))
    dense = sum(line.dense for chart in plan.charts for line in chart.lines)
    limit = max(MIN_POINTS_PER_LINE, CHART_POINTS // (2 if reduced else 1) // max(dense, 1))

    def html(chart: scalars.Chart) -> str:
        if not any(line.series.finite_values() for line in chart.lines):
            return ""
        figure = chart_figure(chart, epochs, limit, last_steps, x_range)
        return figure.to_html(div_id=f"chart-{chart.key}", **TO_HTML)

    return [(chart, Markup(html(chart))) for chart in plan.charts]


def render_html(
    title: str,
    series: Sequence[scalars.Series],
    plan: scalars.ChartPlan,
    epochs: scalars.Epochs | None,
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
        reduced: Half the points per chart (for logs so large that the full page would exceed
            its size limit).

    Returns:
        The HTML document.
    """
    charts = chart_html(plan, series, epochs, reduced)
    parameters = evaluation.run.parameters.items() if evaluation else ()
    columns, rows = scalar_rows(series)
    return TEMPLATES.get_template("report.html.j2").render(
        png=png_data_uri,
        title=title,
        evaluation=evaluation,
        numbers=headline(evaluation, series, epochs),
        parameters=[(k, v if isinstance(v, str) else json.dumps(v)) for k, v in parameters],
        charts=charts,
        # Only a page with something to draw carries the library.
        plotly_js=Markup(plotly_js()) if any(html for _, html in charts) else "",
        epochs=epochs,
        left_out=[("scalars", plan.tags_left_out), ("runs", plan.runs_left_out)],
        confusion=confusion_table(evaluation.confusion_matrix) if evaluation else {},
        columns=columns,
        rows=rows,
    )
