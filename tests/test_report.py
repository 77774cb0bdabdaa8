"""report_training: charts and tables from real event files written by TensorBoard's writer."""

from __future__ import annotations

import json
import math
import re

import pytest
from torch.utils.tensorboard import SummaryWriter

from kfp_lightning.components.common.errors import UserInputError
from kfp_lightning.components.report_training.component import report_training as component
from kfp_lightning.components.report_training.report import (
    CHART_HEIGHT,
    CHART_WIDTH,
    MARGIN_BOTTOM,
    MARGIN_LEFT,
    MARGIN_RIGHT,
    MARGIN_TOP,
    read_scalars,
    report_training,
)
from tests.component_runner import run_component
from tests.helpers import assert_self_contained_html


@pytest.fixture
def logs(tmp_path):
    directory = tmp_path / "logs"
    writer = SummaryWriter(str(directory))
    for step in range(0, 50, 10):
        writer.add_scalar("train_loss", 2.0 / (step + 1), step)
    writer.add_scalar("val_accuracy", 0.5, 9)
    writer.add_scalar("val_accuracy", 0.75, 19)
    writer.add_scalar("odd<tag>&", float("nan"), 3)
    writer.close()
    # A second run in a subdirectory, as TensorBoard would show it.
    other = SummaryWriter(str(directory / "retry"))
    other.add_scalar("train_loss", 1.0, 0)
    other.close()
    return directory


def test_reads_every_scalar_of_every_run(logs):
    series = {(s.run, s.tag): s for s in read_scalars(logs)}
    assert set(series) == {
        (".", "train_loss"),
        (".", "val_accuracy"),
        (".", "odd<tag>&"),
        ("retry", "train_loss"),
    }
    assert series[(".", "train_loss")].steps == (0, 10, 20, 30, 40)
    assert series[(".", "val_accuracy")].values == (0.5, 0.75)
    # Training curves lead, in a fixed order; other tags follow.
    assert [s.tag for s in read_scalars(logs)][:3] == ["train_loss", "train_loss", "val_accuracy"]


def test_html_markdown_and_metrics(logs, tmp_path):
    metrics = report_training(logs, tmp_path / "r.html", tmp_path / "r.md", title="Run 7")
    html = (tmp_path / "r.html").read_text()
    assert_self_contained_html(html)
    assert html.count("<figure>") == 3  # one chart per tag, runs overlaid
    # Five points of "." and one of "retry" on the train_loss chart.
    train_chart = html[html.index("<figcaption>train_loss") :].split("</figure>")[0]
    (points,) = re.findall(r'<polyline points="([^"]+)"', train_chart)
    assert len(points.split()) == 5
    assert train_chart.count("<circle") == 1
    assert "odd&lt;tag&gt;&amp;" in html
    assert "<tag>" not in html
    assert "no finite values" in html
    assert "<h1>Run 7</h1>" in html

    markdown = (tmp_path / "r.md").read_text()
    assert markdown.startswith("# Run 7\n")
    assert "| val_accuracy | . | 2 | 0.75 | 0.5 | 0.75 |" in markdown

    assert metrics["val_accuracy"] == 0.75
    assert metrics["train_loss"] == pytest.approx(2.0 / 41)
    assert metrics["retry/train_loss"] == 1.0
    assert "odd<tag>&" not in metrics  # NaN is not a metric


def test_chart_points_stay_inside_the_plot(logs, tmp_path):
    report_training(logs, tmp_path / "r.html", tmp_path / "r.md")
    html = (tmp_path / "r.html").read_text()
    for points in re.findall(r'<polyline points="([^"]+)"', html):
        for pair in points.split():
            x, y = map(float, pair.split(","))
            assert MARGIN_LEFT <= x <= CHART_WIDTH - MARGIN_RIGHT
            assert MARGIN_TOP <= y <= CHART_HEIGHT - MARGIN_BOTTOM


def test_empty_and_missing_directories(tmp_path):
    (tmp_path / "empty").mkdir()
    assert report_training(tmp_path / "empty", tmp_path / "r.html", tmp_path / "r.md") == {}
    assert "No scalars" in (tmp_path / "r.html").read_text()
    with pytest.raises(UserInputError, match="tensorboard_logs"):
        report_training(tmp_path / "missing", tmp_path / "x.html", tmp_path / "x.md")
    assert not (tmp_path / "x.html").exists()


def test_component_entry_point(logs, tmp_path):
    process, outputs = run_component(
        component, tmp_path / "run", input_artifacts={"tensorboard_logs": logs}
    )
    assert process.returncode == 0, process.stderr
    assert_self_contained_html(outputs["report"].read_text())
    assert outputs["summary"].read_text().startswith("# MNIST training")
    executor_output = json.loads((tmp_path / "run" / "executor_output.json").read_text())
    logged = executor_output["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert math.isclose(logged["val_accuracy"], 0.75)
