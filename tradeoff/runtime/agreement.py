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
    from tradeoff.policy.table import exit_indices, rule_table

    test = load_cache(cache_path).select("test")
    thresholds = rule.threshold_array()
    exits = exit_indices(rule_table(test.logits, test.labels, test.flops, rule), thresholds)
    temps = None if rule.temperatures is None else rule.temperature_array()
    conf, pred = exit_outputs(test.logits, confidence=rule.confidence, ensemble=rule.ensemble, temperatures=temps)
    answers = pred[exits, np.arange(exits.size)]
    differ = (exits != report.exits) | (answers != report.predictions)
    finite = np.isfinite(thresholds)
    gaps = np.abs(conf[: thresholds.size] - thresholds[:, None])
    near = ((gaps <= ROUNDING) & finite[:, None]).any(axis=0)
    unexplained = differ & ~near
    rows = np.flatnonzero(unexplained)
    return {
        "disagree": int(differ.sum()),
        "near_threshold": int((differ & near).sum()),
        "unexplained": int(unexplained.sum()),
        "first_unexplained": int(rows[0]) if rows.size else None,
    }
