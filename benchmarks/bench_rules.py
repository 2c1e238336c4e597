"""Issue 11: exit rules side by side on one cache (`make bench`).

- Per-class vs per-exit NSGA-II: search seconds and hypervolume (val, and test, never
  searched), plus the paired test bootstrap of the two picks at no loss against the
  deepest exit (`SearchResult.per_class_comparison`): per-class is not the default unless
  its gain's 95% interval excludes zero.
- NSGA-II under the three fallbacks (deepest; SCAN's rule = every exit thresholded, the
  ensemble answers; SDN's most-confident): front hypervolumes on val and test, and the
  scorer's speed per 1,000 threshold vectors under each.
Hypervolumes share one reference (error 1, cost of the deepest exit), so they compare
directly across rules. Timings are medians on a shared machine; read them as ratios.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import make_row
from tradeoff.cache.synthetic import synthetic_cache
from tradeoff.search import pareto
from tradeoff.search.run import run_search

NAME = "rules"


def _test_hv(result, method: str) -> float:
    front = result.front(method)
    return pareto.hypervolume_2d(1.0 - front.test.accuracy, front.test.flops, reference=result.hypervolume_reference)


def run(quick: bool = False) -> list[dict]:
    n, classes, pop, gens = (2_000, 20, 24, 8) if quick else (10_000, 100, 100, 100)
    cache = synthetic_cache(n, classes, seed=11)
    rows = []
    per_class = run_search(cache, per_class=True, pop=pop, gens=gens, seed=0)
    exit_front, class_front = per_class.front("nsga"), per_class.front("nsga-per-class")
    comp = per_class.per_class_comparison
    shape = f"synthetic cache N={n} (val {per_class.split_sizes['val']}), C={classes}, K={per_class.num_exits}, pop {pop} x {gens} gens"
    rows += [
        make_row(NAME, "per-class search seconds", class_front.seconds, baseline=exit_front.seconds, goal="informational",
                 notes=f"{shape}; baseline = per-exit NSGA-II on the same cache"),
        make_row(NAME, "per-class val hypervolume", class_front.hypervolume, baseline=exit_front.hypervolume,
                 goal="informational", notes="baseline = per-exit front"),
        make_row(NAME, "per-class test hypervolume", _test_hv(per_class, "nsga-per-class"),
                 baseline=_test_hv(per_class, "nsga"), goal="informational", notes="fronts found on val, scored on test"),
        make_row(NAME, "per-class pick: test accuracy gain", comp["test_accuracy_gain"], goal="CI excludes 0 to be default",
                 passed=bool(comp["per_class_wins"]),
                 notes=f"95% paired bootstrap {comp['test_accuracy_gain_ci95'][0]:+.4f}..{comp['test_accuracy_gain_ci95'][1]:+.4f}; "
                       f"FLOPs saving {comp['test_flops_saving'] / 1e6:+.3f} M "
                       f"({comp['test_flops_saving_ci95'][0] / 1e6:+.3f}..{comp['test_flops_saving_ci95'][1] / 1e6:+.3f})"),
    ]
    results = {}
    for fallback in ("deepest", "ensemble", "most-confident"):
        results[fallback] = run_search(cache, fallback=fallback, pop=pop, gens=gens, seed=0)
    base = results["deepest"]
    for fallback in ("ensemble", "most-confident"):
        r = results[fallback]
        label = "SCAN rule (ensemble)" if fallback == "ensemble" else "SDN rule (most-confident)"
        rows += [
            make_row(NAME, f"NSGA-II {label}: val hypervolume", r.front("nsga").hypervolume,
                     baseline=base.front("nsga").hypervolume, goal="informational", notes="baseline = deepest fallback"),
            make_row(NAME, f"NSGA-II {label}: test hypervolume", _test_hv(r, "nsga"), baseline=_test_hv(base, "nsga"),
                     goal="informational", notes="baseline = deepest fallback"),
            make_row(NAME, f"NSGA-II {label}: search seconds", r.front("nsga").seconds,
                     baseline=base.front("nsga").seconds, goal="informational",
                     notes="K thresholds and one more bitset row than deepest's K-1"),
        ]
    scan = results["ensemble"]
    rows.append(make_row(NAME, "SCAN rule: NSGA-II vs MSDNet-budget front, val hypervolume",
                         scan.front("nsga").hypervolume, baseline=scan.front("msdnet").hypervolume, goal="> 1x",
                         passed=bool(scan.front("nsga").hypervolume > scan.front("msdnet").hypervolume),
                         notes="both under SCAN's rule on the same val table"))
    if quick:
        for row in rows:
            row["passed"] = None
    return rows


if __name__ == "__main__":
    t0 = time.perf_counter()
    for row in run(quick=False):
        print(row)
    print(f"{time.perf_counter() - t0:.1f} s")
