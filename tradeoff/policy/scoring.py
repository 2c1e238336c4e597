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
    ExitTable, Scores, check_table, check_thresholds, exit_indices, exit_table, rule_table, scores_from_counts,
)

# score_thresholds: below this many (P, N) cells the reference beats building a scorer.
_ONE_SHOT_CELLS = 2**21


def score_thresholds_reference(table: ExitTable, thresholds: np.ndarray) -> Scores:
    """The straightforward vectorised scorer: a (P, N) exit-index matrix filled exit by exit.

    Kept as the yardstick the fast scorer is tested and benchmarked against. Memory
    O(P N): not for large caches.
    """
    t = check_thresholds(thresholds, table.num_exits)
    check_table(table)
    K, N = table.confidence.shape
    P = t.shape[0]
    exit_of = np.full((P, N), K - 1, dtype=np.int64)
    undecided = np.ones((P, N), dtype=bool)
    for k in range(K - 1):
        leave = undecided & (table.confidence[k][None, :] >= t[:, k][:, None])
        exit_of[leave] = k
        undecided &= ~leave
    rows = np.arange(N)[None, :]
    correct_counts = table.correct[exit_of, rows].sum(axis=1, dtype=np.int64)
    counts = np.stack([(exit_of == k).sum(axis=1) for k in range(K)], axis=1).astype(np.int64).reshape(P, K)
    return scores_from_counts(correct_counts, counts, table.flops, N)



def score_thresholds(table: ExitTable, thresholds: np.ndarray) -> Scores:
    """Score P threshold vectors (P, K-1) on one split, all at once.

    One-shot: few rows (P * N <= 2**21 cells) go through the reference, cheaper than
    building a scorer; more rows build one and call it. Both give the same bits. When
    scoring the same table repeatedly, keep one from `make_scorer(table)` instead.
    """
    t = check_thresholds(thresholds, table.num_exits)
    if t.shape[0] * table.num_samples <= _ONE_SHOT_CELLS:
        return score_thresholds_reference(table, t)
    return make_scorer(table)(t)


def score_rule(table: ExitTable, rule: ExitRule) -> Scores:
    """What one `ExitRule` gives on `table` (built with `rule_table`, so the measure matches): P = 1."""
    if rule.num_exits != table.num_exits:
        raise ValueError(f"rule has {rule.num_exits} exits but the table has {table.num_exits}; "
                         "score a rule searched on this cache")
    return score_thresholds(table, rule.threshold_array()[None, :])
