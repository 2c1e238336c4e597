"""The one adapter every search method scores through.

A scorer is any callable taking a (P, K-1) threshold matrix and returning
`tradeoff.policy.table.Scores` for all P rows at once, like a vectorised pymoo problem.
By default it is the fast exact scorer, `tradeoff.policy.bitset.make_scorer(table)`
(precomputed once per table: `run_search` builds one per split and hands it to every
method).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from tradeoff.policy.bitset import make_scorer
from tradeoff.policy.table import ExitTable, Scores

Scorer = Callable[[np.ndarray], Scores]


def scorer_for(table: ExitTable, scorer: Scorer | None = None) -> Scorer:
    """The scorer to use for `table`: `scorer` if given, else the fastest the policy offers."""
    if scorer is not None:
        if not callable(scorer):
            raise TypeError(f"scorer must be a callable (P, K-1) thresholds -> Scores; got {type(scorer).__name__}")
        return scorer
    return make_scorer(table)


def check_table(table: ExitTable) -> ExitTable:
    """Entry-point check shared by the search methods: an ExitTable with something to search."""
    if not isinstance(table, ExitTable):
        raise TypeError(
            f"table must be a tradeoff.policy.scoring.ExitTable (build it with exit_table(...)); got {type(table).__name__}"
        )
    if table.num_exits < 2:
        raise ValueError(f"the table has K = {table.num_exits} exit; thresholds need at least 2 exits to search")
    if table.num_samples < 1:
        raise ValueError("the table has no samples; search on a split with at least one row")
    return table


def rows_per_call(num_samples: int) -> int:
    """Threshold vectors per scorer call: big batches, but (rows, N) intermediates of at most ~16M cells."""
    return int(max(16, min(4096, (1 << 24) // max(1, num_samples))))


def score_in_chunks(scorer: Scorer, thresholds: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Val accuracy (P,) and cost (P,) of many threshold vectors (P, K-1), `chunk` rows per call."""
    P = thresholds.shape[0]
    accuracy = np.empty(P, dtype=np.float64)
    flops = np.empty(P, dtype=np.float64)
    for start in range(0, P, chunk):
        stop = min(P, start + chunk)
        s = scorer(thresholds[start:stop])
        accuracy[start:stop] = s.accuracy
        flops[start:stop] = s.flops
    return accuracy, flops
