"""Search results as files and tables: `thresholds.json`, `pareto.csv`, `summary.json`.

Like fvcore's `flop_count_table`, this module only turns results into text; it computes
nothing. Two promises hold for the files of one run directory:

* Determinism: `pareto.csv` and `thresholds.json` hold no timing, no date and no
  absolute path (the cache is recorded relative to the run directory, so the run can be
  read from any folder and moved together with its cache), and every float is written with `repr` (the
  shortest string that reads back to the same double), so the same cache, settings and
  seed give byte-identical files. Timings live in `summary.json` only.
* Whole runs: `report.rundir.write_run` writes these documents into a temporary
  directory and swaps it into place.

Terminal tables and number formats live in `report.tables`.
"""

from __future__ import annotations

from tradeoff import __version__
from tradeoff.policy.rule import OFF_THRESHOLD, threshold_text
from tradeoff.report.tables import format_table, mflops_text


# --------------------------------------------------------------------------- documents
def _floats(values) -> list[float]:
    return [float(v) for v in values]


def _threshold_doc(values) -> list:
    """Thresholds for JSON: None (null) where an exit is off, per-class rows as lists."""
    from tradeoff.policy.rule import rule_thresholds

    return [list(v) if isinstance(v, tuple) else v for v in rule_thresholds(values)]


def _figures(point, *, with_ci: tuple[float, float] | None = None) -> dict:
    doc = {
        "accuracy": float(point.accuracy),
        "flops": float(point.flops),
        "speedup": float(point.speedup),
        "speedup_vs_all_exits": float(point.speedup_all_exits),
        "exit_fractions": _floats(point.exit_fractions),
    }
    if with_ci is not None:
        doc["accuracy_ci95"] = _floats(with_ci)
    return doc


def thresholds_document(result) -> dict:
    """The chosen point as `thresholds.json` (what `tradeoff run` loads).

    The issue's schema (thresholds, confidence, ensemble, calibration, cache,
    cache_sha256, val, test with accuracy_ci95) plus what the runtime needs to check it
    is applied to the right model (num_exits, exit_names, arch, checkpoint_sha256,
    num_classes) and how the point was picked. No timings: byte-identical across runs.
    """
    from tradeoff.policy.rule_file import rule_document

    chosen = result.chosen
    meta = result.cache_meta
    # The Learn-then-Test block only when --delta made one (a val-estimate pick's file is unchanged).
    block = _guarantee(result)
    guarantee = {} if block is None else {"guarantee": block}
    return rule_document(
        result.rule,
        cache=result.cache_path,
        cache_sha256=result.cache_sha256,
        num_exits=result.num_exits,
        exit_names=list(result.exit_names),
        exit_flops=_floats(result.flops),
        baseline_flops=float(result.baseline_flops),
        num_classes=meta.get("num_classes"),
        arch=meta.get("arch"),
        checkpoint_sha256=meta.get("checkpoint_sha256"),
        method=chosen.method,
        pick=result.settings.pick.as_dict(),
        seed=result.settings.seed,
        val=_figures(chosen.val),
        test=_figures(chosen.test, with_ci=chosen.test_accuracy_ci95),
        **guarantee,
        **({"latency": result.latency} if getattr(result, "latency", None) else {}),
    )


def _guarantee(result) -> dict | None:
    """The Learn-then-Test block (search.guarantee), or None when the pick is a val estimate."""
    cert = getattr(result, "guarantee", None)
    if cert is None:
        return None
    from tradeoff.search.guarantee import certification_document

    return certification_document(cert, search_size=result.split_sizes["val_search"], seed=result.settings.seed)


def pareto_csv(result, method: str = "nsga") -> str:
    """One row per point of `method`'s front (sorted by val cost), as CSV text.

    Columns: t1..t{K-1}, val_accuracy, test_accuracy, val_flops (fvcore count), val_mflops,
    val_speedup (vs the original network), test_flops, test_speedup, then the val exit
    fraction of every exit (`val_frac_<exit name>`). Every figure names its split. Floats are written with `repr`, so the bytes depend on
    the values only.
    """
    front = result.front(method)
    M = front.thresholds.shape[1]
    if front.thresholds.ndim == 3:  # per class: t<exit>_c<class>
        headers = [f"t{k + 1}_c{c}" for k in range(M) for c in range(front.thresholds.shape[2])]
    else:
        headers = [f"t{k + 1}" for k in range(M)]
    headers += ["val_accuracy", "test_accuracy", "val_flops", "val_mflops", "val_speedup", "test_flops", "test_speedup"]
    headers += [f"val_frac_{_csv_name(name)}" for name in result.exit_names]
    lines = [",".join(headers)]
    for i in range(front.size):
        flops = float(front.val.flops[i])
        values = list(front.thresholds[i].ravel()) + [
            front.val.accuracy[i],
            front.test.accuracy[i],
            flops,
            flops / 1e6,
            result.baseline_flops / flops,
            front.test.flops[i],
            result.baseline_flops / float(front.test.flops[i]),
        ]
        values += list(front.val.exit_fractions[i])
        width = front.thresholds[i].size  # threshold cells come first; a switched-off exit reads "off"
        lines.append(",".join("off" if j < width and float(v) >= OFF_THRESHOLD else repr(float(v))
                              for j, v in enumerate(values)))
    return "\n".join(lines) + "\n"


def _csv_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name)


def summary_document(result) -> dict:
    """Everything else about the run: settings, timings, every method's front and
    hypervolume, each exit alone, the cache's provenance. `tradeoff plot` redraws the
    pictures from this file plus the other two, so whatever the plots show is here.
    """
    s = result.settings
    meta = result.cache_meta
    fronts = []  # a list, not an object: JSON keys are sorted, and the order is NSGA first
    for front in result.fronts:
        fronts.append({
            "method": front.method,
            "size": front.size,
            "hypervolume": float(front.hypervolume),
            "evaluations": int(front.evaluations),
            "seconds": float(front.seconds),
            "thresholds": [_threshold_doc(row) for row in front.thresholds],
            "val_accuracy": _floats(front.val.accuracy),
            "val_flops": _floats(front.val.flops),
            "test_accuracy": _floats(front.test.accuracy),
            "test_flops": _floats(front.test.flops),
        })
    return {
        "format": "tradeoff-summary",
        "version": 1,
        "tool_version": __version__,
        "settings": {
            "method": s.method,
            "confidence": s.confidence,
            "ensemble": bool(s.ensemble),
            "calibrate": bool(s.calibrate),
            "fallback": s.fallback,
            "per_class": bool(s.per_class),
            "pop": s.pop,
            "gens": s.gens,
            "seed": s.seed,
            "restarts": s.restarts,
            "jobs": s.jobs,
            "bootstrap": s.bootstrap,
            "pick": s.pick.as_dict(),
            "delta": getattr(s, "delta", None),
        },
        "seed": s.seed,
        "cost": getattr(result, "cost", "flops"),
        "latency": getattr(result, "latency", None),
        "timings_seconds": {k: float(v) for k, v in result.timings.items()},
        "cache": {
            "path": result.cache_path,
            "sha256": result.cache_sha256,
            "split_sizes": dict(result.split_sizes),
            "num_exits": result.num_exits,
            "num_classes": meta.get("num_classes"),
            "exit_names": list(result.exit_names),
            "flops": _floats(result.flops),
            "baseline_flops": float(result.baseline_flops),
            "meta": {k: meta[k] for k in sorted(meta) if k in _META_SUMMARY_KEYS},
        },
        "calibration": None if result.temperatures is None else {"temperatures": _floats(result.temperatures)},
        "hypervolume": {front.method: float(front.hypervolume) for front in result.fronts},
        "hypervolume_reference": result.hypervolume_reference,
        "front_sizes": {front.method: front.size for front in result.fronts},
        "exits": [
            {
                "name": e.name,
                "flops": float(e.flops),
                "speedup": float(e.speedup),
                "val_accuracy": float(e.val_accuracy),
                "test_accuracy": float(e.test_accuracy),
            }
            for e in result.exits
        ],
        "chosen": {
            "method": result.chosen.method,
            "index": result.chosen.index,
            "thresholds": _threshold_doc(result.chosen.thresholds),
            "val": _figures(result.chosen.val),
            "test": _figures(result.chosen.test, with_ci=result.chosen.test_accuracy_ci95),
            "guarantee": _guarantee(result),
        },
        "fronts": fronts,
        "per_class_comparison": result.per_class_comparison,
    }


_META_SUMMARY_KEYS = (
    "arch",
    "arch_kwargs",
    "checkpoint_sha256",
    "created",
    "data",
    "data_fingerprint",
    "flop_counter",
    "flop_counter_version",
    "num_classes",
    "params_per_exit",
    "schema",
    "tool_version",
    "unsupported_ops",
)


# --------------------------------------------------------------------------- terminal
def _guarantee_text(result) -> str:
    """The line that says whether the pick is certified or only a val estimate."""
    doc = _guarantee(result)
    if doc is None:
        return ("NOTE: the pick is a val estimate - the thresholds were chosen on val, and new data can fall short of "
                "the target (see the test figures; --delta D gives a guaranteed pick)")
    split = doc["split"]
    bound = (f"accuracy lower bound {doc['accuracy_lower_bound']:.4f}" if "drop_upper_bound_points" not in doc
             else f"drop upper bound {doc['drop_upper_bound_points']:.3f} points")
    return (f"CERTIFIED: {doc['statement']} (Learn-then-Test, delta {doc['delta']:g}; searched on {split['search']} "
            f"val rows, certified on the other {split['calibration']}: p-value {doc['p_value']:.3g}, {bound}, "
            f"calibration accuracy {doc['calibration_accuracy']:.4f})")


def summary_text(result) -> str:
    """The terminal summary of a search: the chosen point on val and test, each exit
    alone, every method's front, and where the time went."""
    chosen = result.chosen
    names = list(result.exit_names)
    pick = result.settings.pick
    lo, hi = chosen.test_accuracy_ci95
    ms = getattr(result, "cost", "flops") == "ms"
    unit = "ms" if ms else "MFLOPs"
    cost_text = (lambda v: f"{v:.4g}") if ms else mflops_text
    head = [
        f"cache {result.cache_path or '(in memory)'}: {result.num_exits} exits, "
        f"val {result.split_sizes.get('val', 0)} / test {result.split_sizes.get('test', 0)} samples, "
        f"original network {cost_text(result.baseline_flops)} {unit}" + (" per sample (latency profile)" if ms else ""),
        f"picked on val by {chosen.method}: {pick.describe()}" if getattr(result, "guarantee", None) is None else
        f"picked by {chosen.method}: the cheapest point of the front found on the search part of val that is certified "
        f"on the calibration part ({pick.flag.replace('-', ' ')} {pick.value:g})",
        "thresholds  " + "  ".join(f"{names[k]} >= {threshold_text(t)}" for k, t in enumerate(chosen.thresholds))
        + (f"  (fallback {result.settings.fallback})" if result.settings.fallback != "deepest" else ""),
    ]
    rows = []
    for split, fig in (("val", chosen.val), ("test", chosen.test)):
        acc = f"{fig.accuracy:.4f}"
        if split == "test":
            acc += f" [{lo:.4f}, {hi:.4f}]"
        rows.append(
            [split, acc, cost_text(fig.flops), f"{fig.speedup:.3f}x", f"{fig.speedup_all_exits:.3f}x"]
            + [f"{100 * f:.1f}%" for f in fig.exit_fractions]
        )
    chosen_table = format_table(
        rows,
        ["split", "accuracy (test: 95% CI)", unit, "speed-up", "vs all exits"] + [f"@{n}" for n in names],
        title="chosen point",
    )
    exit_table = format_table(
        [[e.name, f"{e.val_accuracy:.4f}", f"{e.test_accuracy:.4f}", cost_text(e.flops), f"{e.speedup:.3f}x"] for e in result.exits],
        ["exit alone", "val acc", "test acc", unit, "speed-up"],
        title="each exit alone",
    )
    ref_error, ref_cost = result.hypervolume_reference
    method_table = format_table(
        [[f.method, f.size, f"{f.hypervolume:.4f}", f.evaluations, f"{f.seconds:.3f}"] for f in result.fronts],
        ["method", "front size", "val hypervolume", "evaluations", "seconds"],
        title=f"every method on val (hypervolume: error x cost, reference error {ref_error:g} and {cost_text(ref_cost)} {unit})",
    )
    tail = f"search time {result.front(chosen.method).seconds:.3f} s ({chosen.method}); total {result.timings.get('total', 0.0):.3f} s"
    head.append(_guarantee_text(result))
    lat = getattr(result, "latency", None)
    if lat:
        t = lat["test"]
        tail += (f"\nlatency profile {lat['profile']} ({lat['device_name']}, {lat['threads']} thread(s), {lat['backend']}), "
                 f"batch {lat['batch_size']}: chosen point on test predicted {t['predicted_latency_ms']:.4g} ms/sample "
                 f"({t['predicted_speedup_ms']:.2f}x vs the original's {lat['original_ms']:.4g} ms), "
                 f"{t['flops'] / 1e6:.4g} MFLOPs ({t['speedup_flops']:.2f}x by FLOPs)")
    note = genetic_search_note(result)
    return ("\n".join(head) + "\n\n" + chosen_table + "\n\n" + exit_table + "\n\n" + method_table
            + ("\n" + note if note else "") + "\n\n" + tail)


# Below this relative hypervolume gain NSGA-II and the best baseline are taken to tie.
GENETIC_TIE = 5e-4


def genetic_search_note(result) -> str | None:
    """One line saying whether NSGA-II beat the baselines on this cache, and when it matters.

    With one or two thresholds (K <= 3) an exhaustive grid or a random search covers the
    space and ties NSGA-II; the genetic search pays off with many exits, per-class
    thresholds or latency costs (`make bench`: when_nsga measures it at K = 8).
    """
    volumes = {f.method: float(f.hypervolume) for f in result.fronts}
    if "nsga" not in volumes or len(volumes) < 2:
        return None
    nsga = volumes.pop("nsga")
    best = max(volumes, key=volumes.get)
    gain = (nsga - volumes[best]) / volumes[best] if volumes[best] > 0 else 0.0
    head = f"NSGA-II vs the best baseline ({best}): val hypervolume {gain:+.3%}"
    if gain < GENETIC_TIE:
        return (f"{head}; with {result.num_exits - 1} threshold(s) the baselines already cover the space - the "
                "genetic search pays off with many exits, per-class thresholds or latency costs (make bench: when_nsga)")
    return f"{head}: the genetic search found points the baselines missed"
