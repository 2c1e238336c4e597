"""NSGA-II search for per-exit thresholds with DEAP, scored one population per call.

Genes are the thresholds t_1..t_M in [0, 1] (M = K-1 under the `deepest` fallback, K
under `ensemble` / `most-confident`); objectives are val accuracy (up) and val mean cost
(down), DEAP weights (1.0, -1.0).

Switching an exit off. A gene at its upper bound 1.0 switches its exit off
(`OFF_THRESHOLD`: nobody leaves, even at confidence exactly 1.0) wherever that differs
from the threshold 1.0, i.e. where some val confidence of that exit reaches 1.0 (a
softmax saturates at exactly 1.0 once a logit margin passes ~37 in float64); elsewhere the
two are the same rule and 1.0 is kept. The all-ones starting point and every gene that
variation clips to the bound therefore reach "off", so a confidently wrong shallow exit
can be closed.

Per-class thresholds (`per_class=True`): one threshold per (exit, class the exit
predicts), a (M, C) table. Genes are M shared thresholds s_k plus M * C class genes g_kc;
the table is t_kc = s_k + w_kc (g_kc - s_k) with w_kc = n_kc / (n_kc + tau), n_kc the val
samples exit k predicts as class c: a class seen rarely on val is shrunk toward its
exit's shared threshold (empirical-Bayes style shrinkage, `tau` = `PER_CLASS_SHRINKAGE`
samples), so 100 classes do not overfit a 5,000-sample val split. The starting
population holds the per-exit starting points (g = s). Parents by DEAP's dominance/crowding
tournament rule; survivors by DEAP's `selNSGA2` with its `nd="log"` non-dominated sort
(Fortin et al.'s sweep: the same fronts as the standard O(M N^2) sort, ~25x faster at
200 individuals).
Variation is bounded SBX crossover and bounded polynomial mutation with DEAP 1.4's
formulas (`cxSimulatedBinaryBounded`, `mutPolynomialBounded`, after Deb's NSGA-II C
code), written here as NumPy operators over all pairs / children at once
(`sbx_bounded`, `polynomial_mutation_bounded`) and registered in the run's toolbox.

What differs from DEAP's textbook loop, and why:
- The whole batch of new individuals is scored in ONE scorer call per generation (a
  (P, K-1) matrix in, arrays out); a Python call per individual would cost more than
  the scoring itself.
- SBX and polynomial mutation work gene by gene with the same bounds everywhere, so each
  runs ONCE per generation as a few NumPy passes over all pairs / all children; DEAP's
  versions loop over genes in Python (~0.3 ms per generation at pop 100). They take
  their uniform draws as arrays, from the run's `numpy.random.Generator` (seeded by the
  search seed), so the same draws give DEAP's children (to the last bit of `**`, which
  NumPy's SIMD and libm may round differently; tests/test_nsga.py) and the same seed
  the same front. Children whose genes came out unchanged duplicate a parent and are
  dropped instead of re-scored.
- Parents are chosen by DEAP's dominance/crowding tournament rule (`selTournamentDCD`),
  vectorised here (`tournament_dcd`), with the same pairing; DEAP's version loops in
  Python and draws from the global `random`.
- Every draw comes from one `numpy.random.Generator` seeded by the search seed, never
  from the global `random` module (which `selNSGA2` does not use), so two searches in
  one process share nothing and the caller's random streams are untouched.
  Fitness/individual classes are defined here (no `creator`), for the same reason.
- An individual is only what `selNSGA2` reads: a fitness set once when it is scored,
  and the row of its genes in one NumPy store of every vector scored (no list per
  individual, no `deepcopy` clones).
- The front returned is the non-dominated archive of every vector ever scored, merged
  in NumPy each generation, not only the last population.
"""

from __future__ import annotations

import time

import numpy as np
from deap import base, tools

from tradeoff.errors import is_integer
from tradeoff.policy.rule import OFF_THRESHOLD
from tradeoff.policy.scoring import ExitTable
from tradeoff.search.operators import polynomial_mutation_bounded, sbx_bounded, select_parents, vary
from tradeoff.search.pareto import FrontResult, front_result
from tradeoff.search.scoring import Scorer, check_table, scorer_for

# Per-exit quantile levels of val confidence used as informed starting points.
_SEED_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.98)
# tau of the per-class shrinkage: a class predicted tau times at an exit gets half its own threshold.
PER_CLASS_SHRINKAGE = 50.0


class GeneDecoder:
    """Genes (P, D) in [0, 1] -> the thresholds the scorer takes: (P, M), or (P, M, C) per class.

    See the module docstring (switching off; per-class shrinkage). Built once per search
    from the val table.
    """

    def __init__(self, table: ExitTable, *, per_class: bool = False, tau: float = PER_CLASS_SHRINKAGE):
        M = table.num_thresholds
        conf = table.confidence[:M]
        self.num_thresholds = M
        self.per_class = bool(per_class)
        if not self.per_class:
            self.dim = M
            self.saturated = (conf >= 1.0).any(axis=1)  # (M,)
            return
        if table.predicted is None:
            raise ValueError("per-class search needs a table that kept predictions: exit_table(..., keep_predictions=True)")
        C = int(table.predicted.max()) + 1 if table.predicted.size else 1
        self.num_classes = C
        counts = np.stack([np.bincount(table.predicted[k], minlength=C) for k in range(M)]).astype(np.float64)
        self.weight = counts / (counts + float(tau))  # (M, C)
        sat = np.zeros((M, C), dtype=bool)
        for k in range(M):
            sat[k] = np.bincount(table.predicted[k], weights=(conf[k] >= 1.0), minlength=C) > 0
        self.saturated = sat
        self.dim = M * (C + 1)

    def __call__(self, genes: np.ndarray) -> np.ndarray:
        M = self.num_thresholds
        if not self.per_class:
            return np.where((genes >= 1.0) & self.saturated, OFF_THRESHOLD, genes)
        shared = genes[:, :M, None]  # (P, M, 1)
        own = genes[:, M:].reshape(-1, M, self.num_classes)
        t = shared + self.weight * (own - shared)
        return np.where((t >= 1.0) & self.saturated, OFF_THRESHOLD, np.minimum(t, 1.0))

    def seed_genes(self, per_exit: np.ndarray) -> np.ndarray:
        """Per-exit genes (P, M) as genes of this space (class genes = the shared ones)."""
        if not self.per_class:
            return per_exit
        return np.concatenate([per_exit, np.repeat(per_exit, self.num_classes, axis=1)], axis=1)



class _Fitness(base.Fitness):
    """(val accuracy, val mean FLOPs): accuracy maximised, cost minimised.

    Set once, when its individual is made, and never changed: `wvalues` (accuracy,
    -flops) and `values` (accuracy, flops) are then both plain attributes, where
    base.Fitness computes `values` from `wvalues` in a property on every read (DEAP's
    crowding distance reads it ~13,000 times per search). `__init__` is object's (C, no
    frame): it skips base.Fitness's per-instance re-check of the class's `weights`.
    """

    weights = (1.0, -1.0)
    values = ()  # a plain class attribute: hides base.Fitness's property
    __init__ = object.__init__


class _Individual:
    """One scored threshold vector as DEAP's selection sees it: its fitness, and the row
    of its genes in the run's store of every vector scored (NumPy, not a list per
    individual, so parents' genes are one fancy index away)."""

    __slots__ = ("fitness", "row")

    def __init__(self, row: int, accuracy: float, flops: float):
        self.row = row
        self.fitness = fitness = _Fitness()
        fitness.values = (accuracy, flops)
        fitness.wvalues = (accuracy, -flops)  # = values * weights, exactly


def _initial_thresholds(table: ExitTable, pop: int, rng: np.random.Generator,
                        decoder: GeneDecoder | None = None) -> np.ndarray:
    """(pop, D) starting genes: informed ones first, the rest uniform in [0, 1].

    Informed: all ones (nearly everyone goes to the deepest exit; saturated exits off),
    all zeros (everyone leaves at exit 1), and for a few levels q the per-exit
    val-confidence q-quantiles (per class: the same, every class at its exit's value).
    When the last exit is thresholded too (ensemble / most-confident fallbacks), also the
    same points with the last threshold 0, i.e. the `deepest` rule's points.
    """
    decoder = GeneDecoder(table) if decoder is None else decoder
    dim = decoder.num_thresholds
    informed = [np.ones(dim), np.zeros(dim)]
    informed += list(np.quantile(table.confidence[:dim], _SEED_QUANTILES, axis=1))
    if dim == table.num_exits:  # every exit thresholded: the same points with the last exit taking all
        informed += [np.append(row[:-1], 0.0) for row in (informed[0], *informed[2:])]
    informed = decoder.seed_genes(np.asarray(informed, dtype=np.float64))[:pop]
    uniform = rng.random((pop - informed.shape[0], decoder.dim))
    return np.clip(np.concatenate([informed, uniform]), 0.0, 1.0)


def _evaluate(genes: np.ndarray, scorer: Scorer, archive: "_Archive", store: np.ndarray, first: int,
              decoder: GeneDecoder) -> list:
    """Score (P, D) `genes` (decoded to thresholds) in ONE scorer call and feed the archive.

    Returns:
        P individuals, their genes kept in rows first..first+P-1 of `store`.
    """
    if genes.shape[0] == 0:
        return []
    thresholds = decoder(genes)
    scores = scorer(thresholds)
    accuracy = np.asarray(scores.accuracy, dtype=np.float64)
    flops = np.asarray(scores.flops, dtype=np.float64)
    archive.add(thresholds, accuracy, flops)
    rows = range(first, first + genes.shape[0])
    store[rows.start : rows.stop] = genes
    return [_Individual(*row) for row in zip(rows, accuracy.tolist(), flops.tolist())]


class _Archive:
    """Running non-dominated set of everything scored, in NumPy arrays sorted by cost.

    Ties (same accuracy and cost) keep the point scored first, as `pareto_mask` does on
    everything in scoring order. Most generations add nothing, so a batch is first
    screened against the archive (one `searchsorted`) before any merge.
    """

    def __init__(self, shape: tuple):
        self.thresholds = np.empty((0, *shape))
        self.accuracy = np.empty(0)
        self.error = np.empty(0)
        self.flops = np.empty(0)

    def add(self, thresholds: np.ndarray, accuracy: np.ndarray, flops: np.ndarray) -> None:
        error = 1.0 - accuracy
        new = np.arange(error.size)
        if self.flops.size:
            # The archive point with the largest cost <= c has the lowest error among all
            # those costing <= c; a new point it matches or beats in error is dominated.
            pos = np.searchsorted(self.flops, flops, side="right") - 1
            new = np.flatnonzero((pos < 0) | (self.error[np.maximum(pos, 0)] > error))
            if new.size == 0:
                return
        t = np.concatenate([self.thresholds, thresholds[new]])
        a = np.concatenate([self.accuracy, accuracy[new]])
        e = np.concatenate([self.error, error[new]])
        f = np.concatenate([self.flops, flops[new]])
        # `nondominated_unchecked`'s sweep, kept in its cost order: cheapest first, then
        # lowest error, then (lexsort is stable) the archive's point before a new one.
        order = np.lexsort((e, f))
        e_sorted = e[order]
        keep = order[e_sorted < np.concatenate(([np.inf], np.minimum.accumulate(e_sorted)[:-1]))]
        self.thresholds, self.accuracy, self.error, self.flops = t[keep], a[keep], e[keep], f[keep]


def _check_options(pop, gens, seed, cx_eta, mut_eta, cxpb, indpb) -> None:
    for name, value, low in (("pop", pop, 4), ("gens", gens, 0)):
        if not is_integer(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    if not is_integer(seed) or seed < 0:
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
    per_class: bool = False,
) -> FrontResult:
    """NSGA-II over per-exit (or per-class) thresholds on one split's ExitTable (normally val).

    Args:
        table: the val split's ExitTable (K >= 2 exits).
        pop: population size (>= 4); `pop` new vectors are scored per generation.
        gens: generations after the initial population; pop * (gens + 1) vectors at most.
        seed: seeds the run's Generator (initial population, tournaments, variation);
            same table + seed -> bitwise identical front.
        scorer: callable (P, K-1) thresholds -> Scores; default the policy's fastest.
        cx_eta: SBX distribution index (larger = children nearer their parents).
        mut_eta: polynomial-mutation distribution index.
        cxpb: probability that a parent pair is crossed.
        indpb: per-gene mutation probability; default 1 / (number of genes).
        per_class: search a (M, C) table per exit and predicted class (the table must
            have kept predictions); see the module docstring for the shrinkage.

    Returns:
        FrontResult (method "nsga") of the non-dominated archive, thresholds (F, M) or,
        per class, (F, M, C), `OFF_THRESHOLD` where an exit (or class) is off; `evaluations` counts
        the vectors actually scored, `seconds` the wall time of the whole search.

    Raises:
        ValueError / TypeError: bad table or options, naming the argument.
    """
    check_table(table)
    _check_options(pop, gens, seed, cx_eta, mut_eta, cxpb, indpb)
    start = time.perf_counter()
    score = scorer_for(table, scorer)
    decoder = GeneDecoder(table, per_class=per_class)
    dim = decoder.dim
    toolbox = base.Toolbox()
    toolbox.register("mate", sbx_bounded, eta=float(cx_eta), low=0.0, up=1.0)
    toolbox.register(
        "mutate", polynomial_mutation_bounded, eta=float(mut_eta), low=0.0, up=1.0,
        indpb=1.0 / dim if indpb is None else float(indpb),
    )
    toolbox.register("select", tools.selNSGA2, nd="log")
    store = np.empty((pop * (gens + 1), dim))  # genes of every vector scored, by row
    toolbox.register("parents", select_parents, store=store)
    archive = _Archive((decoder.num_thresholds, decoder.num_classes) if per_class else (dim,))
    rng = np.random.default_rng(seed)
    population = _evaluate(_initial_thresholds(table, pop, rng, decoder), score, archive, store, 0, decoder)
    evaluations = len(population)
    population = toolbox.select(population, pop)  # assigns crowding distances
    for _ in range(gens):
        children = vary(toolbox, toolbox.parents(population, pop, rng), cxpb, rng)
        offspring = _evaluate(children, score, archive, store, evaluations, decoder)
        evaluations += len(offspring)
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
