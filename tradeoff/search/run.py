"""`tradeoff search` end to end: validate, fit on val, search, report on test, write the run.

`run_search` is the library entry point: it turns an `ExitCache` into a `SearchResult`
holding every figure the report and the plots need. Thresholds are fitted on the `val`
split ONLY (the searches, the calibration temperatures and the pick all see val alone);
`test` is scored for every front point and the chosen one and never searched, so the test
numbers are an honest estimate of what the thresholds give on new data.

The NSGA-II front is always computed (it is the tool's method), and so are the baselines
(one global threshold, MSDNet's budget rule, random search at NSGA's evaluation budget,
an exhaustive grid when K-1 <= 3); `method` only selects the front the pick is made on.

The settings and their validation live in `search.settings`, the result dataclasses in
`search.result`, the pick and the chosen point's statistics in `search.picks`.

NumPy only (plus DEAP/joblib through the search modules): no torch import, so the
command starts fast.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from tradeoff.cache.format import ExitCache
from tradeoff.fileio import sha256_file
from tradeoff.policy.scoring import ExitTable, Scores, exit_table
from tradeoff.search.picks import (
    bootstrap_accuracy_ci,
    certify_front,
    correct_at,
    guarantee_split,
    paired_comparison,
    pick_index,
    point_figures,
)
from tradeoff.search.result import ChosenPoint, ExitAlone, MethodFront, SearchResult
from tradeoff.search.settings import (
    BOOTSTRAP_RESAMPLES,
    PER_CLASS_METHOD,
    Pick,
    SearchSettings,
    check_latency,
    validate_settings,
)


def run_search(
    cache: ExitCache,
    *,
    pick: Pick | None = None,
    method: str = "nsga",
    confidence: str = "maxprob",
    ensemble: bool = False,
    calibrate: bool = False,
    fallback: str = "deepest",
    per_class: bool = False,
    pop: int = 100,
    gens: int = 100,
    seed: int = 0,
    restarts: int = 1,
    jobs: int = 1,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
    cache_path: str | os.PathLike | None = None,
    delta: float | None = None,
    latency_profile=None,
    batch_size: int = 1,
    cost: str = "flops",
) -> SearchResult:
    """Search thresholds on val, pick one point, report everything on test.

    Args:
        cache: a validated cache with `val` and `test` rows and K >= 2 exits.
        pick: how to choose the point (`Pick.from_options(...)`); None = no loss against
            the deepest exit alone on val.
        method: the front the pick is made on; every method is run either way.
        confidence, ensemble: the exit rule (DESIGN.md).
        calibrate: fit per-exit temperatures on val (applied to val and test).
        fallback: who answers a sample no exit accepted ("deepest", "ensemble",
            "most-confident"; `ExitRule`).
        per_class: also search a (M, C) threshold table per exit and predicted class
            (front "nsga-per-class", picked from); the per-exit front stays beside it and
            `per_class_comparison` holds the paired test bootstrap of the two picks.
        pop, gens, seed, restarts, jobs: NSGA-II settings (random search gets the same
            number of evaluations and the same seed).
        bootstrap: resamples of the test rows for the 95% interval.
        cache_path: the file `cache` was read from, recorded with its sha256.
        delta: Learn-then-Test risk level in (0, 1) for a target_acc / max_drop pick: val is
            split (seeded by `seed`) 30/70 into a search part, the only rows the search and
            any temperature fit see, and a calibration part where the front is certified
            (`search.guarantee`); P(accuracy on new data >= target) >= 1 - delta.
        latency_profile: a `policy.latency.LatencyProfile` of this model (checked against
            the cache's checkpoint and exits), or None.
        batch_size: the serving batch size the profile prices (a profiled one).
        cost: "flops" (default) or "latency": the search, the baselines, the front and the
            pick in expected ms per sample (needs `latency_profile`). Either way, with a
            profile the chosen point is reported in both units (`SearchResult.latency`).

    Returns:
        A complete SearchResult.

    Raises:
        TypeError / ValueError: bad settings or cache (one line).
        TargetUnreachable: the pick cannot be met on val; the message names the best
            reachable point.
        CannotCertify (a TargetUnreachable): with `delta`, nothing can be certified; the
            message gives the best certifiable figure and an estimated val size needed.
    """
    settings = SearchSettings(
        pick=Pick.from_options() if pick is None else pick,
        method=method,
        confidence=confidence,
        ensemble=bool(ensemble),
        calibrate=bool(calibrate),
        fallback=fallback,
        per_class=bool(per_class),
        pop=pop,
        gens=gens,
        seed=seed,
        restarts=restarts,
        jobs=jobs,
        bootstrap=bootstrap,
        delta=delta,
    )
    validate_settings(cache, settings)
    profile = check_latency(cache, settings, latency_profile, batch_size, cost)
    from tradeoff.search import pareto  # deferred: keeps `import tradeoff.search.run` light

    start = time.perf_counter()
    timings: dict[str, float] = {}
    flops = np.asarray(cache.flops, dtype=np.float64)
    is_val = cache.split == "val"
    val_split = cal_table = None
    if settings.delta is not None:
        val_split = guarantee_split(int(np.count_nonzero(is_val)), settings)
        is_val = np.zeros_like(is_val)
        is_val[np.flatnonzero(cache.split == "val")[val_split.search]] = True  # search rows only

    temperatures = None
    if calibrate:
        from tradeoff.policy.calibration import fit_temperatures

        t0 = time.perf_counter()
        temperatures = np.asarray(fit_temperatures(cache.logits[:, is_val], cache.labels[is_val]), dtype=np.float64)
        timings["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    val_table, test_table = _split_tables(cache, confidence=confidence, ensemble=bool(ensemble), temperatures=temperatures,
                                          fallback=fallback, keep_predictions=bool(per_class))
    if val_split is not None:
        val_table, cal_table = val_table.columns(val_split.search), val_table.columns(val_split.calibration)
    timings["table"] = time.perf_counter() - t0

    from tradeoff.search.scoring import scorer_for

    # One scorer per split for the whole search: every method scores val through score_val,
    # and every front is re-scored on val and test through these two.
    t0 = time.perf_counter()
    score_val = scorer_for(val_table)
    fractions_to_flops = None
    if cost == "latency":
        from tradeoff.policy.latency import latency_scorer

        score_val = latency_scorer(score_val, profile, batch_size)
        cache_flops = flops
        fractions_to_flops = lambda f: np.asarray(f) @ cache_flops  # noqa: E731
        flops = profile.path_ms(batch_size)
    timings["scorer"] = time.perf_counter() - t0
    raw = _run_methods(val_table, settings, timings, score_val)
    reference = pareto.reference_point(flops)
    baseline = cache.baseline_flops if cost != "latency" else profile.original_per_sample_ms(batch_size)

    t0 = time.perf_counter()
    score_test = scorer_for(test_table)
    if cost == "latency":
        score_test = latency_scorer(score_test, profile, batch_size)
    fronts = tuple(_scored_front(name, front, score_val, score_test, reference) for name, front in raw)
    timings["test"] = time.perf_counter() - t0

    exits = tuple(
        ExitAlone(
            name=name,
            flops=float(flops[k]),
            speedup=baseline / float(flops[k]),
            val_accuracy=float(np.count_nonzero(val_table.correct[k]) / val_table.num_samples),
            test_accuracy=float(np.count_nonzero(test_table.correct[k]) / test_table.num_samples),
        )
        for k, name in enumerate(cache.exit_names)
    )

    front = next(f for f in fronts if f.method == (PER_CLASS_METHOD if settings.per_class else settings.method))
    certification = None
    if val_split is None:
        index = pick_index(front, settings.pick, exits[-1].val_accuracy, baseline, unit="ms" if cost == "latency" else "flops")
    else:
        t0 = time.perf_counter()
        certification = certify_front(front, cal_table, settings.pick, settings.delta, val_split)
        index = certification.chosen
        timings["certify"] = time.perf_counter() - t0
    thresholds = front.thresholds[index]
    test_correct = correct_at(test_table, thresholds)
    comparison = None
    if settings.per_class:
        other = next(f for f in fronts if f.method == "nsga")
        comparison = paired_comparison(test_table, other, pick_index(other, settings.pick, exits[-1].val_accuracy, baseline),
                                        front, index, resamples=bootstrap, seed=seed)
    chosen = ChosenPoint(
        method=front.method,
        index=index,
        thresholds=tuple(tuple(float(x) for x in t) if np.ndim(t) else float(t) for t in thresholds),
        val=point_figures(front.val, index, baseline, flops),
        test=point_figures(front.test, index, baseline, flops),
        test_accuracy_ci95=bootstrap_accuracy_ci(test_correct, resamples=bootstrap, seed=seed),
    )
    latency = None
    if profile is not None:
        from tradeoff.search.latency_report import latency_figures

        latency = latency_figures(chosen, profile, batch_size, cost=cost, cache_flops=np.asarray(cache.flops, dtype=np.float64),
                                  cache_baseline_flops=float(cache.baseline_flops))
    timings["total"] = time.perf_counter() - start
    return SearchResult(
        settings=settings,
        cache_path=None if cache_path is None else str(cache_path),
        cache_sha256=None if cache_path is None else sha256_file(cache_path),
        cache_meta=dict(cache.meta),
        exit_names=tuple(cache.exit_names),
        flops=flops,
        baseline_flops=float(baseline),
        split_sizes={"val": val_table.num_samples, "test": test_table.num_samples} if val_split is None else {
            "val": int(val_split.search.size + val_split.calibration.size), "val_search": int(val_split.search.size),
            "val_calibration": int(val_split.calibration.size), "test": test_table.num_samples},
        temperatures=None if temperatures is None else tuple(float(t) for t in temperatures),
        fronts=fronts,
        hypervolume_reference=tuple(float(v) for v in reference),
        chosen=chosen,
        exits=exits,
        timings=timings,
        guarantee=certification,
        cost="ms" if cost == "latency" else "flops",
        latency=latency,
        per_class_comparison=comparison,
    )

def _split_tables(cache: ExitCache, **rule) -> tuple[ExitTable, ExitTable]:
    """The val and test ExitTables, from one pass over the logits.

    The (K, N) table is computed once and its columns split, rather than copying each
    split's (K, N_split, C) logits first: for a million-sample cache that copy would be
    the largest allocation of the whole search. Rows of other splits (train) are left
    out before the pass only when there are any.
    """
    split = cache.split
    keep = (split == "val") | (split == "test")
    if keep.all():
        logits, labels, split_kept = cache.logits, cache.labels, split
    else:
        logits, labels, split_kept = cache.logits[:, keep], cache.labels[keep], split[keep]
    table = exit_table(logits, labels, cache.flops, **rule)
    return table.columns(np.flatnonzero(split_kept == "val")), table.columns(np.flatnonzero(split_kept == "test"))


def _run_methods(table, settings: SearchSettings, timings: dict, scorer) -> list[tuple[str, object]]:
    """Every method's FrontResult on the val table, NSGA-II first (seconds into `timings`), all
    scored by the one `scorer` built for the table (worker processes of a parallel restart
    build their own)."""
    from tqdm.auto import tqdm

    from tradeoff.search import baselines, nsga

    def ga():
        if settings.restarts > 1:
            shared = {"scorer": scorer} if settings.jobs == 1 else {}
            return nsga.restart_search(
                table, restarts=settings.restarts, jobs=settings.jobs, seed=settings.seed, pop=settings.pop,
                gens=settings.gens, **shared,
            )
        return nsga.nsga2_search(table, pop=settings.pop, gens=settings.gens, seed=settings.seed, scorer=scorer)

    runs = [
        ("nsga", ga),
        ("global", lambda: baselines.global_threshold_search(table, scorer=scorer)),
        ("msdnet", lambda: baselines.msdnet_budget_search(table, scorer=scorer)),
        # Random search gets exactly NSGA-II's budget, so it runs after it.
        ("random", lambda: baselines.random_search(table, out[0][1].evaluations, settings.seed, scorer=scorer)),
    ]
    if table.num_thresholds <= baselines.GRID_IN_SEARCH_MAX_THRESHOLDS:
        runs.append(("grid", lambda: baselines.grid_search(table, scorer=scorer)))
    if settings.per_class:
        runs.insert(1, (PER_CLASS_METHOD, lambda: nsga.nsga2_search(
            table, pop=settings.pop, gens=settings.gens, seed=settings.seed, scorer=scorer, per_class=True)))
    out: list[tuple[str, object]] = []
    bar = tqdm(runs, desc="search", unit="method", disable=None, leave=False, file=sys.stderr)
    for name, run in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        out.append((name, run()))
        timings[name] = time.perf_counter() - t0
    return out


def _scored_front(method: str, front, score_val, score_test, reference) -> MethodFront:
    """Re-score a front's points on val (exit fractions) and on test; order by val cost."""
    from tradeoff.search import pareto

    thresholds = np.asarray(front.thresholds, dtype=np.float64)
    val = score_val(thresholds)
    # Deterministic order: val cost, then higher accuracy, then the thresholds themselves.
    flat = thresholds.reshape(thresholds.shape[0], -1)
    keys = [flat[:, j] for j in range(flat.shape[1] - 1, -1, -1)] + [-val.accuracy, val.flops]
    order = np.lexsort(keys)
    thresholds = np.ascontiguousarray(thresholds[order])
    val = Scores(val.accuracy[order], val.flops[order], val.exit_fractions[order],
                 None if val.fallback_fractions is None else val.fallback_fractions[order])
    test = score_test(thresholds)
    hv = pareto.hypervolume_2d(1.0 - val.accuracy, val.flops, reference=reference)
    return MethodFront(
        method=method,
        thresholds=thresholds,
        val=val,
        test=test,
        hypervolume=float(hv),
        evaluations=int(front.evaluations),
        seconds=float(front.seconds),
    )
