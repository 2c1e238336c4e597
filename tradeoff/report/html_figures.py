"""The report's plotly figures, drawn from a gathered `report_html.ReportData`.

One figure per function (optuna's `plot_pareto_front` habit): `pareto_figure` (every
method's front on val, the same thresholds on test, each exit alone, the chosen and
certified points, a target-accuracy slider), `exit_fractions_figure` (where one point's
samples leave) and `confidence_figure` (each exit's val confidence, right and wrong, with
the point's thresholds). They return `plotly.graph_objects.Figure`s and change no global
setting; `report.html` and the notebook use the same ones.

A front of 10^4 points is drawn thinned (`thin_indices`: evenly along the curve and by
rank, at most `max_points` per trace, every slider mark kept); the data, the CSV and the
target marks are never thinned. Every clickable point carries `customdata` laid out by
`customdata_columns`, which the page's script reads to refresh the panel.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tradeoff.report.style import CHOSEN_COLOR, FALLBACK_TEXT, METHOD_COLORS, METHOD_LABELS, PER_CLASS_TEXT

MAX_POINTS = 1500
SLIDER_STEPS = 101
_CERTIFIED_COLOR = "#e377c2"
_VAL_MARK, _TEST_MARK = "#17becf", "#ff7f0e"
_FONT = dict(family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif", size=13)


# --------------------------------------------------------------------------- data helpers
def thin_indices(flops: np.ndarray, accuracy: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices (sorted) of at most `max_points` points that keep a front's shape.

    Half are spread evenly along the curve's length in normalised (cost, accuracy)
    space, so knees keep their detail; half evenly by rank, so dense stretches stay
    dense. The first and last points are always kept.
    """
    n = len(flops)
    if n <= max_points:
        return np.arange(n)
    x, y = (np.asarray(v, dtype=np.float64) for v in (flops, accuracy))
    x = (x - x.min()) / max(np.ptp(x), 1e-300)
    y = (y - y.min()) / max(np.ptp(y), 1e-300)
    length = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    along = np.searchsorted(length, np.linspace(0.0, length[-1], max_points // 2)).clip(0, n - 1)
    by_rank = np.linspace(0, n - 1, max_points - max_points // 2).round().astype(int)
    return np.unique(np.concatenate([along, by_rank, [0, n - 1]]))[:max_points]


def cheapest_meeting(accuracy: np.ndarray, flops: np.ndarray, target: float) -> int | None:
    """Index of the cheapest point with accuracy >= target (ties: the more accurate), or None."""
    ok = np.flatnonzero(np.asarray(accuracy) >= target)
    if ok.size == 0:
        return None
    order = np.lexsort((-np.asarray(accuracy)[ok], np.asarray(flops)[ok]))
    return int(ok[order[0]])


def customdata_columns(num_exits: int, num_thresholds: int | None = None) -> dict[str, int]:
    """Where each field starts in a point's customdata row.

    Args:
        num_exits: K (the fractions take K columns each).
        num_thresholds: M, the thresholded exits (default K-1, fallback "deepest"; K under
            "ensemble" and "most-confident"); the thresholds take M columns, then
            `per_class` is 1 where they are the medians of a per-class table.
    """
    K = num_exits
    M = K - 1 if num_thresholds is None else num_thresholds
    names = ["per_class", "val_acc", "test_acc", "val_mflops", "test_mflops", "val_speedup", "test_speedup", "val_ms", "test_ms"]
    cols = {"thresholds": 0, **{name: M + i for i, name in enumerate(names)}}
    cols["val_fractions"] = M + len(names)
    cols["test_fractions"] = cols["val_fractions"] + K
    cols["width"] = cols["test_fractions"] + K
    return cols


def _customdata(data, thresholds, va, ta, vf, tf, vfrac, tfrac, per_class: bool = False) -> np.ndarray:
    K, M, n = data.num_exits, data.num_thresholds, len(va)
    nan = np.full((n, K), np.nan)
    vfrac = nan if vfrac is None else np.asarray(vfrac, dtype=np.float64).reshape(n, K)
    tfrac = nan if tfrac is None else np.asarray(tfrac, dtype=np.float64).reshape(n, K)
    ms = np.asarray(data.exit_ms, dtype=np.float64) if data.exit_ms else np.full(K, np.nan)
    vf, tf = np.asarray(vf, dtype=np.float64), np.asarray(tf, dtype=np.float64)
    cols = [np.asarray(thresholds, dtype=np.float64).reshape(n, M), np.column_stack([
        np.full(n, float(per_class)), va, ta, vf / 1e6, tf / 1e6, data.baseline_flops / vf, data.baseline_flops / tf, vfrac @ ms, tfrac @ ms])]
    return np.hstack(cols + [vfrac, tfrac]).astype(np.float32)


def _hovertemplate(data, heading: str, *, fractions: bool, per_class: bool = False) -> str:
    c, names = customdata_columns(data.num_exits, data.num_thresholds), data.exit_names
    thresholds = ", ".join(f"{names[k]} ≥ %{{customdata[{k}]:.4f}}" for k in range(data.num_thresholds))
    rest = "" if data.fallback == "deepest" else f"; {FALLBACK_TEXT[data.fallback]}"
    lines = [
        f"<b>{heading}</b>",
        f"thresholds{f' ({PER_CLASS_TEXT})' if per_class else ''}: {thresholds}{rest}",
        f"accuracy: val %{{customdata[{c['val_acc']}]:.4f}} · test %{{customdata[{c['test_acc']}]:.4f}}",
        f"cost: %{{customdata[{c['val_mflops']}]:.4g}} MFLOPs val · %{{customdata[{c['test_mflops']}]:.4g}} test",
        f"speed-up: %{{customdata[{c['val_speedup']}]:.2f}}× val · %{{customdata[{c['test_speedup']}]:.2f}}× test",
    ]
    if data.exit_ms and fractions:
        lines.append(f"latency: %{{customdata[{c['val_ms']}]:.3f}} ms val · %{{customdata[{c['test_ms']}]:.3f}} ms test")
    if fractions:
        for split in ("val", "test"):
            start = c[f"{split}_fractions"]
            shares = " · ".join(f"{names[k]} %{{customdata[{start + k}]:.1%}}" for k in range(data.num_exits))
            lines.append(f"leave ({split}): {shares}")
    return "<br>".join(lines) + "<extra></extra>"


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _point_customdata(data, p) -> np.ndarray:
    return _customdata(data, [p.thresholds], [p.val_accuracy], [p.test_accuracy], [p.val_flops], [p.test_flops],
                       None if p.val_fractions is None else [p.val_fractions],
                       None if p.test_fractions is None else [p.test_fractions], p.per_class)


# --------------------------------------------------------------------------- the front
def slider_targets(data, include: tuple[float, ...] = ()) -> np.ndarray:
    """Target accuracies of the slider: from the shallowest exit's val accuracy to the
    best val accuracy on the picked-on front, at most SLIDER_STEPS steps of >= 0.001,
    plus the values in `include` (the run's target, the one asked for)."""
    front = data.fronts[0]
    lo = math.floor(min(front.val_accuracy.min(), min(e.val_accuracy for e in data.exits)) * 1000) / 1000
    hi = math.floor(front.val_accuracy.max() * 1000) / 1000
    step = max(0.001, math.ceil((hi - lo) / (SLIDER_STEPS - 1) * 1000) / 1000)
    grid = np.round(np.arange(lo, hi + step / 2, step), 3)
    return np.unique(np.concatenate([grid, np.round(np.asarray(include, dtype=np.float64), 4)]))


def pareto_figure(data, *, max_points: int = MAX_POINTS, target: float | None = None, slider: bool = True) -> go.Figure:
    """Accuracy against mean cost: every front on val, its thresholds on test, the picks.

    Args:
        data: a gathered `ReportData`.
        max_points: most points drawn per trace (`thin_indices`); the data is not thinned.
        target: the target accuracy marked at first (default: the run's, else the
            chosen point's val accuracy), snapped to the slider's steps.
        slider: add the target slider (each step moves the two marks and the line);
            without it the marks stay at `target` (the notebook redraws on its own slider).

    Returns:
        A plotly Figure; trace 0 is the picked-on front on val, trace 1 the same points on test.
    """
    fig = go.Figure()
    first = data.fronts[0]
    if target is None:
        target = float(data.pick["target_acc"]) if "target_acc" in data.pick else data.chosen.val_accuracy
    targets = slider_targets(data, (target,))
    picks = [(cheapest_meeting(first.val_accuracy, first.val_flops, t), cheapest_meeting(first.test_accuracy, first.test_flops, t)) for t in targets]
    for i, front in enumerate(data.fronts):
        keep = thin_indices(front.val_flops, front.val_accuracy, max_points)
        if i == 0:
            keep = np.unique(np.concatenate([keep, [j for pair in picks for j in pair if j is not None]])).astype(int)
        frac = front.val_fractions is not None
        cd = _customdata(data, front.thresholds[keep], front.val_accuracy[keep], front.test_accuracy[keep], front.val_flops[keep],
                         front.test_flops[keep], None if not frac else front.val_fractions[keep],
                         None if front.test_fractions is None else front.test_fractions[keep], front.per_class)
        color = METHOD_COLORS.get(front.method, "#7f7f7f")
        shown = f" ({len(keep)} of {front.size} drawn)" if len(keep) < front.size else ""
        fig.add_scatter(x=front.val_flops[keep] / 1e6, y=front.val_accuracy[keep], mode="lines+markers",
                        name=f"{_label(front.method)} (val){shown}", legendgroup=front.method, customdata=cd,
                        line=dict(color=color, width=2.2 if i == 0 else 1.2), marker=dict(size=6 if i == 0 else 4),
                        opacity=1.0 if i == 0 else 0.8,
                        hovertemplate=_hovertemplate(data, f"{_label(front.method)} front, val", fractions=frac,
                                                     per_class=front.per_class))
        fig.add_scatter(x=front.test_flops[keep] / 1e6, y=front.test_accuracy[keep], mode="markers",
                        name=f"{_label(front.method)} on test", customdata=cd,
                        marker=dict(color=color, symbol="circle-open", size=7 if i == 0 else 5),
                        visible=True if i == 0 else "legendonly",
                        hovertemplate=_hovertemplate(data, f"{_label(front.method)} thresholds, on test", fractions=frac,
                                                     per_class=front.per_class))
    _add_exits(fig, data)
    for p, color, symbol in ((data.chosen, CHOSEN_COLOR, "diamond"), (data.certified, _CERTIFIED_COLOR, "square")):
        if p is not None:
            _add_point(fig, data, p, color, symbol)
    _add_pick_line(fig, data)
    _add_target_marks(fig, data, targets, picks, target, slider=slider)
    _add_speedup_axis(fig, data)
    fig.update_layout(
        template="plotly_white", font=_FONT, height=680, hovermode="closest", clickmode="event",
        title=dict(text=f"Accuracy vs cost — {data.title}", x=0.01),
        xaxis=dict(title="mean cost per sample (MFLOPs, fvcore count)", type=_axis_type(data)),
        yaxis=dict(title="accuracy", tickformat=".3f"),
        legend=dict(x=1.02, y=1.0, xanchor="left", font=dict(size=11), tracegroupgap=2,
                    title=dict(text="click an entry to hide / show it", font=dict(size=10))), margin=dict(l=70, r=20, t=110, b=60),
    )
    return fig


def _axis_type(data) -> str:
    costs = [e.flops for e in data.exits] + [f.val_flops.min() for f in data.fronts]
    return "log" if max(costs) / max(min(costs), 1e-300) > 30 else "linear"


def _add_exits(fig: go.Figure, data) -> None:
    x = [e.flops / 1e6 for e in data.exits]
    speed = [data.baseline_flops / e.flops for e in data.exits]
    cd = np.column_stack([[e.val_accuracy for e in data.exits], [e.test_accuracy for e in data.exits], speed])
    hover = ("<b>%{text} alone</b><br>accuracy: val %{customdata[0]:.4f} · test %{customdata[1]:.4f}<br>"
             "cost: %{x:.4g} MFLOPs · speed-up %{customdata[2]:.2f}×<extra></extra>")
    names = list(data.exit_names)
    fig.add_scatter(x=x, y=[e.val_accuracy for e in data.exits], mode="markers+text", text=names, textposition="top center",
                    name="each exit alone (val)", customdata=cd, hovertemplate=hover, textfont=dict(size=11),
                    marker=dict(symbol="star", size=15, color="black"))
    fig.add_scatter(x=x, y=[e.test_accuracy for e in data.exits], mode="markers", text=names, name="each exit alone (test)",
                    customdata=cd, hovertemplate=hover, marker=dict(symbol="star-open", size=15, color="black"))


def _add_point(fig: go.Figure, data, p, color: str, symbol: str) -> None:
    cd = _point_customdata(data, p)
    frac = p.val_fractions is not None
    fig.add_scatter(x=[p.val_flops / 1e6], y=[p.val_accuracy], mode="markers", name=f"{p.label} (val)", customdata=cd,
                    marker=dict(symbol=symbol, size=14, color=color, line=dict(color="white", width=1)),
                    hovertemplate=_hovertemplate(data, f"{p.label}, val", fractions=frac, per_class=p.per_class))
    error = None
    if p.test_ci95 is not None:
        lo, hi = p.test_ci95
        error = dict(type="data", symmetric=False, array=[hi - p.test_accuracy], arrayminus=[p.test_accuracy - lo],
                     color=color, thickness=1.5, width=6)
    interval = "" if p.test_ci95 is None else f"<br>test 95% interval: [{p.test_ci95[0]:.4f}, {p.test_ci95[1]:.4f}]"
    fig.add_scatter(x=[p.test_flops / 1e6], y=[p.test_accuracy], mode="markers", name=f"{p.label} (test, 95% interval)",
                    customdata=cd, error_y=error, marker=dict(symbol=f"{symbol}-open", size=14, color=color, line=dict(width=2)),
                    hovertemplate=_hovertemplate(data, f"{p.label}, test", fractions=frac, per_class=p.per_class).replace("<extra>", interval + "<extra>"))


def _add_pick_line(fig: go.Figure, data) -> None:
    pick = data.pick
    if "budget_flops" in pick:
        x = float(pick["budget_flops"]) / 1e6
        ys = [min(e.val_accuracy for e in data.exits), max(f.val_accuracy.max() for f in data.fronts)]
        fig.add_scatter(x=[x, x], y=ys, mode="lines", name=f"budget {x:.4g} MFLOPs", hoverinfo="skip",
                        line=dict(color="#555", dash="dash", width=1))
        return
    if "target_acc" in pick:
        level, name = float(pick["target_acc"]), f"target accuracy {float(pick['target_acc']):g} (the run's)"
    elif "max_drop" in pick:
        level = data.exits[-1].val_accuracy - float(pick["max_drop"]) / 100.0
        name = f"deepest exit − {float(pick['max_drop']):g} points ({level:.4f}, the run's)"
    else:
        return
    xs = [min(min(f.val_flops.min(), f.test_flops.min()) for f in data.fronts) / 1e6, max(e.flops for e in data.exits) / 1e6]
    fig.add_scatter(x=xs, y=[level, level], mode="lines", name=name, hoverinfo="skip", line=dict(color="#555", dash="dash", width=1))


def _step_text(data, front, t: float, iv, it) -> str:
    t = float(t)
    if iv is None:
        return f"target {t:g}: no {front.method} point reaches it on val (best {front.val_accuracy.max():.4f})"
    b = data.baseline_flops
    text = (f"target {t:g} — cheapest on val: {front.val_flops[iv] / 1e6:.4g} MFLOPs ({b / front.val_flops[iv]:.2f}×), "
            f"val {front.val_accuracy[iv]:.4f} → test {front.test_accuracy[iv]:.4f}")
    if it is None:
        return text + "; no point reaches it on test"
    return text + f"; cheapest on test: {front.test_flops[it] / 1e6:.4g} MFLOPs ({b / front.test_flops[it]:.2f}×)"


def _add_target_marks(fig: go.Figure, data, targets: np.ndarray, picks, target: float, *, slider: bool) -> None:
    """The two marks, the target line and its caption at `target`; with `slider`, the steps too."""
    front = data.fronts[0]
    active = int(np.argmin(np.abs(targets - target)))
    marks = len(fig.data)
    for name, color in (("cheapest meeting the target (val)", _VAL_MARK), ("cheapest meeting the target (test)", _TEST_MARK)):
        fig.add_scatter(x=[None], y=[None], mode="markers", name=name, hoverinfo="skip",
                        marker=dict(symbol="circle-open", size=22, color=color, line=dict(width=3)))
    steps = []
    for t, (iv, it) in zip(targets, picks):
        xs = [[None if iv is None else front.val_flops[iv] / 1e6], [None if it is None else front.test_flops[it] / 1e6]]
        ys = [[None if iv is None else front.val_accuracy[iv]], [None if it is None else front.test_accuracy[it]]]
        layout = {"shapes[0].y0": t, "shapes[0].y1": t, "annotations[0].text": _step_text(data, front, t, iv, it)}
        steps.append(dict(method="update", label=f"{t:g}", args=[{"x": xs, "y": ys}, layout, [marks, marks + 1]]))
    for key in ("x", "y"):
        for j in range(2):
            fig.data[marks + j][key] = steps[active]["args"][0][key][j]
    t = float(targets[active])
    fig.add_shape(type="line", xref="paper", x0=0, x1=1, y0=t, y1=t, line=dict(color="#888", dash="dot", width=1))
    fig.add_annotation(xref="paper", yref="paper", x=0.99, y=0.02, yanchor="bottom", xanchor="right", showarrow=False,
                       align="left", text=steps[active]["args"][1]["annotations[0].text"], font=dict(size=12),
                       bgcolor="rgba(255,255,255,0.9)", bordercolor="#bbb", borderpad=4)
    if not slider:
        return
    fig.update_layout(sliders=[dict(active=active, steps=steps, x=0.0, len=1.0, y=-0.12, pad=dict(t=30),
                                    currentvalue=dict(prefix="target accuracy: ", font=dict(size=13)), ticklen=3,
                                    minorticklen=1, font=dict(size=9))])
    fig.update_layout(margin=dict(b=150))


def _add_speedup_axis(fig: go.Figure, data) -> None:
    """A top axis in speed-up against the original network (ticks at round speed-ups).

    Not `matches="x"` (plotly.js then drops its own tick labels); the page's script keeps
    its range equal to the cost axis's on zoom.
    """
    xs = [x for trace in fig.data if trace.x is not None for x in trace.x if x is not None]
    lo, hi = min(xs), max(xs)
    nice = [0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50, 100]
    ticks = [s for s in nice if lo * 0.95 <= data.baseline_flops / 1e6 / s <= hi * 1.05]
    kind = _axis_type(data)
    if kind == "log":
        pad = (math.log10(hi) - math.log10(lo)) * 0.04
        span = [math.log10(lo) - pad, math.log10(hi) + pad]
    else:
        pad = (hi - lo) * 0.04
        span = [lo - pad, hi + pad]
    fig.add_scatter(x=[lo, hi], y=[None, None], xaxis="x2", showlegend=False, hoverinfo="skip", mode="markers")
    fig.update_layout(xaxis=dict(range=span))
    fig.update_layout(xaxis2=dict(overlaying="x", side="top", range=span, type=kind, showgrid=False,
                                  tickmode="array", tickvals=[data.baseline_flops / 1e6 / s for s in ticks], ticktext=[f"{s:g}×" for s in ticks],
                                  title=dict(text="speed-up vs the original network", standoff=4)))


# --------------------------------------------------------------------------- the panel
def _exit_labels(data) -> list[str]:
    return [f"{n}<br>{f / 1e6:.3g} MFLOPs" for n, f in zip(data.exit_names, data.exit_flops)]


def exit_fractions_figure(data, point) -> go.Figure:
    """Bars: the share of val and test samples that leave at each exit under `point`'s thresholds.

    Traces 0 (val) and 1 (test) are what the page's script restyles on a click.
    """
    fig = go.Figure()
    for split, fractions, color in (("val", point.val_fractions, "#1f77b4"), ("test", point.test_fractions, "#ff7f0e")):
        y = [float("nan")] * data.num_exits if fractions is None else list(fractions)
        fig.add_bar(x=_exit_labels(data), y=y, name=split, marker_color=color, texttemplate="%{y:.1%}",
                    textposition="outside", hovertemplate=f"%{{x}}<br>{split}: %{{y:.2%}} leave here<extra></extra>")
    fig.update_layout(template="plotly_white", font=_FONT, barmode="group", height=340,
                      title=dict(text=f"Where the samples leave — {point.label}", x=0.01, font=dict(size=14)),
                      yaxis=dict(title="share of samples", tickformat=".0%", range=[0, 1.12]),
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.12), margin=dict(l=60, r=20, t=60, b=50))
    return fig


def _threshold_text(data, k: int, threshold: float, share: float | None, per_class: bool = False) -> str:
    """Exit k's label under its confidence panel: its threshold (a per-class point's median,
    marked "med."), the share leaving there, and on the last exit who answers the rest."""
    leave = "" if share is None or math.isnan(share) else f" · {share:.1%} leave"
    if k >= data.num_thresholds:  # the deepest exit under "deepest": no threshold
        return FALLBACK_TEXT["deepest"] + leave.replace(" leave", "")
    text = "off" if math.isnan(threshold) else f"{'med. ' if per_class else ''}≥ {threshold:.3f}"
    if k == data.num_exits - 1:  # thresholded last exit: the fallback's answers are counted here too
        return text + leave.replace(" leave", "") + f"<br>{FALLBACK_TEXT[data.fallback]}"
    return text + leave


def confidence_figure(data, point) -> go.Figure:
    """One panel per exit: val confidence of right and wrong answers (log counts), with
    `point`'s threshold as a dashed line (on every thresholded exit: the last one too under
    fallback "ensemble" / "most-confident"; per class, each exit's median) and the share of
    val samples leaving there.

    `layout.meta["threshold_annotations"]` is the index of exit 1's threshold label (the
    page's script moves shapes[k], k < M, and that label + k on a click).
    """
    K, M = data.num_exits, data.num_thresholds
    conf = data.confidence
    if conf is None:
        fig = go.Figure()
        fig.add_annotation(text="confidence histograms need the run's cache; " + " ".join(data.notes[:1]),
                           showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        fig.update_layout(template="plotly_white", font=_FONT, height=160, xaxis_visible=False, yaxis_visible=False,
                          meta={"threshold_annotations": -1})
        return fig
    accuracy = conf.right.sum(axis=1) / np.maximum(conf.right.sum(axis=1) + conf.wrong.sum(axis=1), 1)
    fig = make_subplots(rows=1, cols=K, shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[f"{n}: val accuracy {a:.3f}" for n, a in zip(data.exit_names, accuracy)])
    centres, width = (conf.edges[1:] + conf.edges[:-1]) / 2, np.diff(conf.edges)
    for k in range(K):
        for name, counts, color in (("right", conf.right[k], "#1f77b4"), ("wrong", conf.wrong[k], "#d62728")):
            fig.add_bar(x=centres, y=np.where(counts > 0, counts, np.nan), width=width, name=f"{name} answers (val)",
                        marker_color=color, opacity=0.6, legendgroup=name, showlegend=k == 0, row=1, col=k + 1,
                        hovertemplate=f"confidence %{{x:.3f}}<br>{name}: %{{y}} samples<extra></extra>")
    start = len(fig.layout.annotations)
    for k in range(K):
        xref = "x" if k == 0 else f"x{k + 1}"
        share = None if point.val_fractions is None else point.val_fractions[k]
        t = point.thresholds[k] if k < M else 1.0
        if k < M:
            fig.add_shape(type="line", xref=xref, yref=f"{'y' if k == 0 else f'y{k + 1}'} domain", x0=t, x1=t, y0=0, y1=1,
                          line=dict(color="#222", dash="dash", width=1.5))
        fig.add_annotation(xref=xref, yref="paper", x=0.0 if k >= M or math.isnan(t) else t, y=-0.2, showarrow=False,
                           text=_threshold_text(data, k, t, share, point.per_class), font=dict(size=11),
                           xanchor="left" if k >= M or math.isnan(t) or t < 0.55 else "right")
    fig.update_xaxes(range=[0, 1], title_text=f"confidence ({conf.measure})", title_standoff=28)
    fig.update_yaxes(type="log", dtick=1)
    fig.update_yaxes(row=1, col=1, title_text="samples (log)")
    fig.update_layout(template="plotly_white", font=_FONT, barmode="overlay", height=360, bargap=0,
                      title=dict(text=f"Confidence per exit on val, with the thresholds of {point.label}", x=0.01,
                                 font=dict(size=14)),
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.3), margin=dict(l=60, r=20, t=100, b=90),
                      meta={"threshold_annotations": start})
    return fig
