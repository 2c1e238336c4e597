"""The one adapter every search method scores through.

A scorer is any callable taking a (P, K-1) threshold matrix and returning
`tradeoff.policy.scoring.Scores` for all P rows at once, like a vectorised pymoo problem. The
fastest available one is used: `policy.make_scorer(table)` when the policy module offers
it (precomputes once per table), else `policy.score_thresholds` bound to the table.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from tradeoff.policy import scoring as policy
from tradeoff.policy.scoring import ExitTable, Scores

Scorer = Callable[[np.ndarray], Scores]


def scorer_for(table: ExitTable, scorer: Scorer | None = None) -> Scorer:
    """The scorer to use for `table`: `scorer` if given, else the fastest the policy offers."""
    if scorer is not None:
        if not callable(scorer):
            raise TypeError(f"scorer must be a callable (P, K-1) thresholds -> Scores; got {type(scorer).__name__}")
        return scorer
    make = getattr(policy, "make_scorer", None)
    if make is not None:
        return make(table)
    return functools.partial(policy.score_thresholds, table)


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
