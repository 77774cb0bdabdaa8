"""The report of a real training run in a real browser: Debian's headless Chromium.

The page is opened as the Kubeflow UI opens it: as the `srcdoc` of an iframe with
`sandbox="allow-scripts"`, at least 600 px high and as wide as its card (kubeflow/pipelines,
frontend/src/components/viewers/HTMLViewer.tsx), in a fresh profile with the network off. It
must make no request, log no console error, draw each chart with its traces, answer a hover,
a zoom and each chart's own menus (log scale, smoothing), and, with JavaScript disabled, still
show its headline numbers and tables, and say that the charts need scripts.

Playwright drives the system's Chromium (`executable_path`, no browser of its own is
downloaded) over the DevTools protocol, rather than a hand-written protocol client: it follows
the sandboxed iframe wherever Chromium runs it (a process of its own, as Chromium isolates
sandboxed frames) for evaluation, input and console messages. Its request events miss that
process, though, so requests are read from Chromium's own net log (`--log-net-log`), which
records every request of every process; a control test shows both witnesses hear a page in
the iframe. The profile is offline: no host name resolves, so nothing leaves the machine.
Screenshots go to the test's temporary directory.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kfp_lightning.components.report_training.figures import DEFAULT_SMOOTHING
from kfp_lightning.components.report_training.report import write_training_report
from tests.report_fixtures import tensorboard_smoothing, trained_run, write_one_epoch_run

# The iframe as HTMLViewer renders it, in a card with 20 px of padding (PlotCard.tsx).
HOST = """<!DOCTYPE html><html><body style="margin:0"><div style="padding:20px">
<iframe id="report" sandbox="allow-scripts" src="about:blank"
 style="border:1px solid #e0e0e0;box-sizing:border-box;height:initial;min-height:600px;width:100%">
</iframe></div></body></html>"""
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Offline: no host name resolves (Chromium's own update and sign-in checks included).
    "--host-resolver-rules=MAP * ~NOTFOUND",
]
# The run page's side panel takes half the window: about 480 px of report on a 1440 px screen.
NARROW, WIDE = 520, 1100
EXPECTED_TRACES = {"chart-loss": 4, "chart-accuracy": 2, "chart-learning_rate": 1}
TIMEOUT_MS = 60_000


def _unavailable(message: str) -> None:
    # CI installs Chromium (.ci/run): there a missing browser is a failure, not a skip.
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        _unavailable("Debian's chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def playwright(chromium) -> Iterator:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def report(dataset, tmp_path_factory) -> str:
    """The HTML report of a real 2-epoch training run."""
    root, _ = trained_run(dataset, tmp_path_factory)
    out = tmp_path_factory.mktemp("browser-report")
    write_training_report(root / "logs", root / "evaluation", out / "r.html", out / "r.md")
    return (out / "r.html").read_text()


@pytest.fixture(scope="module")
def one_epoch_report(tmp_path_factory) -> str:
    """The report of one epoch, with a constant, a single point and a scalar never finite."""
    root = tmp_path_factory.mktemp("one-epoch-report")
    logs, evaluation = write_one_epoch_run(root)
    write_training_report(logs, evaluation, root / "r.html", root / "r.md")
    return (root / "r.html").read_text()


class Browser:
    """A fresh Chromium profile showing one page in the Kubeflow-like iframe."""

    def __init__(self, playwright, chromium: str, profile: Path, width: int, javascript: bool):
        self.net_log = profile.with_suffix(".netlog.json")
        self.context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium,
            headless=True,
            args=[*FLAGS, f"--log-net-log={self.net_log}"],
            java_script_enabled=javascript,
            viewport={"width": width, "height": 680},
            offline=True,
        )
        self.closed = False
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page.on(
            "console",
            lambda message: message.type == "error" and self.errors.append(message.text),
        )
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught {error}"))
        self.page.set_content(HOST)

    def show(self, html: str):
        """Sets the iframe's srcdoc (as HTMLViewer does) and returns the iframe's frame."""
        self.page.eval_on_selector("#report", "(frame, html) => { frame.srcdoc = html; }", html)
        frame = self.page.main_frame.child_frames[0]
        frame.wait_for_url("about:srcdoc", wait_until="load", timeout=TIMEOUT_MS)
        return frame

    def screenshot(self, path: Path) -> None:
        self.page.locator("#report").screenshot(path=str(path))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.context.close()

    def fetched(self) -> list[str]:
        """Closes the browser; returns every URL a page requested, `data:` and `about:` aside.

        From Playwright's request events and from the net log (complete once Chromium has
        exited): every request a page started, i.e. whose initiator is a page's origin ("null"
        for the sandboxed iframe) rather than the browser itself.
        """
        self.close()
        log = json.loads(self.net_log.read_text())
        start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        starts = [e["params"] for e in log["events"] if e["type"] == start_job and "params" in e]
        from_pages = [
            params["url"]
            for params in starts
            if "url" in params and params.get("initiator") != "not an origin"
        ]
        urls = dict.fromkeys([*self.requests, *from_pages])
        return [url for url in urls if not url.startswith(("data:", "about:"))]


@pytest.fixture
def browser(playwright, chromium, tmp_path) -> Iterator:
    opened: list[Browser] = []

    def open_browser(width: int = NARROW, javascript: bool = True) -> Browser:
        profile = tmp_path / f"profile-{len(opened)}"
        opened.append(Browser(playwright, chromium, profile, width, javascript))
        return opened[-1]

    yield open_browser
    for each in opened:
        each.close()


def choose(frame, chart_id: str, menu: int, label: str) -> None:
    """Picks `label` in one of a chart's menus (0: the scale, 1: the smoothing), by mouse."""
    frame.locator(f"#{chart_id} .updatemenu-header").nth(menu).click()
    option = frame.locator(f"#{chart_id} .updatemenu-dropdown-button")
    option.filter(has_text=re.compile(f"^{re.escape(label)}$")).click()


def _charts(frame) -> dict[str, int]:
    return dict(
        frame.evaluate(
            "() => Array.from(document.querySelectorAll('.js-plotly-plot'),"
            " (el) => [el.id, el.data.length])"
        )
    )


def _loss_traces(frame) -> dict[str, list[float]]:
    return frame.evaluate(
        "() => { const el = document.getElementById('chart-loss');"
        " return {raw: el.data[0].y, smoothed: el.data[1].y}; }"
    )


def test_the_observers_see_what_a_page_in_the_iframe_does(browser):
    # The checks below would pass on a silent browser: show they hear a fetch and an error.
    opened = browser()
    # Nothing listens on 127.0.0.1:80 here: the request fails at once, on this machine. The
    # srcdoc's load event waits for the image.
    with opened.page.expect_console_message(lambda message: message.text == "seen"):
        opened.show('<img src="http://127.0.0.1/digit.png"><script>console.error("seen")</script>')
    assert "seen" in opened.errors
    assert opened.fetched() == ["http://127.0.0.1/digit.png"]


def test_interactive_report(browser, report, tmp_path):
    opened = browser()
    frame = opened.show(report)
    frame.wait_for_function(
        f"() => document.querySelectorAll('.js-plotly-plot').length === {len(EXPECTED_TRACES)}",
        timeout=TIMEOUT_MS,
    )
    opened.screenshot(tmp_path / "report-top.png")
    assert _charts(frame) == EXPECTED_TRACES
    # Two epochs: the second is shaded (drawn as a shape below the lines), both numbered.
    shapes, labels = frame.evaluate(
        "() => { const el = document.getElementById('chart-loss');"
        " return [el.querySelectorAll('.layer-below .shapelayer path').length,"
        " el._fullLayout.annotations.map((a) => a.text)]; }"
    )
    assert (shapes, labels) == (1, ["1", "2"])
    assert frame.locator("noscript").is_hidden()
    # Nothing in the mode bar needs what the sandbox withholds (a download, the network).
    assert frame.evaluate(
        "() => Array.from(document.querySelectorAll('#chart-loss .modebar-btn'),"
        " (button) => button.dataset.title)"
    ) == ["Zoom", "Pan", "Autoscale", "Reset axes"]
    # Readable at the card's width: nothing wider than the iframe.
    assert frame.evaluate(
        "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )

    # Hovering the loss chart shows the values there, with their epoch.
    frame.locator("#chart-loss .nsewdrag").first.hover()
    frame.wait_for_function(
        "() => document.querySelector('#chart-loss .hoverlayer').textContent.includes('epoch')",
        timeout=TIMEOUT_MS,
    )
    hover = frame.evaluate("() => document.querySelector('#chart-loss .hoverlayer').textContent")
    assert re.search(r"train.*\d\.\d+", hover), hover
    opened.screenshot(tmp_path / "report-hover.png")

    # Dragging across the loss chart zooms in on those steps; a double-click goes back.
    steps = "() => document.getElementById('chart-loss')._fullLayout.xaxis.range.slice()"
    full = frame.evaluate(steps)
    box = frame.locator("#chart-loss .nsewdrag").first.bounding_box()
    middle = box["y"] + box["height"] / 2
    opened.page.mouse.move(box["x"] + box["width"] * 0.3, middle)
    opened.page.mouse.down()
    opened.page.mouse.move(box["x"] + box["width"] * 0.6, middle, steps=8)
    opened.page.mouse.up()
    frame.wait_for_function(f"() => ({steps})()[0] > {full[0]}", timeout=TIMEOUT_MS)
    zoomed = frame.evaluate(steps)
    assert full[0] < zoomed[0] < zoomed[1] < full[1]
    frame.locator("#chart-loss .nsewdrag").first.dblclick()
    frame.wait_for_function(f"() => ({steps})()[0] === {full[0]}", timeout=TIMEOUT_MS)
    assert frame.evaluate(steps) == full

    # The smoothed curve is TensorBoard's smoothing of the raw one; the menu changes it.
    before = _loss_traces(frame)
    assert before["smoothed"] == pytest.approx(
        tensorboard_smoothing(before["raw"], DEFAULT_SMOOTHING), rel=1e-4
    )
    choose(frame, "chart-loss", 1, "smoothing 0.99")
    frame.wait_for_function(
        "() => Array.from(document.querySelectorAll('#chart-loss .updatemenu-header'),"
        " (header) => header.textContent).includes('smoothing 0.99')",
        timeout=TIMEOUT_MS,
    )
    after = _loss_traces(frame)
    assert after["raw"] == before["raw"]
    assert after["smoothed"] != before["smoothed"]
    assert after["smoothed"] == pytest.approx(tensorboard_smoothing(after["raw"], 0.99), rel=1e-4)
    opened.screenshot(tmp_path / "report-smoothed.png")
    choose(frame, "chart-loss", 1, "no smoothing")
    frame.wait_for_function(
        "() => { const d = document.getElementById('chart-loss').data;"
        " return JSON.stringify(d[1].y) === JSON.stringify(d[0].y); }",
        timeout=TIMEOUT_MS,
    )

    # The scale menu switches that chart's value axis to log and back.
    choose(frame, "chart-loss", 0, "log scale")
    frame.wait_for_function(
        "() => document.getElementById('chart-loss')._fullLayout.yaxis.type === 'log'",
        timeout=TIMEOUT_MS,
    )
    assert (
        frame.evaluate("() => document.getElementById('chart-accuracy')._fullLayout.yaxis.type")
        == "linear"
    )
    opened.screenshot(tmp_path / "report-log.png")
    choose(frame, "chart-loss", 0, "linear scale")
    frame.wait_for_function(
        "() => document.getElementById('chart-loss')._fullLayout.yaxis.type === 'linear'",
        timeout=TIMEOUT_MS,
    )

    frame.locator("table.cm").scroll_into_view_if_needed()
    opened.screenshot(tmp_path / "report-confusion.png")
    frame.locator(".tiles").first.scroll_into_view_if_needed()
    opened.screenshot(tmp_path / "report-mistakes.png")
    assert frame.locator(".tile img").count() == frame.locator(".tile").count() > 0
    assert frame.evaluate(
        "() => Array.from(document.querySelectorAll('.tile img')).every((img) =>"
        " img.complete && img.naturalWidth === 28 && img.naturalHeight === 28)"
    )

    assert opened.errors == []
    assert opened.fetched() == []
    print(f"screenshots: {tmp_path}")


def test_two_columns_where_there_is_room(browser, report, tmp_path):
    opened = browser(width=WIDE)
    frame = opened.show(report)
    frame.wait_for_function(
        f"() => document.querySelectorAll('.js-plotly-plot').length === {len(EXPECTED_TRACES)}",
        timeout=TIMEOUT_MS,
    )
    opened.screenshot(tmp_path / "report-wide.png")
    assert _charts(frame) == EXPECTED_TRACES
    loss, accuracy = (
        frame.locator(f"#{name}").bounding_box() for name in ("chart-loss", "chart-accuracy")
    )
    assert loss["y"] == accuracy["y"]
    assert loss["x"] < accuracy["x"]
    assert frame.evaluate(
        "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    assert opened.errors == []
    assert opened.fetched() == []


@pytest.mark.parametrize("name", ["report", "one_epoch_report"])
def test_without_javascript_the_facts_and_tables_show(name, browser, request, tmp_path):
    opened = browser(javascript=False)
    frame = opened.show(request.getfixturevalue(name))
    opened.screenshot(tmp_path / f"{name}-no-scripts.png")
    # The headline numbers, the parameters and every table: plain HTML.
    stats = frame.locator(".stats dd")
    assert stats.count() == 6
    assert all(each.is_visible() for each in stats.all())
    assert frame.locator(".params summary").is_visible()
    for table in ("table.cm", "table >> nth=-1"):
        assert frame.locator(table).is_visible()
    assert frame.locator(".tile img").first.is_visible()
    scalars = frame.locator("table >> nth=-1").locator("td:first-child").all_text_contents()
    assert {"loss/train", "loss/val", "accuracy/test"} <= set(scalars)
    # In the charts' place, one line saying they need scripts; nothing of them shows.
    note = frame.locator("noscript")
    assert note.is_visible()
    assert note.text_content().startswith("The charts need JavaScript;")
    assert frame.locator(".charts").is_hidden()
    assert frame.locator(".js-plotly-plot").count() == 0
    frame.locator("table.cm").scroll_into_view_if_needed()
    opened.screenshot(tmp_path / f"{name}-no-scripts-confusion.png")
    assert opened.errors == []
    assert opened.fetched() == []


# What plotly.js drew: each chart's value axis and the value labels of its lone points.
_AXES = """() => Object.fromEntries(Array.from(document.querySelectorAll('.js-plotly-plot'),
  (el) => [el.id, el._fullLayout.yaxis.range.slice()]))"""
_LABELS = """() => Object.fromEntries(Array.from(document.querySelectorAll('.js-plotly-plot'),
  (el) => [el.id, Array.from(el.querySelectorAll('.textpoint'), (t) => t.textContent)]))"""
ONE_EPOCH_LABELS = {
    "chart-loss": ["0.32", "0.0252"],
    "chart-accuracy": ["98%", "98%"],
    "chart-learning_rate": [],
    "chart-grad_norm": [],
    "chart-lone_metric": ["3.5"],
}


def _overlap(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def test_one_epoch_report(browser, one_epoch_report, tmp_path):
    # Issue 19: at one epoch the accuracy chart was a lone diamond on an axis from -2% to 101%.
    opened = browser()
    frame = opened.show(one_epoch_report)
    frame.wait_for_function(
        f"() => document.querySelectorAll('.js-plotly-plot').length === {len(ONE_EPOCH_LABELS)}",
        timeout=TIMEOUT_MS,
    )
    opened.screenshot(tmp_path / "one-epoch.png")
    # Each lone point shows its value, readable: inside the frame and not over another label.
    assert frame.evaluate(_LABELS) == ONE_EPOCH_LABELS
    for chart_id, values in ONE_EPOCH_LABELS.items():
        boxes = [
            frame.locator(f"#{chart_id} .textpoint").nth(i).bounding_box()
            for i in range(len(values))
        ]
        plot = frame.locator(f"#{chart_id}").bounding_box()
        for box in boxes:
            assert box["width"] > 0
            assert plot["x"] <= box["x"] <= box["x"] + box["width"] <= plot["x"] + plot["width"]
        assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    # Value axes: an accuracy within 0-100%, nothing below 0 that is never negative, and a
    # constant or a single value shown close around it (plotly.js's own axis spans it +- 1).
    axes = frame.evaluate(_AXES)
    assert 0 <= axes["chart-accuracy"][0] < 0.98 < axes["chart-accuracy"][1] <= 1
    assert axes["chart-loss"][0] == 0
    assert axes["chart-learning_rate"] == pytest.approx([0.95, 1.05])
    assert axes["chart-grad_norm"] == pytest.approx([0, 0.05])
    assert axes["chart-lone_metric"] == pytest.approx([3.325, 3.675])
    # The log scale (in powers of 10): an accuracy still at most 100%; back to linear, the
    # same axes as before.
    for chart_id in ONE_EPOCH_LABELS:
        choose(frame, chart_id, 0, "log scale")
    frame.wait_for_function(
        "() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".every((el) => el._fullLayout.yaxis.type === 'log')",
        timeout=TIMEOUT_MS,
    )
    logarithmic = frame.evaluate(_AXES)
    assert logarithmic["chart-accuracy"][0] < math.log10(0.98) < logarithmic["chart-accuracy"][1]
    assert logarithmic["chart-accuracy"][1] <= 0
    opened.screenshot(tmp_path / "one-epoch-log.png")
    for chart_id in ONE_EPOCH_LABELS:
        choose(frame, chart_id, 0, "linear scale")
    frame.wait_for_function(
        "() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".every((el) => el._fullLayout.yaxis.type === 'linear')",
        timeout=TIMEOUT_MS,
    )
    assert frame.evaluate(_AXES) == axes
    # A scalar never finite: a note in place of an empty plot.
    assert frame.locator("#chart-nan_metric").count() == 0
    assert frame.locator("#figure-chart-nan_metric .empty").is_visible()
    assert opened.errors == []
    assert opened.fetched() == []
