"""Turn a run's TensorBoard event files into a self-contained HTML report, Markdown and metrics.

The Kubeflow UI shows an HTML artifact inside a sandboxed iframe with no network access, so the
report carries everything inline: one SVG line chart per scalar, drawn here, with no script,
stylesheet, font or image fetched from anywhere. Event files are read with TensorBoard's own
reader, so every scalar Lightning (or anything else) logged appears, including ones added later.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Sequence
from pathlib import Path

from kfp_lightning.components.common.errors import invalid
from kfp_lightning.components.common.files import atomic_write_text

CHART_WIDTH, CHART_HEIGHT = 420, 240
# The curves a reader looks for first; any other tag follows alphabetically, Lightning's
# bookkeeping "epoch" counter last.
FIRST_TAGS = (
    "train_loss",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "test_accuracy",
    "test_loss",
)
LAST_TAGS = ("epoch",)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 16, 40
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


@dataclasses.dataclass(frozen=True)
class Series:
    """One scalar tag of one run: steps and values in logging order (last write wins per step)."""

    run: str
    tag: str
    steps: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def last(self) -> float:
        """The value at the highest step."""
        return self.values[-1]


def read_scalars(logs_dir: str | Path) -> list[Series]:
    """Reads every scalar of every event file under `logs_dir`, in report order.

    Args:
        logs_dir: A TensorBoard log directory; each folder holding event files is one run
            (named by its path relative to `logs_dir`, "." for the top).

    Returns:
        The series, sorted by tag then run.
    """
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    logs_dir = Path(logs_dir)
    if not logs_dir.is_dir():
        raise invalid("tensorboard_logs", str(logs_dir), "a directory of TensorBoard event files")
    run_dirs = sorted({p.parent for p in logs_dir.rglob("*tfevents*") if p.is_file()})
    series = []
    for run_dir in run_dirs:
        accumulator = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()[SCALARS]:
            by_step: dict[int, float] = {}
            for event in accumulator.Scalars(tag):
                by_step[event.step] = event.value
            steps = tuple(sorted(by_step))
            run = str(run_dir.relative_to(logs_dir))
            series.append(Series(run, tag, steps, tuple(by_step[s] for s in steps)))
    return sorted(series, key=lambda s: (tag_rank(s.tag), s.tag, s.run))


def tag_rank(tag: str) -> int:
    """Where a tag goes in the report: the training curves first, bookkeeping last."""
    if tag in FIRST_TAGS:
        return FIRST_TAGS.index(tag)
    return len(FIRST_TAGS) + 1 if tag in LAST_TAGS else len(FIRST_TAGS)


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not high > low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _format(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


def _element(name: str, text: str = "", /, **attributes: object) -> str:
    """One SVG/HTML element; attribute names use _ for -, values are escaped."""
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{html.escape(str(value))}"'
        for key, value in attributes.items()
    )
    return f"<{name}{attrs}>{text}</{name}>" if text else f"<{name}{attrs}/>"


def _stats(series: Series) -> tuple[str, str, str]:
    return _format(series.last), _format(min(series.values)), _format(max(series.values))


def render_chart(tag: str, series: Sequence[Series]) -> str:
    """An inline SVG line chart of one tag (one line per run)."""
    points = [
        [(st, v) for st, v in zip(s.steps, s.values, strict=True) if math.isfinite(v)]
        for s in series
    ]
    finite = [p for ps in points for p in ps]
    title = html.escape(tag)
    if not finite:
        empty = _element("p", "no finite values", class_="empty")
        return f"<figure><figcaption>{title}</figcaption>{empty}</figure>"
    x_lo, x_hi = min(p[0] for p in finite), max(p[0] for p in finite)
    y_lo, y_hi = min(p[1] for p in finite), max(p[1] for p in finite)
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - (abs(y_lo) or 1) * 0.05, y_hi + (abs(y_hi) or 1) * 0.05
    if x_hi == x_lo:  # one step: centre it
        x_lo, x_hi = x_lo - 1, x_hi + 1
    left, top = MARGIN_LEFT, MARGIN_TOP
    plot_w = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return round(left + (x - x_lo) / (x_hi - x_lo) * plot_w, 1)

    def sy(y: float) -> float:
        return round(top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h, 1)

    parts = [_element("rect", x=left, y=top, width=plot_w, height=plot_h, class_="plot")]
    for y in _nice_ticks(y_lo, y_hi):
        parts.append(_element("line", x1=left, x2=left + plot_w, y1=sy(y), y2=sy(y), class_="grid"))
        label = _format(y)
        parts.append(
            _element("text", label, x=left - 6, y=sy(y) + 4, class_="tick", text_anchor="end")
        )
    for x in (t for t in _nice_ticks(x_lo, x_hi) if float(t).is_integer()):  # steps are integers
        label = _format(x)
        y = top + plot_h + 16
        parts.append(_element("text", label, x=sx(x), y=y, class_="tick", text_anchor="middle"))
    axis_x = left + plot_w / 2
    parts.append(
        _element("text", "step", x=axis_x, y=CHART_HEIGHT - 6, class_="axis", text_anchor="middle")
    )
    for i, ps in enumerate(points):
        colour = COLOURS[i % len(COLOURS)]
        if len(ps) == 1:
            ((x, y),) = ps
            parts.append(_element("circle", cx=sx(x), cy=sy(y), r=3.5, fill=colour))
        elif ps:
            coords = " ".join(f"{sx(x)},{sy(y)}" for x, y in ps)
            parts.append(
                _element("polyline", points=coords, fill="none", stroke=colour, stroke_width=1.8)
            )
    svg = _element(
        "svg",
        "".join(parts),
        xmlns="http://www.w3.org/2000/svg",
        viewBox=f"0 0 {CHART_WIDTH} {CHART_HEIGHT}",
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        role="img",
        aria_label=tag,
    )
    legend = ""
    if len(series) > 1:
        legend = "".join(
            _element("span", f"&#9632; {html.escape(s.run)}", class_="key", style=f"color:{colour}")
            for s, colour in zip(series, COLOURS * len(series), strict=False)
        )
    return f"<figure><figcaption>{title}</figcaption>{svg}{legend}</figure>"


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#202124}
h1{font-size:20px;margin:0 0 12px} h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #dadce0;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;border:1px solid #dadce0;padding:8px}
figcaption{font-weight:600;font-size:14px;margin-bottom:4px}
.plot{fill:#fff;stroke:#9aa0a6} .grid{stroke:#eceff1} .tick{font-size:11px;fill:#5f6368}
.axis{font-size:12px;fill:#5f6368} .key{font-size:12px;margin-right:12px} .empty{color:#5f6368}
"""


def render_html(series: Sequence[Series], title: str) -> str:
    """The complete, self-contained HTML page: a summary table and a chart per tag."""
    rows = "".join(
        "<tr>"
        + "".join(_element("td", html.escape(str(cell))) for cell in (s.tag, s.run, len(s.steps)))
        + "".join(_element("td", cell) for cell in _stats(s))
        + "</tr>"
        for s in series
    )
    tags = list(dict.fromkeys(s.tag for s in series))  # report order, each tag once
    charts = "".join(render_chart(tag, [s for s in series if s.tag == tag]) for tag in tags)
    body = (
        f"<h1>{html.escape(title)}</h1>"
        "<h2>Scalars</h2><table><tr><th>tag</th><th>run</th><th>points</th><th>last</th>"
        f"<th>min</th><th>max</th></tr>{rows}</table>"
        f'<h2>Charts</h2><div class="charts">{charts}</div>'
        if series
        else f"<h1>{html.escape(title)}</h1><p>No scalars were found in the event files.</p>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def render_markdown(series: Sequence[Series], title: str) -> str:
    """A Markdown summary: the last, min and max value of every scalar."""
    lines = [f"# {title}", ""]
    if not series:
        return "\n".join([*lines, "No scalars were found in the event files.", ""])
    lines += ["| scalar | run | points | last | min | max |", "|---|---|---:|---:|---:|---:|"]
    lines += [
        "| " + " | ".join((s.tag, s.run, str(len(s.steps)), *_stats(s))) + " |" for s in series
    ]
    return "\n".join([*lines, ""])


def report_training(
    tensorboard_logs_dir: str | Path,
    html_path: str | Path,
    markdown_path: str | Path,
    title: str = "MNIST training",
) -> dict[str, float]:
    """Writes the HTML and Markdown reports of a run's event files.

    Args:
        tensorboard_logs_dir: The run's TensorBoard log directory.
        html_path: File to write the HTML report to.
        markdown_path: File to write the Markdown summary to.
        title: Heading of both reports.

    Returns:
        The last value of every scalar (run "." unprefixed, other runs as "run/tag").
    """
    series = read_scalars(tensorboard_logs_dir)
    atomic_write_text(html_path, render_html(series, title))
    atomic_write_text(markdown_path, render_markdown(series, title))
    return {
        (s.tag if s.run == "." else f"{s.run}/{s.tag}"): s.last
        for s in series
        if math.isfinite(s.last)
    }
