"""Does a real early-exit run reproduce the cache's exit rule? Float rounding aside, it must.

A convolution's float32 result depends in its last bits on the batch it ran in, so a
sample whose cached confidence lies within `ROUNDING` of a threshold may leave at the
other exit in a real run. Any other difference means the model is not the one the cache
was built from, or its exits are not what the cache says (a `forward()` that disagrees
with `stages()`): `tradeoff run --cache` fails on those.
"""

from __future__ import annotations

import numpy as np

from tradeoff.policy.confidence import exit_outputs

__all__ = ["ROUNDING", "unexplained_disagreements"]

#: A confidence this close to a threshold may flip with float32 rounding.
ROUNDING = 1e-5


def unexplained_disagreements(cache_path, rule, report) -> dict:
    """Samples whose runtime exit or answer differs from the cache's rule, split by cause.

    Args:
        cache_path: the cache the thresholds were searched on; its test split must be the
            rows `report` ran on, in order (`cache_agreement` checks that first).
        rule: the `ExitRule` applied.
        report: the `RuntimeReport` of the run (exits (N,), predictions (N,)).

    Returns:
        {"disagree": n, "near_threshold": n explained by rounding, "unexplained": n,
         "first_unexplained": test row or None}.
    """
    from tradeoff.cache.format import load_cache
    from tradeoff.policy.table import rule_decisions

    test = load_cache(cache_path).select("test")
    exits, answers = rule_decisions(test.logits, rule)
    temps = None if rule.temperatures is None else rule.temperature_array()
    conf, pred = exit_outputs(test.logits, confidence=rule.confidence, ensemble=rule.ensemble, temperatures=temps)
    thresholds = rule.threshold_array()  # (M,) or per class (M, C); off exits at OFF_THRESHOLD, out of reach
    M = thresholds.shape[0]
    if thresholds.ndim == 2:  # each sample is held to the threshold of the class its exit predicts
        thresholds = np.take_along_axis(thresholds, pred[:M], axis=1)
    else:
        thresholds = thresholds[:, None]
    differ = (exits != report.exits) | (answers != report.predictions)
    near = (np.abs(conf[:M] - thresholds) <= ROUNDING).any(axis=0)
    unexplained = differ & ~near
    rows = np.flatnonzero(unexplained)
    return {
        "disagree": int(differ.sum()),
        "near_threshold": int((differ & near).sum()),
        "unexplained": int(unexplained.sum()),
        "first_unexplained": int(rows[0]) if rows.size else None,
    }
