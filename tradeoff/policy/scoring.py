"""Scoring many threshold vectors at once on an exit table (pymoo-style, vectorised).

`score_thresholds_reference` is the plain rule, sample by sample in NumPy; the fast scorer
(`tradeoff.policy.bitset.make_scorer`) is equal to it bit for bit; `score_thresholds`
picks between them; `score_rule` scores one `ExitRule`. NumPy only.
"""

from __future__ import annotations


import numpy as np

from tradeoff.policy.bitset import DEFAULT_MAX_LEVEL_BYTES, BitsetScorer, make_scorer  # noqa: F401
from tradeoff.policy.confidence import CONFIDENCE_MEASURES, confidence_of, exit_outputs, softmax  # noqa: F401
from tradeoff.policy.rule import ExitRule
from tradeoff.policy.table import (  # noqa: F401
    ExitTable, Scores, check_table, check_thresholds, exit_indices, exit_table, rule_decisions, rule_table,
    score_thresholds_reference, scores_from_counts, scores_from_slots,
)

# score_thresholds: below this many (P, N) cells the reference beats building a scorer.
_ONE_SHOT_CELLS = 2**21


def score_thresholds(table: ExitTable, thresholds: np.ndarray) -> Scores:
    """Score P threshold vectors (P, M) (per class (P, M, C)) on one split, all at once.

    One-shot: few rows (P * N <= 2**21 cells) go through the reference, cheaper than
    building a scorer; more rows build one and call it. Both give the same bits. When
    scoring the same table repeatedly, keep one from `make_scorer(table)` instead.
    """
    if table.predicted is not None and np.ndim(thresholds) == 3:
        return score_thresholds_reference(table, thresholds)
    t = check_thresholds(thresholds, table.num_exits, table.num_thresholds)
    if t.shape[0] * table.num_samples <= _ONE_SHOT_CELLS:
        return score_thresholds_reference(table, t)
    return make_scorer(table)(t)


def score_rule(table: ExitTable, rule: ExitRule) -> Scores:
    """What one `ExitRule` gives on `table` (built with `rule_table`, so the measure matches): P = 1."""
    if rule.num_exits != table.num_exits:
        raise ValueError(f"rule has {rule.num_exits} exits but the table has {table.num_exits}; "
                         "score a rule searched on this cache")
    if rule.fallback != table.fallback:
        raise ValueError(f"rule has fallback {rule.fallback!r} but the table was built for {table.fallback!r}; "
                         "build the table with rule_table(..., rule)")
    if rule.per_class and table.predicted is None:
        raise ValueError("per-class thresholds need a table that kept predictions; build it with rule_table(..., rule)")
    return score_thresholds(table, rule.threshold_array()[None])
