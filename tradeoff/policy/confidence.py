"""Confidence measures: each written once (DESIGN.md, "Exit rule").

`maxprob` (the top softmax probability), `margin` (top-1 minus top-2 probability),
`entropy` (1 - H / log C) and `patience` (how many exits in a row, ending here, predict
the same class, divided by K), all in [0, 1], higher = surer; `exit_outputs` turns a
cache's (K, N, C) logits into every exit's confidence and prediction (optionally the
running ensemble of exits 1..k, optionally temperature-scaled); `ensemble_predictions`
is SCAN's fallback answer (the argmax of the mean of all exits' logits). The runtime's batch-1 fast path
(`tradeoff.runtime.early_exit`) shortcuts these formulas and is tested against them.
NumPy only.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE_MEASURES = ("maxprob", "margin", "entropy", "patience")
# Measures computed from one exit's softmax alone (patience needs the exits before it).
SOFTMAX_MEASURES = ("maxprob", "margin", "entropy")


def softmax(logits: np.ndarray, temperature: float | np.ndarray = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64.

    Each row depends only on itself, so a batch of one and a chunk of a cache give the
    same bits (the runtime relies on this to repeat the cache's decisions).
    """
    z = np.array(logits, dtype=np.float64)  # a copy: worked on in place below
    if np.any(np.asarray(temperature) != 1.0):  # x / 1.0 == x, so skipping is exact
        z /= temperature
    z -= _row_max(z)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def _row_max(z: np.ndarray) -> np.ndarray:
    """z.max(axis=-1, keepdims=True); for many short rows, a loop over the few columns.

    A maximum involves no rounding, so both ways give the same bits; the column loop
    avoids NumPy's per-row reduction overhead (~4x faster for C = 10).
    """
    if z.ndim == 2 and z.shape[1] <= 32 and z.shape[0] >= 256:
        m = z[:, 0].copy()
        for c in range(1, z.shape[1]):
            np.maximum(m, z[:, c], out=m)
        return m[:, None]
    return z.max(axis=-1, keepdims=True)


def check_measure(measure: str) -> None:
    if measure not in CONFIDENCE_MEASURES:
        raise ValueError(
            f"confidence must be one of {', '.join(CONFIDENCE_MEASURES)}; got {measure!r} - "
            "pick one of those (maxprob is the default)"
        )


def confidence_of(probs: np.ndarray, measure: str = "maxprob") -> np.ndarray:
    """Confidence in [0, 1] of each row of `probs` (..., C); higher = surer.

    maxprob: top-1 probability. margin: top-1 minus top-2. entropy: 1 - H / log C
    (natural logs; 0 log 0 = 0), so a one-hot row scores 1 and a uniform row 0.

    Raises:
        ValueError: for an unknown measure.
    """
    check_measure(measure)
    if measure == "patience":
        raise ValueError("confidence 'patience' depends on the exits before this one; use exit_outputs(logits, "
                         "confidence='patience') with every exit's logits")
    if measure == "maxprob":
        return probs.max(axis=-1)
    C = probs.shape[-1]
    if measure == "margin":
        top2 = np.partition(probs, C - 2, axis=-1)[..., -2:]
        return np.clip(top2[..., 1] - top2[..., 0], 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log(probs), 0.0)
    return np.clip(1.0 + plogp.sum(axis=-1) / np.log(C), 0.0, 1.0)


def exit_outputs(
    logits: np.ndarray,
    *,
    confidence: str = "maxprob",
    ensemble: bool = False,
    temperatures: np.ndarray | None = None,
    total_exits: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and prediction of exits 1..k for a few samples, as the exit rule sees them.

    The one definition `exit_table` applies chunk by chunk: exit k's probabilities are
    `softmax(logits[k], T_k)`; with `ensemble` they are the running sum of exits 1..k
    (added shallow to deep) divided by k; the prediction is their argmax and the
    confidence is `confidence_of` them. Exits deeper than the ones given never matter,
    so the runtime can pass just the exits it has run.

    `patience` (PABEE, Zhou et al., NeurIPS 2020, "BERT Loses Patience"): exit k's
    confidence is r_k / K, where r_k is the length of the run of identical predictions
    ending at exit k (exit 1: r = 1; r_k = r_{k-1} + 1 when exit k predicts what exit
    k-1 predicted, else 1). It lies in (0, 1]. PABEE's integer patience P (leave once
    the prediction has stayed unchanged for P consecutive exits after the first) is the
    threshold t = (P + 1) / K here; any t in ((P) / K, (P + 1) / K] acts the same.
    Temperatures do not change argmaxes, so patience ignores them.

    Args:
        logits: (k, n, C) logits of the first k exits.
        temperatures: (k,) or None (all 1).
        total_exits: K, the model's number of exits (patience divides by it); default k,
            the exits given. The runtime, holding only exits 1..k, must pass it.

    Returns:
        confidence (k, n) float64 and prediction (k, n) int64.
    """
    check_measure(confidence)
    k_have, n, _ = logits.shape
    temps = np.ones(k_have) if temperatures is None else temperatures
    conf = np.empty((k_have, n), dtype=np.float64)
    pred = np.empty((k_have, n), dtype=np.int64)
    running = None
    run = np.zeros(n, dtype=np.int64)
    for k in range(k_have):
        probs = softmax(logits[k], temps[k])
        if ensemble:
            running = probs if running is None else running + probs
            probs = running / (k + 1)
        pred[k] = probs.argmax(axis=-1)
        if confidence == "patience":
            run = run + 1 if k == 0 else np.where(pred[k] == pred[k - 1], run + 1, 1)
            conf[k] = run / logits.shape[0] if total_exits is None else run / total_exits
        elif confidence == "maxprob":  # the max is the value at the argmax: one pass, same bits
            conf[k] = np.take_along_axis(probs, pred[k][:, None], axis=-1)[:, 0]
        else:
            conf[k] = confidence_of(probs, confidence)
    return conf, pred


def ensemble_predictions(logits: np.ndarray, temperatures: np.ndarray | None = None) -> np.ndarray:
    """SCAN's ensemble answer: argmax over classes of the mean of all K exits' logits.

    Source: Zhang et al., "SCAN: A Scalable Neural Networks Framework Towards Compact and
    Efficient Models", NeurIPS 2019; the official inference script averages the exits'
    *logits* (not their softmaxes) for a sample that no exit is sure of. With
    calibration each exit's logits are divided by its temperature first. Float64; each
    sample's answer depends only on its own logits (the runtime repeats it bit for bit).

    Args:
        logits: (K, n, C) logits of every exit, shallow -> deep.
        temperatures: (K,) or None (all 1).

    Returns:
        (n,) int64 predicted classes.
    """
    z = np.array(logits, dtype=np.float64)
    if temperatures is not None and np.any(np.asarray(temperatures) != 1.0):
        z /= np.asarray(temperatures, dtype=np.float64)[:, None, None]
    total = z[0].copy()
    for k in range(1, z.shape[0]):  # shallow to deep, one fixed order
        total += z[k]
    return (total / z.shape[0]).argmax(axis=-1).astype(np.int64)


def most_confident_predictions(conf: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """SDN's answer for a sample no exit accepted: the prediction of its most confident exit.

    Source: Kaya et al., "Shallow-Deep Networks: Understanding and Mitigating Network
    Overthinking", ICML 2019. Every exit competes, switched-off ones included (their
    confidence is still measured; "off" only stops samples leaving there), so the answer
    does not depend on the thresholds. Ties go to the shallowest exit (`argmax` takes the
    first maximum).

    Args:
        conf, pred: (K, n) every exit's confidence and prediction (`exit_outputs`).

    Returns:
        (n,) int64 predicted classes.
    """
    best = conf.argmax(axis=0)
    return pred[best, np.arange(pred.shape[1])]
