"""`exits.png`: where the samples leave at the chosen point, on val and test.

Draws an `ExitsPlotData` (`tradeoff.report.plot_data`) on a fresh `Figure`
(`tradeoff.report.figure`).
"""

from __future__ import annotations

import numpy as np

from tradeoff.report.figure import new_figure
from tradeoff.report.plot_data import ExitsPlotData
from tradeoff.report.style import FALLBACK_TEXT, PER_CLASS_TEXT


def _rule_text(data: ExitsPlotData, k: int) -> str:
    """Exit k's rule under its bars: its threshold (per class: the median of the classes it
    lets leave), and on the last exit who answers the samples no exit accepted."""
    if k >= len(data.thresholds):  # the deepest exit under fallback "deepest"
        return "the rest"
    t = data.thresholds[k]
    if isinstance(t, tuple):
        on = [v for v in t if v is not None]
        rule = f"conf >= {np.median(on):.3f}\n({PER_CLASS_TEXT})" if on else "off"
    else:
        rule = "off" if t is None else f"conf >= {t:.3f}"
    return rule + (f"\n+ {FALLBACK_TEXT[data.fallback]}" if k == len(data.exit_names) - 1 else "")


def plot_exits(data: ExitsPlotData, *, figsize: tuple[float, float] = (8.0, 4.8)):
    """Where samples leave at the chosen point: one pair of bars (val, test) per exit.

    Returns:
        A matplotlib Figure (not registered with pyplot; nothing to close).
    """
    fig = new_figure(figsize)
    ax = fig.add_subplot()
    K = len(data.exit_names)
    x = np.arange(K)
    width = 0.38
    bars_val = ax.bar(x - width / 2, [100 * f for f in data.val_fractions], width, label="val", color="#1f77b4")
    bars_test = ax.bar(x + width / 2, [100 * f for f in data.test_fractions], width, label="test", color="#aec7e8",
                       edgecolor="#1f77b4", linewidth=0.8)
    for bars in (bars_val, bars_test):
        ax.bar_label(bars, fmt="%.1f%%", fontsize=8, padding=2)
    labels = [f"{name}\n{mflops:.4g} {data.cost_label}\n{_rule_text(data, k)}"
              for k, (name, mflops) in enumerate(zip(data.exit_names, data.exit_mflops))]
    ax.set_xticks(x, labels, fontsize=8.5)
    ax.set_ylabel("samples leaving here (%)")
    top = max(list(data.val_fractions) + list(data.test_fractions) + [0.0]) * 100
    ax.set_ylim(0, min(100.0, top * 1.15 + 3))
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    mean_val = sum(f * m for f, m in zip(data.val_fractions, data.exit_mflops))
    mean_test = sum(f * m for f, m in zip(data.test_fractions, data.exit_mflops))
    ax.set_title(
        f"Where samples leave at the chosen point - {data.title}\n"
        f"(mean cost {mean_val:.4g} {data.cost_label} on val, {mean_test:.4g} on test)",
        fontsize=10.5,
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False, borderaxespad=0.0)
    return fig
