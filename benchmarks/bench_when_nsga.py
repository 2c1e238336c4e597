"""When does the genetic search matter? NSGA-II against the baselines, by number of exits.

With K <= 3 exits (one or two thresholds) an exhaustive grid or a random search already covers
the threshold space: on the digits demo NSGA-II's val hypervolume was 0.988768 against the
grid's 0.988761. The space grows as points^(K-1), so with many exits the baselines fall behind.
This benchmark runs `tradeoff.search.run.run_search` (NSGA-II plus every baseline it runs:
one global threshold, MSDNet's budget rule, random search with NSGA-II's evaluations, and the
exhaustive grid while K - 1 <= 3) on synthetic caches (`tradeoff.cache.synthetic`, seeded):

* K = 3, FLOPs-like costs (the demo's case): expected to tie;
* K = 8, FLOPs-like costs: NSGA-II expected ahead of every baseline;
* K = 8, latency-like costs (each exit's head costs nearly as much as the next section, as
  batch-1 latency does on CPU: the cheap exits are not cheap): expected ahead as well.

Rows: the val cost of the cheapest point as accurate as the deepest exit (the default pick) for
NSGA-II and the cheapest baseline; and each front's val hypervolume (error x cost, one reference point per cache) with NSGA-II
as `value` and the best baseline as `baseline`; `ratio` > 1 means NSGA-II covers more.
Goal: a tie at K = 3 (ratio >= 0.998: the grid may even edge ahead, it is exhaustive there) and
NSGA-II ahead at K = 8 (ratio >= 1.0005).
"""

from __future__ import annotations

import numpy as np

from benchmarks import make_row
from tradeoff.cache.synthetic import synthetic_cache
from tradeoff.search.run import run_search

NAME = "when_nsga"
K8_ACCURACIES = (0.45, 0.55, 0.63, 0.70, 0.75, 0.79, 0.82, 0.84)


def _cases(quick: bool):
    n = 2_000 if quick else 6_000
    linear8 = tuple(1e8 * (k + 1) for k in range(8))
    latency8 = tuple(1e8 * (0.6 + 0.4 * k / 7) * (1 + 0.15 * k) for k in range(8))  # a high floor: slow heads
    return [
        ("K=3 FLOPs costs", synthetic_cache(n, 10, (0.7, 0.8, 0.84), (1e8, 2e8, 3e8), seed=1), 0.998),
        ("K=8 FLOPs costs", synthetic_cache(n, 10, K8_ACCURACIES, linear8, seed=1), 1.0005),
        ("K=8 latency-like costs", synthetic_cache(n, 10, K8_ACCURACIES, latency8, seed=1), 1.0005),
    ]


def run(quick: bool = False) -> list[dict]:
    pop, gens = (40, 25) if quick else (100, 100)
    rows = []
    for label, cache, goal in _cases(quick):
        result = run_search(cache, pick=None, pop=pop, gens=gens, seed=0, bootstrap=100)
        volumes = {front.method: float(front.hypervolume) for front in result.fronts}
        nsga = volumes.pop("nsga")
        best_method = max(volumes, key=volumes.get)
        best = volumes[best_method]
        ratio = nsga / best if best > 0 else float("inf")
        others = ", ".join(f"{m} {v:.6f}" for m, v in sorted(volumes.items()))
        deepest = float(result.exits[-1].val_accuracy)
        costs = {f.method: _cheapest(f, deepest) for f in result.fronts}
        nsga_cost = costs.pop("nsga")
        cheapest_baseline = min(costs, key=costs.get)
        rows.append(make_row(
            NAME, f"{label}: val cost (10^6 units) at the deepest exit's accuracy, NSGA-II vs best baseline ({cheapest_baseline})",
            nsga_cost / 1e6, baseline=costs[cheapest_baseline] / 1e6,
            notes="the default pick (no loss against the deepest exit on val); ratio < 1 = NSGA-II cheaper; "
                  + ", ".join(f"{m} {c / 1e6:.2f}" for m, c in sorted(costs.items())),
        ))
        rows.append(make_row(
            NAME, f"{label}: val hypervolume, NSGA-II vs best baseline ({best_method})", nsga, baseline=best,
            ratio=ratio, goal=f"ratio >= {goal:g}", passed=None if quick else bool(ratio >= goal),
            notes=f"NSGA-II {nsga:.6f}; {others}; pop {pop} x gens {gens}, {cache.num_samples} samples",
        ))
    return rows


def _cheapest(front, accuracy: float) -> float:
    """Lowest val cost on `front` with val accuracy >= `accuracy` (inf when none reaches it)."""
    ok = np.asarray(front.val.accuracy) >= accuracy - 1e-12
    return float(np.asarray(front.val.flops)[ok].min()) if ok.any() else float("inf")


if __name__ == "__main__":  # pragma: no cover
    for row in run(quick=False):
        print(row)
