"""report_training: the report, summary and metrics of real event files and evaluation files.

Event files come from TensorBoard's own writer (hand-made schedules, old and new tag names) and
from a real training run; the page is checked here for content, size, escaping and the charts'
Plotly figures (menus, epoch bands, labels, axes), and in a real browser by
test_report_browser.py.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path

import pytest
from markupsafe import escape
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from kfp_lightning.components.common.errors import UserInputError
from kfp_lightning.components.report_training import figures
from kfp_lightning.components.report_training.component import report_training as component
from kfp_lightning.components.report_training.report import (
    MAX_OTHER_CHARTS,
    MAX_RUNS,
    plotly_js,
    read_evaluation,
    write_training_report,
)
from kfp_lightning.components.report_training.scalars import (
    EPOCH,
    FINAL,
    SCHEDULE,
    STEP,
    Epochs,
    charts_of,
    epochs_of,
    read_scalars,
    thin,
)
from tests.component_runner import run_component
from tests.helpers import assert_self_contained_html
from tests.report_fixtures import (
    evaluation_document,
    page_figures,
    tensorboard_smoothing,
    trained_run,
    write_classic_run,
    write_evaluation,
    write_one_epoch_run,
    write_training_logs,
)

# What the run page loads inline, whatever was logged (issue 19: a 4.75 MB page for one epoch).
MAX_PAGE_BYTES = 1_500_000


def decode_png(uri: str) -> list[list[int]]:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))
    assert image.format == "PNG"
    assert image.mode == "L"
    width, height = image.size
    data = list(image.getdata())
    return [data[y * width : (y + 1) * width] for y in range(height)]


@pytest.fixture
def logs(tmp_path):
    """Three epochs of the new tags, an unknown tag with a NaN, and a second run."""
    directory = tmp_path / "logs"
    written = write_training_logs(
        directory, epochs=3, steps_per_epoch=20, log_every=5, every_step_first=10
    )
    extra = SummaryWriter(str(directory))
    extra.add_scalar("grad_norm", 1.5, 0)
    extra.add_scalar("grad_norm", float("nan"), 30)
    extra.add_scalar("odd<tag>&", float("inf"), 3)
    extra.close()
    retry = SummaryWriter(str(directory / "retry"))
    retry.add_scalar("loss/train", 1.0, 0)
    retry.add_scalar("loss/train", 0.5, 10)
    retry.close()
    return directory, written


@pytest.fixture
def evaluation(tmp_path):
    return write_evaluation(tmp_path / "evaluation", evaluation_document())


def test_reads_every_scalar_of_every_run(logs):
    directory, written = logs
    series = {(s.run, s.tag): s for s in read_scalars(directory)}
    assert set(series) == {(".", tag) for tag in written} | {
        (".", "grad_norm"),
        (".", "odd<tag>&"),
        ("retry", "loss/train"),
    }
    assert list(series[(".", "loss/train")].steps) == [s for s, _ in written["loss/train"]]
    assert series[(".", "accuracy/val")].values == pytest.approx(
        [v for _, v in written["accuracy/val"]]
    )
    assert series[("retry", "loss/train")].values == (1.0, 0.5)


def test_the_only_run_is_named_dot_wherever_it_lies(tmp_path):
    # Training writes its events into a folder named after the run.
    writer = SummaryWriter(str(tmp_path / "logs" / "mnist-run-7"))
    writer.add_scalar("loss/train", 1.0, 0)
    writer.close()
    (series,) = read_scalars(tmp_path / "logs")
    assert series.run == "."


def test_charts_group_training_and_validation_and_skip_the_epoch_counter(logs):
    directory, _ = logs
    plan = charts_of(read_scalars(directory), MAX_OTHER_CHARTS, MAX_RUNS)
    assert (plan.tags_left_out, plan.runs_left_out) == ((), ())
    charts = plan.charts
    assert [c.key for c in charts] == ["loss", "accuracy", "learning_rate", "grad_norm", "odd-tag"]
    loss = charts[0]
    assert [(line.label, line.style) for line in loss.lines] == [
        ("train (.)", STEP),
        ("validation (.)", EPOCH),
        ("test (.)", FINAL),
        ("train (retry)", STEP),
    ]
    # The same split has one colour on every chart; the second run is dashed.
    assert loss.lines[1].colour == charts[1].lines[0].colour  # validation
    assert loss.lines[2].colour == charts[1].lines[1].colour  # test
    assert len({line.colour for line in loss.lines[:3]}) == 3
    assert loss.lines[0].colour == loss.lines[3].colour
    assert (loss.lines[0].dash, loss.lines[3].dash) == ("solid", "dash")
    assert [(line.label, line.style) for line in charts[1].lines] == [
        ("validation (.)", EPOCH),
        ("test (.)", FINAL),
    ]
    assert charts[1].percent
    assert [line.style for line in charts[2].lines] == [SCHEDULE]
    assert all(line.series.tag != "epoch" for chart in charts for line in chart.lines)


def test_old_tag_names_chart_as_the_new_ones(tmp_path):
    write_training_logs(tmp_path / "old", 2, 20, 5, old_names=True)
    write_training_logs(tmp_path / "new", 2, 20, 5)
    old = charts_of(read_scalars(tmp_path / "old"), MAX_OTHER_CHARTS, MAX_RUNS).charts
    new = charts_of(read_scalars(tmp_path / "new"), MAX_OTHER_CHARTS, MAX_RUNS).charts

    def shape(charts):
        return [
            (c.key, [(line.label, line.style, line.series.values) for line in c.lines])
            for c in charts
        ]

    assert shape(old) == shape(new)
    assert [line.series.tag for line in old[0].lines] == ["train_loss", "val_loss", "test_loss"]


def test_epochs_come_from_lightnings_counter(logs):
    directory, _ = logs
    epochs = epochs_of(read_scalars(directory))
    assert epochs.first_step == 0
    assert epochs.ends == (19, 39, 59)
    assert [epochs.of_step(s) for s in (0, 19, 20, 59, 80)] == [1, 1, 2, 3, 3]
    assert epochs_of([]) is None


def test_thin_keeps_the_ends_and_at_most_the_limit():
    steps = list(range(0, 10_000, 7))
    kept, values = thin(steps, [float(s) for s in steps], 100)
    assert len(kept) == 100
    assert (kept[0], kept[-1]) == (0, steps[-1])
    assert kept == sorted(kept)
    assert values == [float(s) for s in kept]
    assert thin([1, 2], [3.0, 4.0], 100) == ([1, 2], [3.0, 4.0])


def test_report_page_summary_and_metrics(logs, evaluation, tmp_path):
    directory, written = logs
    metrics = write_training_report(
        directory, evaluation, tmp_path / "r.html", tmp_path / "r.md", title="Run <7>"
    )
    page = (tmp_path / "r.html").read_text()
    assert_self_contained_html(page)
    charts = page_figures(page)
    # The library, then each chart as Plotly's to_html writes it: nothing else is a script.
    assert page.count("<script") == 1 + len(charts)
    assert page.count(plotly_js()) == 1
    # Raw and smoothed train loss of both runs, validation and test.
    loss = charts["chart-loss"]["data"]
    assert [trace["name"] for trace in loss] == [
        "train (.) (raw)",
        "train (.)",
        "validation (.)",
        "test (.)",
        "train (retry) (raw)",
        "train (retry)",
    ]
    assert loss[0]["x"] == [s for s, _ in written["loss/train"]]
    assert loss[0]["y"] == pytest.approx([v for _, v in written["loss/train"]], rel=1e-4)
    # Drawn smoothed as TensorBoard first shows it; the hover names the epoch of each point.
    assert loss[1]["y"] == pytest.approx(tensorboard_smoothing(loss[0]["y"], 0.6), rel=1e-4)
    assert loss[0]["customdata"][:3] == [1, 1, 1]
    assert loss[0]["customdata"][-1] == 3
    assert "epoch %{customdata}" in loss[0]["hovertemplate"]
    # Epochs: the second of three shaded, all three numbered above the plot.
    layout = charts["chart-loss"]["layout"]
    (band,) = layout["shapes"]
    assert (band["type"], band["path"], band["xref"], band["yref"]) == (
        "path",
        "M19,0H39V1H19Z",  # a rectangle from step 19 to 39, the plot's height
        "x",
        "paper",
    )
    assert [a["text"] for a in layout["annotations"]] == ["1", "2", "3"]
    # The tag without a finite value has no chart to draw (see below).
    assert [len(c["data"]) for c in charts.values()] == [6, 2, 1, 2]
    # The learning rate holds until the run's last step.
    lr = charts["chart-learning_rate"]["data"][0]
    assert lr["x"] == [0, 20, 40, 60]
    assert lr["line"]["shape"] == "hv"
    # Non-finite values are gaps (JSON null), never NaN in the page.
    assert charts["chart-grad_norm"]["data"][0]["y"] == [1.5, None]
    assert "chart-odd-tag" not in charts

    # The chart without finite values says so rather than showing an empty plot.
    assert re.search(
        r'<figure class="chart" id="figure-chart-odd-tag"><figcaption>.*?</figcaption>'
        r'<p class="empty">No finite values to draw \(NaN or infinite\); see the table.</p>'
        r"</figure>",
        page,
    )
    assert "odd&lt;tag&gt;&amp;" in page
    assert "<tag>" not in page
    assert "<h1>Run &lt;7&gt;</h1>" in page

    # Header: headline numbers and parameters from the evaluation.
    for text in ("99.24%", "0.0252", "13 min 32 s", "1,034", "NVIDIA H200"):
        assert f"<dd>{text}</dd>" in page
    assert "mnist-lightning 2026-11-29 15:04 (run 3f2a)" in page
    assert "<summary>Parameters (4)<span>: epochs 14, batch_size 64," in page
    assert "<span>optimizer <b>adadelta</b></span>" in page

    # Confusion matrix: recall of 4 is 990 / 996, precision of 9 is 990 / 996.
    table = re.search(r'<table class="cm">.*?</table>', page, re.DOTALL).group(0)
    assert table.count("<tr>") == 12
    assert re.search(
        r'>990</td>(<td [^>]*></td>)*<td [^>]*>6</td><td class="total">99.4</td>', table
    )
    assert "<td>99.4</td>" in table
    assert "99.9% correct" in page

    # Mistakes, then examples: each image decodes to the pixels it was given.
    document = evaluation_document()
    tiles = re.findall(r'<figure class="tile" title="([^"]*)"><img src="([^"]+)"', page)
    assert len(tiles) == 24 + 20
    expected = document["mistakes"] + document["examples"]
    for (title, uri), sample in zip(tiles, expected, strict=True):
        assert decode_png(uri) == sample["pixels"]
        assert f"image {sample['index']}:" in title
    assert '4 → <span class="wrong">9</span><br>99.0%' in page

    markdown = (tmp_path / "r.md").read_text()
    assert markdown.startswith("# Run <7>\n")
    assert "| 99.24% | 0.0252 | 14 | 13 min 32 s | 1,034 | NVIDIA H200 |" in markdown
    assert "| accuracy/val | . | 3 | 0.9765 | 0.89 | 0.9765 |" in markdown
    assert "| grad_norm | . | 2 | nan | 1.5 | 1.5 |" in markdown
    assert "| epoch |" not in markdown

    assert metrics["accuracy/val"] == pytest.approx(written["accuracy/val"][-1][1])
    assert metrics["loss/train"] == pytest.approx(written["loss/train"][-1][1])
    assert metrics["retry/loss/train"] == 0.5
    # Not finite, or bookkeeping: not a metric.
    assert {"grad_norm", "odd<tag>&", "epoch"}.isdisjoint(metrics)


def test_without_scripts_the_page_says_the_charts_need_them(logs, evaluation, tmp_path):
    directory, _ = logs
    write_training_report(directory, evaluation, tmp_path / "r.html", tmp_path / "r.md")
    page = (tmp_path / "r.html").read_text()
    # Without scripts, the charts' part is hidden (CSS's `scripting` media feature) and one
    # note takes its place; the header and the tables are plain HTML outside it.
    assert "@media (scripting:none){.js-only{display:none}}" in page
    assert re.findall(r"<noscript>(.*?)</noscript>", page, re.DOTALL) == [
        "The charts need JavaScript; the table of scalars below has their values."
    ]
    hidden = re.search(r'<div class="js-only">.*?</section>', page, re.DOTALL).group(0)
    assert len(page_figures(page)) == 4
    assert all(f'id="{chart_id}"' in hidden for chart_id in page_figures(page))
    for shown in ('<dl class="stats">', '<table class="cm">', '<figure class="tile"', "<th>max"):
        assert shown in page
        assert shown not in hidden


def test_each_chart_has_a_log_scale_menu_and_a_smoothing_menu(logs, evaluation, tmp_path):
    directory, _ = logs
    write_training_report(directory, evaluation, tmp_path / "r.html", tmp_path / "r.md")
    charts = page_figures((tmp_path / "r.html").read_text())
    for chart_id, chart in charts.items():
        scale, *smoothing = chart["layout"]["updatemenus"]
        assert [b["label"] for b in scale["buttons"]] == ["linear scale", "log scale"]
        # Each button switches the value axis, with the autorange options of its type.
        for button, kind in zip(scale["buttons"], ("linear", "log"), strict=True):
            assert button["method"] == "relayout"
            (change,) = button["args"]
            assert change["yaxis.type"] == kind
            assert change["yaxis.autorange"] is True
        linear = scale["buttons"][0]["args"][0]["yaxis.autorangeoptions"]
        assert linear == chart["layout"]["yaxis"]["autorangeoptions"]
        # Only charts with per-step lines smooth.
        has_raw = any(trace["name"].endswith("(raw)") for trace in chart["data"])
        assert len(smoothing) == has_raw, chart_id
    # An accuracy's log axis keeps its 100% cap; a loss's linear axis starts at 0.
    accuracy = charts["chart-accuracy"]["layout"]["updatemenus"][0]["buttons"]
    assert accuracy[1]["args"][0]["yaxis.autorangeoptions"] == {"clipmax": 1}
    assert accuracy[0]["args"][0]["yaxis.autorangeoptions"] == {"clipmin": 0, "clipmax": 1}

    # The smoothing menu swaps in each choice's values, computed for every smoothed trace.
    loss = charts["chart-loss"]
    (menu,) = loss["layout"]["updatemenus"][1:]
    assert [b["label"] for b in menu["buttons"]] == [
        "no smoothing",
        "smoothing 0.6",
        "smoothing 0.9",
        "smoothing 0.99",
    ]
    assert menu["active"] == 1  # TensorBoard's default, as drawn
    raws = [loss["data"][0]["y"], loss["data"][4]["y"]]
    for button, weight in zip(menu["buttons"], (0, 0.6, 0.9, 0.99), strict=True):
        assert button["method"] == "restyle"
        values, traces = button["args"]
        assert traces == [1, 5]
        for smoothed, raw in zip(values["y"], raws, strict=True):
            assert smoothed == pytest.approx(tensorboard_smoothing(raw, weight), rel=1e-4)
    assert menu["buttons"][0]["args"][0]["y"] == raws


def test_epoch_bands_and_numbers():
    shapes, numbers = figures.epoch_marks(Epochs(0, tuple(range(9, 400, 10))))  # 40 epochs
    (band,) = shapes
    # Epochs 2, 4, ... 40 shaded: 20 rectangles in one path, below the lines.
    assert band["path"].startswith("M9,0H19V1H9ZM29,0H39V1H29Z")
    assert band["path"].count("Z") == 20
    assert band["layer"] == "below"
    # Every other epoch numbered, at its middle: at most 20 numbers.
    assert [n["text"] for n in numbers] == [str(e) for e in range(1, 41, 2)]
    assert numbers[1] == {"x": 24.0, "text": "3"}  # epoch 3: steps 19 to 29
    # Past MAX_BANDS, bands would be thinner than a line: none.
    many = Epochs(0, tuple(range(1, figures.MAX_BANDS + 2)))
    assert figures.epoch_marks(many) == ([], [])
    assert figures.epoch_marks(None) == ([], [])


def test_smoothing_is_tensorboards():
    values = [1.0, None, 3.0, 2.0]
    # Debiased: the first value is itself, not pulled towards 0; gaps stay gaps.
    smoothed = figures.smooth(values, 0.6)
    assert smoothed[1] is None
    assert smoothed[::2] == pytest.approx([1.0, 2.25], rel=1e-4)
    assert smoothed[3] == pytest.approx(2.1224, rel=1e-4)
    assert figures.smooth(values, 0) == values
    assert figures.smooth([5.0, 5.0, None], 0.9) == [5.0, 5.0, None]  # a constant stays


def test_hostile_strings_are_text_not_markup(logs, tmp_path):
    directory, _ = logs
    # (No src= or href= in it: the self-contained check would take the text for a link.)
    attack = '</script><script>alert("x")</script><b onmouseover=alert(1)>bold</b>'
    writer = SummaryWriter(str(directory))
    writer.add_scalar(f"{attack}/<i>", 1.0, 0)
    writer.close()
    run = {**evaluation_document()["run"], "name": attack, "device": attack}
    run["parameters"] = {attack: attack}
    document = evaluation_document(run=run)
    document["labels"][3] = attack
    document["split"] = attack
    evaluation = write_evaluation(tmp_path / "evaluation", document)
    write_training_report(directory, evaluation, tmp_path / "r.html", tmp_path / "r.md", attack)
    page = (tmp_path / "r.html").read_text()
    assert_self_contained_html(page)
    assert '<script>alert("x")' not in page
    assert "<b onmouseover" not in page
    assert "<i>" not in page
    escaped = str(escape(attack))
    assert f"<h1>{escaped}</h1>" in page
    assert f'<p class="run">{escaped}</p>' in page
    assert f"<dd>{escaped}</dd>" in page
    assert f"<span>{escaped} <b>{escaped}</b></span>" in page
    assert f"<th>{escaped}</th>" in page
    # Charted, the tag is text for plotly.js too, which would read tags in a legend entry.
    (chart,) = [c for key, c in page_figures(page).items() if key.startswith("chart-script")]
    assert chart["data"][1]["name"] == html.escape(f"{attack}/<i> (.)")
    # Every script is the library or a chart's: none came from a string of the run.
    assert page.count("<script") == 1 + len(page_figures(page))


@pytest.mark.parametrize(
    ("epochs", "one_cycle"), [(1, False), (14, True)], ids=["1-epoch", "14-epoch"]
)
def test_page_size(epochs, one_cycle, tmp_path):
    # The classic recipe on the real MNIST (report_fixtures.write_classic_run); the 14 epochs
    # with a one-cycle learning rate logged at every logged step, the most points it logs.
    logs, evaluation = write_classic_run(tmp_path, epochs, learning_rate_every_step=one_cycle)
    write_training_report(logs, evaluation, tmp_path / "r.html", tmp_path / "r.md")
    size = (tmp_path / "r.html").stat().st_size
    page = (tmp_path / "r.html").read_text()
    library = len(plotly_js().encode())
    print(f"report of a {epochs}-epoch run: {size:,} bytes, of which the library {library:,}")
    assert size <= MAX_PAGE_BYTES
    assert page.count(plotly_js()) == 1
    # Nothing thinned at this size: every logged point is charted.
    loss = read_scalars(logs)[[s.tag for s in read_scalars(logs)].index("loss/train")]
    assert len(loss.steps) == 50 + len(range(50, epochs * 938, 50))
    assert page_figures(page)["chart-loss"]["data"][0]["x"] == list(loss.steps)


@pytest.mark.parametrize(
    ("low", "high", "percent", "expected"),
    [
        (0.98, 0.98, True, (0.931, 1.0)),  # one accuracy, or a constant one: not past 100%
        (1.0, 1.0, True, (0.95, 1.0)),
        (0.89, 0.9924, True, (0.88488, 0.99752)),
        (0.0, 0.0, False, (0.0, 0.05)),  # a constant 0: not below 0
        (0.02, 2.3, False, (0.0, 2.414)),  # a loss: not below 0
        (1e-4, 1e-4, False, (0.95e-4, 1.05e-4)),  # a constant learning rate: close around it
        (-1.0, 1.0, False, (-1.1, 1.1)),  # values across 0 keep their margin
        (0.5, 1.2, True, (0.465, 1.235)),  # a "fraction" past 100% is shown, not cut off
    ],
)
def test_value_axis(low, high, percent, expected):
    assert figures.value_range(low, high, percent) == pytest.approx(expected)


def test_lone_point_labels_point_into_the_plot_and_keep_apart():
    x, y = (0, 1000), (0.0, 1.0)
    # In the right half, to the left; in the lower half above, in the upper half below.
    assert figures.label_sides([(990, 0.1), (995, 0.9)], x, y) == ["top left", "bottom left"]
    assert figures.label_sides([(10, 0.2)], x, y) == ["top right"]
    # Close in value: the one nearer the edge gets its label beside it, not over the other.
    assert figures.label_sides([(937, 0.1), (938, 0.12)], x, y) == ["middle left", "top left"]
    assert figures.label_sides([(937, 0.9), (938, 0.88)], x, y) == ["middle left", "bottom left"]
    assert figures.label_sides([(937, 0.5), (938, 0.5)], x, y) == ["middle left", "top left"]


@pytest.mark.parametrize("accuracies", [(0.98, 0.98), (1.0, 1.0), (0.9813, 0.9834)])
def test_a_one_epoch_report_labels_its_points_and_keeps_its_axes(accuracies, tmp_path):
    # One epoch: one validation point and one test value per chart (issue 19: "a lone
    # diamond" on an accuracy axis up to 102%).
    logs, evaluation = write_classic_run(tmp_path, 1, accuracies=accuracies)
    write_training_report(logs, evaluation, tmp_path / "r.html", tmp_path / "r.md")
    charts = page_figures((tmp_path / "r.html").read_text())
    # No accuracy axis past 100%, no loss axis below 0.
    options = charts["chart-accuracy"]["layout"]["yaxis"]["autorangeoptions"]
    top = options.get("maxallowed", options.get("clipmax"))
    assert top is not None
    assert top <= 1
    bottom = charts["chart-loss"]["layout"]["yaxis"]["autorangeoptions"]
    assert bottom.get("minallowed", bottom.get("clipmin")) == 0
    expected = {
        "chart-accuracy": [figures.format_value(a, percent=True) for a in accuracies],
        "chart-loss": ["0.32", "0.0252"],
    }
    for chart_id, values in expected.items():
        # Each lone point has its value beside it.
        labelled = [t for t in charts[chart_id]["data"] if "text" in t]
        assert [t["text"] for t in labelled] == [[v] for v in values]
        assert all(t["mode"].endswith("+text") for t in labelled)
        assert all(t["marker"]["size"] == figures.LONE_MARKER for t in labelled)
    # The two accuracy points are close (or one): their labels go on different sides.
    sides = {t["textposition"] for t in charts["chart-accuracy"]["data"]}
    assert len(sides) == 2


def test_constant_single_and_empty_series(tmp_path):
    logs, evaluation = write_one_epoch_run(tmp_path)
    write_training_report(logs, evaluation, tmp_path / "r.html", tmp_path / "r.md")
    page = (tmp_path / "r.html").read_text()
    charts = page_figures(page)
    assert list(charts) == [
        "chart-loss",
        "chart-accuracy",
        "chart-learning_rate",
        "chart-grad_norm",
        "chart-lone_metric",
    ]

    # A learning rate set once holds to the end: a line, not a lone labelled dot.
    (learning_rate,) = charts["chart-learning_rate"]["data"]
    assert learning_rate["mode"] == "lines"
    assert "text" not in learning_rate
    # Constants: an axis close around the value (plotly.js's own would span it +- 1), and
    # never below 0 for a constant 0.
    assert charts["chart-learning_rate"]["layout"]["yaxis"]["autorangeoptions"] == {
        "minallowed": pytest.approx(0.95),
        "maxallowed": pytest.approx(1.05),
    }
    assert charts["chart-grad_norm"]["layout"]["yaxis"]["autorangeoptions"] == {
        "minallowed": 0,
        "maxallowed": pytest.approx(0.05),
    }
    # One point of a per-step scalar: its value written beside it.
    smoothed = charts["chart-lone_metric"]["data"][1]
    assert (smoothed["text"], smoothed["mode"]) == (["3.5"], "markers+text")
    # Nothing finite: a note in place of an empty plot.
    assert re.search(
        r'id="figure-chart-nan_metric"><figcaption><h3>nan_metric</h3></figcaption>'
        r'<p class="empty">No finite values to draw',
        page,
    )


@pytest.mark.parametrize(
    ("epochs", "prefix", "reduced"), [(30, "short_", False), (60, "metric_" * 80, True)]
)
def test_page_stays_under_its_limit_whatever_was_logged(epochs, prefix, reduced, tmp_path):
    # More runs than are charted, each with the known tags and more other tags than are
    # charted, every one with more points than a chart keeps. The larger one is too much for
    # the full page: its charts have half the points.
    runs = [f"run{k}" for k in range(MAX_RUNS + 1)]
    tags = ["loss/train", "learning_rate", "accuracy/train"]
    tags += [f"{prefix}{k:02d}" for k in range(MAX_OTHER_CHARTS + 2)]
    for run in runs:
        writer = SummaryWriter(str(tmp_path / "logs" / run))
        for step in range(epochs * 20):
            for k, tag in enumerate(tags):
                writer.add_scalar(tag, math.sin(step / 100 + k) + 1.000123456, step)
        for epoch in range(epochs):
            writer.add_scalar("loss/val", 0.1 + epoch, epoch * 20 + 19)
            writer.add_scalar("accuracy/val", 0.5 + epoch / 100, epoch * 20 + 19)
            writer.add_scalar("epoch", epoch, epoch * 20 + 19)
        writer.close()
    long_run = {**evaluation_document()["run"], "name": "n" * 300}
    long_run["parameters"] = {f"parameter_{k}": "v" * 20 for k in range(40)}
    evaluation = write_evaluation(tmp_path / "evaluation", evaluation_document(run=long_run))
    metrics = write_training_report(
        tmp_path / "logs", evaluation, tmp_path / "r.html", tmp_path / "r.md"
    )
    page = (tmp_path / "r.html").read_text()
    size = len(page.encode())
    print(f"largest report: {size:,} bytes")
    assert size <= MAX_PAGE_BYTES
    charts = page_figures(page)
    assert len(charts) == 3 + MAX_OTHER_CHARTS
    assert f"scalars {prefix}{MAX_OTHER_CHARTS:02d}, {prefix}{MAX_OTHER_CHARTS + 1:02d}." in page
    assert f"runs run{MAX_RUNS}." in page
    dense = [t for c in charts.values() for t in c["data"] if t["name"].endswith("(raw)")]
    points = sum(len(t["x"]) for t in dense)
    assert points <= (1000 if reduced else 2000)
    assert points > (500 if reduced else 1000)
    # Every tag of every run is still in the tables and the metrics.
    assert len(metrics) == len(runs) * (len(tags) + 2)
    assert (tmp_path / "r.md").read_text().count(f"| {prefix}") == len(runs) * (
        MAX_OTHER_CHARTS + 2
    )


def test_a_run_without_scalars_or_evaluation(tmp_path):
    (tmp_path / "empty").mkdir()
    metrics = write_training_report(
        tmp_path / "empty", None, tmp_path / "r.html", tmp_path / "r.md"
    )
    assert metrics == {}
    page = (tmp_path / "r.html").read_text()
    assert "No scalars were found" in page
    assert_self_contained_html(page)
    assert "<script" not in page  # nothing to draw: no library either
    assert "No scalars were found" in (tmp_path / "r.md").read_text()


def test_headline_falls_back_to_the_scalars(logs, tmp_path):
    directory, _ = logs
    write_training_report(directory, None, tmp_path / "r.html", tmp_path / "r.md")
    page = (tmp_path / "r.html").read_text()
    assert "<dd>99.24%</dd>" in page
    assert "<dd>3</dd>" in page  # epochs, from Lightning's counter
    assert "Confusion matrix" not in page


def _malformed(change):
    document = evaluation_document()
    change(document)
    return document


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            _malformed(lambda d: d.update(format="other/v2")),
            r"\(format: Input should be 'kfp-lightning/evaluation-v1', found 'other/v2'\)$",
        ),
        (_malformed(lambda d: d.pop("labels")), r"\(labels: Field required\)$"),
        (
            _malformed(lambda d: d["confusion_matrix"].pop()),
            r"\(confusion_matrix: expected 10 rows, found 9\)$",
        ),
        (
            _malformed(lambda d: d["confusion_matrix"][3].append(0)),
            r"\(confusion_matrix\[3\]: expected 10 columns, found 11\)$",
        ),
        (
            _malformed(lambda d: d.update(samples=9999)),
            r"\(samples: expected the confusion matrix's total 10000, found 9999\)$",
        ),
        (
            _malformed(lambda d: d["confusion_matrix"][0].__setitem__(1, -1)),
            r"\(confusion_matrix\[0\]\[1\]: Input should be greater than or equal to 0, "
            r"found -1\)$",
        ),
        (
            _malformed(lambda d: d["mistakes"][2]["pixels"][5].pop()),
            r"\(mistakes\[2\]\.pixels\[5\]: expected 28 pixels, as row 0 has, found 27\)$",
        ),
        (
            _malformed(lambda d: d["mistakes"][0]["pixels"][0].__setitem__(0, 256)),
            r"\(mistakes\[0\]\.pixels\[0\]\[0\]: Input should be less than or equal to 255, "
            r"found 256\)$",
        ),
        (
            _malformed(lambda d: d["mistakes"][0].update(predicted=4)),
            r"\(mistakes\[0\]: expected a misclassified image, found label 4, predicted 4\)$",
        ),
        (
            _malformed(lambda d: d["examples"][0].update(label=10)),
            r"\(examples\[0\]\.label: expected a class index below 10, found 10\)$",
        ),
        (
            _malformed(lambda d: d["examples"][1].update(confidence=1.5)),
            r"\(examples\[1\]\.confidence: Input should be less than or equal to 1, found 1\.5\)$",
        ),
        (
            _malformed(lambda d: d["run"].update(test_accuracy="high")),
            r"\(run\.test_accuracy: Input should be a valid number, found 'high'\)$",
        ),
        (
            _malformed(lambda d: d["run"].update(epochs=True)),
            r"\(run\.epochs: Input should be a valid integer, found True\)$",
        ),
        (_malformed(lambda d: d["run"].pop("device")), r"\(run\.device: Field required\)$"),
        (
            _malformed(lambda d: (d["run"].pop("device"), d.pop("split"))),
            r"\(split: Field required \(and 1 more\)\)$",
        ),
        ([1, 2], r"\(the file: Input should be an object\)$"),
    ],
)
def test_a_malformed_evaluation_is_one_clear_error(document, message, logs, tmp_path):
    directory, _ = logs
    evaluation = write_evaluation(tmp_path / "evaluation", document)
    with pytest.raises(UserInputError, match=message) as raised:
        write_training_report(directory, evaluation, tmp_path / "r.html", tmp_path / "r.md")
    # The file, then what the format is, then the field and what it should have been.
    assert str(raised.value).startswith(
        f"invalid evaluation={str(evaluation / 'evaluation.json')!r}: expected a directory"
        " holding evaluation.json in format kfp-lightning/evaluation-v1 ("
    )
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "r.html").exists()
    assert not (tmp_path / "r.md").exists()


def test_what_training_writes_is_what_the_report_reads(tmp_path):
    import torch
    from pydantic import ValidationError

    from kfp_lightning.components.common.files import write_json
    from kfp_lightning.components.train_mnist import evaluation as training

    images = torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8)
    matrix = [[3 if r == c else 0 for c in range(10)] for r in range(10)]
    matrix[4][9] = 1
    mistake, example = training.Prediction(7, 4, 9, 0.875), training.Prediction(2, 1, 1, 0.5)
    result = training.Evaluation(matrix, [mistake], [example])
    run = evaluation_document()["run"]
    document = training.evaluation_document(result, images, run)
    # The file's content, field for field: the format the report has always read.
    assert document == {
        "format": "kfp-lightning/evaluation-v1",
        "split": "test",
        "samples": 31,
        "labels": [str(d) for d in range(10)],
        "confusion_matrix": matrix,
        "mistakes": [{**vars(mistake), "pixels": images[7].tolist()}],
        "examples": [{**vars(example), "pixels": images[2].tolist()}],
        "run": run,
    }
    write_json(tmp_path / "evaluation.json", document)
    read = read_evaluation(tmp_path)
    assert read.model_dump() == document
    assert read.mistakes[0].pixels == images[7].tolist()
    # Training cannot write a file the report would reject.
    with pytest.raises(ValidationError, match=r"run\.device\n  Field required"):
        training.evaluation_document(
            result, images, {k: v for k, v in run.items() if k != "device"}
        )


def test_missing_inputs(tmp_path):
    (tmp_path / "logs").mkdir()
    with pytest.raises(UserInputError, match="tensorboard_logs"):
        write_training_report(tmp_path / "missing", None, tmp_path / "x.html", tmp_path / "x.md")
    with pytest.raises(UserInputError, match=r"there is no evaluation\.json"):
        write_training_report(tmp_path / "logs", tmp_path, tmp_path / "x.html", tmp_path / "x.md")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "evaluation.json").write_text("{not json")
    with pytest.raises(UserInputError, match=r"\(the file: Invalid JSON: key must be a string"):
        write_training_report(
            tmp_path / "logs", tmp_path / "bad", tmp_path / "x.html", tmp_path / "x.md"
        )
    assert not (tmp_path / "x.html").exists()


def test_component_entry_point(logs, evaluation, tmp_path):
    directory, written = logs
    process, outputs = run_component(
        component,
        tmp_path / "run",
        input_artifacts={"tensorboard_logs": directory, "evaluation": evaluation},
        parameters={"title": "Seven"},
    )
    assert process.returncode == 0, process.stderr
    page = outputs["report"].read_text()
    assert_self_contained_html(page)
    assert "<h1>Seven</h1>" in page
    assert outputs["summary"].read_text().startswith("# Seven\n")
    executor_output = json.loads((tmp_path / "run" / "executor_output.json").read_text())
    logged = executor_output["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert math.isclose(logged["accuracy/val"], written["accuracy/val"][-1][1], rel_tol=1e-6)


def test_component_rejects_a_malformed_evaluation(logs, tmp_path):
    directory, _ = logs
    evaluation = write_evaluation(
        tmp_path / "evaluation", {"format": "kfp-lightning/evaluation-v0"}
    )
    process, outputs = run_component(
        component,
        tmp_path / "run",
        input_artifacts={"tensorboard_logs": directory, "evaluation": evaluation},
    )
    assert process.returncode == 2
    assert process.stderr.strip().splitlines()[-1].startswith("error: invalid evaluation=")
    assert not outputs["report"].exists()


def test_report_of_a_real_training_run(dataset, tmp_path_factory, tmp_path):
    root, result = trained_run(dataset, tmp_path_factory)
    metrics = write_training_report(
        root / "logs", root / "evaluation", tmp_path / "r.html", tmp_path / "r.md"
    )
    page = (tmp_path / "r.html").read_text()
    assert_self_contained_html(page)
    charts = page_figures(page)
    assert list(charts) == ["chart-loss", "chart-accuracy", "chart-learning_rate"]
    assert [len(c["data"]) for c in charts.values()] == [4, 2, 1]
    assert [a["text"] for a in charts["chart-loss"]["layout"]["annotations"]] == ["1", "2"]
    assert metrics["accuracy/test"] == pytest.approx(result.metrics["test_accuracy"], rel=1e-6)
    evaluation = read_evaluation(root / "evaluation")
    assert f"<dd>{result.metrics['test_accuracy']:.2%}</dd>" in page
    assert page.count('<figure class="tile"') == len(evaluation.mistakes) + len(evaluation.examples)
    assert f'<p class="run">{escape(evaluation.run.name)}</p>' in page
    assert Path(tmp_path / "r.md").read_text().count("\n| loss/train | ") == 1


@pytest.mark.parametrize(
    "snippet",
    [
        '<script src="plotly.min.js"></script>',
        '<img src="https://example.com/x.png">',
        '<img src="digit.png">',
        "<style>body{background:url(//example.com/bg.png)}</style>",
        '<link rel="stylesheet" href="style.css">',
        '<a href="https://example.com/">docs</a>',
        "<iframe></iframe>",
        "<p>see http://example.com</p>",
    ],
)
def test_the_self_contained_check_rejects_what_would_be_fetched(snippet, logs, tmp_path):
    directory, _ = logs
    write_training_report(directory, None, tmp_path / "r.html", tmp_path / "r.md")
    page = (tmp_path / "r.html").read_text()
    assert_self_contained_html(page)
    with pytest.raises(AssertionError):
        assert_self_contained_html(page.replace("</body>", snippet + "</body>"))
