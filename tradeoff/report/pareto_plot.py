"""`pareto.png`: accuracy against cost, every method's front, the exits alone and the pick.

Draws a `ParetoPlotData` (`tradeoff.report.plot_data`) on a fresh `Figure`
(`tradeoff.report.figure`).
"""

from __future__ import annotations

import numpy as np

from tradeoff.report.figure import new_figure
from tradeoff.report.plot_data import ParetoPlotData
from tradeoff.report.style import CHOSEN_COLOR, METHOD_COLORS, METHOD_LABELS



def plot_pareto(data: ParetoPlotData, *, figsize: tuple[float, float] = (10.0, 6.0), show_test: bool = True):
    """Accuracy against cost: fronts, each exit alone, the chosen point, the target.

    MFLOPs on the bottom axis, speed-up against the original network on the top one.
    The reported front is drawn on val (line and dots) and, with `show_test`, the same
    points on test (hollow circles); the baselines' val fronts as thin lines.

    Returns:
        A matplotlib Figure (not registered with pyplot; nothing to close).
    """
    fig = new_figure(figsize)
    ax = fig.add_subplot()
    main = data.fronts[0]
    color = METHOD_COLORS.get(main.method, "#1f77b4")
    ax.plot(main.val_mflops, main.val_accuracy, "-o", ms=3.5, lw=1.8, color=color,
            label=f"{METHOD_LABELS.get(main.method, main.method)} front (val)", zorder=4)
    if show_test and main.test_mflops is not None:
        ax.scatter(main.test_mflops, main.test_accuracy, s=22, facecolors="none", edgecolors=color, linewidths=0.9,
                   label="same thresholds on test", zorder=3)
    for series in data.fronts[1:]:
        same = series.method in data.coincide
        ax.plot(
            series.val_mflops,
            series.val_accuracy,
            "--" if same else "-",  # drawn over the reported front, dashed, so it shows
            marker=".",
            ms=3,
            lw=1.0,
            alpha=0.75,
            color=METHOD_COLORS.get(series.method),
            label=f"{METHOD_LABELS.get(series.method, series.method)} (val{'; coincides with the front' if same else ''})",
            zorder=4.5 if same else 2,
        )
        if show_test and series.test_mflops is not None:  # the per-class front, beside the per-exit one
            ax.scatter(series.test_mflops, series.test_accuracy, s=18, marker="s", facecolors="none",
                       edgecolors=METHOD_COLORS.get(series.method), linewidths=0.8, zorder=3,
                       label=f"{METHOD_LABELS.get(series.method, series.method)} on test")

    xs = [e.mflops for e in data.exits]
    ax.scatter(xs, [e.val_accuracy for e in data.exits], marker="*", s=170, color="black", zorder=5,
               label="each exit alone (val)")
    ax.scatter(xs, [e.test_accuracy for e in data.exits], marker="*", s=170, facecolors="none", edgecolors="black",
               linewidths=0.9, zorder=5, label="each exit alone (test)")
    for e in data.exits:  # above the higher of its two stars, so the label covers neither
        ax.annotate(e.name, (e.mflops, max(e.val_accuracy, e.test_accuracy)), xytext=(0, 9), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8.5, zorder=7,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))

    c = data.chosen
    ax.scatter([c.val_mflops], [c.val_accuracy], marker="D", s=70, color=CHOSEN_COLOR, zorder=6, label="chosen (val)")
    ax.scatter([c.test_mflops], [c.test_accuracy], marker="D", s=70, facecolors="none", edgecolors=CHOSEN_COLOR,
               linewidths=1.5, zorder=6, label="chosen (test)")
    if data.certified:
        ax.scatter([c.val_mflops], [c.val_accuracy], marker="o", s=320, facecolors="none", edgecolors="#2ca02c",
                   linewidths=2.0, zorder=6, label=data.certified)
    ax.errorbar([c.test_mflops], [c.test_accuracy],
                yerr=[[c.test_accuracy - c.test_ci95[0]], [c.test_ci95[1] - c.test_accuracy]],
                fmt="none", ecolor=CHOSEN_COLOR, elinewidth=1.2, capsize=4, zorder=6)
    speed = data.baseline_mflops / c.val_mflops
    text = (
        f"chosen ({METHOD_LABELS.get(c.method, c.method)})\n"
        f"val  {c.val_accuracy:.4f} @ {c.val_mflops:.4g} {data.cost_label.split(',')[0].split(' ')[0]} ({speed:.2f}x)\n"
        f"test {c.test_accuracy:.4f} [{c.test_ci95[0]:.4f}, {c.test_ci95[1]:.4f}]"
    )
    log_x = _limit_to_exits(ax, data)
    fx, fy = _axes_fraction(ax, c.val_mflops, c.val_accuracy, log_x)
    ax.annotate(
        text,
        (c.val_mflops, c.val_accuracy),
        # Beside the point, on the side with more room, so the arrow stays short.
        xytext=(24 if fx < 0.6 else -24, -46 if fy > 0.45 else 30),
        textcoords="offset points",
        ha="left" if fx < 0.6 else "right",
        va="top" if fy > 0.45 else "bottom",
        multialignment="left",
        fontsize=8.5,
        bbox=dict(boxstyle="round,pad=0.4", fc="white", ec=CHOSEN_COLOR, alpha=0.95),
        arrowprops=dict(arrowstyle="->", color=CHOSEN_COLOR, lw=1.0),
        zorder=7,
    )
    if data.target_accuracy is not None:
        ax.axhline(data.target_accuracy, ls="--", lw=1.0, color="0.35", zorder=1, label=data.target_label)
    if data.budget_mflops is not None:
        ax.axvline(data.budget_mflops, ls="--", lw=1.0, color="0.35", zorder=1, label=data.target_label)

    ax.set_xlabel("mean cost per sample (%s%s)" % (data.cost_label, ", log scale" if log_x else ""))
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    baseline = data.baseline_mflops

    def to_speedup(x):
        x = np.asarray(x, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > 0, baseline / np.where(x > 0, x, 1.0), np.inf)

    top = ax.secondary_xaxis("top", functions=(to_speedup, to_speedup))
    top.set_xticks(_speedup_ticks(baseline, ax.get_xlim(), log_x=log_x))
    top.xaxis.set_major_formatter(lambda value, _pos: f"{value:g}")
    top.set_xlabel("speed-up vs the original network (x)")
    ax.set_title(f"Accuracy vs cost - {data.title}", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False, borderaxespad=0.0)
    return fig


_NICE_SPEEDUPS = (0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0, 2.5, 3.0,
                  4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 30.0, 40.0, 50.0, 100.0)


def _speedup_ticks(
    baseline_mflops: float, xlim: tuple[float, float], min_gap: float = 0.07, *, log_x: bool = False
) -> list[float]:
    """Round speed-ups whose positions on the cost axis are at least `min_gap` of its width apart.

    Speed-up is baseline / cost, so evenly spaced speed-ups crowd at the cheap end; picking
    from a list of round values by their distance on the cost axis (in log units when the
    axis is logarithmic) keeps labels apart.
    """
    scale = np.log10 if log_x else (lambda v: v)
    lo, hi = xlim
    width = scale(hi) - scale(lo)
    ticks, last = [], None
    for s in sorted(_NICE_SPEEDUPS, reverse=True):  # cost ascending
        x = baseline_mflops / s
        if lo <= x <= hi and (last is None or scale(x) - last >= min_gap * width):
            ticks.append(s)
            last = scale(x)
    return ticks


def _axes_fraction(ax, x: float, y: float, log_x: bool) -> tuple[float, float]:
    """Where (x, y) sits inside the axes, 0..1 each way (for placing a label beside it)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    if log_x:
        x, x0, x1 = np.log10(x), np.log10(x0), np.log10(x1)
    return (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)


def _limit_to_exits(ax, data: ParetoPlotData) -> bool:
    """Frame the interesting region: from the shallowest exit's cost and accuracy upward.

    Baseline fronts can reach far below the shallowest exit (e.g. random thresholds
    never do worse than exit 1 alone, but a pad keeps markers off the frame). When the
    exits' costs span more than 20x (a cheap first exit, as in the digits demo) the cost
    axis is logarithmic, else the front would be squeezed against the left edge.

    Returns:
        Whether the cost axis is logarithmic.
    """
    accs = [e.val_accuracy for e in data.exits] + [e.test_accuracy for e in data.exits]
    accs += [a for s in data.fronts for a in s.val_accuracy] + list(data.fronts[0].test_accuracy or ())
    accs += [data.chosen.test_ci95[0], data.chosen.test_ci95[1]]
    if data.target_accuracy is not None:
        accs.append(data.target_accuracy)
    lo, hi = min(accs), max(accs)
    pad = max(0.01, 0.06 * (hi - lo))
    ax.set_ylim(lo - pad, min(1.0 + pad / 2, hi + pad))
    costs = [e.mflops for e in data.exits] + [x for s in data.fronts for x in s.val_mflops]
    if data.budget_mflops is not None:
        costs.append(data.budget_mflops)
    lo_c, hi_c = min(costs), max(costs)
    if lo_c > 0 and hi_c / lo_c > 20:
        ax.set_xscale("log")
        ax.set_xlim(lo_c / 1.4, hi_c * 1.4)
        return True
    pad_c = 0.05 * (hi_c - lo_c) if hi_c > lo_c else 0.05 * hi_c
    # Keep the left edge above 0: the speed-up axis is baseline / cost (inf at 0).
    ax.set_xlim(max(0.5 * lo_c, lo_c - pad_c), hi_c + pad_c)
    return False
