"""Pareto fronts of (accuracy, cost) points: the non-dominated filter, 2-D hypervolume, picking.

Objectives are held in one direction internally: error = 1 - accuracy and cost (mean
FLOPs per sample, fvcore count), both lower-is-better. Only messages and plots flip signs.

Hypervolume convention (the same everywhere in the tool): the reference point is
(error = 1.0, cost = flops[K-1]), the cost of sending every sample to the deepest exit,
and the dominated area is divided by the reference box 1.0 x flops[K-1], so a
hypervolume is a number in [0, 1] that can be compared across methods on one cache.
`reference_point(flops)` builds it. A point costing exactly flops[K-1] (deepest exit
alone) adds no area; any real saving does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tradeoff.errors import TargetUnreachable

# Accuracies are fractions k/N and costs sums of fractions times flops; a target typed by a
# user (0.78) or derived from another accuracy (0.7822 - 0.005) differs from the exact
# fraction only by float rounding, far below 1/N. This tolerance absorbs that rounding.
_ACC_TOL = 1e-9
_COST_RTOL = 1e-12


@dataclass(frozen=True)
class FrontResult:
    """A Pareto front of threshold vectors found by one method on the validation split.

    Sorted by cost ascending (so accuracy ascending too); arrays are read-only.

    Attributes:
        thresholds: (F, K-1) float64 per-exit thresholds in [0, 1].
        accuracy: (F,) val accuracy of each point.
        flops: (F,) val mean cost per sample of each point (fvcore count).
        evaluations: how many threshold vectors the method scored.
        seed: the seed the method ran with (None for deterministic methods).
        generations: NSGA-II generations run (None for the baselines).
        seconds: wall-clock time of the search (not part of any reproducible output).
        method: "nsga", "global", "msdnet", "random" or "grid".
    """

    thresholds: np.ndarray
    accuracy: np.ndarray
    flops: np.ndarray
    evaluations: int
    seed: int | None
    generations: int | None
    seconds: float
    method: str

    @property
    def size(self) -> int:
        return int(self.accuracy.shape[0])


def front_result(
    thresholds: np.ndarray,
    accuracy: np.ndarray,
    flops: np.ndarray,
    *,
    evaluations: int,
    seconds: float,
    method: str,
    seed: int | None = None,
    generations: int | None = None,
) -> FrontResult:
    """Keep the non-dominated points of everything scored, sorted by cost, as a FrontResult.

    Args:
        thresholds: (P, K-1) every threshold vector the method scored (or its archive).
        accuracy: (P,) their val accuracy.
        flops: (P,) their val mean cost.
    """
    accuracy = np.asarray(accuracy, dtype=np.float64)
    flops = np.asarray(flops, dtype=np.float64)
    keep = np.flatnonzero(pareto_mask(1.0 - accuracy, flops))
    keep = keep[np.lexsort((keep, -accuracy[keep], flops[keep]))]
    arrays = []
    for a in (np.asarray(thresholds, dtype=np.float64)[keep], accuracy[keep], flops[keep]):
        a = np.ascontiguousarray(a)
        a.setflags(write=False)
        arrays.append(a)
    return FrontResult(
        *arrays,
        evaluations=int(evaluations),
        seed=None if seed is None else int(seed),
        generations=None if generations is None else int(generations),
        seconds=float(seconds),
        method=method,
    )


def _objectives(first, second, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Validate two equal-length 1-D finite arrays (entry-point check)."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.ndim != 1 or b.shape != a.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must be 1-D arrays of the same length (one entry per point); "
            f"got shapes {a.shape} and {b.shape}"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"{names[0]} and {names[1]} must be finite numbers; got NaN or inf")
    return a, b


def pareto_mask(error, cost) -> np.ndarray:
    """Which points no other point dominates (both objectives lower-is-better).

    A point is dominated when another is no worse in both objectives and better in one.
    Points with identical (error, cost) are kept once: the one with the lowest index, so
    the result depends only on the order of the input (deterministic merges).

    Args:
        error: (P,) first objective, e.g. 1 - accuracy.
        cost: (P,) second objective, e.g. mean FLOPs.

    Returns:
        (P,) bool mask of the non-dominated points. O(P log P).
    """
    error, cost = _objectives(error, cost, ("error", "cost"))
    return nondominated_unchecked(error, cost)


def nondominated_unchecked(error: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """`pareto_mask` without input checks, for inner loops on arrays already validated."""
    mask = np.zeros(error.shape[0], dtype=bool)
    if error.size == 0:
        return mask
    # Cheapest first; among equal costs the lowest error, then the lowest index. A point
    # survives iff its error is strictly below every error seen before it in this order.
    order = np.lexsort((np.arange(error.size), error, cost))
    e = error[order]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(e)[:-1]))
    mask[order[e < best_before]] = True
    return mask


def reference_point(flops) -> tuple[float, float]:
    """The hypervolume reference (error, cost) = (1.0, flops[K-1]) for per-exit costs (K,)."""
    flops = np.asarray(flops, dtype=np.float64)
    if flops.ndim != 1 or flops.size == 0 or not np.isfinite(flops[-1]) or flops[-1] <= 0:
        raise ValueError(f"flops must be the (K,) positive per-exit costs; got {flops!r}")
    return 1.0, float(flops[-1])


def hypervolume_2d(error, cost, *, reference: tuple[float, float]) -> float:
    """Normalised area dominated by the points inside the reference box.

    Args:
        error: (P,) lower-is-better, e.g. 1 - val accuracy.
        cost: (P,) lower-is-better, e.g. val mean FLOPs.
        reference: (error_ref, cost_ref), by the tool's convention
            `reference_point(flops)` = (1.0, flops[K-1]). Points beyond it in either
            objective add nothing.

    Returns:
        The area of {(e, c) <= reference dominated by some point} divided by
        error_ref * cost_ref, in [0, 1] for non-negative objectives.
    """
    error, cost = _objectives(error, cost, ("error", "cost"))
    ref_e, ref_c = (float(v) for v in reference)
    if not (np.isfinite(ref_e) and np.isfinite(ref_c) and ref_e > 0 and ref_c > 0):
        raise ValueError(f"reference must be two positive finite numbers (error, cost); got {reference!r}")
    inside = (error < ref_e) & (cost < ref_c)
    error, cost = error[inside], cost[inside]
    if error.size == 0:
        return 0.0
    keep = pareto_mask(error, cost)
    e, c = error[keep], cost[keep]
    order = np.argsort(c, kind="stable")
    e, c = e[order], c[order]  # cost ascending, error descending along the front
    widths = np.diff(np.append(c, ref_c))
    return float(np.sum(widths * (ref_e - e)) / (ref_e * ref_c))


def _point_text(acc: float, cost: float, baseline_flops: float | None) -> str:
    text = f"{acc:.4f} at {cost / 1e6:.4g} MFLOPs"
    if baseline_flops is not None and cost > 0:
        text += f" ({baseline_flops / cost:.2f}x speed-up)"
    return text


def _front_arrays(acc, cost) -> tuple[np.ndarray, np.ndarray]:
    acc, cost = _objectives(acc, cost, ("acc", "cost"))
    if acc.size == 0:
        raise ValueError("acc and cost are empty; pick from a front with at least one point")
    return acc, cost


def _cheapest_reaching(acc: np.ndarray, cost: np.ndarray, level: float) -> np.ndarray:
    """Indices of points with acc >= level, cheapest first (ties: more accurate, lower index)."""
    ok = np.flatnonzero(acc >= level - _ACC_TOL)
    return ok[np.lexsort((ok, -acc[ok], cost[ok]))]


def _unreachable_accuracy(acc, cost, wanted: str, baseline_flops) -> TargetUnreachable:
    best = np.lexsort((cost, -acc))[0]
    return TargetUnreachable(
        f"no thresholds reach {wanted}; the best reachable is "
        f"{_point_text(acc[best], cost[best], baseline_flops)} - lower the target"
    )


def pick_target_accuracy(acc, cost, target: float, *, baseline_flops: float | None = None) -> int:
    """Index of the cheapest point whose val accuracy is at least `target`.

    Args:
        acc: (F,) val accuracy of each front point.
        cost: (F,) val mean FLOPs of each front point.
        target: wanted accuracy in (0, 1].
        baseline_flops: only for the speed-up shown in the error message.

    Raises:
        ValueError: target outside (0, 1], or malformed arrays.
        TargetUnreachable: no point reaches the target (the message names the best one).
    """
    target = float(target)
    if not (0.0 < target <= 1.0):
        raise ValueError(f"target accuracy must be in (0, 1]; got {target} - give a fraction such as 0.78, not 78")
    acc, cost = _front_arrays(acc, cost)
    ok = _cheapest_reaching(acc, cost, target)
    if ok.size == 0:
        raise _unreachable_accuracy(acc, cost, f"val accuracy {target:.4f}", baseline_flops)
    return int(ok[0])


def pick_max_drop(acc, cost, reference_acc: float, drop_pp: float, *, baseline_flops: float | None = None) -> int:
    """Index of the cheapest point within `drop_pp` percentage points of `reference_acc`.

    Args:
        reference_acc: accuracy to stay close to, normally the deepest exit alone on val.
        drop_pp: allowed loss in percentage points (0.5 = half a point), >= 0.

    Raises:
        ValueError: negative or non-finite drop, reference outside [0, 1].
        TargetUnreachable: no point is close enough.
    """
    drop_pp, reference_acc = float(drop_pp), float(reference_acc)
    if not (np.isfinite(drop_pp) and drop_pp >= 0):
        raise ValueError(f"max drop must be >= 0 percentage points; got {drop_pp}")
    if not (0.0 <= reference_acc <= 1.0):
        raise ValueError(f"reference accuracy must be in [0, 1]; got {reference_acc}")
    acc, cost = _front_arrays(acc, cost)
    level = reference_acc - drop_pp / 100.0
    ok = _cheapest_reaching(acc, cost, level)
    if ok.size == 0:
        wanted = f"val accuracy {level:.4f} ({reference_acc:.4f} - {drop_pp:g} points)"
        raise _unreachable_accuracy(acc, cost, wanted, baseline_flops)
    return int(ok[0])


def pick_budget(acc, cost, budget: float, *, baseline_flops: float | None = None) -> int:
    """Index of the most accurate point costing at most `budget` FLOPs (ties: cheaper).

    Raises:
        ValueError: budget not a positive finite number.
        TargetUnreachable: every point costs more than the budget (names the cheapest).
    """
    budget = float(budget)
    if not (np.isfinite(budget) and budget > 0):
        raise ValueError(f"budget must be a positive number of FLOPs per sample (e.g. 3e8); got {budget}")
    acc, cost = _front_arrays(acc, cost)
    ok = np.flatnonzero(cost <= budget * (1.0 + _COST_RTOL))
    if ok.size == 0:
        cheapest = np.lexsort((-acc, cost))[0]
        raise TargetUnreachable(
            f"no thresholds cost at most {budget / 1e6:.4g} MFLOPs per sample; the cheapest reachable is "
            f"{_point_text(acc[cheapest], cost[cheapest], baseline_flops)} - raise the budget"
        )
    return int(ok[np.lexsort((ok, cost[ok], -acc[ok]))[0]])
