"""The exit table: what the exit rule needs of a split, and where each sample leaves.

For each exit k and sample n: the confidence the rule compares with t_k and whether the
answer given there is right (`exit_table`), plus the per-exit costs. Every scorer
(`tradeoff.policy.scoring`, `tradeoff.policy.bitset`) works on it. NumPy only.

The exit rule: a sample leaves at the first thresholded exit k with confidence >= t_k
(t_k may depend on exit k's predicted class: per-class thresholds); a sample no exit
accepted is answered by the fallback. Under `deepest` the thresholded exits are 1..K-1
and the fallback is exit K; under `ensemble` and `most-confident` all K exits are
thresholded and the fallback answer (SCAN's mean of the logits; SDN's most confident
exit) costs the whole network, flops[K-1], and is counted at exit K-1 (0-based).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tradeoff.policy.confidence import (
    check_measure,
    confidence_of,
    ensemble_predictions,
    exit_outputs,
    most_confident_predictions,
    softmax,
)
from tradeoff.policy.rule import FALLBACKS, ExitRule


@dataclass(frozen=True)
class ExitTable:
    """Per-exit confidence and correctness of every sample of one split.

    Attributes:
        confidence: (K, N) float64 in [0, 1]; higher = surer. Under `deepest` row K-1 is
            unused by the rule (the deepest exit always answers) but kept for plots.
        correct: (K, N) bool, whether exit k's answer is the label.
        flops: (K,) float64 cumulative cost of leaving at exit k.
        fallback: "deepest", "ensemble" or "most-confident" (`ExitRule.fallback`).
        fallback_correct: (N,) bool, whether the fallback's answer is right; None under
            `deepest` (it is then correct[K-1]).
        predicted: (K, N) int64 each exit's predicted class (per-class thresholds index
            by it), or None when not kept.
    """

    confidence: np.ndarray
    correct: np.ndarray
    flops: np.ndarray
    fallback: str = "deepest"
    fallback_correct: np.ndarray | None = None
    predicted: np.ndarray | None = None

    @property
    def num_exits(self) -> int:
        return int(self.confidence.shape[0])

    @property
    def num_thresholds(self) -> int:
        """M: K-1 under `deepest` (the deepest exit always answers), K otherwise."""
        return self.num_exits - 1 if self.fallback == "deepest" else self.num_exits

    @property
    def answer_correct(self) -> np.ndarray:
        """(M + 1, N) bool: rows 0..M-1 the thresholded exits' rightness, row M the fallback's."""
        last = self.correct[-1] if self.fallback_correct is None else self.fallback_correct
        return np.concatenate([self.correct[: self.num_thresholds], last[None, :]])

    @property
    def num_samples(self) -> int:
        return int(self.confidence.shape[1])

    def columns(self, samples: np.ndarray) -> "ExitTable":
        """The table of the samples at positions `samples` (an index array), every field kept."""
        def pick(a):
            return None if a is None else np.ascontiguousarray(a[..., samples])

        return ExitTable(pick(self.confidence), pick(self.correct), self.flops, self.fallback,
                         pick(self.fallback_correct), pick(self.predicted))


@dataclass(frozen=True)
class Scores:
    """What P threshold vectors give on one split.

    Attributes:
        accuracy: (P,) fraction of samples answered correctly.
        flops: (P,) mean cost per sample (fvcore count).
        exit_fractions: (P, K) fraction of samples leaving at each exit; rows sum to 1.
            A sample answered by the `ensemble` / `most-confident` fallback ran (and paid
            for) the whole network: it is counted at exit K.
        fallback_fractions: (P,) fraction answered by the fallback (under `deepest`, those
            reaching the deepest exit), or None where a caller did not count it.
    """

    accuracy: np.ndarray
    flops: np.ndarray
    exit_fractions: np.ndarray
    fallback_fractions: np.ndarray | None = None




def exit_table(
    logits: np.ndarray,
    labels: np.ndarray,
    flops: np.ndarray,
    *,
    confidence: str = "maxprob",
    ensemble: bool = False,
    temperatures: np.ndarray | None = None,
    fallback: str = "deepest",
    keep_predictions: bool = False,
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
        fallback: who answers a sample no exit accepted (see the module docstring).
        keep_predictions: keep every exit's predicted class (per-class thresholds).

    Raises:
        ValueError: for an unknown measure or fallback, bad shapes or bad temperatures.
    """
    check_measure(confidence)
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}; got {fallback!r}")
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
    predicted = np.empty((K, N), dtype=np.int64) if keep_predictions else None
    fallback_correct = None if fallback == "deepest" else np.empty(N, dtype=bool)
    for start in range(0, N, chunk):
        stop = min(N, start + chunk)
        c, pred = exit_outputs(logits[:, start:stop], confidence=confidence, ensemble=ensemble, temperatures=temps)
        conf[:, start:stop] = c
        np.equal(pred, labels[None, start:stop], out=correct[:, start:stop])
        if predicted is not None:
            predicted[:, start:stop] = pred
        if fallback_correct is not None:
            answer = fallback_predictions(logits[:, start:stop], c, pred, fallback, temps)
            np.equal(answer, labels[start:stop], out=fallback_correct[start:stop])
    return ExitTable(conf, correct, flops, fallback=fallback, fallback_correct=fallback_correct, predicted=predicted)


def fallback_predictions(logits: np.ndarray, conf: np.ndarray, pred: np.ndarray, fallback: str,
                         temperatures: np.ndarray | None) -> np.ndarray:
    """(n,) the fallback's answer for samples no exit accepted, from all K exits' (K, n, C)
    logits and their confidence / prediction (K, n) (`exit_outputs`); under `deepest`,
    exit K's prediction."""
    if fallback == "ensemble":
        return ensemble_predictions(logits, temperatures)
    if fallback == "most-confident":
        return most_confident_predictions(conf, pred)
    return pred[-1]


def rule_table(logits: np.ndarray, labels: np.ndarray, flops: np.ndarray, rule: ExitRule) -> ExitTable:
    """`exit_table` under an `ExitRule`'s confidence measure, ensemble, temperatures and fallback
    (with predictions kept when its thresholds are per class)."""
    return exit_table(logits, labels, flops, confidence=rule.confidence, ensemble=rule.ensemble,
                      temperatures=None if rule.temperatures is None else np.asarray(rule.temperatures),
                      fallback=rule.fallback, keep_predictions=rule.per_class)


def rule_decisions(logits: np.ndarray, rule: ExitRule, *, with_confidence: bool = False) -> tuple[np.ndarray, ...]:
    """Exit (0-based) and answer of each sample of (K, n, C) logits under `rule`, in one pass.

    The same definitions as `rule_table` + `exit_indices`; the runtime, the ONNX graph and
    `tradeoff evaluate`'s bootstrap compare with it. A fallback sample reports exit K-1.

    Args:
        with_confidence: also return the confidence of each answer: its exit's, or for a
            fallback sample the ensemble's (confidence of the softmax of the mean tempered
            logits) or the most confident exit's (what the ONNX graph outputs). Softmax
            measures only ("patience" raises ValueError).

    Returns:
        exits (n,) int64 and predictions (n,) int64 (and confidences (n,) float64).
    """
    temps = None if rule.temperatures is None else rule.temperature_array()
    conf, pred = exit_outputs(logits, confidence=rule.confidence, ensemble=rule.ensemble, temperatures=temps)
    K, n = conf.shape
    table = ExitTable(conf, np.zeros((K, n), dtype=bool), np.zeros(K), fallback=rule.fallback, predicted=pred)
    exits, by_fallback = exit_indices(table, rule.threshold_array(), with_fallback=True)
    answers = pred[exits, np.arange(n)]
    if by_fallback.any():
        answers[by_fallback] = fallback_predictions(logits, conf, pred, rule.fallback, temps)[by_fallback]
    if not with_confidence:
        return exits, answers
    confidences = conf[exits, np.arange(n)]
    if by_fallback.any():
        confidences[by_fallback] = _fallback_confidences(logits, conf, rule, temps)[by_fallback]
    return exits, answers, confidences


def _fallback_confidences(logits: np.ndarray, conf: np.ndarray, rule: ExitRule, temperatures) -> np.ndarray:
    """(n,) confidence of the fallback's answer (beside `fallback_predictions`)."""
    if rule.fallback == "ensemble":
        scaled = np.asarray(logits, dtype=np.float64) / (np.ones(conf.shape[0]) if temperatures is None
                                                          else np.asarray(temperatures))[:, None, None]
        return confidence_of(softmax(scaled.mean(axis=0)), rule.confidence)
    if rule.fallback == "most-confident":
        return conf.max(axis=0)
    return conf[-1]


# --------------------------------------------------------------------------- exit rule
def check_thresholds(thresholds: np.ndarray, num_exits: int, width: int | None = None,
                     num_classes: int | None = None) -> np.ndarray:
    """Validate and return thresholds as a (P, M) float64 matrix (a (M,) vector is one row).

    M = `width`, the number of thresholded exits (default K-1, the `deepest` rule). With
    `num_classes` C, per-class thresholds (P, M, C) (one (M, C) table is one row) are
    accepted too and returned as they are. A switched-off threshold is `OFF_THRESHOLD`.
    """
    m = num_exits - 1 if width is None else width
    if num_classes is not None:  # per class: (M, C) or (P, M, C)
        t = np.asarray(thresholds, dtype=np.float64)
        t = t[None] if t.ndim == 2 else t
        if t.ndim != 3 or t.shape[1:] != (m, num_classes):
            raise ValueError(
                f"per-class thresholds must have shape (P, M, C) = (P, {m}, {num_classes}) for K = {num_exits} "
                f"exits and {num_classes} classes; got {np.shape(thresholds)}"
            )
        if not np.all(np.isfinite(t)):
            raise ValueError("thresholds must be finite numbers in [0, 1]; got NaN or inf")
        return t
    try:
        t = np.asarray(thresholds, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"thresholds must be numbers, a (P, K-1) = (P, {num_exits - 1}) matrix; "
            f"got {type(thresholds).__name__} that is not numeric ({exc})"
        ) from None
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2 or t.shape[1] != m:
        what = "K-1" if m == num_exits - 1 else "K"
        raise ValueError(
            f"thresholds must have shape (P, {what}) = (P, {m}) for K = {num_exits} exits; got {np.shape(thresholds)}"
        )
    if not np.all(np.isfinite(t)):
        raise ValueError("thresholds must be finite numbers in [0, 1]; got NaN or inf")
    return t


def exit_indices(table: ExitTable, thresholds: np.ndarray, *, with_fallback: bool = False):
    """Exit (0-based) each sample leaves at under one threshold vector (M,) or table (M, C).

    A sample leaves at the first thresholded exit k with confidence >= t_k (per class:
    t_k of the class exit k predicts), else the fallback answers it at exit K.

    Returns:
        (N,) int64 exits; with `with_fallback`, also (N,) bool: answered by the fallback.
    """
    M = table.num_thresholds
    per_class = table.predicted is not None and np.ndim(thresholds) == 2 and np.shape(thresholds) != (1, M)
    C = np.shape(thresholds)[-1] if per_class else None
    t = check_thresholds(thresholds, table.num_exits, table.num_thresholds, C)[0]
    K, N = table.confidence.shape
    out = np.full(N, K - 1, dtype=np.int64)
    undecided = np.ones(N, dtype=bool)
    for k in range(table.num_thresholds):
        limit = t[k][table.predicted[k]] if t.ndim == 2 else t[k]
        leave = undecided & (table.confidence[k] >= limit)
        out[leave] = k
        undecided &= ~leave
    return (out, undecided) if with_fallback else out


def scores_from_counts(correct_counts: np.ndarray, exit_counts: np.ndarray, flops: np.ndarray, n: int,
                       fallback_counts: np.ndarray | None = None) -> Scores:
    """Scores from integer counts, with one fixed order of float operations.

    Every scorer ends here so that equal counts give bit-identical scores: accuracy =
    correct / N, fractions = count_k / N, cost = (sum_k count_k * flops_k, added k = 0,
    1, ...) / N. No BLAS: its summation order may change with P.

    Args:
        correct_counts: (P,) int64 samples answered right.
        exit_counts: (P, K) int64 samples leaving at each exit.
        flops: (K,) float64.
        n: N, the number of samples.
        fallback_counts: (P,) int64 samples answered by the fallback (already included
            in exit_counts[:, K-1]); None: exit_counts[:, K-1] (the `deepest` rule).
    """
    total = np.zeros(exit_counts.shape[0], dtype=np.float64)
    for k in range(exit_counts.shape[1]):
        total += exit_counts[:, k] * flops[k]
    fallback = exit_counts[:, -1] if fallback_counts is None else fallback_counts
    return Scores(correct_counts / n, total / n, exit_counts / n, fallback / n)


def check_table(table: ExitTable) -> None:
    K, N = table.confidence.shape
    if N == 0:
        raise ValueError("the exit table has no samples; score a split that has rows")
    if table.correct.shape != (K, N) or np.shape(table.flops) != (K,):
        raise ValueError(
            f"ExitTable parts disagree: confidence {table.confidence.shape}, correct {table.correct.shape}, "
            f"flops {np.shape(table.flops)}; build it with exit_table()"
        )
    if table.fallback_correct is not None and np.shape(table.fallback_correct) != (N,):
        raise ValueError(f"ExitTable fallback_correct must have shape ({N},); got {np.shape(table.fallback_correct)}")
    if np.isnan(table.confidence[: table.num_thresholds]).any():
        raise ValueError("the exit table has NaN confidences; the cache's logits must be finite")


def score_thresholds_reference(table: ExitTable, thresholds: np.ndarray) -> Scores:
    """The straightforward vectorised scorer: a (P, N) exit-index matrix filled exit by exit.

    Thresholds (P, M), or per class (P, M, C) when the table kept predictions (sample n's
    threshold at exit k is t[k, predicted[k, n]]). Slot M is the fallback (exit K under
    `deepest`; the ensemble / most-confident answer, paid and counted at exit K,
    otherwise). Kept as the yardstick the fast scorer is tested and benchmarked against,
    and the per-class scorer. Memory O(P N): not for large caches.
    """
    check_table(table)
    K, N = table.confidence.shape
    M = table.num_thresholds
    per_class = table.predicted is not None and np.ndim(thresholds) == 3
    t = check_thresholds(thresholds, K, M, np.shape(thresholds)[-1] if per_class else None)
    P = t.shape[0]
    slot = np.full((P, N), M, dtype=np.int64)
    undecided = np.ones((P, N), dtype=bool)
    for k in range(M):
        limit = t[:, k, :][:, table.predicted[k]] if per_class else t[:, k][:, None]
        leave = undecided & (table.confidence[k][None, :] >= limit)
        slot[leave] = k
        undecided &= ~leave
    rows = np.arange(N)[None, :]
    correct_counts = table.answer_correct[slot, rows].sum(axis=1, dtype=np.int64)
    slots = np.stack([(slot == k).sum(axis=1) for k in range(M + 1)], axis=1).astype(np.int64).reshape(P, M + 1)
    return scores_from_slots(correct_counts, slots, table)


def scores_from_slots(correct_counts: np.ndarray, slot_counts: np.ndarray, table: ExitTable) -> Scores:
    """Scores from (P, M + 1) slot counts (M thresholded exits, then the fallback): the fallback
    is paid and counted at exit K (under `deepest` the slots are the K exits themselves)."""
    K = table.num_exits
    if table.num_thresholds == K - 1:
        return scores_from_counts(correct_counts, slot_counts, table.flops, table.num_samples)
    exit_counts = slot_counts[:, :K].copy()
    exit_counts[:, K - 1] += slot_counts[:, K]
    return scores_from_counts(correct_counts, exit_counts, table.flops, table.num_samples, slot_counts[:, K])
