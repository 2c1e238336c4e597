"""The `report.html` page: the HTML/CSS/JS template and `report_page`, which fills it.

plotly.js goes inline (no CDN: the file opens offline and makes no network request), with
the three figures of `report.html_figures` and a few lines of our own script that refresh
the point panel when a point is clicked. The data comes from `report.html.gather_report`
(a `ReportData`); `report.html.write_report` writes the page.
"""

from __future__ import annotations

import json

import numpy as np

from tradeoff import __version__


# --------------------------------------------------------------------------- the page
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tradeoff report: {title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1320px;
       padding: 12px 24px; color: #222; }}
h1 {{ font-size: 1.35rem; margin: 8px 0 2px; }} p {{ margin: 4px 0; }} .muted {{ color: #666; font-size: 0.9rem; }}
#tradeoff-point {{ border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; margin: 8px 0; font-size: 0.92rem; }}
#tradeoff-point table {{ border-collapse: collapse; }} #tradeoff-point td, #tradeoff-point th {{ padding: 1px 10px 1px 0;
       text-align: left; font-variant-numeric: tabular-nums; }}
.panel {{ display: grid; grid-template-columns: minmax(320px, 1fr) 2fr; gap: 8px; }}
</style></head><body>
<h1>{title}</h1>
<p>{headline}</p>
<p class="muted">Hover a point for its thresholds and figures; click one to show where its samples leave and its thresholds
on each exit's confidence below; drag the slider to move the target accuracy. Thresholds are chosen on val; test is held out.</p>
{notes}
<div id="tradeoff-pareto"></div>
<div id="tradeoff-point"></div>
<div class="panel"><div id="tradeoff-exits"></div><div id="tradeoff-confidence"></div></div>
<p class="muted">Written by tradeoff {version} from {run_dir}. Self-contained: plotly.js {plotly_version} is inside this
file; it works offline and loads nothing from the network.</p>
<script type="text/javascript">{plotly_js}</script>
<script type="text/javascript">
(function () {{
const R = {config};
const FIGS = {figures};
const opts = {{responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"]}};
for (const id of Object.keys(FIGS)) Plotly.newPlot("tradeoff-" + id, FIGS[id].data, FIGS[id].layout, opts);
const c = R.cols, K = R.K, M = R.M;  // M thresholded exits: K-1 under fallback "deepest", K otherwise
const row = (cd, start, n) => Array.from({{length: n}}, (_, i) => Number(cd[start + i]));
const num = (v, d) => Number.isFinite(v) ? v.toFixed(d) : "n/a";
const pct = v => Number.isFinite(v) ? (100 * v).toFixed(1) + "%" : "n/a";
function select(cd, name) {{
  const t = row(cd, 0, M), perClass = Number(cd[c.per_class]) === 1, vf = row(cd, c.val_fractions, K), tf = row(cd, c.test_fractions, K);
  Plotly.restyle("tradeoff-exits", {{y: [vf, tf]}}, [0, 1]);
  Plotly.relayout("tradeoff-exits", {{"title.text": "Where the samples leave — " + name}});
  const conf = document.getElementById("tradeoff-confidence"), a0 = conf.layout.meta.threshold_annotations;
  if (a0 >= 0) {{
    const u = {{"title.text": "Confidence per exit on val, with the thresholds of " + name}};
    for (let k = 0; k < K; k++) {{
      const share = Number.isFinite(vf[k]) ? " · " + pct(vf[k]) : "";
      const a = "annotations[" + (a0 + k) + "]";
      if (k >= M) {{ u[a + ".text"] = R.rest + share; continue; }}
      u["shapes[" + k + "].x0"] = t[k]; u["shapes[" + k + "].x1"] = t[k];
      u[a + ".x"] = Number.isFinite(t[k]) ? t[k] : 0; u[a + ".xanchor"] = t[k] < 0.55 ? "left" : "right";
      const is = Number.isFinite(t[k]) ? (perClass ? "med. " : "") + "≥ " + t[k].toFixed(3) : "off";
      u[a + ".text"] = is + (k === K - 1 ? share + "<br>" + R.rest : (share ? share + " leave" : ""));
    }}
    Plotly.relayout(conf, u);
  }}
  const cells = (label, v, tv) => "<tr><th>" + label + "</th><td>" + v + "</td><td>" + tv + "</td></tr>";
  let html = "<b>" + name + "</b> — thresholds" + (perClass ? " (" + R.per_class_text + ")" : "") + ": "
    + R.names.slice(0, M).map((n, k) => n + " ≥ " + num(t[k], 4)).join(", ") + (M === K ? "; " + R.rest : "");
  html += "<table><tr><th></th><th>val</th><th>test</th></tr>";
  html += cells("accuracy", num(Number(cd[c.val_acc]), 4), num(Number(cd[c.test_acc]), 4));
  html += cells("MFLOPs per sample", num(Number(cd[c.val_mflops]), 4), num(Number(cd[c.test_mflops]), 4));
  if (R.has_ms) html += cells("ms per sample (latency profile)", num(Number(cd[c.val_ms]), 3), num(Number(cd[c.test_ms]), 3));
  html += cells("speed-up vs the original network", num(Number(cd[c.val_speedup]), 2) + "×", num(Number(cd[c.test_speedup]), 2) + "×");
  html += cells("leave at " + R.names.join(" / "), vf.map(pct).join(" / "), tf.map(pct).join(" / "));
  document.getElementById("tradeoff-point").innerHTML = html + "</table>";
}}
document.getElementById("tradeoff-pareto").on("plotly_click", function (ev) {{
  const p = ev.points[0];
  if (p && p.customdata && p.customdata.length >= c.width) select(p.customdata, p.data.name.replace(/ \\(\\d+ of \\d+ drawn\\)/, ""));
}});
const front = document.getElementById("tradeoff-pareto");
front.on("plotly_relayout", function (ev) {{  // the speed-up axis follows the cost axis on zoom and reset
  if (ev["xaxis.range[0]"] !== undefined) Plotly.relayout(front, {{"xaxis2.range": [ev["xaxis.range[0]"], ev["xaxis.range[1]"]]}});
  else if (ev["xaxis.autorange"]) Plotly.relayout(front, {{"xaxis2.range": front.layout.xaxis.range.slice()}});
}});
select(R.initial, R.initial_name);
}})();
</script></body></html>
"""


def _script_json(obj) -> str:
    """JSON safe inside a <script> element (no "</" can close it early)."""
    return obj.replace("</", "<\\/").replace("<!--", "<\\!--") if isinstance(obj, str) else _script_json(json.dumps(obj))


def report_page(data, *, max_points: int | None = None) -> str:
    """The whole `report.html` as text: plotly.js inline, the three figures, the panel script.

    Args:
        data: a `report.html.ReportData`, from `gather_report`.
        max_points: most points drawn per front trace (default `report_figures.MAX_POINTS`).
    """
    import html

    import plotly
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    from tradeoff.report import html_figures as rf

    figures = {
        "pareto": rf.pareto_figure(data, **({} if max_points is None else {"max_points": max_points})),
        "exits": rf.exit_fractions_figure(data, data.chosen),
        "confidence": rf.confidence_figure(data, data.chosen),
    }
    figures_json = "{" + ",".join(f"{json.dumps(k)}:{plotly.io.to_json(f, validate=False)}" for k, f in figures.items()) + "}"
    c = data.chosen
    config = {"K": data.num_exits, "M": data.num_thresholds, "cols": rf.customdata_columns(data.num_exits, data.num_thresholds),
              "rest": rf.FALLBACK_TEXT[data.fallback], "per_class_text": rf.PER_CLASS_TEXT, "names": list(data.exit_names),
              "has_ms": data.exit_ms is not None, "initial_name": c.label,
              "initial": [None if np.isnan(v) else float(v) for v in rf._point_customdata(data, c)[0]]}
    interval = "" if c.test_ci95 is None else f" [95% interval {c.test_ci95[0]:.4f}, {c.test_ci95[1]:.4f}]"
    headline = (f"{html.escape(c.label[0].upper() + c.label[1:])}, picked on val: val accuracy {c.val_accuracy:.4f}, test {c.test_accuracy:.4f}"
                f"{interval}, at {c.val_flops / 1e6:.4g} MFLOPs per sample on val "
                f"({data.baseline_flops / c.val_flops:.2f}× faster than the original network's {data.baseline_flops / 1e6:.4g}).")
    notes = "".join(f'<p class="muted">Note: {html.escape(n)}.</p>' for n in data.notes)
    return _PAGE.format(title=html.escape(data.title), headline=headline, notes=notes, version=__version__,
                        run_dir=html.escape(str(data.run_dir)), plotly_version=get_plotlyjs_version(),
                        plotly_js=get_plotlyjs(), config=_script_json(config), figures=_script_json(figures_json))
