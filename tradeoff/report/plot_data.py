"""What the plots draw, gathered first (optuna's habit): `pareto_plot_data` and
`exits_plot_data` collect exactly what will be drawn into frozen dataclasses. Each plot is
gathered once, from a run's documents (`thresholds.json`, `summary.json`, `pareto.csv`):
read from a run directory (so `tradeoff plot RUN` redraws without the cache), or built in
memory from a `SearchResult` (`run_files_of`), so both draw the same values. NumPy only: no
matplotlib here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tradeoff.cache.format import uncounted_ops_note
from tradeoff.report import documents as report
from tradeoff.report import rundir
from tradeoff.policy.rule import OFF_THRESHOLD, rule_thresholds


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
        cost_label: what the cost axis counts ("MFLOPs, fvcore count", or the imported
            cache's own costs).
        coincide: the baselines whose val front has the reported front's hypervolume
            (within 1e-4 relative): drawn over it and said so in the legend.
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
    cost_label: str = "MFLOPs, fvcore count"
    coincide: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExitsPlotData:
    """Everything `plot_exits` draws: where samples leave at the chosen point.

    Attributes:
        title: names the cache / architecture.
        exit_names: (K,) names.
        exit_mflops: (K,) cost of leaving at each exit, MFLOPs.
        thresholds: the chosen thresholds, one per thresholded exit (K-1 under fallback
            "deepest", K otherwise): floats, None where an exit is off, tuples per class.
        val_fractions, test_fractions: (K,) share of samples leaving at each exit (the
            fallback's answers counted at exit K).
        fallback: who answers a sample no exit accepted (`ExitRule.fallback`).
    """

    title: str
    exit_names: tuple[str, ...]
    exit_mflops: tuple[float, ...]
    thresholds: tuple[float, ...]
    val_fractions: tuple[float, ...]
    test_fractions: tuple[float, ...]
    cost_label: str = "MFLOPs"
    fallback: str = "deepest"


@dataclass(frozen=True)
class RunFiles:
    """The parsed files of a run directory (what `tradeoff plot` reads)."""

    run_dir: Path | None  # None: a SearchResult's documents, built in memory (`run_files_of`)
    thresholds: dict
    summary: dict
    pareto: dict


def read_run_files(run_dir: str | os.PathLike, *, lock: bool = True) -> RunFiles:
    """Read `thresholds.json`, `summary.json` and `pareto.csv` of a run directory.

    Raises:
        FileNotFoundError / ValueError: a missing or malformed file, in one line.
    """
    run_dir = Path(run_dir)
    thresholds, summary, csv_text = rundir.read_run(run_dir, lock=lock)
    pareto = rundir.parse_pareto_csv(csv_text, source=str(run_dir / rundir.PARETO_FILE))
    return RunFiles(run_dir, thresholds, summary, pareto)


def run_files_of(result) -> RunFiles:
    """A SearchResult's run files, built in memory: the documents `rundir.write_run` writes,
    through the same JSON encoding, so the search's own plots and `tradeoff plot RUN` gather
    from exactly the same values (one gather per plot). `run_dir` is None."""
    def encoded(doc: dict) -> dict:
        return json.loads(json.dumps(doc, allow_nan=False))

    return RunFiles(None, encoded(report.thresholds_document(result)), encoded(report.summary_document(result)),
                    rundir.parse_pareto_csv(report.pareto_csv(result)))


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _mflops(values) -> tuple[float, ...]:
    return tuple(float(v) / 1e6 for v in values)


def _title(meta: dict, cache_path) -> str:
    """The model and the data ("scan_small on digits"; the cache file only when the data is unknown),
    plus a second line when the costs leave ops uncounted."""
    arch = meta.get("arch") or "unknown model"
    data = meta.get("data")
    title = f"{arch} on {data}" if data else f"{arch} - {Path(cache_path).name if cache_path else 'in-memory cache'}"
    note = uncounted_ops_note(meta)
    return f"{title}\n{note}" if note else title


def _cost_label(meta: dict) -> str:
    counter = meta.get("flop_counter")
    if counter in (None, "fvcore") or str(counter).startswith("fvcore"):
        return "MFLOPs, fvcore count"
    return "millions of cost units, as given" if counter == "given" else f"millions, {counter}"


COINCIDE = 1e-4  # relative hypervolume difference under which two fronts are drawn as one


def _coinciding(volumes: dict[str, float], reported: str) -> tuple[str, ...]:
    ref = volumes.get(reported)
    if not ref:
        return ()
    return tuple(m for m, v in volumes.items() if m != reported and abs(v - ref) <= COINCIDE * abs(ref))


def _target_lines(pick: dict, deepest_val_acc: float) -> tuple[float | None, float | None, str | None]:
    """(accuracy line, budget line in MFLOPs, legend text) of a pick (`Pick.as_dict()`)."""
    if "target_acc" in pick:
        target = float(pick["target_acc"])
        return target, None, f"target accuracy {target:g}"
    if "budget_flops" in pick:
        budget = float(pick["budget_flops"]) / 1e6
        return None, budget, f"budget {budget:.4g} MFLOPs"
    if "budget_ms" in pick:  # scaled like a cost in ms read as FLOPs; `_in_ms` scales it back
        budget = float(pick["budget_ms"])
        return None, budget / 1e6, f"budget {budget:.4g} ms"
    if "max_drop" in pick:
        drop = float(pick["max_drop"])
        level = deepest_val_acc - drop / 100.0
        if pick.get("default") or drop == 0:
            return level, None, f"deepest exit alone on val ({level:.4f})"
        return level, None, f"deepest exit - {drop:g} points ({level:.4f})"
    return None, None, None


def _source(data, gather: str) -> RunFiles:
    """The run files to gather from: read from a path, as given, or a SearchResult's documents."""
    if isinstance(data, (str, os.PathLike)):
        return read_run_files(data)
    if isinstance(data, RunFiles):
        return data
    if hasattr(data, "fronts") and hasattr(data, "chosen"):
        return run_files_of(data)
    raise TypeError(f"{gather} takes a SearchResult, a RunFiles or a run directory path; got {type(data).__name__}")


def pareto_plot_data(source) -> ParetoPlotData:
    """Gather what `plot_pareto` draws from a SearchResult, or from a run directory's files.

    Raises:
        TypeError: `source` is none of those.
        FileNotFoundError / ValueError: a run directory with a missing or malformed file.
    """
    files = _source(source, "pareto_plot_data")
    return _in_ms(_files_guard(files, _pareto_from_files), files.summary.get("cost") == "ms")


def _certified_label(doc: dict | None) -> str | None:
    """Legend text of a thresholds.json "guarantee" block (None: no certificate)."""
    if not doc:
        return None
    bound = (f"LCB {doc['accuracy_lower_bound']:.4f}" if "drop_upper_bound_points" not in doc
             else f"drop <= {doc['drop_upper_bound_points']:.3f} pts")
    return f"certified: {doc['statement'].split(', if')[0]}\n(p = {doc['p_value']:.2g}, {bound})"


def exits_plot_data(source) -> ExitsPlotData:
    """Gather what `plot_exits` draws from a SearchResult, or from a run directory's files."""
    files = _source(source, "exits_plot_data")
    return _in_ms(_files_guard(files, _exits_from_files), files.summary.get("cost") == "ms")


def _files_guard(files: RunFiles, gather):
    """Turn a missing key or a wrong type in the JSON files into one clear line."""
    if files.run_dir is None:  # documents made in memory by this package: a failure here is a bug, not bad input
        return gather(files)
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
        FrontSeries("nsga", _mflops(csv["val_flops"]), _floats(csv["val_accuracy"]), _mflops(csv["test_flops"]), _floats(csv["test_accuracy"]))
    ]
    for front in summary["fronts"]:
        if front["method"] != "nsga":
            test = ((_mflops(front["test_flops"]), _floats(front["test_accuracy"])) if front["method"] == "nsga-per-class"
                    else ())
            fronts.append(FrontSeries(str(front["method"]), _mflops(front["val_flops"]), _floats(front["val_accuracy"]), *test))
    exits = tuple(ExitPoint(str(e["name"]), float(e["flops"]) / 1e6, float(e["val_accuracy"]), float(e["test_accuracy"])) for e in summary["exits"])
    val, test = chosen_doc["val"], chosen_doc["test"]
    target, budget, label = _target_lines(summary["settings"]["pick"], exits[-1].val_accuracy)
    return ParetoPlotData(
        title=_title(summary["cache"]["meta"], summary["cache"]["path"]),
        cost_label=_cost_label(summary["cache"]["meta"]),
        coincide=_coinciding({str(f["method"]): float(f["hypervolume"]) for f in summary["fronts"]}, "nsga"),
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
        title=_title(summary["cache"]["meta"], summary["cache"]["path"]),
        exit_names=tuple(str(n) for n in summary["cache"]["exit_names"]),
        exit_mflops=_mflops(summary["cache"]["flops"]),
        thresholds=rule_thresholds([[OFF_THRESHOLD if x is None else x for x in v] if isinstance(v, list)
                                    else OFF_THRESHOLD if v is None else v for v in chosen_doc["thresholds"]]),
        val_fractions=_floats(chosen_doc["val"]["exit_fractions"]),
        test_fractions=_floats(chosen_doc["test"]["exit_fractions"]),
        fallback=str(chosen_doc.get("fallback", "deepest")),
    )


def _in_ms(data, ms: bool):
    """A search priced in milliseconds (`--cost latency`): undo the MFLOPs scaling and relabel."""
    if not ms:
        return data
    from dataclasses import replace

    def up(values):
        return None if values is None else tuple(v * 1e6 for v in values)

    if isinstance(data, ExitsPlotData):
        return replace(data, exit_mflops=up(data.exit_mflops), cost_label="ms")
    fronts = tuple(replace(f, val_mflops=up(f.val_mflops), test_mflops=up(f.test_mflops)) for f in data.fronts)
    exits = tuple(replace(e, mflops=e.mflops * 1e6) for e in data.exits)
    c = data.chosen
    chosen = replace(c, val_mflops=c.val_mflops * 1e6, test_mflops=c.test_mflops * 1e6)
    budget = None if data.budget_mflops is None else data.budget_mflops * 1e6
    return replace(data, fronts=fronts, exits=exits, chosen=chosen, baseline_mflops=data.baseline_mflops * 1e6,
                   budget_mflops=budget, cost_label="ms per sample, predicted from the latency profile")
