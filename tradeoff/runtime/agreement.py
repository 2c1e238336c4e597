"""Does a real early-exit run reproduce the cache's exit rule? Float rounding aside, it must.

The cache's test split is loaded and the rule applied to its logits once
(`cache_decisions`); `cache_agreement` then says how often a run's exits and answers equal
those decisions, and `unexplained_disagreements` which differences rounding cannot
explain. Both `tradeoff run` backends (torch and ONNX Runtime) and the benchmarks use them.

A convolution's float32 result depends in its last bits on the batch it ran in, so a
sample whose cached confidence lies within `ROUNDING` of a threshold may leave at the
other exit in a real run. Any other difference means the model is not the one the cache
was built from, or its exits are not what the cache says (a `forward()` that disagrees
with `stages()`): `tradeoff run --cache` fails on those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tradeoff.policy.confidence import exit_outputs
from tradeoff.policy.rule import ExitRule

__all__ = ["ROUNDING", "CacheDecisions", "cache_agreement", "cache_decisions", "unexplained_disagreements"]

#: A confidence this close to a threshold may flip with float32 rounding.
ROUNDING = 1e-5


@dataclass(frozen=True)
class CacheDecisions:
    """The exit rule applied to a cache's test logits (`policy.table.rule_decisions`).

    Attributes:
        rule: the `ExitRule` applied.
        logits: (K, N, C) the cache's test logits.
        exits, predictions: (N,) int64 where each test sample leaves and what it answers.
    """

    rule: ExitRule
    logits: np.ndarray
    exits: np.ndarray
    predictions: np.ndarray


def cache_decisions(cache_path, rule: ExitRule, labels: np.ndarray) -> CacheDecisions:
    """Load the cache's test split once and apply `rule` to it.

    Args:
        cache_path: the cache the thresholds were searched on.
        rule: the `ExitRule` the run applies.
        labels: (N,) the labels of the rows the run used, which must be the cache's test
            split in the same order.

    Raises:
        ValueError: the test split is not those rows, or the rule does not fit the cache.
    """
    from tradeoff.cache.format import load_cache
    from tradeoff.policy.table import rule_decisions

    test = load_cache(cache_path).select("test")
    if not np.array_equal(test.labels, labels):
        raise ValueError(
            f"cache {cache_path}: its test split ({test.num_samples} rows) is not the data's test split "
            f"({np.size(labels)} rows) in the same order; pass the data the cache was built from"
        )
    rule.check_fits(test.num_exits, test.logits.shape[-1])
    exits, predictions = rule_decisions(test.logits, rule)
    return CacheDecisions(rule, test.logits, exits, predictions)


def cache_agreement(decisions: CacheDecisions, exits: np.ndarray, predictions: np.ndarray) -> dict:
    """How often a run's exits and answers (N,) equal the exit rule on the cached test logits.

    Differences can only come from float32 rounding (see the module docstring).
    """
    return {
        "exits": float(np.mean(decisions.exits == exits)),
        "predictions": float(np.mean(decisions.predictions == predictions)),
    }


def unexplained_disagreements(decisions: CacheDecisions, exits: np.ndarray, predictions: np.ndarray) -> dict:
    """Samples whose run exit or answer (N,) differs from the cache's rule, split by cause.

    Returns:
        {"disagree": n, "near_threshold": n explained by rounding, "unexplained": n,
         "first_unexplained": test row or None}.
    """
    rule = decisions.rule
    temps = None if rule.temperatures is None else rule.temperature_array()
    conf, pred = exit_outputs(decisions.logits, confidence=rule.confidence, ensemble=rule.ensemble, temperatures=temps)
    thresholds = rule.threshold_array()  # (M,) or per class (M, C); off exits at OFF_THRESHOLD, out of reach
    M = thresholds.shape[0]
    if thresholds.ndim == 2:  # each sample is held to the threshold of the class its exit predicts
        thresholds = np.take_along_axis(thresholds, pred[:M], axis=1)
    else:
        thresholds = thresholds[:, None]
    differ = (decisions.exits != exits) | (decisions.predictions != predictions)
    near = (np.abs(conf[:M] - thresholds) <= ROUNDING).any(axis=0)
    unexplained = differ & ~near
    rows = np.flatnonzero(unexplained)
    return {
        "disagree": int(differ.sum()),
        "near_threshold": int((differ & near).sum()),
        "unexplained": int(unexplained.sum()),
        "first_unexplained": int(rows[0]) if rows.size else None,
    }
