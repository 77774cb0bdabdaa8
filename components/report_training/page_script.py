"""The report page's own script and style sheet, inlined into every report.

The script draws the charts with Plotly (inlined just before it), then wires the smoothing slider
and the log-scale switch. Smoothing is TensorBoard's: an exponential moving average with
debiasing, `classicSmoothing` in tensorboard/webapp/widgets/line_chart_v2/data_transformer.ts
(tensorflow/tensorboard), with TensorBoard's default weight of 0.6 (`scalarSmoothing` in
`METRICS_SETTINGS_DEFAULT`, tensorboard/webapp/metrics/store/metrics_types.ts). Without scripts
the static charts the page starts with stay; the script hides them when it draws its own.
"""

from __future__ import annotations

DEFAULT_SMOOTHING = 0.6

SCRIPT = """
(() => {
  "use strict";
  if (typeof Plotly === "undefined") return;  // the static charts stay
  // Shown before drawing: Plotly sizes a chart from its element, which must not be hidden.
  document.documentElement.classList.add("js");
  const spec = JSON.parse(document.getElementById("report-data").textContent);
  const ends = spec.epochs ? spec.epochs.ends : [];
  const epochOf = (step) => {
    for (let i = 0; i < ends.length; i++) if (step <= ends[i]) return i + 1;
    return ends.length;
  };
  // TensorBoard's classicSmoothing: a first-order low-pass filter started at 0 and divided by
  // (1 - w^n) so the first points are not pulled towards 0. Constant series and non-finite
  // points pass through unchanged.
  const smooth = (ys, weight) => {
    if (ys.every((y) => y === ys[0])) return ys.slice();
    let last = 0;
    let count = 0;
    return ys.map((y) => {
      if (y === null || !Number.isFinite(y)) return y;
      last = last * weight + (1 - weight) * y;
      count += 1;
      return last / (weight === 1 ? 1 : 1 - Math.pow(weight, count));
    });
  };
  // Epochs as alternating bands on the step axis, numbered at the top of the plot.
  const shapes = [];
  const annotations = [];
  if (spec.epochs && spec.epochs.bands) {
    const every = Math.ceil(ends.length / 20);
    let start = spec.epochs.first;
    ends.forEach((end, i) => {
      if (i % 2 === 1) {
        shapes.push({type: "rect", xref: "x", yref: "paper", x0: start, x1: end, y0: 0, y1: 1,
                     fillcolor: "rgba(60,64,67,0.07)", line: {width: 0}, layer: "below"});
      }
      if (i % every === 0) {
        annotations.push({xref: "x", yref: "paper", x: (start + end) / 2, y: 1, yanchor: "bottom",
                          text: String(i + 1), showarrow: false,
                          font: {size: 10, color: "#80868b"}});
      }
      start = end;
    });
  }
  const config = {
    responsive: true,
    displaylogo: false,
    // Downloading needs allow-downloads, which the Kubeflow UI's sandbox does not grant.
    modeBarButtonsToRemove: ["toImage", "select2d", "lasso2d"],
  };
  const slider = document.getElementById("smoothing");
  const shown = document.getElementById("smoothing-value");
  const logScale = document.getElementById("log-scale");
  const draw = (chart) => {
    const element = document.getElementById(chart.id);
    for (const trace of chart.data) trace.customdata = trace.x.map(epochOf);
    for (const [smoothed, raw] of chart.smooth) {
      const source = chart.data[raw];
      Object.assign(chart.data[smoothed], {x: source.x, customdata: source.customdata,
                                           y: smooth(source.y, Number(slider.value))});
    }
    const layout = Object.assign(chart.layout, {shapes: shapes, annotations: annotations});
    const raws = chart.smooth.map(([, raw]) => chart.data[raw].y);
    Plotly.newPlot(element, chart.data, layout, config);
    return {element: element, chart: chart, raws: raws};
  };
  let plots;
  try {
    plots = spec.charts.map(draw);
  } catch (error) {
    // Back to the static charts rather than half-drawn ones.
    document.documentElement.classList.remove("js");
    throw error;
  }
  slider.addEventListener("input", () => {
    const weight = Number(slider.value);
    shown.textContent = weight.toFixed(2);
    for (const plot of plots) {
      if (plot.chart.smooth.length === 0) continue;
      Plotly.restyle(plot.element, {y: plot.raws.map((ys) => smooth(ys, weight))},
                     plot.chart.smooth.map(([smoothed]) => smoothed));
    }
  });
  // Each chart's autorange options are in its axis's units: the pair for the new type
  // (page.py, _autorange_options) goes with it.
  logScale.addEventListener("change", () => {
    const type = logScale.checked ? "log" : "linear";
    for (const plot of plots) {
      Plotly.relayout(plot.element, {"yaxis.type": type, "yaxis.autorange": true,
                                     "yaxis.autorangeoptions": plot.chart.autorange[type]});
    }
  });
})();
"""

STYLE = """
*{box-sizing:border-box}
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:10px 12px;
color:#202124;background:#fff}
h1{font-size:18px;margin:0}
h2{font-size:15px;margin:18px 0 6px}
h3{font-size:13px;margin:0 0 2px}
.run{color:#5f6368;margin:2px 0 8px;overflow-wrap:anywhere}
.stats{display:flex;flex-wrap:wrap;gap:4px 6px;margin:0 0 6px}
.stats div{border:1px solid #dadce0;border-radius:6px;padding:2px 8px}
.stats dt{font-size:11px;color:#5f6368}
.stats dd{margin:0;font-size:15px;font-weight:600}
.params{font-size:12px;color:#3c4043;margin:0}
.params summary{cursor:pointer;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.params[open] summary span{display:none}
.params p{margin:2px 0 0}
.params p span{display:inline-block;margin:0 12px 2px 0}
.controls{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid #dadce0;
padding:4px 0;margin-bottom:8px;display:flex;flex-wrap:wrap;gap:4px 18px;align-items:center}
.controls label{display:flex;align-items:center;gap:6px}
#smoothing{width:140px}
html:not(.js) .js-only,html.js .static-only{display:none!important}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,420px),1fr));gap:10px}
.chart{margin:0;border:1px solid #dadce0;border-radius:6px;padding:6px;min-width:0}
.plotly-chart{height:300px}
.static-chart{width:100%;height:auto;display:block}
.plot{fill:#fff;stroke:#9aa0a6}
.band{fill:#3c4043;fill-opacity:.07}
.dots{stroke-linecap:round}
.grid{stroke:#eceff1}
.tick{font-size:11px;fill:#5f6368}
.axis{font-size:12px;fill:#5f6368}
.value{font-size:11px;font-weight:600}
.legend{font-size:12px}
.key{margin-right:12px;white-space:nowrap}
.empty,.note{color:#5f6368}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #dadce0;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
.cm{font-size:11px}
.cm td,.cm th{padding:2px 4px;font-variant-numeric:tabular-nums}
.cm .total{font-weight:600}
.tiles{display:flex;flex-wrap:wrap;gap:6px}
.tile{margin:0;width:62px;text-align:center;font-size:11px;line-height:1.25;
border:1px solid #dadce0;border-radius:6px;padding:3px 1px}
.tile img{width:48px;height:48px;image-rendering:pixelated;display:block;margin:0 auto 2px}
.wrong{color:#c5221f;font-weight:600}
"""
