"""Turn a run's event files and evaluation into an HTML report, a Markdown summary and metrics.

The HTML page is what a person opens in the run page: the headline numbers and parameters,
interactive training curves, the confusion matrix and the most confident mistakes. Kubeflow
Pipelines reads an HTML artifact whole and shows it in an iframe with `sandbox="allow-scripts"`
and the page as its `srcdoc`, at least 600 px high and as wide as its card (kubeflow/pipelines,
frontend/src/components/viewers/MetricsVisualizations.tsx and HTMLViewer.tsx; the card is
PlotCard.tsx, half the run page wide by default). Scripts run, but the page has no origin of its
own and must not reach the network, so everything is inline: the Plotly library
(`plotly_js`), each chart as Plotly's own `to_html` writes it (figures.py), the style sheet
and the digit images as `data:` PNGs. The page is rendered from templates/report.html.j2 by
Jinja with autoescape on, so every string from a run (its name, tags, parameters, labels) is
escaped. Without scripts the headline numbers and the tables still show, and a note says the
charts need scripts. Links to `#anchors` are avoided: a srcdoc page resolves them against the
Kubeflow UI's address. The Markdown summary (templates/summary.md.j2), which Kubeflow shows
natively, holds the headline numbers and the last, minimum and maximum of every scalar; the
metrics are the last finite value of every scalar. Lightning's `epoch` counter is bookkeeping
(its last value is an index, one less than the epochs run) and appears in none of them; it
marks the epochs on the charts' step axis. The evaluation is the training step's
`evaluation.json`, in components/common/evaluation.py's format (shared with the writer) and
checked by it: a file that does not match is one line naming the file, the field and what was
expected (the first problem, and how many more there are), so a broken artifact never becomes
a half-drawn page.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import tarfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import jinja2
from markupsafe import Markup
from pydantic import ValidationError

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.evaluation import FILE_NAME, FORMAT, Evaluation
from kfp_lightning.components.common.files import atomic_write_files
from kfp_lightning.components.report_training import scalars
from kfp_lightning.components.report_training.figures import CONFIG, chart_figure, format_value

# The Plotly library the page inlines: plotly.js's official "basic" partial bundle, vendored.
#
# The page draws scatter traces only (figures.py: `go.Scatter`, nothing else), with the layout
# features every plotly.js bundle has (axes, hover, zoom and pan, shapes, annotations, the mode
# bar). plotly.js publishes partial bundles of some trace types each (basic, cartesian, geo,
# gl3d, gl2d, map, finance, strict: "Partial bundles" in plotly/plotly.js dist/README.md);
# `plotly.js-basic-dist-min` (trace modules scatter, bar and pie: its README.md) is the smallest
# that has scatter: 1.19 MB of JavaScript, against the 4.8 MB full bundle that plotly.py ships.
#
# Why it is vendored: plotly.py ships only the full bundle (plotly/package_data/plotly.min.js),
# and nothing may be fetched when the report is written: the tools image is built offline from
# locked wheels (images/build.py) and an air-gapped cluster has no network at all. The file in
# vendor/ is the npm tarball exactly as `npm pack plotly.js-basic-dist-min@4.1.1` fetched it, so
# its sha512 is the registry's `dist.integrity` (`npm view plotly.js-basic-dist-min@4.1.1 dist`)
# and anyone can check it; its MIT licence is beside it. tests/test_report_bundle.py checks that
# digest, and that the bundle's plotly.js version is the one plotly.py bundles, so upgrading
# plotly fails a test until the vendored file and the constants below follow.
#
# To update: `npm pack plotly.js-basic-dist-min@<plotly.js version>` (the version is
# `plotly.offline.get_plotlyjs_version()`) into vendor/, replace the licence file with the
# tarball's LICENSE, the old files removed, and set VERSION and NPM_INTEGRITY below from
# `npm view plotly.js-basic-dist-min@<version> dist.integrity`.
NPM_PACKAGE = "plotly.js-basic-dist-min"
VERSION = "4.1.1"
# `dist.integrity` of the tarball in the npm registry (Subresource Integrity format).
NPM_INTEGRITY = (
    "sha512-1oNF8PeQx2hv/y7tqEVWKD3JGwn/MGEMQ8mL9HUwsaqG9FGy/"
    "OU5FHUHvzqbqxN4mnwZGI9abTiE775C4kkjMQ=="
)
TARBALL = f"{NPM_PACKAGE}-{VERSION}.tgz"  # the name `npm pack` gives it
LICENSE = f"{NPM_PACKAGE}-{VERSION}.LICENSE"
SCRIPT_MEMBER = "package/plotly-basic.min.js"  # the package's `main` (its package.json)


def vendored_file(name: str) -> bytes:
    """The bytes of a file in vendor/ (package data of the installed package)."""
    return resources.files(__package__).joinpath("vendor", name).read_bytes()


@functools.cache
def plotly_js() -> str:
    """The bundle's JavaScript, read from the vendored npm tarball (about 10 ms, once)."""
    with tarfile.open(fileobj=io.BytesIO(vendored_file(TARBALL)), mode="r:gz") as tarball:
        # A regular file of the tarball whose digest tests/test_report_bundle.py checks.
        return tarball.extractfile(SCRIPT_MEMBER).read().decode("utf-8")  # type: ignore[union-attr]


# Charts of tags the report does not know, beyond loss, accuracy and learning rate, and runs
# charted; further tags and runs are listed in the tables only, so the page stays within its
# size limit. Training writes one run; several come from logs gathered by hand.
MAX_OTHER_CHARTS = 8
MAX_RUNS = 4
# The page's limit, the Plotly library (1.2 MB, `plotly_js`) included: a page the run's
# side panel loads quickly. Past it, charts get half the points (`chart_html`, reduced).
MAX_PAGE_BYTES = 1_500_000
# Each chart without the library, which the page inlines once, before the first of them.
TO_HTML = dict(include_plotlyjs=False, full_html=False, config=CONFIG)
# The templates of this package: the page's, templates/report.html.j2, autoescaped; the Markdown
# summary's, not. Jinja caches each once loaded.
TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader(__package__),
    autoescape=jinja2.select_autoescape(["html.j2"]),
    undefined=jinja2.StrictUndefined,
)


def describe(error: ValidationError) -> str:
    """The first problem pydantic found, on one line: `<field path>: <what was expected>`."""
    first = error.errors(include_url=False)[0]
    text, value = first["msg"], first["input"]
    if first["type"] != "inconsistent":  # those messages name their field and value already
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        text = f"{path.lstrip('.') or 'the file'}: {text}"
        # The value of a field, if short (a missing field's input is its parent object).
        if first["loc"] and not isinstance(value, dict | list) and len(repr(value)) < 40:
            text += f", found {value!r}"
    more = error.error_count() - 1
    return " ".join(text.split()) + (f" (and {more} more)" if more else "")


def read_evaluation(evaluation_dir: str | Path) -> Evaluation:
    """Reads the `evaluation.json` of an evaluation artifact.

    Args:
        evaluation_dir: The artifact directory.

    Returns:
        The evaluation.

    Raises:
        UserInputError: The file is missing, is not JSON, or does not match the format; the
            one-line message says which field is wrong.
    """
    path = Path(evaluation_dir) / FILE_NAME
    accepted = f"a directory holding {FILE_NAME} in format {FORMAT}"
    if not path.is_file():
        raise invalid("evaluation", str(evaluation_dir), f"{accepted} (there is no {FILE_NAME})")
    try:
        return Evaluation.model_validate_json(path.read_bytes())
    except ValidationError as err:
        raise invalid("evaluation", str(path), f"{accepted} ({describe(err)})") from None


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


def scalar_rows(series: Sequence[scalars.Series]) -> dict[str, list]:
    """The summary table of every scalar (Lightning's `epoch` counter left out).

    Returns:
        `columns`, the column names, and `rows`: tag, run (only with several runs), number of
        points, last value, minimum and maximum of the finite values.
    """
    several = len(scalars.runs_of(series)) > 1
    columns = ["scalar", *(["run"] if several else []), "points", "last", "min", "max"]
    rows = []
    for s in (s for s in series if s.tag != scalars.EPOCH_TAG):
        finite = s.finite_values()
        low, high = (format_value(min(finite)), format_value(max(finite))) if finite else ("—",) * 2
        run = [s.run] if several else []
        rows.append([s.tag, *run, str(len(s.steps)), format_value(s.last), low, high])
    return {"columns": columns, "rows": rows}


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.3g}" if whole else "—"


def confusion_table(matrix: Sequence[Sequence[int]]) -> dict[str, list]:
    """What the confusion matrix's table shows beside its counts.

    Returns:
        `colours`: each cell's background, the diagonal green by the class's recall, the
        other cells red relative to the largest confusion, so that it stands out; `recall`
        and `precision` of each class and `correct`, all in percent.
    """
    diagonal = [row[i] for i, row in enumerate(matrix)]
    worst = max((n for r, row in enumerate(matrix) for c, n in enumerate(row) if r != c), default=0)
    totals = [sum(row) for row in matrix]
    predicted = [sum(col) for col in zip(*matrix, strict=True)]

    def colour(r: int, c: int) -> str:
        if r == c:
            recall = diagonal[r] / totals[r] if totals[r] else 0
            return f"rgba(46,125,50,{0.12 + 0.5 * recall:.2f})"
        return f"rgba(197,34,31,{0.7 * matrix[r][c] / worst if worst else 0:.2f})"

    return {
        "colours": [[colour(r, c) for c in range(len(row))] for r, row in enumerate(matrix)],
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
        reduced: Half the points per chart (for logs so large that the full page would exceed
            its size limit).
    """
    if not plan.charts:
        return []
    # The last step of each run: of its series, the one ending last is written last.
    last_steps = {s.run: s.steps[-1] for s in sorted(series, key=lambda s: s.steps[-1])}
    charted = [line.series for chart in plan.charts for line in chart.lines]
    x_range = (min(s.steps[0] for s in charted), max(s.steps[-1] for s in charted))
    dense = sum(line.style in scalars.DENSE for chart in plan.charts for line in chart.lines)
    # 2000 points per page, shared among the dense lines of every chart (at least 20 each):
    # with the library's 1.2 MB and each smoothing choice's values, they keep a page under
    # 1.5 MB (MAX_PAGE_BYTES).
    limit = max(20, 2000 // (2 if reduced else 1) // max(dense, 1))

    def html(chart: scalars.Chart) -> str:
        if not any(line.series.finite_values() for line in chart.lines):
            return ""
        figure = chart_figure(chart, epochs, limit, last_steps, x_range)
        return figure.to_html(div_id=f"chart-{chart.key}", **TO_HTML)

    return [(chart, Markup(html(chart))) for chart in plan.charts]


def write_training_report(
    tensorboard_logs_dir: str | Path,
    evaluation_dir: str | Path | None,
    html_path: str | Path,
    markdown_path: str | Path,
    title: str = "MNIST training",
) -> dict[str, float]:
    """Writes the HTML report and the Markdown summary of a run, and returns its metrics.

    Both files are written atomically, and only once everything has been read and checked: a
    malformed input, or a fault while writing either of them, leaves neither behind.

    Args:
        tensorboard_logs_dir: The run's TensorBoard log directory.
        evaluation_dir: The training step's evaluation artifact (a directory holding
            `evaluation.json`); None leaves the confusion matrix and images out.
        html_path: File to write the HTML report to.
        markdown_path: File to write the Markdown summary to.
        title: Heading of both reports.

    Returns:
        The last value of every scalar that is finite (NaN and infinities are left out), named
        by tag; a run in a subfolder of the logs prefixes its tags with "<folder>/".

    Raises:
        UserInputError: The logs are not a directory, or the evaluation is missing or malformed.
        WriteError: A report file cannot be written (a full disk, a read-only folder...).
    """
    series = scalars.read_scalars(tensorboard_logs_dir)
    evaluation = read_evaluation(evaluation_dir) if evaluation_dir is not None else None
    epochs = scalars.epochs_of(series)
    plan = scalars.charts_of(series, MAX_OTHER_CHARTS, MAX_RUNS)
    parameters = evaluation.run.parameters.items() if evaluation else ()
    # All that the templates show but the charts (the Markdown shows some of it).
    context = dict(
        title=title,
        evaluation=evaluation,
        numbers=headline(evaluation, series, epochs),
        series=series,
        **scalar_rows(series),
        png=png_data_uri,
        parameters=[(k, v if isinstance(v, str) else json.dumps(v)) for k, v in parameters],
        epochs=epochs,
        left_out=[("scalars", plan.tags_left_out), ("runs", plan.runs_left_out)],
        confusion=confusion_table(evaluation.confusion_matrix) if evaluation else {},
    )
    for reduced in (False, True):  # half the points per chart where the page is over its limit
        charts = chart_html(plan, series, epochs, reduced)
        # Only a page with something to draw carries the library.
        library = Markup(plotly_js()) if any(html for _, html in charts) else ""
        page = TEMPLATES.get_template("report.html.j2").render(
            context, charts=charts, plotly_js=library
        )
        if len(page.encode("utf-8")) <= MAX_PAGE_BYTES:
            break
    markdown = TEMPLATES.get_template("summary.md.j2").render(context)
    # Together: a fault writing either (a full disk) leaves neither behind.
    atomic_write_files({html_path: page, markdown_path: markdown})
    return {
        (s.tag if s.run == scalars.TOP_RUN else f"{s.run}/{s.tag}"): s.last
        for s in series
        if s.tag != scalars.EPOCH_TAG and math.isfinite(s.last)
    }
