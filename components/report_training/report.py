"""Turn a run's event files and evaluation into an HTML report, a Markdown summary and metrics.

The HTML page (page.py) is what a person opens in the run page: the headline numbers and
parameters, interactive training curves, the confusion matrix and the most confident mistakes.
The Markdown summary, which Kubeflow shows natively, holds the headline numbers and the last,
minimum and maximum of every scalar; the metrics are the last finite value of every scalar.
Lightning's `epoch` counter is bookkeeping (its last value is an index, one less than the
epochs run) and appears in none of them; it marks the epochs on the charts' step axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from kfp_lightning.components.common.evaluation import Evaluation
from kfp_lightning.components.common.files import atomic_write_files
from kfp_lightning.components.report_training import scalars
from kfp_lightning.components.report_training.evaluation import read_evaluation
from kfp_lightning.components.report_training.page import headline, render_html, scalar_rows

# Charts of tags the report does not know, beyond loss, accuracy and learning rate, and runs
# charted; further tags and runs are listed in the tables only, so the page stays within its
# size limit. Training writes one run; several come from logs gathered by hand.
MAX_OTHER_CHARTS = 8
MAX_RUNS = 4
# The page's limit, the Plotly library (1.2 MB, plotly_bundle.py) included: a page the run's
# side panel loads quickly. Past it, charts get half the points (page.render_html, reduced).
MAX_PAGE_BYTES = 1_500_000


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(map(_markdown_cell, cells)) + " |"


def render_markdown(
    title: str,
    series: Sequence[scalars.Series],
    epochs: scalars.Epochs | None,
    evaluation: Evaluation | None,
) -> str:
    """The Markdown summary: the run's name, its headline numbers and a table of the scalars.

    Args:
        title: Heading.
        series: Every scalar series.
        epochs: The epochs found in the scalars, if any.
        evaluation: The evaluation artifact's content, if any.

    Returns:
        The Markdown text.
    """
    lines = [f"# {title}", ""]
    if evaluation is not None:
        lines += [_markdown_cell(evaluation.run.name), ""]
    if numbers := headline(evaluation, series, epochs):
        labels, texts = zip(*numbers, strict=True)
        lines += [_markdown_row(labels), "|" + "---|" * len(numbers), _markdown_row(texts), ""]
    if not series:
        return "\n".join([*lines, "No scalars were found in the event files.", ""])
    columns, rows = scalar_rows(series)
    align = ["---" if c in ("scalar", "run") else "---:" for c in columns]
    lines += [_markdown_row(columns), "|" + "|".join(align) + "|", *map(_markdown_row, rows)]
    return "\n".join([*lines, ""])


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
    page = render_html(title, series, plan, epochs, evaluation)
    if len(page.encode("utf-8")) > MAX_PAGE_BYTES:
        page = render_html(title, series, plan, epochs, evaluation, reduced=True)
    markdown = render_markdown(title, series, epochs, evaluation)
    # Together: a fault writing either (a full disk) leaves neither behind.
    atomic_write_files({html_path: page, markdown_path: markdown})
    return {
        (s.tag if s.run == scalars.TOP_RUN else f"{s.run}/{s.tag}"): s.last
        for s in series
        if s.tag != scalars.EPOCH_TAG and math.isfinite(s.last)
    }
