"""NSGA-II search for per-exit thresholds with DEAP, scored one population per call.

Genes are the thresholds t_1..t_{K-1} in [0, 1]; objectives are val accuracy (up) and
val mean cost (down), DEAP weights (1.0, -1.0). Operators are DEAP's own: parents by
`selTournamentDCD`, bounded SBX crossover (`cxSimulatedBinaryBounded`), bounded
polynomial mutation (`mutPolynomialBounded`), survivors by `selNSGA2` with DEAP's
`nd="log"` non-dominated sort (Fortin et al.'s sweep: the same fronts as the standard
O(M N^2) sort, ~25x faster at 200 individuals).

What differs from DEAP's textbook loop, and why:
- The whole batch of new individuals is scored in ONE scorer call per generation (a
  (P, K-1) matrix in, arrays out); a Python call per individual would cost more than
  the scoring itself.
- SBX and polynomial mutation work gene by gene with the same bounds everywhere, so each
  is applied ONCE per generation to the concatenated genes of all pairs / all children
  (the same operator as a call per pair / child, without the per-call overhead).
  Children are fresh lists, not `deepcopy` clones; a child whose genes came out
  unchanged duplicates its parent and is dropped instead of re-scored.
- DEAP's operators draw from the global `random` module; each run seeds it and puts the
  caller's state back afterwards, so two searches in one process share nothing and the
  caller's random stream is untouched. Fitness/individual classes are plain subclasses
  defined here (no `creator`), for the same reason.
- The front returned is the non-dominated archive of every vector ever scored, merged
  in NumPy each generation, not only the last population.
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import Iterator

import numpy as np
from deap import base, tools

from tradeoff.policy import ExitTable
from tradeoff.search.pareto import FrontResult, front_result, nondominated_unchecked
from tradeoff.search.scoring import Scorer, check_table, scorer_for

# Per-exit quantile levels of val confidence used as informed starting points.
_SEED_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.98)


class _Fitness(base.Fitness):
    """(val accuracy, val mean FLOPs): accuracy maximised, cost minimised.

    `__init__` skips base.Fitness's per-instance re-check of the class's `weights`
    (fixed here): thousands of fitnesses are made per search.
    """

    weights = (1.0, -1.0)

    def __init__(self):
        pass

    def _get_values(self):
        return (self.wvalues[0], -self.wvalues[1]) if self.wvalues else ()

    # Same as base.Fitness.values (wvalues / weights, exact for weights +-1), read without
    # map/truediv: crowding distances read it for every individual every generation.
    values = property(_get_values, base.Fitness.setValues, base.Fitness.delValues)


class _Individual(list):
    """A threshold vector with its fitness; a plain list so DEAP's operators work in place."""

    __slots__ = ("fitness",)

    def __init__(self, genes=()):
        super().__init__(genes)
        self.fitness = _Fitness()


@contextlib.contextmanager
def seeded_global_random(seed: int) -> Iterator[None]:
    """Seed Python's global `random` (which DEAP's operators use) and restore it afterwards."""
    saved = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved)


def _initial_thresholds(table: ExitTable, pop: int, rng: np.random.Generator) -> np.ndarray:
    """(pop, K-1) starting points: informed ones first, the rest uniform in [0, 1].

    Informed: all ones (nearly everyone goes to the deepest exit), all zeros (everyone
    leaves at exit 1), and for a few levels q the per-exit val-confidence q-quantiles.
    """
    dim = table.num_exits - 1
    informed = [np.ones(dim), np.zeros(dim)]
    informed += list(np.quantile(table.confidence[:dim], _SEED_QUANTILES, axis=1))
    informed = np.asarray(informed[:pop], dtype=np.float64)
    uniform = rng.random((pop - informed.shape[0], dim))
    return np.clip(np.concatenate([informed, uniform]), 0.0, 1.0)


def _evaluate(individuals: list, thresholds: np.ndarray, scorer: Scorer, archive: "_Archive") -> int:
    """Score `thresholds` (the genes of `individuals`) in ONE scorer call; set fitness; feed the archive."""
    if not individuals:
        return 0
    scores = scorer(thresholds)
    accuracy = np.asarray(scores.accuracy, dtype=np.float64)
    flops = np.asarray(scores.flops, dtype=np.float64)
    _set_fitness(individuals, accuracy, flops)
    archive.add(thresholds, accuracy, flops)
    return len(individuals)


class _Archive:
    """Running non-dominated set of everything scored, in NumPy arrays sorted by cost.

    Ties (same accuracy and cost) keep the point scored first, as `pareto_mask` does on
    everything in scoring order. Most generations add nothing, so a batch is first
    screened against the archive (one `searchsorted`) before any merge.
    """

    def __init__(self, dim: int):
        self.thresholds = np.empty((0, dim))
        self.accuracy = np.empty(0)
        self.error = np.empty(0)
        self.flops = np.empty(0)

    def add(self, thresholds: np.ndarray, accuracy: np.ndarray, flops: np.ndarray) -> None:
        error = 1.0 - accuracy
        new = np.flatnonzero(nondominated_unchecked(error, flops))  # the batch's own front
        if self.flops.size:
            # The archive point with the largest cost <= c has the lowest error among all
            # those costing <= c; a new point it matches or beats in error is dominated.
            pos = np.searchsorted(self.flops, flops[new], side="right") - 1
            beaten = (pos >= 0) & (self.error[np.maximum(pos, 0)] <= error[new])
            new = new[~beaten]
            if new.size == 0:
                return
        t = np.concatenate([self.thresholds, thresholds[new]])
        a = np.concatenate([self.accuracy, accuracy[new]])
        e = np.concatenate([self.error, error[new]])
        f = np.concatenate([self.flops, flops[new]])
        keep = np.flatnonzero(nondominated_unchecked(e, f))
        keep = keep[np.argsort(f[keep], kind="stable")]
        self.thresholds, self.accuracy, self.error, self.flops = t[keep], a[keep], e[keep], f[keep]


def _set_fitness(individuals: list, accuracy: np.ndarray, flops: np.ndarray) -> None:
    """fitness.values = (accuracy, flops), set as the weighted tuple (acc, -flops) directly (exact)."""
    for ind, wvalues in zip(individuals, zip(accuracy.tolist(), (-flops).tolist())):
        ind.fitness.wvalues = wvalues


def _select_parents(population: list, k: int) -> list:
    """`k` parents by DEAP's dominance/crowding tournament (`selTournamentDCD`).

    It needs a multiple of four candidates; other sizes are padded with the first
    individuals (at most three) and the choice truncated to `k`.
    """
    pad = (-len(population)) % 4
    candidates = population + population[:pad]
    return tools.selTournamentDCD(candidates, len(candidates))[:k]


def _vary(toolbox: base.Toolbox, parents: list, cxpb: float) -> tuple[list, np.ndarray]:
    """Children of consecutive parent pairs: SBX with probability cxpb, then mutation.

    DEAP's SBX and polynomial mutation treat every gene independently (same bounds for
    all), so applying each ONCE to the concatenated genes of all pairs / all children is
    the same operator as one call per pair / per child, at a fraction of the Python
    overhead. A child whose genes came out unchanged is a copy of a parent already in
    the population: it is dropped (as pymoo drops duplicates), not scored again.

    Returns:
        (the new children, their genes (M, K-1)), M <= len(parents).
    """
    m, dim = len(parents), len(parents[0])
    crossed = [i for i in range(m // 2) if random.random() <= cxpb]
    rows = parents
    if crossed:
        first = [g for i in crossed for g in parents[2 * i]]
        second = [g for i in crossed for g in parents[2 * i + 1]]
        toolbox.mate(first, second)
        rows = list(parents)  # parents themselves are never modified
        for j, i in enumerate(crossed):
            rows[2 * i], rows[2 * i + 1] = first[j * dim : (j + 1) * dim], second[j * dim : (j + 1) * dim]
    flat = [g for row in rows for g in row]
    toolbox.mutate(flat)
    children, changed = [], []
    for j, parent in enumerate(parents):
        genes = flat[j * dim : (j + 1) * dim]
        if genes != parent:
            children.append(_Individual(genes))
            changed.append(j)
    return children, np.array(flat, dtype=np.float64).reshape(m, dim)[changed]


def _check_options(pop, gens, seed, cx_eta, mut_eta, cxpb, indpb) -> None:
    for name, value, low in (("pop", pop, 4), ("gens", gens, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    for name, value in (("cx_eta", cx_eta), ("mut_eta", mut_eta)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number (distribution index, e.g. 20); got {value!r}")
    for name, value in (("cxpb", cxpb), ("indpb", indpb)):
        if value is not None and not (0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be a probability in [0, 1]; got {value!r}")


def nsga2_search(
    table: ExitTable,
    *,
    pop: int = 100,
    gens: int = 100,
    seed: int = 0,
    scorer: Scorer | None = None,
    cx_eta: float = 20.0,
    mut_eta: float = 20.0,
    cxpb: float = 0.9,
    indpb: float | None = None,
) -> FrontResult:
    """NSGA-II over per-exit thresholds on one split's ExitTable (normally val).

    Args:
        table: the val split's ExitTable (K >= 2 exits).
        pop: population size (>= 4); `pop` new vectors are scored per generation.
        gens: generations after the initial population; pop * (gens + 1) vectors at most.
        seed: seeds the initial population and DEAP's operators; same table + seed ->
            bitwise identical front.
        scorer: callable (P, K-1) thresholds -> Scores; default the policy's fastest.
        cx_eta: SBX distribution index (larger = children nearer their parents).
        mut_eta: polynomial-mutation distribution index.
        cxpb: probability that a parent pair is crossed.
        indpb: per-threshold mutation probability; default 1 / (K-1).

    Returns:
        FrontResult (method "nsga") of the non-dominated archive; `evaluations` counts
        the vectors actually scored, `seconds` the wall time of the whole search.

    Raises:
        ValueError / TypeError: bad table or options, naming the argument.
    """
    check_table(table)
    _check_options(pop, gens, seed, cx_eta, mut_eta, cxpb, indpb)
    start = time.perf_counter()
    score = scorer_for(table, scorer)
    dim = table.num_exits - 1
    toolbox = base.Toolbox()
    toolbox.register("mate", tools.cxSimulatedBinaryBounded, eta=float(cx_eta), low=0.0, up=1.0)
    toolbox.register(
        "mutate", tools.mutPolynomialBounded, eta=float(mut_eta), low=0.0, up=1.0,
        indpb=1.0 / dim if indpb is None else float(indpb),
    )
    toolbox.register("select", tools.selNSGA2, nd="log")
    toolbox.register("parents", _select_parents)
    archive = _Archive(dim)
    rng = np.random.default_rng(seed)
    with seeded_global_random(int(seed)):
        start_points = _initial_thresholds(table, pop, rng)
        population = [_Individual(row) for row in start_points.tolist()]
        evaluations = _evaluate(population, start_points, score, archive)
        population = toolbox.select(population, pop)  # assigns crowding distances
        for _ in range(gens):
            offspring, genes = _vary(toolbox, toolbox.parents(population, pop), cxpb)
            evaluations += _evaluate(offspring, genes, score, archive)
            population = toolbox.select(population + offspring, pop)
    return front_result(
        archive.thresholds, archive.accuracy, archive.flops,
        evaluations=evaluations, seconds=time.perf_counter() - start,
        method="nsga", seed=int(seed), generations=gens,
    )


def restart_search(
    table: ExitTable,
    *,
    restarts: int = 1,
    jobs: int = 1,
    seed: int = 0,
    **kwargs,
) -> FrontResult:
    """R independently seeded NSGA-II runs, in parallel with joblib, fronts merged.

    Restart i runs `nsga2_search(table, seed=seed + i, **kwargs)`, so `restarts=1` is
    exactly `nsga2_search(table, seed=seed)`. Fronts are merged in restart order with
    `pareto_mask` (ties keep the earlier restart's point), so the result is bitwise the
    same for any `jobs`.

    Args:
        restarts: R >= 1 runs.
        jobs: worker processes (joblib, loky backend); 1 runs them in this process.
        seed: seed of restart 0.
        **kwargs: passed to `nsga2_search` (pop, gens, scorer, operator settings).

    Returns:
        FrontResult (method "nsga", seed = `seed`); `evaluations` summed over the runs,
        `seconds` the wall time of all of them.
    """
    for name, value in (("restarts", restarts), ("jobs", jobs)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    check_table(table)
    start = time.perf_counter()
    seeds = [int(seed) + i for i in range(restarts)]
    if jobs == 1 or restarts == 1:
        fronts = [nsga2_search(table, seed=s, **kwargs) for s in seeds]
    else:
        from joblib import Parallel, delayed

        fronts = Parallel(n_jobs=min(jobs, restarts))(delayed(nsga2_search)(table, seed=s, **kwargs) for s in seeds)
    return front_result(
        np.concatenate([f.thresholds for f in fronts]),
        np.concatenate([f.accuracy for f in fronts]),
        np.concatenate([f.flops for f in fronts]),
        evaluations=sum(f.evaluations for f in fronts),
        seconds=time.perf_counter() - start,
        method="nsga", seed=int(seed), generations=fronts[0].generations,
    )
