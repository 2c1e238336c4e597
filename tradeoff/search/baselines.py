"""The threshold-setting practices NSGA-II is compared with, each returning a FrontResult.

- `global_threshold_search`: one threshold shared by every exit, swept (SDN, SideNet).
- `msdnet_budget_search`: MSDNet's budgeted rule exactly as published (floor of the
  per-exit counts, ties, unreached counts switch the exit off), a geometric exit
  distribution turned into thresholds by walking the exits in order on val.
- `random_search`: uniform thresholds, the same evaluation budget as NSGA-II.
- `grid_search`: every combination of per-exit confidence quantiles, for small K.

All of them score through the same vectorised scorer as NSGA-II, in big batches, and
keep the non-dominated points, so their fronts and hypervolumes compare directly.
"""

from __future__ import annotations

import math
import time

import numpy as np
from tqdm.auto import tqdm

from tradeoff.errors import is_integer
from tradeoff.policy.rule import OFF_THRESHOLD
from tradeoff.policy.scoring import ExitTable
from tradeoff.search.pareto import FrontResult, front_result, pareto_mask
from tradeoff.search.scoring import Scorer, check_table, rows_per_call, score_in_chunks, scorer_for

GRID_MAX_THRESHOLDS = 4  # grid_search accepts up to this many thresholds
# `tradeoff search` runs the grid beside the other methods up to this many (at K-1 = 4 the
# default 16^4 grid costs more than the rest of the search together).
GRID_IN_SEARCH_MAX_THRESHOLDS = 3
GRID_MAX_POINTS = 2_000_000
# Default points per exit by number of thresholds: each grid stays <= ~65k vectors.
_GRID_DEFAULT_POINTS = {1: 1001, 2: 256, 3: 40, 4: 16}


def _finish(table, scorer, thresholds, start, method, seed=None) -> FrontResult:
    accuracy, flops = score_in_chunks(scorer, thresholds, rows_per_call(table.num_samples))
    return front_result(
        thresholds, accuracy, flops, evaluations=thresholds.shape[0],
        seconds=time.perf_counter() - start, method=method, seed=seed,
    )


def _count(name: str, value, low: int) -> int:
    if not is_integer(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def global_threshold_search(
    table: ExitTable, levels: int | np.ndarray = 1001, *, scorer: Scorer | None = None
) -> FrontResult:
    """One threshold t for every exit, swept over a fine set of values.

    Args:
        table: the val split's ExitTable.
        levels: an int L sweeps the union of L evenly spaced values in [0, 1] and L
            quantiles of the pooled confidences of exits 1..K-1 (where the action is);
            or a 1-D array of explicit thresholds in [0, 1].
        scorer: callable (P, M) thresholds -> Scores; default the policy's fastest.
    """
    check_table(table)
    start = time.perf_counter()
    dim = table.num_thresholds
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        count = _count("levels", levels, 2)
        grid = np.linspace(0.0, 1.0, count)
        pooled = np.quantile(table.confidence[:dim].ravel(), grid, method="higher")
        values = np.unique(np.concatenate([grid, pooled]))
    else:
        values = np.asarray(levels, dtype=np.float64)
        if values.ndim != 1 or values.size == 0 or not np.all((values >= 0) & (values <= 1)):
            raise ValueError(
                f"levels must be a count (int >= 2) or a 1-D array of thresholds in [0, 1]; got {np.shape(levels)} "
                f"with range [{np.nanmin(values) if values.size else 'n/a'}, {np.nanmax(values) if values.size else 'n/a'}]"
            )
        values = np.unique(values)
    thresholds = np.repeat(values[:, None], dim, axis=1)
    return _finish(table, scorer_for(table, scorer), thresholds, start, "global")


def _descending_orders(table: ExitTable) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per thresholded exit k: (sample order by falling confidence, the confidences in that order)."""
    out = []
    for k in range(table.num_thresholds):
        order = np.argsort(-table.confidence[k], kind="stable")
        out.append((order, table.confidence[k][order]))
    return out


def msdnet_thresholds(
    table: ExitTable, p: float, *, ranked: list[tuple[np.ndarray, np.ndarray]] | None = None
) -> np.ndarray:
    """MSDNet's thresholds for the geometric exit distribution q_k ∝ p^k, k = 1..K, as published.

    Source: Huang et al., "Multi-Scale Dense Networks for Resource Efficient Image
    Classification", ICLR 2018; the rule of its code's `dynamic_eval_find_threshold`:
    exit k (k < K) is meant to take out_n = floor(N * q_k) samples (rounded down). Walk
    the samples by falling confidence, counting only those no earlier exit took; when the
    count reaches out_n, T_k is that sample's confidence. Then every sample not yet gone
    whose confidence is >= T_k leaves (ties let more leave than planned, as in the code).
    When out_n is 0 or the count never reaches it, nobody leaves (T_k = +inf: the exit is
    off, `OFF_THRESHOLD`). The last exit takes everyone left (under the ensemble /
    most-confident fallbacks its threshold is 0).

    `ranked` (from `_descending_orders`) lets a sweep sort each exit once: the out_n-th
    present sample is then found with one cumulative count, O(N) per exit.

    Returns:
        (M,) float64 thresholds, `OFF_THRESHOLD` for an exit nobody leaves at.
    """
    K, N = table.confidence.shape
    M = table.num_thresholds
    ranked = _descending_orders(table) if ranked is None else ranked
    q = np.exp(np.log(p) * np.arange(1, K + 1))
    q /= q.sum()
    present = np.ones(N, dtype=bool)
    out = np.full(M, OFF_THRESHOLD)
    if M == K:
        out[K - 1] = 0.0  # the last exit accepts all
    for k in range(K - 1):
        want = math.floor(N * q[k])
        order, confidences = ranked[k]
        taken = np.cumsum(present[order], dtype=np.int64)
        if want <= 0 or taken[-1] < want:
            continue
        out[k] = confidences[np.searchsorted(taken, want)]
        present &= table.confidence[k] < out[k]
    return out


def msdnet_budget_search(
    table: ExitTable, p_values: np.ndarray | None = None, *, scorer: Scorer | None = None
) -> FrontResult:
    """MSDNet's budgeted-classification rule swept over the geometric ratio p.

    Args:
        table: the val split's ExitTable.
        p_values: ratios p > 0 of the exit distribution q_k ∝ p^k; small p sends most
            samples out early, large p to the deepest exit. Default: 241 values
            geometrically spaced over [0.02, 50] (MSDNet itself used 0.05 .. 1.95).
        scorer: callable (P, M) thresholds -> Scores; default the policy's fastest.
    """
    check_table(table)
    start = time.perf_counter()
    ps = np.geomspace(0.02, 50.0, 241) if p_values is None else np.asarray(p_values, dtype=np.float64)
    if ps.ndim != 1 or ps.size == 0 or not np.all(np.isfinite(ps) & (ps > 0)):
        raise ValueError(f"p_values must be a 1-D array of positive ratios (e.g. 0.05 .. 1.95); got {ps!r}")
    ranked = _descending_orders(table)
    thresholds = np.stack([msdnet_thresholds(table, float(p), ranked=ranked) for p in ps])
    return _finish(table, scorer_for(table, scorer), thresholds, start, "msdnet")


def random_search(
    table: ExitTable, evaluations: int = 10_000, seed: int = 0, *, scorer: Scorer | None = None
) -> FrontResult:
    """`evaluations` threshold vectors uniform in [0, 1]^(K-1) from `default_rng(seed)`."""
    check_table(table)
    evaluations = _count("evaluations", evaluations, 1)
    if not is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    start = time.perf_counter()
    thresholds = np.random.default_rng(seed).random((evaluations, table.num_thresholds))
    return _finish(table, scorer_for(table, scorer), thresholds, start, "random", seed=int(seed))


def grid_levels(table: ExitTable, points_per_exit: int) -> list[np.ndarray]:
    """Per exit k < K: distinct val-confidence quantiles at points_per_exit - 1 even levels, plus 1.0.

    Quantiles are taken with method "higher", so each value is a confidence some sample
    has; 1.0 stands for "(almost) nobody leaves here", and where some confidence reaches
    1.0 exactly, `OFF_THRESHOLD` (the exit switched off) is added too.
    """
    levels = np.linspace(0.0, 1.0, points_per_exit - 1)
    out = []
    for k in range(table.num_thresholds):
        values = np.unique(np.append(np.quantile(table.confidence[k], levels, method="higher"), 1.0))
        out.append(np.append(values, OFF_THRESHOLD) if (table.confidence[k] >= 1.0).any() else values)
    return out


def grid_search(
    table: ExitTable, points_per_exit: int | None = None, *, scorer: Scorer | None = None
) -> FrontResult:
    """Every combination of per-exit confidence quantiles (exhaustive, for small K).

    Args:
        table: the val split's ExitTable, with K - 1 <= 4 thresholds.
        points_per_exit: values per exit (see `grid_levels`); default by K - 1:
            1001, 256, 40, 16 for 1, 2, 3, 4 thresholds. At most 2,000,000 vectors.
        scorer: callable (P, M) thresholds -> Scores; default the policy's fastest.

    Raises:
        ValueError: more than 4 thresholds or more than 2,000,000 grid points.
    """
    check_table(table)
    dim = table.num_thresholds
    if dim > GRID_MAX_THRESHOLDS:
        raise ValueError(
            f"grid_search covers at most {GRID_MAX_THRESHOLDS} thresholds (K <= {GRID_MAX_THRESHOLDS + 1} exits); "
            f"this table has K = {table.num_exits} exits - use nsga2_search or random_search instead"
        )
    points = _GRID_DEFAULT_POINTS[dim] if points_per_exit is None else _count("points_per_exit", points_per_exit, 2)
    if points**dim > GRID_MAX_POINTS:
        most = int(math.floor(GRID_MAX_POINTS ** (1.0 / dim) + 1e-9))
        raise ValueError(
            f"a grid of {points}^{dim} = {points**dim:,} threshold vectors exceeds {GRID_MAX_POINTS:,}; "
            f"give points_per_exit <= {most}"
        )
    start = time.perf_counter()
    score = scorer_for(table, scorer)
    values = grid_levels(table, points)
    shape = tuple(v.size for v in values)
    total = math.prod(shape)
    chunk = rows_per_call(table.num_samples)
    accuracy = np.empty(total)
    flops = np.empty(total)

    def rows(index: np.ndarray) -> np.ndarray:
        digits = np.unravel_index(index, shape)
        return np.stack([values[k][digits[k]] for k in range(dim)], axis=1)

    for lo in tqdm(range(0, total, chunk), desc="grid", unit="batch", disable=None, leave=False):
        hi = min(total, lo + chunk)
        s = score(rows(np.arange(lo, hi)))
        accuracy[lo:hi], flops[lo:hi] = s.accuracy, s.flops
    # Only the front's rows are rebuilt: the full (total, K-1) matrix is never held.
    front = np.flatnonzero(pareto_mask(1.0 - accuracy, flops))
    return front_result(
        rows(front), accuracy[front], flops[front],
        evaluations=total, seconds=time.perf_counter() - start, method="grid",
    )
