"""Threshold-search benchmarks: speed of the DEAP NSGA-II search and the quality of its front.

On the val split (5,000 samples) of `tradeoff.cache.synthetic.synthetic_cache()` (10,000 samples,
4 exits, 100 classes, shaped like SCAN-ResNet18 on CIFAR-100), and again on the val split
(5,000 images, 3 exits, 10 classes) of the Fashion-MNIST demo's cache (`benchmarks.fashion`;
metrics end in ", Fashion-MNIST"; its grid is 512 x 512 levels, as many vectors as 64^3):

(a) the default search (pop 100 x gens 100) in wall seconds, goal <= 0.5 s, with the
    scorer built inside the search (counted); the same search on the reference scorer
    is reported beside it;
(b) against textbook DEAP with per-individual evaluation (`toolbox.evaluate` called per
    individual, a 1-row scorer call each; deepcopy clones; DEAP's own per-pair/per-child
    SBX and polynomial mutation and `selTournamentDCD`, the formulas our vectorised
    operators implement), selNSGA2, initial population, seed and budget;
(c) against pymoo's NSGA2 (defaults) on a vectorised `Problem` (`elementwise=False`)
    scoring the whole population with the same scorer, same pop, pop * (gens + 1)
    evaluations, seeded: ratio >= 5x and hypervolume at least as high (reference point
    (error 1.0, cost flops[K-1]), see tradeoff.search.pareto);
(d) quality against an exhaustive grid of 64 val-confidence quantile levels on each of
    the 3 thresholds (262,144 vectors): the cost NSGA-II finds at target = deepest exit's
    val accuracy, and that minus 0.5 points, within 1% of the grid's; and NSGA-II's
    hypervolume relative to the grid's.

Timings are interleaved (the methods take turns, repeated) and medians reported, since
other work shares the machine; the CPU-time ratios in the notes are steadier when it does. In (b) and (c) all three get the same prebuilt scorer.
"""

from __future__ import annotations

import contextlib
import functools
import random
import statistics
import time
from typing import Iterator

import numpy as np

from tradeoff.policy.scoring import exit_table, score_thresholds_reference
from tradeoff.search.baselines import grid_search
from tradeoff.search.nsga import _initial_thresholds, nsga2_search
from tradeoff.search.pareto import front_result, hypervolume_2d, pick_target_accuracy, reference_point
from tradeoff.search.scoring import scorer_for
from tradeoff.cache.synthetic import synthetic_cache

from benchmarks.fashion import fashion_cache, skipped_row


def _row(benchmark, metric, value, *, baseline=None, ratio=None, goal="", passed=None, notes=""):
    return {
        "benchmark": benchmark, "metric": metric, "value": float(value),
        "baseline": None if baseline is None else float(baseline),
        "ratio": None if ratio is None else float(ratio),
        "goal": goal, "passed": passed, "notes": notes,
    }


def _hv(accuracy, flops, table) -> float:
    return hypervolume_2d(1.0 - np.asarray(accuracy), np.asarray(flops), reference=reference_point(table.flops))


@contextlib.contextmanager
def seeded_global_random(seed: int) -> Iterator[None]:
    """Seed Python's global `random` (which DEAP's own operators use) and restore it afterwards."""
    saved = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved)


def deap_per_individual(table, scorer, *, pop, gens, seed, cx_eta=20.0, mut_eta=20.0, cxpb=0.9):
    """DEAP's textbook NSGA-II loop (examples/ga/nsga2.py) with one scorer call per individual.

    DEAP's own operators (the formulas `nsga2_search` vectorises), same parameters and
    initial population; the straightforward per-individual structure is the point of
    comparison.
    """
    from deap import base, tools

    dim = table.num_exits - 1

    def evaluate(ind):
        s = scorer(np.asarray([ind], dtype=np.float64))
        return float(s.accuracy[0]), float(s.flops[0])

    class Fitness(base.Fitness):  # what creator.create("Fitness", base.Fitness, weights=...) makes
        weights = (1.0, -1.0)

    class Individual(list):
        def __init__(self, genes=()):
            super().__init__(genes)
            self.fitness = Fitness()

    toolbox = base.Toolbox()
    toolbox.register("evaluate", evaluate)
    toolbox.register("mate", tools.cxSimulatedBinaryBounded, eta=cx_eta, low=0.0, up=1.0)
    toolbox.register("mutate", tools.mutPolynomialBounded, eta=mut_eta, low=0.0, up=1.0, indpb=1.0 / dim)
    toolbox.register("select", tools.selNSGA2, nd="log")
    start = time.perf_counter()
    with seeded_global_random(seed):
        population = [Individual(r) for r in _initial_thresholds(table, pop, np.random.default_rng(seed)).tolist()]
        for ind, fit in zip(population, map(toolbox.evaluate, population)):
            ind.fitness.values = fit
        population = toolbox.select(population, pop)
        for _ in range(gens):
            offspring = [toolbox.clone(ind) for ind in tools.selTournamentDCD(population, len(population))]
            for a, b in zip(offspring[::2], offspring[1::2]):
                if random.random() <= cxpb:
                    toolbox.mate(a, b)
                toolbox.mutate(a)
                toolbox.mutate(b)
                del a.fitness.values, b.fitness.values
            invalid = [ind for ind in offspring if not ind.fitness.valid]
            for ind, fit in zip(invalid, map(toolbox.evaluate, invalid)):
                ind.fitness.values = fit
            population = toolbox.select(population + offspring, pop)
    seconds = time.perf_counter() - start
    values = np.array([ind.fitness.values for ind in population])
    return seconds, values[:, 0], values[:, 1]


def pymoo_nsga2(table, scorer, *, pop, gens, seed):
    """pymoo's NSGA2 (default operators) on a vectorised Problem; global RNG states restored.

    Returns (seconds, accuracy and cost of pymoo's result front, accuracy and cost of
    everything it evaluated, evaluations).
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.optimize import minimize

    seen = []

    class ThresholdProblem(Problem):
        def __init__(self):
            super().__init__(n_var=table.num_exits - 1, n_obj=2, xl=0.0, xu=1.0, elementwise=False)

        def _evaluate(self, X, out, *args, **kwargs):
            s = scorer(X)
            seen.append((s.accuracy, s.flops))
            out["F"] = np.column_stack([1.0 - s.accuracy, s.flops])

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        start = time.perf_counter()
        res = minimize(ThresholdProblem(), NSGA2(pop_size=pop), ("n_gen", gens + 1), seed=seed, verbose=False)
        seconds = time.perf_counter() - start
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    F = np.atleast_2d(res.F)
    everything_acc = np.concatenate([a for a, _ in seen])
    everything_flops = np.concatenate([f for _, f in seen])
    return seconds, 1.0 - F[:, 0], F[:, 1], everything_acc, everything_flops, int(res.algorithm.evaluator.n_eval)


def run(quick: bool = False) -> list[dict]:
    """(a)-(d) on the synthetic cache, then on the Fashion-MNIST demo cache (metrics end in ", Fashion-MNIST")."""
    if quick:
        cache, pop, gens, repeats, grid_points = synthetic_cache(1000, 10, seed=0), 12, 5, 1, 8
    else:
        cache, pop, gens, repeats, grid_points = synthetic_cache(), 100, 100, 7, 64
    rows = _case_rows(cache, "synthetic", "", pop=pop, gens=gens, repeats=repeats, grid_points=grid_points, quick=quick)
    fashion = fashion_cache(quick)
    if fashion is None:
        return rows + [skipped_row("search.nsga_vs_pymoo", "seconds")]
    # K = 3 exits: a 512 x 512 grid evaluates as many vectors (262,144) as the synthetic 64^3 one
    return rows + _case_rows(fashion[0], fashion[1], ", Fashion-MNIST", pop=pop, gens=gens, repeats=repeats,
                             grid_points=8 if quick else 512, quick=quick)


def _case_rows(cache, description: str, label: str, *, pop, gens, repeats, grid_points, quick) -> list[dict]:
    """Every row of (a)-(d) on one cache's val split; `label` ends each metric."""
    val = cache.select("val")
    table = exit_table(val.logits, val.labels, val.flops)
    scorer = scorer_for(table)
    where = f"{description} val N={table.num_samples}, K={table.num_exits}, C={val.num_classes}; pop {pop} x gens {gens}"
    judged = not quick  # quick mode is a smoke run: tiny sizes, nothing judged
    rows = []

    # (a) default search, its own scorer built inside; (b), (c) side by side on a shared
    # scorer. Wall and CPU (process) time of each call, the contenders taking turns.
    reference = functools.partial(score_thresholds_reference, table)
    contenders = {
        "default": lambda: nsga2_search(table, pop=pop, gens=gens, seed=0),
        "ours": lambda: nsga2_search(table, pop=pop, gens=gens, seed=0, scorer=scorer),
        "reference": lambda: nsga2_search(table, pop=pop, gens=gens, seed=0, scorer=reference),
        "deap": lambda: deap_per_individual(table, scorer, pop=pop, gens=gens, seed=0),
        "pymoo": lambda: pymoo_nsga2(table, scorer, pop=pop, gens=gens, seed=0),
    }
    wall = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    results = {}
    names = list(contenders)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            w0, c0 = time.perf_counter(), time.process_time()
            results[name] = contenders[name]()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    med = {name: statistics.median(v) for name, v in wall.items()}
    med_cpu = {name: statistics.median(v) for name, v in cpu.items()}
    front, pymoo_out = results["default"], results["pymoo"]
    t_default, t_ours, t_deap, t_pymoo = med["default"], med["ours"], med["deap"], med["pymoo"]

    def cpu_note(name):
        return f"CPU-time ratio {med_cpu[name] / med_cpu['ours']:.2f} ({med_cpu[name]:.3f} s / {med_cpu['ours']:.3f} s)"

    hv_ours = _hv(front.accuracy, front.flops, table)
    rows.append(_row(
        "search.nsga_default", "seconds" + label, t_default, goal="<= 0.5 s", passed=(t_default <= 0.5) if judged else None,
        notes=f"{where}; {front.evaluations} evaluations, front of {front.size}; median of {repeats}, scorer build included; "
        f"median CPU time {med_cpu['default']:.3f} s",
    ))
    t_reference = med["reference"]
    rows.append(_row(
        "search.nsga_reference_scorer", "seconds" + label, t_reference, baseline=t_ours, ratio=t_reference / t_ours,
        goal="reported", notes=f"{where}; the same search scored by score_thresholds_reference (ratio = its time / fast)",
    ))
    ratio_deap = t_deap / t_ours
    rows.append(_row(
        "search.nsga_vs_deap_per_individual", "seconds" + label, t_ours, baseline=t_deap, ratio=ratio_deap,
        goal="reported (ratio = baseline / value)",
        notes=f"{where}; textbook DEAP loop, 1-row scorer call per individual; {cpu_note('deap')}",
    ))
    ratio_pymoo = t_pymoo / t_ours
    _, p_acc, p_flops, all_acc, all_flops, p_evals = pymoo_out
    hv_pymoo = _hv(p_acc, p_flops, table)
    pymoo_all = front_result(np.zeros((all_acc.size, 1)), all_acc, all_flops, evaluations=0, seconds=0.0, method="pymoo")
    hv_pymoo_all = _hv(pymoo_all.accuracy, pymoo_all.flops, table)
    rows.append(_row(
        "search.nsga_vs_pymoo", "seconds" + label, t_ours, baseline=t_pymoo, ratio=ratio_pymoo,
        goal=">= 5x faster", passed=(ratio_pymoo >= 5.0) if judged else None,
        notes=f"{where}; pymoo NSGA2 defaults, vectorised Problem, {p_evals} evaluations; {cpu_note('pymoo')}",
    ))
    rows.append(_row(
        "search.nsga_vs_pymoo", "hypervolume" + label, hv_ours, baseline=hv_pymoo, ratio=hv_ours / hv_pymoo,
        goal=">= pymoo's", passed=bool(hv_ours >= hv_pymoo) if judged else None,
        notes=f"reference (error 1, cost flops[K-1]); pymoo's result front of {p_acc.size}; "
        f"against the front of everything pymoo evaluated: {hv_pymoo_all:.6f} (ratio {hv_ours / hv_pymoo_all:.5f})",
    ))

    # (d) quality against the exhaustive quantile grid
    grid = grid_search(table, points_per_exit=grid_points)
    deepest = float(table.correct[-1].mean())
    for name, target in (("deepest exit", deepest), ("deepest exit - 0.5 pt", deepest - 0.005)):
        c_nsga = float(front.flops[pick_target_accuracy(front.accuracy, front.flops, target)])
        c_grid = float(grid.flops[pick_target_accuracy(grid.accuracy, grid.flops, target)])
        rows.append(_row(
            "search.nsga_vs_grid_cost", f"flops at target {target:.4f} ({name}){label}", c_nsga, baseline=c_grid,
            ratio=c_nsga / c_grid, goal="ratio <= 1.01", passed=bool(c_nsga <= 1.01 * c_grid) if judged else None,
            notes=f"{where}; grid {grid_points}^{table.num_exits - 1} = {grid.evaluations} quantile vectors; ratio < 1 = NSGA-II cheaper",
        ))
    hv_grid = _hv(grid.accuracy, grid.flops, table)
    rows.append(_row(
        "search.nsga_vs_grid_hypervolume", "hypervolume" + label, hv_ours, baseline=hv_grid, ratio=hv_ours / hv_grid,
        goal=">= 0.999 x grid", passed=bool(hv_ours >= 0.999 * hv_grid) if judged else None,
        notes=f"NSGA-II {front.evaluations} evaluations vs grid {grid.evaluations}; grid took {grid.seconds:.2f} s",
    ))
    return rows


if __name__ == "__main__":
    import json

    for row in run():
        print(json.dumps(row))
