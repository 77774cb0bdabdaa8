"""Turn a run's event files and evaluation into an HTML report, a Markdown summary and metrics.

The HTML page (page.py) is what a person opens in the run page: the headline numbers and
parameters, interactive training curves, the confusion matrix and the most confident mistakes.
The Markdown summary, which Kubeflow shows natively, holds the headline numbers and the last,
minimum and maximum of every scalar; the metrics are the last finite value of every scalar.
Lightning's `epoch` counter is bookkeeping (its last value is an index, one less than the
epochs run) and appears in none of them; it marks the epochs on the charts' step axis. The
evaluation is the training step's `evaluation.json`, in components/common/evaluation.py's format
(shared with the writer) and checked by it: a file that does not match is one line naming the
file, the field and what was expected (the first problem, and how many more there are), so a
broken artifact never becomes a half-drawn page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.evaluation import FILE_NAME, FORMAT, Evaluation
from kfp_lightning.components.common.files import atomic_write_files
from kfp_lightning.components.report_training import scalars
from kfp_lightning.components.report_training.page import (
    TEMPLATES,
    headline,
    render_html,
    scalar_rows,
)

# Charts of tags the report does not know, beyond loss, accuracy and learning rate, and runs
# charted; further tags and runs are listed in the tables only, so the page stays within its
# size limit. Training writes one run; several come from logs gathered by hand.
MAX_OTHER_CHARTS = 8
MAX_RUNS = 4
# The page's limit, the Plotly library (1.2 MB, plotly_bundle.py) included: a page the run's
# side panel loads quickly. Past it, charts get half the points (page.render_html, reduced).
MAX_PAGE_BYTES = 1_500_000


def _field_path(location: tuple[int | str, ...]) -> str:
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)
    return path.lstrip(".") or "the file"


def describe(error: ValidationError) -> str:
    """The first problem pydantic found, on one line: `<field path>: <what was expected>`."""
    first = error.errors(include_url=False)[0]
    text, value = first["msg"], first["input"]
    if first["type"] != "inconsistent":  # those messages name their field and value already
        text = f"{_field_path(first['loc'])}: {text}"
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
        The Markdown text (templates/summary.md.j2).
    """
    columns, rows = scalar_rows(series)
    return TEMPLATES.get_template("summary.md.j2").render(
        title=title,
        evaluation=evaluation,
        numbers=headline(evaluation, series, epochs),
        series=series,
        columns=columns,
        rows=rows,
    )


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
