"""`tradeoff search` end to end: validate, fit on val, search, report on test, write the run.

`run_search` is the library entry point: it turns an `ExitCache` into a `SearchResult`
holding every figure the report and the plots need. Thresholds are fitted on the `val`
split ONLY (the searches, the calibration temperatures and the pick all see val alone);
`test` is scored for every front point and the chosen one and never searched, so the test
numbers are an honest estimate of what the thresholds give on new data.

The NSGA-II front is always computed (it is the tool's method), and so are the baselines
(one global threshold, MSDNet's budget rule, random search at NSGA's evaluation budget,
an exhaustive grid when K-1 <= 3); `method` only selects the front the pick is made on.

NumPy only (plus DEAP/joblib through the search modules): no torch import, so the
command starts fast.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from tradeoff.cache.format import ExitCache
from tradeoff.errors import is_integer
from tradeoff.fileio import sha256_file
from tradeoff.policy.rule import FALLBACKS, ExitRule, rule_thresholds
from tradeoff.policy.scoring import CONFIDENCE_MEASURES, ExitTable, Scores, exit_indices, exit_table

METHODS = ("nsga", "global", "msdnet", "random", "grid")
PER_CLASS_METHOD = "nsga-per-class"  # the per-class NSGA-II front, searched beside the per-exit one with --per-class
BOOTSTRAP_RESAMPLES = 2000
PICK_KINDS = ("target_acc", "max_drop", "budget_flops", "budget_ms")


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Pick:
    """How the chosen point is picked from a front on val.

    Attributes:
        kind: "target_acc" (cheapest point with val accuracy >= value), "max_drop"
            (cheapest point within value percentage points of the deepest exit alone) or
            "budget_flops" (most accurate point costing <= value FLOPs per sample).
        value: the target accuracy in (0, 1], the drop in points >= 0, or the budget > 0.
        default: True when the user gave no pick; then kind is "max_drop" with value 0
            (no loss against the deepest exit alone).
    """

    kind: str
    value: float
    default: bool = False

    def __post_init__(self):
        if self.kind not in PICK_KINDS:
            raise ValueError(f"pick kind must be one of {', '.join(PICK_KINDS)}; got {self.kind!r}")
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"--{self.flag} must be a number; got {value!r}")
        value = float(value)
        if self.kind == "target_acc" and not (0.0 < value <= 1.0):
            hint = f" - did you mean {value / 100:g}?" if 1.0 < value <= 100.0 else ""
            raise ValueError(f"--target-acc must be an accuracy in (0, 1]; got {value:g}{hint}")
        if self.kind == "max_drop" and not (np.isfinite(value) and 0.0 <= value <= 100.0):
            raise ValueError(f"--max-drop must be percentage points in [0, 100] (0.5 = half a point); got {value:g}")
        if self.kind == "budget_flops" and not (np.isfinite(value) and value > 0):
            raise ValueError(
                f"--budget-flops must be a positive number of FLOPs per sample (fvcore count, e.g. 3e8); got {value:g}"
            )
        if self.kind == "budget_ms" and not (np.isfinite(value) and value > 0):
            raise ValueError(f"--budget-ms must be a positive number of milliseconds per sample; got {value:g}")
        object.__setattr__(self, "value", value)

    @classmethod
    def from_options(
        cls,
        *,
        target_acc: float | None = None,
        max_drop: float | None = None,
        budget_flops: float | None = None,
        budget_ms: float | None = None,
    ) -> "Pick":
        """The pick the user asked for (at most one option), or the no-loss default."""
        options = (("target_acc", target_acc), ("max_drop", max_drop), ("budget_flops", budget_flops), ("budget_ms", budget_ms))
        given = [(k, v) for k, v in options if v is not None]
        if len(given) > 1:
            names = " and ".join("--" + k.replace("_", "-") for k, _ in given)
            raise ValueError(f"give at most one of --target-acc, --max-drop, --budget-flops, --budget-ms; got {names}")
        if not given:
            return cls("max_drop", 0.0, default=True)
        return cls(*given[0])

    @property
    def flag(self) -> str:
        return self.kind.replace("_", "-")

    @property
    def label(self) -> str:
        """Short name used in the default run directory: acc0.78, drop0.5, budget3e+08, nodrop."""
        if self.default:
            return "nodrop"
        prefix = {"target_acc": "acc", "max_drop": "drop", "budget_flops": "budget", "budget_ms": "budgetms"}[self.kind]
        return f"{prefix}{self.value:g}"

    def describe(self) -> str:
        if self.default:
            return "no loss against the deepest exit alone (give --target-acc, --max-drop or --budget-flops to change)"
        if self.kind == "target_acc":
            return f"cheapest point with val accuracy >= {self.value:g}"
        if self.kind == "max_drop":
            return f"cheapest point within {self.value:g} percentage points of the deepest exit alone"
        if self.kind == "budget_ms":
            return f"most accurate point within {self.value:.4g} ms per sample (latency profile)"
        return f"most accurate point costing <= {self.value / 1e6:.4g} MFLOPs"

    def as_dict(self) -> dict:
        out = {self.kind: self.value}
        if self.default:
            out["default"] = True
        return out


@dataclass(frozen=True)
class SearchSettings:
    """Everything the user chose; recorded in summary.json."""

    pick: Pick
    method: str = "nsga"
    confidence: str = "maxprob"
    ensemble: bool = False
    calibrate: bool = False
    fallback: str = "deepest"
    per_class: bool = False
    pop: int = 100
    gens: int = 100
    seed: int = 0
    restarts: int = 1
    jobs: int = 1
    bootstrap: int = BOOTSTRAP_RESAMPLES
    delta: float | None = None  # Learn-then-Test risk level (search.guarantee); None = val estimate


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class PointFigures:
    """One threshold vector's figures on one split.

    Attributes:
        accuracy: fraction answered correctly.
        flops: mean cost per sample (fvcore count).
        speedup: baseline_flops / flops (vs the original single-exit network).
        speedup_all_exits: flops[K-1] / flops (vs running every exit).
        exit_fractions: (K,) fraction of samples leaving at each exit.
    """

    accuracy: float
    flops: float
    speedup: float
    speedup_all_exits: float
    exit_fractions: tuple[float, ...]


@dataclass(frozen=True)
class MethodFront:
    """One method's Pareto front (found on val), with every point scored on test too.

    Attributes:
        method: one of METHODS.
        thresholds: (F, K-1) sorted by val cost ascending.
        val: Scores of the F points on val (accuracy (F,), flops (F,), exit_fractions (F, K)).
        test: the same F points on test (never searched).
        hypervolume: normalised val hypervolume (`search.pareto` convention).
        evaluations: threshold vectors the method scored.
        seconds: the method's search time.
    """

    method: str
    thresholds: np.ndarray
    val: Scores
    test: Scores
    hypervolume: float
    evaluations: int
    seconds: float

    @property
    def size(self) -> int:
        return int(self.thresholds.shape[0])


@dataclass(frozen=True)
class ExitAlone:
    """Exit k answering every sample (the reference points of the plots)."""

    name: str
    flops: float
    speedup: float
    val_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class ChosenPoint:
    """The picked thresholds with their val and test figures.

    Attributes:
        method: the front it was picked from.
        index: its row in that front (sorted by val cost).
        thresholds: (M,) thresholds (M = K-1 under the deepest fallback, else K;
            `OFF_THRESHOLD` where an exit is off), or per class M rows of C.
        val, test: its figures on each split.
        test_accuracy_ci95: 95% percentile bootstrap interval of the test accuracy.
    """

    method: str
    index: int
    thresholds: tuple[float, ...]
    val: PointFigures
    test: PointFigures
    test_accuracy_ci95: tuple[float, float]


@dataclass(frozen=True)
class SearchResult:
    """Everything one `tradeoff search` found; what `report.py` and `plots.py` consume.

    Attributes:
        settings: the user's choices.
        cache_path: the cache file as given (None for an in-memory cache).
        cache_sha256: sha256 of that file (None for an in-memory cache).
        cache_meta: the cache's provenance dict.
        exit_names: (K,) names, shallow -> deep.
        flops: (K,) cumulative cost of leaving at each exit (fvcore count).
        baseline_flops: cost of the original single-exit network.
        split_sizes: {"val": n, "test": n}.
        temperatures: (K,) fitted on val with `calibrate`, else None.
        fronts: one MethodFront per method run; "nsga" first.
        hypervolume_reference: (error, cost) reference point of every hypervolume.
        chosen: the picked point.
        exits: each exit alone, shallow -> deep.
        timings: seconds per stage ("table", "calibrate", one per method, "test", "total").
        guarantee: with `delta`, the Learn-then-Test certification on the calibration part
            of val (`search.guarantee.Certification`; the chosen point is its `chosen`
            candidate of the method's front), else None (the pick is a val estimate).
        cost: "flops" (every cost field is an fvcore count) or "ms" (every cost field is
            expected milliseconds per sample from a latency profile: `policy.latency`).
        latency: with a latency profile, its provenance, the batch size, the profiled
            original network's ms, and the chosen point in both units; else None.
    """

    settings: SearchSettings
    cache_path: str | None
    cache_sha256: str | None
    cache_meta: dict
    exit_names: tuple[str, ...]
    flops: np.ndarray
    baseline_flops: float
    split_sizes: dict
    temperatures: tuple[float, ...] | None
    fronts: tuple[MethodFront, ...]
    hypervolume_reference: tuple[float, float]
    chosen: ChosenPoint
    exits: tuple[ExitAlone, ...]
    timings: dict
    guarantee: object | None = None
    cost: str = "flops"
    latency: dict | None = None
    per_class_comparison: dict | None = None

    @property
    def rule(self) -> ExitRule:
        """The chosen point as one `ExitRule`: what `write_rule`, `EarlyExitModel` and `score_rule` take."""
        return ExitRule(rule_thresholds(self.chosen.thresholds), confidence=self.settings.confidence,
                        ensemble=self.settings.ensemble, temperatures=self.temperatures, fallback=self.settings.fallback)

    @property
    def num_exits(self) -> int:
        return int(self.flops.shape[0])

    def front(self, method: str) -> MethodFront:
        for front in self.fronts:
            if front.method == method:
                return front
        raise ValueError(f"no {method!r} front in this result; it has {', '.join(f.method for f in self.fronts)}")


# --------------------------------------------------------------------------- validation
def _check_int(name: str, value, minimum: int, why: str) -> int:
    if not is_integer(value):
        raise TypeError(f"--{name} must be an integer; got {value!r}")
    if value < minimum:
        raise ValueError(f"--{name} must be >= {minimum} ({why}); got {value}")
    return int(value)


def validate_settings(cache: ExitCache, settings: SearchSettings) -> None:
    """Check the cache and the user's choices once, before any work.

    Raises:
        TypeError / ValueError: one line naming the option, what was expected and what arrived.
    """
    if not isinstance(cache, ExitCache):
        raise TypeError(f"cache must be an ExitCache (see tradeoff.cache.format.load_cache); got {type(cache).__name__}")
    if not isinstance(settings.pick, Pick):
        raise TypeError(f"pick must be a tradeoff.search.run.Pick; got {type(settings.pick).__name__}")
    K = cache.num_exits
    if K < 2:
        raise ValueError(
            f"the cache has K = {K} exit: there are no thresholds to search (the only exit always answers); "
            "cache a multi-exit model"
        )
    if settings.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}; got {settings.method!r}")
    from tradeoff.search.baselines import GRID_IN_SEARCH_MAX_THRESHOLDS as GRID_MAX_SEARCHED

    if settings.method == "grid" and K - 1 > GRID_MAX_SEARCHED:
        raise ValueError(
            f"--method grid searches exhaustively only up to K-1 = {GRID_MAX_SEARCHED} thresholds; "
            f"this cache has K = {K} exits - use --method nsga"
        )
    if settings.confidence not in CONFIDENCE_MEASURES:
        raise ValueError(f"--confidence must be one of {', '.join(CONFIDENCE_MEASURES)}; got {settings.confidence!r}")
    if settings.fallback not in FALLBACKS:
        raise ValueError(f"--fallback must be one of {', '.join(FALLBACKS)}; got {settings.fallback!r}")
    if settings.confidence == "patience" and settings.calibrate:
        raise ValueError("--confidence patience cannot be combined with --calibrate: patience counts equal argmaxes, "
                         "which temperatures do not change - drop --calibrate")
    if settings.per_class and settings.method != "nsga":
        raise ValueError(f"--per-class is searched by NSGA-II only; drop --method {settings.method} (or --per-class)")
    _check_int("pop", settings.pop, 4, "NSGA-II needs a population of at least 4")
    _check_int("gens", settings.gens, 1, "at least one generation")
    _check_int("restarts", settings.restarts, 1, "the number of independent searches")
    _check_int("jobs", settings.jobs, 1, "the number of parallel processes")
    _check_int("seed", settings.seed, 0, "a non-negative integer seed")
    _check_int("bootstrap", settings.bootstrap, 100, "resamples for the 95% interval")
    check_delta_pick(settings.pick, settings.delta)
    counts = cache.split_counts()
    for split in ("val", "test"):
        if counts.get(split, 0) == 0:
            have = ", ".join(f"{k} ({v})" for k, v in counts.items()) or "none"
            role = "thresholds are fitted on val" if split == "val" else "test is where the figures are reported"
            raise ValueError(
                f"the cache has no {split!r} rows ({role}; splits present: {have}); "
                "rebuild it with `tradeoff cache`, or give `tradeoff import --split`"
            )


def check_delta_pick(pick: Pick, delta) -> None:
    """`--delta` is a number in (0, 1) given with --target-acc or --max-drop (or not given).

    Raises:
        TypeError / ValueError: one line saying what to give instead.
    """
    if delta is None:
        return
    from tradeoff.search.guarantee import check_delta

    check_delta(delta)
    if pick.default or pick.kind == "budget_flops":
        why = "no pick was given" if pick.default else "--budget-flops is a cost constraint, not a risk"
        raise ValueError(
            f"--delta certifies an accuracy, so it needs --target-acc or --max-drop; {why} - "
            "give --target-acc A or --max-drop D with --delta"
        )


# --------------------------------------------------------------------------- the search
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
    profile = _check_latency(cache, settings, latency_profile, batch_size, cost)
    from tradeoff.search import pareto  # deferred: keeps `import tradeoff.search.run` light

    start = time.perf_counter()
    timings: dict[str, float] = {}
    flops = np.asarray(cache.flops, dtype=np.float64)
    is_val = cache.split == "val"
    val_split = cal_table = None
    if settings.delta is not None:
        val_split = _guarantee_split(int(np.count_nonzero(is_val)), settings)
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
        index = _pick(front, settings.pick, exits[-1].val_accuracy, baseline, unit="ms" if cost == "latency" else "flops")
    else:
        t0 = time.perf_counter()
        certification = _certify(front, cal_table, settings.pick, settings.delta, val_split)
        index = certification.chosen
        timings["certify"] = time.perf_counter() - t0
    thresholds = front.thresholds[index]
    test_correct = _correct_at(test_table, thresholds)
    comparison = None
    if settings.per_class:
        other = next(f for f in fronts if f.method == "nsga")
        comparison = _paired_comparison(test_table, other, _pick(other, settings.pick, exits[-1].val_accuracy, baseline),
                                        front, index, resamples=bootstrap, seed=seed)
    chosen = ChosenPoint(
        method=front.method,
        index=index,
        thresholds=tuple(tuple(float(x) for x in t) if np.ndim(t) else float(t) for t in thresholds),
        val=_figures(front.val, index, baseline, flops),
        test=_figures(front.test, index, baseline, flops),
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


def _guarantee_split(num_val: int, settings: SearchSettings):
    """The seeded search/calibration split of val, or CannotCertify when val is too small."""
    from tradeoff.search import guarantee

    split = guarantee.split_val(num_val, seed=settings.seed)
    if split.search.size == 0 or split.calibration.size == 0:
        target = settings.pick.value if settings.pick.kind == "target_acc" else None
        need = "" if target is None or target >= 1 else (
            f"; even a perfect candidate needs >= {guarantee.minimum_calibration_size(target, settings.delta)} "
            f"calibration rows (~{int(np.ceil(guarantee.minimum_calibration_size(target, settings.delta) / split.calibration_fraction))} val rows)")
        raise guarantee.CannotCertify(
            f"cannot certify: val has {num_val} rows, too few to split into a search part and a calibration part "
            f"({split.sizes['search']} / {split.sizes['calibration']}){need} - give more val data"
        )
    return split


def _certify(front: MethodFront, cal_table: ExitTable, pick: Pick, delta: float, val_split):
    """Learn-then-Test on the calibration part over `front` (found on the search part)."""
    from tradeoff.search import guarantee

    correct = np.stack([_correct_at(cal_table, t) for t in front.thresholds])
    if pick.kind == "target_acc":
        if pick.value >= 1.0:
            raise ValueError("--target-acc 1 cannot be certified with --delta (no finite sample proves zero error); give a target below 1")
        cert = guarantee.certify_target_accuracy(correct, front.val.flops, front.val.accuracy, target=pick.value, delta=delta)
    else:
        cert = guarantee.certify_max_drop(correct, cal_table.correct[-1], front.val.flops, front.val.accuracy,
                                          drop_pp=pick.value, delta=delta)
    if not cert.certified:
        raise guarantee.CannotCertify(guarantee.cannot_certify_message(cert, val_split.calibration_fraction), cert)
    return cert


def _check_latency(cache: ExitCache, settings: SearchSettings, profile, batch_size, cost: str):
    """The latency profile checked against the cache and the options (None without one)."""
    if cost not in ("flops", "latency"):
        raise ValueError(f"--cost must be flops or latency; got {cost!r}")
    if cost == "latency" and profile is None:
        raise ValueError("--cost latency needs a device latency profile: pass --latency latency.json "
                         "(make it with `tradeoff profile --ckpt MODEL --out latency.json`)")
    kind = settings.pick.kind
    if kind == "budget_ms" and cost != "latency":
        raise ValueError("--budget-ms needs --cost latency (and --latency latency.json); use --budget-flops for FLOPs")
    if kind == "budget_flops" and cost == "latency":
        raise ValueError("--budget-flops prices FLOPs but --cost latency searches milliseconds; use --budget-ms")
    if profile is None:
        return None
    from tradeoff.policy.latency import LatencyProfile

    if not isinstance(profile, LatencyProfile):
        raise TypeError(f"latency_profile must be a LatencyProfile (read_latency_profile(path)); got {type(profile).__name__}")
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"--batch-size must be an integer >= 1; got {batch_size!r}")
    if cost == "latency" and settings.restarts > 1 and settings.jobs > 1:
        raise ValueError("--cost latency scores in this process: use --jobs 1 with --restarts")
    where = profile.path or "latency profile"
    if profile.num_exits != cache.num_exits:
        raise ValueError(f"{where} has {profile.num_exits} exits but the cache has {cache.num_exits}; "
                         "profile the model the cache was built from")
    own, theirs = profile.meta.get("checkpoint_sha256"), cache.meta.get("checkpoint_sha256")
    if own and theirs and own != theirs:
        raise ValueError(f"{where} was measured on another checkpoint (sha256 {own[:12]}...) than the cache's "
                         f"({theirs[:12]}...); profile the checkpoint the cache was built from")
    profile.index_of(batch_size)
    return profile


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


def _pick(front: MethodFront, pick: Pick, deepest_val_acc: float, baseline: float, *, unit: str = "flops") -> int:
    if unit == "ms":
        # pareto's messages show cost / 1e6 as MFLOPs: costs in ns read as ms there.
        from tradeoff.errors import TargetUnreachable

        scaled = Scores(front.val.accuracy, front.val.flops * 1e6, front.val.exit_fractions)
        try:
            return _pick(replace(front, val=scaled), replace(pick, value=pick.value * 1e6) if pick.kind == "budget_ms" else pick,
                         deepest_val_acc, baseline * 1e6)
        except TargetUnreachable as exc:
            raise TargetUnreachable(str(exc).replace("MFLOPs", "ms")) from None
    from tradeoff.search import pareto

    acc, cost = front.val.accuracy, front.val.flops
    if pick.kind == "target_acc":
        return pareto.pick_target_accuracy(acc, cost, pick.value, baseline_flops=baseline)
    if pick.kind == "max_drop":
        return pareto.pick_max_drop(acc, cost, deepest_val_acc, pick.value, baseline_flops=baseline)
    return pareto.pick_budget(acc, cost, pick.value, baseline_flops=baseline)


def _figures(scores: Scores, i: int, baseline: float, flops: np.ndarray) -> PointFigures:
    cost = float(scores.flops[i])
    return PointFigures(
        accuracy=float(scores.accuracy[i]),
        flops=cost,
        speedup=baseline / cost,
        speedup_all_exits=float(flops[-1]) / cost,
        exit_fractions=tuple(float(f) for f in scores.exit_fractions[i]),
    )


def _correct_at(table, thresholds: np.ndarray) -> np.ndarray:
    """(N,) bool: whether each sample is answered correctly under one threshold vector (or table)."""
    leave, by_fallback = exit_indices(table, thresholds, with_fallback=True)
    correct = table.correct[leave, np.arange(table.num_samples)]
    if table.fallback_correct is not None:
        correct[by_fallback] = table.fallback_correct[by_fallback]
    return correct


def _cost_at(table, thresholds: np.ndarray) -> np.ndarray:
    """(N,) float64: what each sample pays under one threshold vector (or table)."""
    return table.flops[exit_indices(table, thresholds)]


def _paired_comparison(table, base: MethodFront, i: int, other: MethodFront, j: int, *, resamples: int, seed: int) -> dict:
    """Per-class pick (other[j]) minus per-exit pick (base[i]) on test, with a paired percentile
    bootstrap over the test samples (both rules on the same resampled samples): accuracy gain and
    cost saving, each with its 95% interval. "wins" needs the accuracy gain's interval above 0
    at no extra cost, or the saving's interval above 0 at no accuracy loss."""
    a_ok, b_ok = _correct_at(table, base.thresholds[i]), _correct_at(table, other.thresholds[j])
    a_cost, b_cost = _cost_at(table, base.thresholds[i]), _cost_at(table, other.thresholds[j])
    n = a_ok.size
    rng = np.random.default_rng(seed)
    gain = np.empty(resamples)
    saving = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, n, n)
        gain[r] = (b_ok[idx].mean() - a_ok[idx].mean())
        saving[r] = (a_cost[idx].mean() - b_cost[idx].mean())
    acc_ci = tuple(float(v) for v in np.quantile(gain, [0.025, 0.975]))
    cost_ci = tuple(float(v) for v in np.quantile(saving, [0.025, 0.975]))
    acc_gain, cost_saving = float(b_ok.mean() - a_ok.mean()), float(a_cost.mean() - b_cost.mean())
    wins = (acc_ci[0] > 0 and cost_saving >= 0) or (cost_ci[0] > 0 and acc_gain >= 0)
    return {
        "per_exit": {"index": int(i), "test_accuracy": float(a_ok.mean()), "test_flops": float(a_cost.mean()),
                     "val_accuracy": float(base.val.accuracy[i]), "val_flops": float(base.val.flops[i])},
        "per_class": {"index": int(j), "test_accuracy": float(b_ok.mean()), "test_flops": float(b_cost.mean()),
                      "val_accuracy": float(other.val.accuracy[j]), "val_flops": float(other.val.flops[j])},
        "test_accuracy_gain": acc_gain, "test_accuracy_gain_ci95": acc_ci,
        "test_flops_saving": cost_saving, "test_flops_saving_ci95": cost_ci,
        "test_hypervolume": {"per_exit": _test_hv(base, table.flops), "per_class": _test_hv(other, table.flops)},
        "per_class_wins": bool(wins),
        "resamples": int(resamples),
    }


def _test_hv(front: MethodFront, flops: np.ndarray) -> float:
    """Hypervolume of a front's test points, with the same reference as the val ones."""
    from tradeoff.search import pareto

    return float(pareto.hypervolume_2d(1.0 - front.test.accuracy, front.test.flops, reference=pareto.reference_point(flops)))


def bootstrap_accuracy_ci(
    correct: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of an accuracy, seeded and O(resamples).

    Resampling N rows with replacement from N right/wrong answers and counting the right
    ones is exactly a Binomial(N, k/N) draw (each pick is right with probability k/N,
    independently), so the bootstrap distribution is drawn directly, with no
    (resamples, N) index matrix: the same distribution, for any N, in microseconds.

    Args:
        correct: (N,) bool, whether each test sample is answered correctly.
        resamples: bootstrap resamples.
        seed: for `numpy.random.default_rng(seed)`.
        level: coverage of the interval.

    Returns:
        (lo, hi) accuracies.
    """
    correct = np.asarray(correct, dtype=bool)
    n = correct.size
    if n == 0:
        raise ValueError("cannot bootstrap an accuracy over 0 samples; the split is empty")
    rng = np.random.default_rng(seed)
    draws = rng.binomial(n, np.count_nonzero(correct) / n, size=resamples) / n
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
