"""A run's scalars, read from its TensorBoard event files and grouped into the report's charts.

Event files are read with TensorBoard's own reader, so every scalar appears, including tags added
later. The report knows the training tags (`loss/train`, `loss/val`, `accuracy/val`,
`loss/test`, `accuracy/test`, `learning_rate`) and charts them together by quantity: training
and validation loss on one chart, accuracy on another. Older runs logged `train_loss`,
`val_loss`, ...; those names are read as aliases. Lightning's `epoch` scalar (the epoch index,
logged beside every other value) is bookkeeping: it marks the epochs on the step axis and is
never charted. Any other tag gets a chart of its own, after the known ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.scalars import read_event_scalars

EPOCH_TAG = "epoch"
# Tags of runs logged before the quantity/split naming, and what they are now called.
ALIASES = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_accuracy": "accuracy/val",
    "test_loss": "loss/test",
    "test_accuracy": "accuracy/test",
}
TOP_RUN = "."

# How a series is drawn. STEP: a per-step curve, drawn raw and smoothed. EPOCH: one point per
# epoch (already a mean over the whole validation set), drawn unsmoothed with markers. FINAL: a
# single value at the end of training. SCHEDULE: a value that holds until the next one.
STEP, EPOCH, FINAL, SCHEDULE = "step", "epoch", "final", "schedule"
# The styles of lines of many points (per step), which charts thin to share their points.
DENSE = (STEP, SCHEDULE)
# The colour of each line of the known charts, by its label (the palette's first colours, in
# this order), the same on every chart; further runs of a chart are dashed.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#8c564b")
COLOURS = dict(zip(("train", "validation", "test", "learning rate"), PALETTE, strict=False))
DASHES = ("solid", "dash", "dot", "dashdot")


@dataclasses.dataclass(frozen=True)
class ChartKind:
    """One known chart: its title, y axis and the tags it draws.

    Attributes:
        key: Identifier, unique among charts (used in element ids).
        title: Heading of the chart.
        lines: (tag, legend label, drawing style) of each line, in drawing order.
        percent: The values are fractions, shown as percentages.
    """

    key: str
    title: str
    lines: tuple[tuple[str, str, str], ...]
    percent: bool = False


def _by_split(quantity: str) -> tuple[tuple[str, str, str], ...]:
    # A quantity's chart: training per step, validation per epoch, the test value once.
    splits = (("train", "train", STEP), ("val", "validation", EPOCH), ("test", "test", FINAL))
    return tuple((f"{quantity}/{split}", label, style) for split, label, style in splits)


KNOWN_CHARTS = (
    ChartKind("loss", "Loss", _by_split("loss")),
    ChartKind("accuracy", "Accuracy", _by_split("accuracy"), percent=True),
    ChartKind("learning_rate", "Learning rate", (("learning_rate", "learning rate", SCHEDULE),)),
)
KNOWN_TAGS = {tag for chart in KNOWN_CHARTS for tag, _, _ in chart.lines}


@dataclasses.dataclass(frozen=True)
class Series:
    """One scalar tag of one run: steps and values in step order (last write wins per step).

    Attributes:
        run: Folder of the event files, relative to the logs directory ("." for the top).
        tag: The tag as logged.
        steps: Global steps, increasing.
        values: The value at each step; may hold NaN or infinities.
    """

    run: str
    tag: str
    steps: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def name(self) -> str:
        """The tag under its current name (an old alias resolved)."""
        return ALIASES.get(self.tag, self.tag)

    @property
    def last(self) -> float:
        """The value at the highest step."""
        return self.values[-1]

    def finite_values(self) -> list[float]:
        """The values that are neither NaN nor infinite."""
        return [v for v in self.values if math.isfinite(v)]


@dataclasses.dataclass(frozen=True)
class Line:
    """A series as one chart draws it.

    Attributes:
        series: The data.
        label: Legend entry.
        style: STEP, EPOCH, FINAL or SCHEDULE.
        colour: CSS colour.
        dash: "solid", "dash", "dot" or "dashdot" (Plotly's names).
    """

    series: Series
    label: str
    style: str
    colour: str = PALETTE[0]
    dash: str = "solid"


@dataclasses.dataclass(frozen=True)
class Chart:
    """One chart of the report.

    Attributes:
        key: Identifier, unique in the report, safe in an element id.
        title: Heading.
        percent: Values are fractions, shown as percentages.
        lines: What it draws, in order.
    """

    key: str
    title: str
    percent: bool
    lines: tuple[Line, ...]


@dataclasses.dataclass(frozen=True)
class Epochs:
    """Where each epoch ends on the step axis, from Lightning's `epoch` scalar.

    Attributes:
        first_step: The first logged step.
        ends: The last logged step of each epoch, in epoch order (epoch 1 first).
    """

    first_step: int
    ends: tuple[int, ...]

    def of_step(self, step: int) -> int:
        """The 1-based epoch a step belongs to (the last one for steps past its end)."""
        return next((e for e, end in enumerate(self.ends, start=1) if step <= end), len(self.ends))


def read_scalars(logs_dir: str | Path) -> list[Series]:
    """Reads every scalar of every event file under `logs_dir`.

    Args:
        logs_dir: A TensorBoard log directory; each folder holding event files is one run.
            Several event files in one folder (e.g. a resumed run) make one run. Runs are
            named by their path relative to the deepest folder holding them all, so the only
            run, wherever it lies, is ".", and with a second run in a subfolder, the first is
            "." and the second its subfolder.

    Returns:
        The series, sorted by run then tag.

    Raises:
        UserInputError: `logs_dir` is not a directory.
    """
    logs_dir = Path(logs_dir)
    if not logs_dir.is_dir():
        raise invalid("tensorboard_logs", str(logs_dir), "a directory of TensorBoard event files")
    runs = read_event_scalars(logs_dir)
    common = Path(os.path.commonpath(list(runs))) if runs else logs_dir
    series = []
    for run_dir, tags in runs.items():
        run = run_dir.relative_to(common).as_posix()
        for tag, by_step in tags.items():
            steps = tuple(sorted(by_step))
            series.append(Series(run, tag, steps, tuple(by_step[s] for s in steps)))
    return sorted(series, key=lambda s: (s.run != TOP_RUN, s.run, s.tag))


def runs_of(series: Iterable[Series]) -> list[str]:
    """The runs in report order: the top folder first, then the others by name."""
    return sorted({s.run for s in series}, key=lambda run: (run != TOP_RUN, run))


def epochs_of(series: Sequence[Series]) -> Epochs | None:
    """The epochs of the first run that logged Lightning's `epoch` scalar, if any.

    Lightning logs the counter beside every value, the test pass's too, which runs after the
    last epoch with the counter one past it; an epoch counts only where something other than
    a test value was logged, so that one is not taken for an extra epoch.
    """
    final_tags = {tag for chart in KNOWN_CHARTS for tag, _, style in chart.lines if style == FINAL}
    counters = [s for s in series if s.tag == EPOCH_TAG]
    for counter in sorted(counters, key=lambda s: (s.run != TOP_RUN, s.run)):  # see runs_of
        of_run = [s for s in series if s.run == counter.run and s.tag != EPOCH_TAG]
        trained = {step for s in of_run if s.name not in final_tags for step in s.steps}
        ends = {
            int(value): step  # the epoch's last step, as steps increase
            for step, value in zip(counter.steps, counter.values, strict=True)
            if math.isfinite(value) and step in trained
        }
        if ends:
            first = min(s for s in counter.steps if s in trained)
            return Epochs(first, tuple(ends[e] for e in sorted(ends)))
    return None


@dataclasses.dataclass(frozen=True)
class ChartPlan:
    """The report's charts, and what was left out of them for want of room.

    Attributes:
        charts: The charts, in report order.
        tags_left_out: Tags not charted (listed in the tables only).
        runs_left_out: Runs not charted (listed in the tables only).
    """

    charts: tuple[Chart, ...]
    tags_left_out: tuple[str, ...]
    runs_left_out: tuple[str, ...]


def charts_of(series: Sequence[Series], max_other_charts: int, max_runs: int) -> ChartPlan:
    """Groups the series into the report's charts.

    Known tags go to their chart (loss, accuracy, learning rate); every other tag except
    `epoch` gets a chart of its own, alphabetically after them. With several runs, each chart
    draws every run's lines, labelled with the run. The limits keep the page within its size
    whatever was logged; what they leave out is still in the summary tables.

    Args:
        series: Every series read (see `read_scalars`).
        max_other_charts: The most charts of tags other than the known ones.
        max_runs: The most runs charted (the first ones, see `runs_of`).

    Returns:
        The charts and what was left out.
    """
    all_runs = runs_of(series)
    runs = all_runs[:max_runs]
    by_key = {(s.run, s.name): s for s in series}

    def label(run: str, text: str) -> str:
        return text if len(all_runs) == 1 else f"{text} ({run})"

    charts = []
    for kind in KNOWN_CHARTS:
        lines = tuple(
            Line(by_key[(run, tag)], label(run, text), style, COLOURS[text], dash)
            for run, dash in zip(runs, itertools.cycle(DASHES))
            for tag, text, style in kind.lines
            if (run, tag) in by_key
        )
        if lines:
            charts.append(Chart(kind.key, kind.title, kind.percent, lines))
    others = sorted({s.name for s in series if s.run in runs} - KNOWN_TAGS - {EPOCH_TAG})
    used = {chart.key for chart in charts}
    for tag in others[:max_other_charts]:
        key = re.sub(r"[^A-Za-z0-9_-]+", "-", tag).strip("-") or "chart"  # safe in an element id
        while key in used:
            key += "-"
        used.add(key)
        lines = tuple(
            Line(by_key[(run, tag)], label(run, tag), STEP, colour)
            for run, colour in zip(runs, itertools.cycle(PALETTE))
            if (run, tag) in by_key
        )
        charts.append(Chart(key, tag, False, lines))
    return ChartPlan(tuple(charts), tuple(others[max_other_charts:]), tuple(all_runs[max_runs:]))


def thin(steps: Sequence[int], values: Sequence[float], limit: int) -> tuple[list, list]:
    """At most `limit` points of a series, evenly spaced by index, first and last kept.

    TensorBoard itself charts at most 1000 points of a scalar (its server's
    `DEFAULT_TENSOR_SIZE_GUIDANCE`, tensorboard/backend/event_processing/data_ingester.py);
    the report keeps a similar number so that its page stays within its size limit.

    Args:
        steps: Steps of the series.
        values: Values of the series, as long as `steps`.
        limit: The most points to keep, at least 2.

    Returns:
        The kept steps and values.
    """
    count = len(steps)
    if count <= limit:
        return list(steps), list(values)
    picks = sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})
    return [steps[i] for i in picks], [values[i] for i in picks]
