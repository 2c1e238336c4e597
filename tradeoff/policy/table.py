"""The exit table: what the exit rule needs of a split, and where each sample leaves.

For each exit k and sample n: the confidence the rule compares with t_k and whether the
answer given there is right (`exit_table`), plus the per-exit costs. Every scorer
(`tradeoff.policy.scoring`, `tradeoff.policy.bitset`) works on it. NumPy only.

The exit rule: a sample leaves at the first exit k < K with confidence >= t_k, else at
exit K (0-based: the first k < K-1, else K-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tradeoff.policy.confidence import check_measure, exit_outputs
from tradeoff.policy.rule import ExitRule


@dataclass(frozen=True)
class ExitTable:
    """Per-exit confidence and correctness of every sample of one split.

    Attributes:
        confidence: (K, N) float64 in [0, 1]; higher = surer. Row K-1 is unused by the
            rule (the deepest exit always answers) but kept for plots.
        correct: (K, N) bool, whether exit k's answer is the label.
        flops: (K,) float64 cumulative cost of leaving at exit k.
    """

    confidence: np.ndarray
    correct: np.ndarray
    flops: np.ndarray

    @property
    def num_exits(self) -> int:
        return int(self.confidence.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.confidence.shape[1])


@dataclass(frozen=True)
class Scores:
    """What P threshold vectors give on one split.

    Attributes:
        accuracy: (P,) fraction of samples answered correctly.
        flops: (P,) mean cost per sample (fvcore count).
        exit_fractions: (P, K) fraction of samples leaving at each exit; rows sum to 1.
    """

    accuracy: np.ndarray
    flops: np.ndarray
    exit_fractions: np.ndarray




def exit_table(
    logits: np.ndarray,
    labels: np.ndarray,
    flops: np.ndarray,
    *,
    confidence: str = "maxprob",
    ensemble: bool = False,
    temperatures: np.ndarray | None = None,
    chunk: int = 65536,
) -> ExitTable:
    """Reduce (K, N, C) logits to per-exit confidence and correctness.

    With `ensemble`, exit k answers with the mean softmax of exits 1..k, and its
    confidence is measured on that mean. `temperatures` (K,) divides each exit's
    logits before the softmax (calibration), before any averaging. Works in chunks of
    `chunk` samples so a million-sample cache never needs a (K, N, C) float64 copy
    (peak extra memory ~ 3 * chunk * C * 8 bytes).

    Args:
        logits: (K, N, C) float logits, exits shallow -> deep.
        labels: (N,) integer classes.
        flops: (K,) cumulative cost of leaving at each exit (fvcore count).

    Raises:
        ValueError: for an unknown measure, bad shapes or bad temperatures.
    """
    check_measure(confidence)
    if not hasattr(logits, "ndim") or logits.ndim != 3:
        raise ValueError(
            f"logits must have shape (K, N, C); got {getattr(logits, 'shape', type(logits).__name__)}"
            " - stack the exits' (N, C) arrays along a new first axis"
        )
    K, N, _ = logits.shape
    labels = np.asarray(labels)
    if labels.shape != (N,):
        raise ValueError(f"labels must have shape (N,) = ({N},) to match logits; got {labels.shape}")
    flops = np.asarray(flops, dtype=np.float64)
    if flops.shape != (K,):
        raise ValueError(f"flops must have shape (K,) = ({K},), one cost per exit; got {flops.shape}")
    temps = np.ones(K) if temperatures is None else np.asarray(temperatures, dtype=np.float64)
    if temps.shape != (K,) or not np.all(np.isfinite(temps)) or np.any(temps <= 0):
        raise ValueError(
            f"temperatures must be {K} positive finite numbers, one per exit; got {np.ravel(temps).tolist()}"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of samples; got {chunk}")
    conf = np.empty((K, N), dtype=np.float64)
    correct = np.empty((K, N), dtype=bool)
    for start in range(0, N, chunk):
        stop = min(N, start + chunk)
        c, pred = exit_outputs(logits[:, start:stop], confidence=confidence, ensemble=ensemble, temperatures=temps)
        conf[:, start:stop] = c
        np.equal(pred, labels[None, start:stop], out=correct[:, start:stop])
    return ExitTable(conf, correct, flops)


def rule_table(logits: np.ndarray, labels: np.ndarray, flops: np.ndarray, rule: ExitRule) -> ExitTable:
    """`exit_table` under an `ExitRule`'s confidence measure, ensemble and temperatures."""
    return exit_table(logits, labels, flops, confidence=rule.confidence, ensemble=rule.ensemble,
                      temperatures=None if rule.temperatures is None else np.asarray(rule.temperatures))


# --------------------------------------------------------------------------- exit rule
def check_thresholds(thresholds: np.ndarray, num_exits: int) -> np.ndarray:
    """Validate and return thresholds as a (P, K-1) float64 matrix (a (K-1,) vector is one row)."""
    try:
        t = np.asarray(thresholds, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"thresholds must be numbers, a (P, K-1) = (P, {num_exits - 1}) matrix; "
            f"got {type(thresholds).__name__} that is not numeric ({exc})"
        ) from None
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2 or t.shape[1] != num_exits - 1:
        raise ValueError(
            f"thresholds must have shape (P, K-1) = (P, {num_exits - 1}) for K = {num_exits} exits; got {np.shape(thresholds)}"
        )
    if not np.all(np.isfinite(t)):
        raise ValueError("thresholds must be finite numbers in [0, 1]; got NaN or inf")
    return t


def exit_indices(table: ExitTable, thresholds: np.ndarray) -> np.ndarray:
    """Exit (0-based) each sample leaves at under one threshold vector (K-1,).

    A sample leaves at the first exit k < K with confidence >= t_k, else at exit K.
    """
    t = check_thresholds(thresholds, table.num_exits)[0]
    K, N = table.confidence.shape
    out = np.full(N, K - 1, dtype=np.int64)
    undecided = np.ones(N, dtype=bool)
    for k in range(K - 1):
        leave = undecided & (table.confidence[k] >= t[k])
        out[leave] = k
        undecided &= ~leave
    return out


def scores_from_counts(correct_counts: np.ndarray, exit_counts: np.ndarray, flops: np.ndarray, n: int) -> Scores:
    """Scores from integer counts, with one fixed order of float operations.

    Every scorer ends here so that equal counts give bit-identical scores: accuracy =
    correct / N, fractions = count_k / N, cost = (sum_k count_k * flops_k, added k = 0,
    1, ...) / N. No BLAS: its summation order may change with P.

    Args:
        correct_counts: (P,) int64 samples answered right.
        exit_counts: (P, K) int64 samples leaving at each exit.
        flops: (K,) float64.
        n: N, the number of samples.
    """
    total = np.zeros(exit_counts.shape[0], dtype=np.float64)
    for k in range(exit_counts.shape[1]):
        total += exit_counts[:, k] * flops[k]
    return Scores(correct_counts / n, total / n, exit_counts / n)


def check_table(table: ExitTable) -> None:
    K, N = table.confidence.shape
    if N == 0:
        raise ValueError("the exit table has no samples; score a split that has rows")
    if table.correct.shape != (K, N) or np.shape(table.flops) != (K,):
        raise ValueError(
            f"ExitTable parts disagree: confidence {table.confidence.shape}, correct {table.correct.shape}, "
            f"flops {np.shape(table.flops)}; build it with exit_table()"
        )
    if np.isnan(table.confidence[: K - 1]).any():
        raise ValueError("the exit table has NaN confidences; the cache's logits must be finite")
