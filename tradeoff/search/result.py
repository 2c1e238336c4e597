"""What one search found: `SearchResult` and the fronts and points it is built from.

Frozen dataclasses, built complete by `search.run.run_search`; what the report and the
plots consume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tradeoff.policy.rule import ExitRule, rule_thresholds
from tradeoff.policy.scoring import Scores
from tradeoff.search.settings import SearchSettings


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
        method: one of `search.settings.METHODS` (or PER_CLASS_METHOD).
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
    """Everything one `tradeoff search` found; what `tradeoff.report` documents and draws.

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
