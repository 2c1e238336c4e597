"""Does the `--delta` pick hold on unseen data? Violation rate and cost against the oracle.

The population: `tradeoff.cache.synthetic.synthetic_cache(200_000, 100, (0.62, 0.71, 0.76, 0.78))`,
a SCAN-ResNet18-like 4-exit network on 100 classes (population accuracies of the exits
alone ~0.621 / 0.711 / 0.760 / 0.781). It *is* the deployment distribution: a val set is
n = 5,000 rows drawn i.i.d. (with replacement) from it, so a pick's true accuracy and cost
are its figures on the whole population, exactly.

For each of R draws and each target A (at least 2.5 points below the best reachable
population accuracy), the real `run_search` picks thresholds twice: as today (cheapest
with val accuracy >= A, a val estimate) and with `delta = 0.1` (Learn-then-Test,
`tradeoff.search.guarantee`). Reported per target and pooled:

- violation rate: share of draws whose pick has true accuracy < A. Goal with delta: <= 10%.
  A draw that certifies nothing deploys nothing and is no violation; the rate of such draws
  is reported. With R = 200 draws per target, a true rate of 15% would show <= 10% with
  probability binom.cdf(20, 200, 0.15) ~ 2.6% (pooled over both targets, 400 draws:
  binom.cdf(40, 400, 0.15) ~ 0.2%), so a pass rules a 15% rate out; each row's notes
  give this probability for the draws actually run.
- cost ratio: mean over certified draws of the pick's true cost / the oracle's, where the
  oracle is the cheapest thresholds whose *population* accuracy >= A, found on the
  population by NSGA-II (pop 100, 100 generations) merged with the exhaustive grid.
  Goal with delta: <= 1.15.

The same on real data (issue 10), metrics ending in ", Fashion-MNIST": the Fashion-MNIST
demo's cache (`benchmarks.fashion`; 10,000 val+test rows, 3 exits). Each draw splits its
rows at random into n = 5,000 to search and certify on (the draw's val) and the other
5,000, the "population" on which the pick's true accuracy and cost and the oracle (NSGA-II
merged with the grid, per draw) are measured. That truth is itself a finite sample, so a
pick whose population accuracy meets A can still measure just below it there: the
violation rate this way is, if anything, pessimistic for the guarantee. So the experiment
is also run as on the synthetic population ("Fashion-MNIST resampled"): the 10,000 rows
*are* the distribution, val is 5,000 rows drawn from them with replacement, and truth and
oracle are exact on all 10,000 (the draws overlap the truth, as any sample of a finite
population does). R = 100 draws
(`FASHION_DRAWS`): binom.cdf(10, 100, 0.15) ~ 10% per target, pooled over both targets
binom.cdf(20, 200, 0.15) ~ 2.6%.

The per-draw searches use a small NSGA-II (pop 32, 20 generations; all baselines run as in
`tradeoff search`) so that the 2 x R x targets searches fit a few minutes on 2 cores.
`run(quick=True)` shrinks everything to a smoke run; `run(draws=R)` sets R.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import stats

from benchmarks import make_row
from tradeoff.cache.format import ExitCache, validate_cache
from tradeoff.policy.table import exit_table
from tradeoff.policy.bitset import make_scorer
from tradeoff.search import baselines, nsga, pareto
from tradeoff.search.guarantee import CannotCertify
from tradeoff.search.run import run_search
from tradeoff.search.settings import Pick
from tradeoff.cache.synthetic import synthetic_cache

from benchmarks.fashion import fashion_cache, skipped_row

NAME = "guarantee"
DELTA = 0.1
DRAWS = 200
TARGET_GAPS = (0.025, 0.04)  # points below the best reachable population accuracy
EXITS = (0.62, 0.71, 0.76, 0.78)
FULL = dict(population=200_000, classes=100, val=5_000, test=200, pop=32, gens=20, oracle_pop=100, oracle_gens=100)
QUICK = dict(population=20_000, classes=10, val=2_000, test=200, pop=8, gens=3, oracle_pop=16, oracle_gens=5)
# The Fashion-MNIST demo cache (issue 10): 10,000 val+test rows, 5,000 drawn to search per draw.
# ("test": the rows a resampled draw adds as its test split; a held-out draw's test split is its truth.)
FASHION = dict(val=5_000, test=200, pop=32, gens=20, oracle_pop=100, oracle_gens=100)
FASHION_QUICK = dict(val=300, test=100, pop=8, gens=3, oracle_pop=16, oracle_gens=5)
FASHION_DRAWS = 100


def _oracle(accuracy_target: float, front) -> float:
    """Population cost of the cheapest front point whose population accuracy >= target."""
    acc, flops = front
    return float(flops[pareto.pick_target_accuracy(acc, flops, accuracy_target)])


def _population_front(table, size: dict) -> tuple[np.ndarray, np.ndarray]:
    fronts = [nsga.nsga2_search(table, pop=size["oracle_pop"], gens=size["oracle_gens"], seed=0), baselines.grid_search(table)]
    return np.concatenate([f.accuracy for f in fronts]), np.concatenate([f.flops for f in fronts])


def _draw_cache(population: ExitCache, rng: np.random.Generator, size: dict) -> ExitCache:
    rows = rng.integers(0, population.num_samples, size["val"] + size["test"])
    split = np.array(["val"] * size["val"] + ["test"] * size["test"])
    return validate_cache(ExitCache(population.logits[:, rows], population.labels[rows], split, population.flops, population.meta))


class ResampledPopulation:
    """A deployment distribution given as rows: val drawn i.i.d. (with replacement) from them; truth on all, exactly."""

    def __init__(self, cache: ExitCache, size: dict, description: str):
        self.size = size
        self.cache = cache
        table = exit_table(cache.logits, cache.labels, cache.flops)
        self.scorer = make_scorer(table)
        self.front = _population_front(table, size)
        self.best = float(self.front[0].max())
        self.description = (f"{description}: val n={size['val']} drawn i.i.d. from its {cache.num_samples} rows; "
                            "truth on all of them")

    def draw(self, rng: np.random.Generator, targets):
        """(cache to search, scorer giving true figures, {target: oracle cost})."""
        return _draw_cache(self.cache, rng, self.size), self.scorer, {a: _oracle(a, self.front) for a in targets}


def synthetic_population(size: dict, seed: int) -> ResampledPopulation:
    """The synthetic deployment distribution (module docstring)."""
    cache = synthetic_cache(size["population"], size["classes"], EXITS, seed=seed, val_fraction=1.0)
    return ResampledPopulation(cache, size, f"synthetic population N={size['population']}, C={size['classes']}")


class HeldOutPopulation:
    """A real cache's val+test rows: each draw splits them at random into `val` rows to search
    (and certify) on, and the rest, the population the pick's true figures and the oracle
    are measured on (so "truth" is itself a finite sample: see the module docstring)."""

    def __init__(self, cache: ExitCache, size: dict, description: str):
        self.size = size
        self.cache = cache
        self.table = exit_table(cache.logits, cache.labels, cache.flops)
        self.best = float(_population_front(self.table, size)[0].max())
        self.description = (f"{description}: its {cache.num_samples} val+test rows split at random per draw, "
                            f"n={size['val']} to search, the other {cache.num_samples - size['val']} as the truth")

    def draw(self, rng: np.random.Generator, targets):
        order = rng.permutation(self.cache.num_samples)
        val, rest = order[: self.size["val"]], order[self.size["val"]:]
        split = np.array(["val"] * val.size + ["test"] * rest.size)
        rows = np.concatenate([val, rest])
        cache = validate_cache(ExitCache(self.cache.logits[:, rows], self.cache.labels[rows], split, self.cache.flops,
                                         self.cache.meta))
        truth = exit_table(self.cache.logits[:, rest], self.cache.labels[rest], self.cache.flops)
        front = _population_front(truth, self.size)
        return cache, make_scorer(truth), {a: _oracle(a, front) for a in targets}


def measure(draws: int, size: dict, seed: int = 0, population=None) -> dict:
    """Run the experiment; returns per-target arrays of true accuracy and cost per draw.

    population: a `ResampledPopulation` (default: the synthetic one, from `size` and `seed`) or
        a `HeldOutPopulation`.
    """
    population = population or synthetic_population(size, seed)
    best = population.best
    targets = [round(best - gap, 4) for gap in TARGET_GAPS]
    rng = np.random.default_rng(seed + 1)
    out = {a: {"plain": [], "delta": []} for a in targets}
    oracles = {a: [] for a in targets}
    start = time.perf_counter()
    for _ in range(draws):
        cache, scorer, oracle = population.draw(rng, targets)
        for a in targets:
            oracles[a].append(oracle[a])
            for mode, delta in (("plain", None), ("delta", DELTA)):
                try:
                    result = run_search(cache, pick=Pick("target_acc", a), delta=delta, pop=size["pop"], gens=size["gens"],
                                        seed=int(rng.integers(2**31)), bootstrap=100)
                except CannotCertify:
                    out[a][mode].append((np.nan, np.nan, oracle[a]))
                    continue
                true = scorer(np.asarray(result.chosen.thresholds)[None])
                out[a][mode].append((float(true.accuracy[0]), float(true.flops[0]), oracle[a]))
    return {"best": best, "targets": targets, "oracle": {a: float(np.mean(o)) for a, o in oracles.items()}, "picks": out,
            "seconds": time.perf_counter() - start, "population": population.description}


def _rows_for(name: str, picks: list, target: float, oracle: float, quick: bool, draws: int, label: str = "") -> list[dict]:
    acc = np.array([p[0] for p in picks])
    cost = np.array([p[1] for p in picks])
    per_draw_oracle = np.array([p[2] for p in picks])
    picked = ~np.isnan(acc)
    violations = int(np.count_nonzero(acc[picked] < target))
    rate = violations / len(picks)
    ratio = float(np.mean(cost[picked] / per_draw_oracle[picked])) if picked.any() else float("nan")
    guaranteed = name == "delta"
    label = f"A={target:.4f}, " + (f"delta={DELTA}" if guaranteed else "no delta (val estimate)") + label
    note = f"{violations}/{len(picks)} draws below A; {len(picks) - int(picked.sum())} certified nothing"
    return [
        make_row(NAME, f"violation rate, {label}", rate, goal="<= 10%" if guaranteed else "report",
                 passed=None if quick or not guaranteed else rate <= 0.10,
                 notes=note + (f"; P(<= 10% observed | true 15%) = {stats.binom.cdf(int(0.1 * draws), draws, 0.15):.2g}" if guaranteed else "")),
        make_row(NAME, f"cost / oracle cost, {label}", ratio if np.isfinite(ratio) else 0.0, goal="<= 1.15x" if guaranteed else "report",
                 passed=None if quick or not guaranteed or not np.isfinite(ratio) else ratio <= 1.15,
                 notes=f"mean over {int(picked.sum())} picks of true cost / the oracle's ({oracle / 1e6:.4g} MFLOPs, mean over draws)"),
    ]


def run(quick: bool = False, draws: int | None = None) -> list[dict]:
    size = QUICK if quick else FULL
    draws = int(draws if draws is not None else (2 if quick else DRAWS))
    rows = _experiment_rows(measure(draws, size), size, quick, draws, "")
    fashion = fashion_cache(quick)
    if fashion is None:
        return rows + [skipped_row(NAME, "violation rate, pooled over targets")]
    fsize = FASHION_QUICK if quick else FASHION
    fdraws = int(draws if quick else min(draws, FASHION_DRAWS))
    for population, label in ((HeldOutPopulation(fashion[0], fsize, fashion[1]), ", Fashion-MNIST"),
                              (ResampledPopulation(fashion[0], fsize, fashion[1]), ", Fashion-MNIST resampled")):
        rows += _experiment_rows(measure(fdraws, fsize, population=population), fsize, quick, fdraws, label)
    return rows


def _experiment_rows(m: dict, size: dict, quick: bool, draws: int, label: str) -> list[dict]:
    rows = []
    pooled = []
    for a in m["targets"]:
        for mode in ("plain", "delta"):
            rows += _rows_for(mode, m["picks"][a][mode], a, m["oracle"][a], quick, draws, label)
        pooled += [(p[0], a) for p in m["picks"][a]["delta"]]
    total = len(pooled)
    bad = sum(1 for acc, a in pooled if acc == acc and acc < a)
    rows.append(make_row(
        NAME, f"violation rate, pooled over targets, delta={DELTA}{label}", bad / total, goal="<= 10%",
        passed=None if quick else bad / total <= 0.10,
        notes=f"{bad}/{total} draws; P(<= 10% observed | true 15%) = {stats.binom.cdf(int(0.1 * total), total, 0.15):.2g}; "
              f"{m['population']}; best reachable {m['best']:.4f}; "
              f"NSGA-II pop {size['pop']} x {size['gens']} gens per draw, {m['seconds']:.0f} s",
    ))
    return rows


if __name__ == "__main__":  # pragma: no cover - `python -m benchmarks.bench_guarantee [R]`
    import sys

    from benchmarks.__main__ import markdown

    print(markdown(run(draws=int(sys.argv[1]) if len(sys.argv) > 1 else None), {}, quick=False), end="")
