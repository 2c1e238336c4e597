"""Confidence measures, the exit rule, and scoring of many threshold vectors at once.

Everything reduces a cache to an `ExitTable`: for each exit k and sample n, the
confidence the rule compares with t_k and whether the answer given there is right. The
search never looks at logits again, so scoring P threshold vectors is pure array work.
NumPy only: no torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE_MEASURES = ("maxprob", "margin", "entropy")


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


def softmax(logits: np.ndarray, temperature: float | np.ndarray = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def confidence_of(probs: np.ndarray, measure: str = "maxprob") -> np.ndarray:
    """Confidence in [0, 1] of each row of `probs` (..., C); higher = surer.

    maxprob: top-1 probability. margin: top-1 minus top-2. entropy: 1 - H / log C.
    """
    if measure == "maxprob":
        return probs.max(axis=-1)
    if measure == "margin":
        top2 = np.partition(probs, probs.shape[-1] - 2, axis=-1)[..., -2:]
        return np.clip(top2[..., 1] - top2[..., 0], 0.0, 1.0)
    if measure == "entropy":
        C = probs.shape[-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(probs > 0, probs * np.log(probs), 0.0)
        return np.clip(1.0 + plogp.sum(axis=-1) / np.log(C), 0.0, 1.0)
    raise ValueError(f"confidence must be one of {', '.join(CONFIDENCE_MEASURES)}; got {measure!r}")


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
    logits before the softmax (calibration). Works in chunks of samples so a
    million-sample cache never needs a (K, N, C) float64 copy.
    """
    if confidence not in CONFIDENCE_MEASURES:
        raise ValueError(f"confidence must be one of {', '.join(CONFIDENCE_MEASURES)}; got {confidence!r}")
    K, N, _ = logits.shape
    temps = np.ones(K) if temperatures is None else np.asarray(temperatures, dtype=np.float64)
    if temps.shape != (K,) or not np.all(np.isfinite(temps)) or np.any(temps <= 0):
        raise ValueError(f"temperatures must be {K} positive numbers, one per exit; got {temps.tolist()}")
    conf = np.empty((K, N), dtype=np.float64)
    correct = np.empty((K, N), dtype=bool)
    for start in range(0, N, chunk):
        stop = min(N, start + chunk)
        running = None
        for k in range(K):
            probs = softmax(logits[k, start:stop], temps[k])
            if ensemble:
                running = probs if running is None else running + probs
                probs = running / (k + 1)
            conf[k, start:stop] = confidence_of(probs, confidence)
            correct[k, start:stop] = probs.argmax(axis=-1) == labels[start:stop]
    return ExitTable(conf, correct, np.asarray(flops, dtype=np.float64))


def check_thresholds(thresholds: np.ndarray, num_exits: int) -> np.ndarray:
    """Validate and return thresholds as a (P, K-1) float64 matrix."""
    t = np.asarray(thresholds, dtype=np.float64)
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


def score_thresholds_reference(table: ExitTable, thresholds: np.ndarray) -> Scores:
    """The straightforward vectorised scorer: a (P, N) exit-index matrix filled exit by exit.

    Kept as the yardstick the fast scorer is tested and benchmarked against.
    """
    t = check_thresholds(thresholds, table.num_exits)
    K, N = table.confidence.shape
    P = t.shape[0]
    exit_of = np.full((P, N), K - 1, dtype=np.int64)
    undecided = np.ones((P, N), dtype=bool)
    for k in range(K - 1):
        leave = undecided & (table.confidence[k][None, :] >= t[:, k][:, None])
        exit_of[leave] = k
        undecided &= ~leave
    rows = np.arange(N)[None, :]
    accuracy = table.correct[exit_of, rows].mean(axis=1)
    counts = np.stack([(exit_of == k).sum(axis=1) for k in range(K)], axis=1)
    fractions = counts / N
    return Scores(accuracy, fractions @ table.flops, fractions)


def score_thresholds(table: ExitTable, thresholds: np.ndarray) -> Scores:
    """Score P threshold vectors (P, K-1) on one split, all at once."""
    return score_thresholds_reference(table, thresholds)
