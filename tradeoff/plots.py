"""The pictures of a search: `pareto.png` (accuracy against cost) and `exits.png`.

Gather, then draw (optuna's habit): `pareto_plot_data` / `exits_plot_data` collect
exactly what will be drawn into frozen dataclasses, from a `SearchResult` or from the
files of a run directory (so `tradeoff plot RUN` redraws without the cache), and
`plot_pareto` / `plot_exits` draw them. Plot functions return a
`matplotlib.figure.Figure` built directly (no pyplot: no global figure registry, no
global style change, nothing to `show()`), on the Agg canvas. The only module that
imports matplotlib.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tradeoff import report
from tradeoff.fileio import write_bytes_atomic

PARETO_PNG = "pareto.png"
EXITS_PNG = "exits.png"
DPI = 150
_METHOD_LABELS = {
    "nsga": "NSGA-II",
    "global": "one global threshold",
    "msdnet": "MSDNet budget rule",
    "random": "random search",
    "grid": "exhaustive grid",
}
_METHOD_COLORS = {"nsga": "#1f77b4", "global": "#ff7f0e", "msdnet": "#2ca02c", "random": "#9467bd", "grid": "#8c564b"}
_CHOSEN_COLOR = "#d62728"


# --------------------------------------------------------------------------- gathered data
@dataclass(frozen=True)
class FrontSeries:
    """One method's front: val points (and, for the reported front, the same points on test).

    Costs in MFLOPs (fvcore count / 1e6), sorted by val cost.
    """

    method: str
    val_mflops: tuple[float, ...]
    val_accuracy: tuple[float, ...]
    test_mflops: tuple[float, ...] | None = None
    test_accuracy: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ExitPoint:
    """Exit k answering every sample."""

    name: str
    mflops: float
    val_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class ChosenMark:
    """The picked point on val and on test (with the test accuracy's 95% interval)."""

    method: str
    val_mflops: float
    val_accuracy: float
    test_mflops: float
    test_accuracy: float
    test_ci95: tuple[float, float]


@dataclass(frozen=True)
class ParetoPlotData:
    """Everything `plot_pareto` draws.

    Attributes:
        title: names the cache / architecture.
        baseline_mflops: the original network's cost, for the speed-up axis.
        fronts: the reported (NSGA-II, pareto.csv) front first, with its test points;
            then the baselines' val fronts.
        exits: each exit alone, shallow -> deep.
        chosen: the picked point.
        target_accuracy: the accuracy line the pick had to reach (target, or deepest exit
            minus the allowed drop), or None for a budget pick.
        budget_mflops: the budget line for a budget pick, else None.
        target_label: legend text of that line (None when there is no line).
        certified: legend text of the Learn-then-Test certificate of the chosen point
            (`--delta`), drawn as a ring around it; None when the pick is a val estimate.
    """

    title: str
    baseline_mflops: float
    fronts: tuple[FrontSeries, ...]
    exits: tuple[ExitPoint, ...]
    chosen: ChosenMark
    target_accuracy: float | None
    budget_mflops: float | None
    target_label: str | None
    certified: str | None = None


@dataclass(frozen=True)
class ExitsPlotData:
    """Everything `plot_exits` draws: where samples leave at the chosen point.

    Attributes:
        title: names the cache / architecture.
        exit_names: (K,) names.
        exit_mflops: (K,) cost of leaving at each exit, MFLOPs.
        thresholds: (K-1,) the chosen thresholds.
        val_fractions, test_fractions: (K,) share of samples leaving at each exit.
    """

    title: str
    exit_names: tuple[str, ...]
    exit_mflops: tuple[float, ...]
    thresholds: tuple[float, ...]
    val_fractions: tuple[float, ...]
    test_fractions: tuple[float, ...]


@dataclass(frozen=True)
class RunFiles:
    """The parsed files of a run directory (what `tradeoff plot` reads)."""

    run_dir: Path
    thresholds: dict
    summary: dict
    pareto: dict


def read_run_files(run_dir: str | os.PathLike, *, lock: bool = True) -> RunFiles:
    """Read `thresholds.json`, `summary.json` and `pareto.csv` of a run directory.

    Raises:
        FileNotFoundError / ValueError: a missing or malformed file, in one line.
    """
    run_dir = Path(run_dir)
    thresholds, summary, csv_text = report.read_run(run_dir, lock=lock)
    pareto = report.parse_pareto_csv(csv_text, source=str(run_dir / report.PARETO_FILE))
    return RunFiles(run_dir, thresholds, summary, pareto)


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _mflops(values) -> tuple[float, ...]:
    return tuple(float(v) / 1e6 for v in values)


def _title(arch, cache_path) -> str:
    name = Path(cache_path).name if cache_path else "in-memory cache"
    return f"{arch or 'unknown arch'} - {name}"


def _target_lines(pick: dict, deepest_val_acc: float) -> tuple[float | None, float | None, str | None]:
    """(accuracy line, budget line in MFLOPs, legend text) of a pick (`Pick.as_dict()`)."""
    if "target_acc" in pick:
        target = float(pick["target_acc"])
        return target, None, f"target accuracy {target:g}"
    if "budget_flops" in pick:
        budget = float(pick["budget_flops"]) / 1e6
        return None, budget, f"budget {budget:.4g} MFLOPs"
    if "max_drop" in pick:
        drop = float(pick["max_drop"])
        level = deepest_val_acc - drop / 100.0
        if pick.get("default") or drop == 0:
            return level, None, f"deepest exit alone on val ({level:.4f})"
        return level, None, f"deepest exit - {drop:g} points ({level:.4f})"
    return None, None, None


def _source(data, gather: str):
    """A SearchResult passes through; a path or RunFiles becomes RunFiles."""
    if isinstance(data, (str, os.PathLike)):
        return read_run_files(data)
    if isinstance(data, RunFiles) or hasattr(data, "fronts") and hasattr(data, "chosen"):
        return data
    raise TypeError(f"{gather} takes a SearchResult, a RunFiles or a run directory path; got {type(data).__name__}")


def pareto_plot_data(source) -> ParetoPlotData:
    """Gather what `plot_pareto` draws from a SearchResult, or from a run directory's files.

    Raises:
        TypeError: `source` is none of those.
        FileNotFoundError / ValueError: a run directory with a missing or malformed file.
    """
    source = _source(source, "pareto_plot_data")
    if isinstance(source, RunFiles):
        return _files_guard(source, _pareto_from_files)
    result = source
    reported = result.front("nsga")
    fronts = [
        FrontSeries(
            "nsga",
            _mflops(reported.val.flops),
            _floats(reported.val.accuracy),
            _mflops(reported.test.flops),
            _floats(reported.test.accuracy),
        )
    ]
    fronts += [FrontSeries(f.method, _mflops(f.val.flops), _floats(f.val.accuracy)) for f in result.fronts if f.method != "nsga"]
    exits = tuple(ExitPoint(e.name, e.flops / 1e6, e.val_accuracy, e.test_accuracy) for e in result.exits)
    c = result.chosen
    target, budget, label = _target_lines(result.settings.pick.as_dict(), result.exits[-1].val_accuracy)
    return ParetoPlotData(
        title=_title(result.cache_meta.get("arch"), result.cache_path),
        baseline_mflops=result.baseline_flops / 1e6,
        fronts=tuple(fronts),
        exits=exits,
        chosen=ChosenMark(c.method, c.val.flops / 1e6, c.val.accuracy, c.test.flops / 1e6, c.test.accuracy, _floats(c.test_accuracy_ci95)),
        target_accuracy=target,
        budget_mflops=budget,
        target_label=label,
        certified=_certified_label(report.thresholds_document(result).get("guarantee")),
    )


def _certified_label(doc: dict | None) -> str | None:
    """Legend text of a thresholds.json "guarantee" block (None: no certificate)."""
    if not doc:
        return None
    bound = (f"LCB {doc['accuracy_lower_bound']:.4f}" if "drop_upper_bound_points" not in doc
             else f"drop <= {doc['drop_upper_bound_points']:.3f} pts")
    return f"certified: {doc['statement'].split(', if')[0]}\n(p = {doc['p_value']:.2g}, {bound})"


def exits_plot_data(source) -> ExitsPlotData:
    """Gather what `plot_exits` draws from a SearchResult, or from a run directory's files."""
    source = _source(source, "exits_plot_data")
    if isinstance(source, RunFiles):
        return _files_guard(source, _exits_from_files)
    result = source
    return ExitsPlotData(
        title=_title(result.cache_meta.get("arch"), result.cache_path),
        exit_names=tuple(result.exit_names),
        exit_mflops=_mflops(result.flops),
        thresholds=_floats(result.chosen.thresholds),
        val_fractions=_floats(result.chosen.val.exit_fractions),
        test_fractions=_floats(result.chosen.test.exit_fractions),
    )


def _files_guard(files: RunFiles, gather):
    """Turn a missing key or a wrong type in the JSON files into one clear line."""
    try:
        return gather(files)
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as exc:
        what = f"key {exc}" if isinstance(exc, KeyError) else str(exc).split("\n")[0]
        raise ValueError(
            f"{files.run_dir} does not hold a complete tradeoff run (summary.json / thresholds.json: {what}); "
            f"rerun `tradeoff search --out {files.run_dir}`"
        ) from None


def _pareto_from_files(files: RunFiles) -> ParetoPlotData:
    summary, chosen_doc, csv = files.summary, files.thresholds, files.pareto
    fronts = [
        FrontSeries("nsga", _mflops(csv["flops"]), _floats(csv["val_accuracy"]), _mflops(csv["test_flops"]), _floats(csv["test_accuracy"]))
    ]
    for front in summary["fronts"]:
        if front["method"] != "nsga":
            fronts.append(FrontSeries(str(front["method"]), _mflops(front["val_flops"]), _floats(front["val_accuracy"])))
    exits = tuple(ExitPoint(str(e["name"]), float(e["flops"]) / 1e6, float(e["val_accuracy"]), float(e["test_accuracy"])) for e in summary["exits"])
    val, test = chosen_doc["val"], chosen_doc["test"]
    target, budget, label = _target_lines(summary["settings"]["pick"], exits[-1].val_accuracy)
    return ParetoPlotData(
        title=_title(summary["cache"]["meta"].get("arch"), summary["cache"]["path"]),
        baseline_mflops=float(summary["cache"]["baseline_flops"]) / 1e6,
        fronts=tuple(fronts),
        exits=exits,
        chosen=ChosenMark(
            str(summary["chosen"]["method"]),
            float(val["flops"]) / 1e6,
            float(val["accuracy"]),
            float(test["flops"]) / 1e6,
            float(test["accuracy"]),
            _floats(test["accuracy_ci95"]),
        ),
        target_accuracy=target,
        budget_mflops=budget,
        target_label=label,
        certified=_certified_label(chosen_doc.get("guarantee")),
    )


def _exits_from_files(files: RunFiles) -> ExitsPlotData:
    summary, chosen_doc = files.summary, files.thresholds
    return ExitsPlotData(
        title=_title(summary["cache"]["meta"].get("arch"), summary["cache"]["path"]),
        exit_names=tuple(str(n) for n in summary["cache"]["exit_names"]),
        exit_mflops=_mflops(summary["cache"]["flops"]),
        thresholds=_floats(chosen_doc["thresholds"]),
        val_fractions=_floats(chosen_doc["val"]["exit_fractions"]),
        test_fractions=_floats(chosen_doc["test"]["exit_fractions"]),
    )


# --------------------------------------------------------------------------- drawing
def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_pareto(data: ParetoPlotData, *, figsize: tuple[float, float] = (10.0, 6.0), show_test: bool = True):
    """Accuracy against cost: fronts, each exit alone, the chosen point, the target.

    MFLOPs on the bottom axis, speed-up against the original network on the top one.
    The reported front is drawn on val (line and dots) and, with `show_test`, the same
    points on test (hollow circles); the baselines' val fronts as thin lines.

    Returns:
        A matplotlib Figure (not registered with pyplot; nothing to close).
    """
    fig = _figure(figsize)
    ax = fig.add_subplot()
    main = data.fronts[0]
    color = _METHOD_COLORS.get(main.method, "#1f77b4")
    ax.plot(main.val_mflops, main.val_accuracy, "-o", ms=3.5, lw=1.8, color=color,
            label=f"{_METHOD_LABELS.get(main.method, main.method)} front (val)", zorder=4)
    if show_test and main.test_mflops is not None:
        ax.scatter(main.test_mflops, main.test_accuracy, s=22, facecolors="none", edgecolors=color, linewidths=0.9,
                   label="same thresholds on test", zorder=3)
    for series in data.fronts[1:]:
        ax.plot(
            series.val_mflops,
            series.val_accuracy,
            "-",
            marker=".",
            ms=3,
            lw=1.0,
            alpha=0.75,
            color=_METHOD_COLORS.get(series.method),
            label=f"{_METHOD_LABELS.get(series.method, series.method)} (val)",
            zorder=2,
        )

    xs = [e.mflops for e in data.exits]
    ax.scatter(xs, [e.val_accuracy for e in data.exits], marker="*", s=170, color="black", zorder=5,
               label="each exit alone (val)")
    ax.scatter(xs, [e.test_accuracy for e in data.exits], marker="*", s=170, facecolors="none", edgecolors="black",
               linewidths=0.9, zorder=5, label="each exit alone (test)")
    for e in data.exits:
        ax.annotate(e.name, (e.mflops, e.val_accuracy), xytext=(0, 9), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8.5, zorder=7,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))

    c = data.chosen
    ax.scatter([c.val_mflops], [c.val_accuracy], marker="D", s=70, color=_CHOSEN_COLOR, zorder=6, label="chosen (val)")
    ax.scatter([c.test_mflops], [c.test_accuracy], marker="D", s=70, facecolors="none", edgecolors=_CHOSEN_COLOR,
               linewidths=1.5, zorder=6, label="chosen (test)")
    if data.certified:
        ax.scatter([c.val_mflops], [c.val_accuracy], marker="o", s=320, facecolors="none", edgecolors="#2ca02c",
                   linewidths=2.0, zorder=6, label=data.certified)
    ax.errorbar([c.test_mflops], [c.test_accuracy],
                yerr=[[c.test_accuracy - c.test_ci95[0]], [c.test_ci95[1] - c.test_accuracy]],
                fmt="none", ecolor=_CHOSEN_COLOR, elinewidth=1.2, capsize=4, zorder=6)
    speed = data.baseline_mflops / c.val_mflops
    text = (
        f"chosen ({_METHOD_LABELS.get(c.method, c.method)})\n"
        f"val  {c.val_accuracy:.4f} @ {c.val_mflops:.4g} MFLOPs ({speed:.2f}x)\n"
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
        bbox=dict(boxstyle="round,pad=0.4", fc="white", ec=_CHOSEN_COLOR, alpha=0.95),
        arrowprops=dict(arrowstyle="->", color=_CHOSEN_COLOR, lw=1.0),
        zorder=7,
    )
    if data.target_accuracy is not None:
        ax.axhline(data.target_accuracy, ls="--", lw=1.0, color="0.35", zorder=1, label=data.target_label)
    if data.budget_mflops is not None:
        ax.axvline(data.budget_mflops, ls="--", lw=1.0, color="0.35", zorder=1, label=data.target_label)

    ax.set_xlabel("mean cost per sample (MFLOPs, fvcore count%s)" % (", log scale" if log_x else ""))
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


def plot_exits(data: ExitsPlotData, *, figsize: tuple[float, float] = (8.0, 4.8)):
    """Where samples leave at the chosen point: one pair of bars (val, test) per exit.

    Returns:
        A matplotlib Figure (not registered with pyplot; nothing to close).
    """
    fig = _figure(figsize)
    ax = fig.add_subplot()
    K = len(data.exit_names)
    x = np.arange(K)
    width = 0.38
    bars_val = ax.bar(x - width / 2, [100 * f for f in data.val_fractions], width, label="val", color="#1f77b4")
    bars_test = ax.bar(x + width / 2, [100 * f for f in data.test_fractions], width, label="test", color="#aec7e8",
                       edgecolor="#1f77b4", linewidth=0.8)
    for bars in (bars_val, bars_test):
        ax.bar_label(bars, fmt="%.1f%%", fontsize=8, padding=2)
    labels = []
    for k, (name, mflops) in enumerate(zip(data.exit_names, data.exit_mflops)):
        rule = f"conf >= {data.thresholds[k]:.3f}" if k < len(data.thresholds) else "the rest"
        labels.append(f"{name}\n{mflops:.4g} MFLOPs\n{rule}")
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
        f"(mean cost {mean_val:.4g} MFLOPs on val, {mean_test:.4g} on test)",
        fontsize=10.5,
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False, borderaxespad=0.0)
    return fig


# --------------------------------------------------------------------------- files
def figure_png(fig, *, dpi: int = DPI) -> bytes:
    """The figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_plots(pareto: ParetoPlotData, exits: ExitsPlotData, run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Draw both pictures and write them atomically into `run_dir`."""
    run_dir = Path(run_dir)
    paths = (run_dir / PARETO_PNG, run_dir / EXITS_PNG)
    for path, fig in zip(paths, (plot_pareto(pareto), plot_exits(exits))):
        write_bytes_atomic(path, figure_png(fig))
    return paths


def plot_command(args) -> int:
    """`tradeoff plot RUN_DIR`: redraw pareto.png and exits.png from the run's files.

    Holds the run's exclusive lock while reading and writing, so a concurrent
    `tradeoff search --out RUN_DIR` cannot swap the directory in between.
    """
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; give a results/<run> directory written by `tradeoff search`")
    has_lock = (run_dir.parent / f"{run_dir.name}.lock").exists()
    lock = report.run_lock(run_dir) if has_lock else contextlib.nullcontext()
    with lock:
        files = read_run_files(run_dir, lock=False)
        paths = save_plots(pareto_plot_data(files), exits_plot_data(files), run_dir)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0

