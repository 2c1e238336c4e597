"""A pick that holds on unseen data: Learn-then-Test with fixed-sequence binomial tests.

Source: A. N. Angelopoulos, S. Bates, E. J. Candès, M. I. Jordan, L. Lei, "Learn then Test:
Calibrating Predictive Algorithms to Achieve Risk Control" (2021), arXiv:2110.01052,
sections 2-3 (multiple testing of H0_j: risk(lambda_j) > alpha, fixed-sequence testing) and
its binomial p-value for a 0/1 risk.

How `tradeoff search --delta` uses it:

1. `split_val` splits the val rows once, seeded, into a *search* part (30%) and a
   *calibration* part (70%). The search (NSGA-II, the baselines, any temperature fit) sees
   the search part only; the calibration part is read only here.
2. The candidate list is the front found on the search part, ordered most accurate (on the
   search part) first. The order is fixed before the calibration part is looked at.
3. For each candidate j, on the n calibration samples, H0_j: risk_j > alpha with risk =
   1 - accuracy and alpha = 1 - target. The p-value is the exact binomial tail
   P(Binomial(n, alpha) <= errors_j) (`binomial_p_value`), valid because, under H0_j, the
   errors are Binomial(n, risk_j) with risk_j > alpha and so stochastically larger.
4. Fixed-sequence testing: reject H0 in order while p_j <= delta, stop at the first
   p_j > delta. This controls the family-wise error at delta with no correction, so
   P(some rejected candidate has accuracy < target) <= delta; the pick is the cheapest
   rejected candidate, and therefore P(its accuracy on new data >= target) >= 1 - delta.

Assumption: the calibration samples and the deployment samples are exchangeable (i.i.d.
draws from one distribution). A different deployment distribution voids the guarantee.

For `--max-drop d` (accuracy within d percentage points of the deepest exit alone), the
risk is the paired accuracy difference mu = E[D], D_i = c_deep,i - c_j,i in {-1, 0, 1},
H0_j: mu_j > d/100. Write D_i = B_i - C_i with B_i = 1[deepest right, candidate wrong] and
C_i = 1[deepest wrong, candidate right], so mu = p_B - p_C. An upper Clopper-Pearson bound
on p_B at level delta/2 minus a lower one on p_C at delta/2 bounds mu from above with
probability >= 1 - delta (union bound); H0_j is rejected at delta when that bound is <= d.
We use this instead of the Hoeffding-Bentkus bound on D (LTT's general choice for bounded
losses) because D is 0 for almost every sample: HB ignores that and, at n = 3,500, cannot
certify drops under ~3 points, whereas the two exact binomial bounds adapt to how rare B and
C are (~0.5-1 point of slack at that n). The p-value is the smallest level at which the test
rejects (found by bisection), so it is valid for fixed-sequence testing as the exact one is.

NumPy and scipy.stats only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from tradeoff.errors import TargetUnreachable

DEFAULT_CALIBRATION_FRACTION = 0.7
KINDS = ("target_acc", "max_drop")
_MAX_SIZE = 10**9  # the needed-size search gives up (returns None) beyond this


class CannotCertify(TargetUnreachable):
    """Nothing on the front can be certified at this delta; the CLI exits with code 3.

    Attributes:
        certification: the `Certification` that certified nothing (None when val was too
            small to split).
    """

    def __init__(self, message: str, certification: "Certification | None" = None):
        super().__init__(message)
        self.certification = certification


# --------------------------------------------------------------------------- the split
@dataclass(frozen=True)
class ValSplit:
    """A seeded split of the val rows into a search part and a calibration part.

    Attributes:
        search: (n_search,) int64 sorted positions (0..n_val-1) of the search rows.
        calibration: (n_cal,) int64 sorted positions of the calibration rows; disjoint from
            `search`, and together they are every val row.
        seed: the seed of `numpy.random.default_rng` that drew the split.
        calibration_fraction: the share of val asked for calibration.
    """

    search: np.ndarray
    calibration: np.ndarray
    seed: int
    calibration_fraction: float

    @property
    def sizes(self) -> dict:
        return {"search": int(self.search.size), "calibration": int(self.calibration.size)}


def check_delta(delta) -> float:
    """`delta` as a float in (0, 1), else one clear ValueError / TypeError."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.integer, np.floating)):
        raise TypeError(f"--delta must be a number in (0, 1); got {delta!r}")
    delta = float(delta)
    if not (0.0 < delta < 1.0):
        raise ValueError(
            f"--delta must be in (0, 1) (the allowed probability that the pick misses the target, e.g. 0.1); got {delta:g}"
        )
    return delta


def split_val(num_val: int, *, calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION, seed: int = 0) -> ValSplit:
    """Split `num_val` val rows at random into a search part and a calibration part.

    Args:
        num_val: number of val rows, >= 0.
        calibration_fraction: share for calibration in (0, 1); n_cal = round(fraction * n).
        seed: seed of `numpy.random.default_rng` (same seed, same split).

    Returns:
        A ValSplit (either part may be empty for tiny val; the caller decides if that is enough).

    Raises:
        ValueError: negative `num_val` or a fraction outside (0, 1).
    """
    if isinstance(num_val, bool) or not isinstance(num_val, (int, np.integer)) or num_val < 0:
        raise ValueError(f"num_val must be a non-negative integer (the number of val rows); got {num_val!r}")
    fraction = float(calibration_fraction)
    if not (0.0 < fraction < 1.0):
        raise ValueError(f"calibration_fraction must be in (0, 1) (e.g. 0.7); got {calibration_fraction!r}")
    order = np.random.default_rng(seed).permutation(int(num_val))
    n_cal = int(round(fraction * num_val))
    calibration = np.sort(order[:n_cal]).astype(np.int64)
    search = np.sort(order[n_cal:]).astype(np.int64)
    return ValSplit(search, calibration, int(seed), fraction)


# --------------------------------------------------------------------------- p-values and bounds
def binomial_p_value(errors, n: int, alpha: float):
    """Exact p-value of H0: risk > alpha from `errors` mistakes in `n` i.i.d. samples.

    p = P(Binomial(n, alpha) <= errors) (scipy.stats.binom.cdf), the test behind the
    one-sided Clopper-Pearson bound; LTT (Angelopoulos et al. 2021) section 3, binomial case.

    Args:
        errors: int or (F,) ints in [0, n].
        n: calibration samples, >= 1.
        alpha: risk level in (0, 1), here 1 - target accuracy.

    Returns:
        float or (F,) float64 p-values in (0, 1].
    """
    return stats.binom.cdf(np.asarray(errors), int(n), float(alpha))


def accuracy_lower_bound(correct, n: int, delta: float):
    """One-sided Clopper-Pearson lower bound (level 1 - delta) on an accuracy.

    The largest A such that P(Binomial(n, 1 - A) <= n - correct) <= delta, i.e. the
    Beta(correct, n - correct + 1) delta-quantile (0 when correct == 0). For a fixed point,
    `binomial_p_value(n - correct, n, 1 - A) <= delta` exactly when this bound is >= A.

    Args:
        correct: int or (F,) counts of right answers in [0, n] (real counts allowed).
        n: samples, >= 1.
        delta: in (0, 1).

    Returns:
        float or (F,) float64 bounds in [0, 1].
    """
    correct = np.asarray(correct, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lcb = stats.beta.ppf(delta, np.maximum(correct, 1e-300), n - correct + 1.0)
    return np.where(correct > 0, lcb, 0.0)


def _accuracy_upper_bound(correct, n: int, delta: float):
    correct = np.asarray(correct, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ucb = stats.beta.ppf(1.0 - delta, correct + 1.0, np.maximum(n - correct, 1e-300))
    return np.where(correct < n, ucb, 1.0)


def drop_upper_bound(worse, better, n: int, delta: float):
    """Upper bound (level 1 - delta) on the paired accuracy drop mu = p_B - p_C, a fraction.

    UCB_CP(p_B, delta/2) - LCB_CP(p_C, delta/2), with B = samples the deepest exit gets
    right and the candidate wrong (`worse`), C = the reverse (`better`); a union bound over
    two one-sided Clopper-Pearson bounds. Can be negative.

    Args:
        worse, better: int or (F,) counts in [0, n].
        n: calibration samples, >= 1.
        delta: in (0, 1).
    """
    return _accuracy_upper_bound(worse, n, delta / 2.0) - accuracy_lower_bound(better, n, delta / 2.0)


def drop_p_value(worse, better, n: int, drop: float, *, iterations: int = 60):
    """p-value of H0: mu > drop for the paired test of `drop_upper_bound`.

    The smallest level u at which `drop_upper_bound(worse, better, n, u) <= drop` (1 when
    even u -> 1 does not reject); the rejection sets are nested in u, so P(p <= u) <= u
    under H0. Bisection on log u, vectorised over candidates; p-values below 1e-30 are
    reported as 1e-30 (beyond that the Beta quantiles lose precision, and it decides nothing).

    Args:
        worse, better: int or (F,) counts.
        n: calibration samples.
        drop: allowed drop as a fraction (0.005 = half a point).

    Returns:
        float64 array of p-values in (0, 1] (shape of the inputs).
    """
    worse, better = np.broadcast_arrays(np.asarray(worse, np.float64), np.asarray(better, np.float64))
    lo = np.full(worse.shape, math.log(1e-30))
    hi = np.zeros(worse.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        at_one = drop_upper_bound(worse, better, n, 1.0 - 1e-12) <= drop
        tiny = drop_upper_bound(worse, better, n, 1e-30) <= drop
        for _ in range(iterations):
            mid = (lo + hi) / 2.0
            ok = drop_upper_bound(worse, better, n, np.exp(mid)) <= drop
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid)
    return np.where(tiny, 1e-30, np.where(at_one, np.exp(hi), 1.0))


def fixed_sequence(p_values, delta: float) -> int:
    """How many hypotheses fixed-sequence testing rejects: the length of the leading run of
    p-values <= delta (Bauer 1991; LTT section 3). Family-wise error <= delta when the order
    is fixed before the data that made the p-values are seen.

    Args:
        p_values: (F,) in testing order.
        delta: in (0, 1).
    """
    fails = np.flatnonzero(np.asarray(p_values, dtype=np.float64) > delta)
    return int(fails[0]) if fails.size else int(np.size(p_values))


# --------------------------------------------------------------------------- the certification
@dataclass(frozen=True)
class Certification:
    """The outcome of the Learn-then-Test pick on the calibration part.

    Attributes:
        kind: "target_acc" or "max_drop".
        target: the target accuracy (target_acc) or the allowed drop in points (max_drop).
        delta: allowed probability that the pick misses the target on new data.
        n_calibration: calibration samples n.
        order: (F,) candidate indices in testing order (most accurate on search first).
        p_values: (F,) p-value of each candidate, by candidate index.
        rejected: (R,) candidate indices whose H0 was rejected (a prefix of `order`).
        chosen: the cheapest rejected candidate, or None.
        calibration_accuracy: (F,) accuracy of each candidate on the calibration part.
        accuracy_lcb: (F,) one-sided Clopper-Pearson lower bound at level delta on each
            candidate's accuracy, by itself. For the chosen one it is >= target (target_acc);
            the guarantee after the selection is the target itself.
        drop_ucb: (F,) the paired upper bound on each drop in points (max_drop), else None.
        best_certifiable: the highest target accuracy (target_acc) or smallest drop in
            points (max_drop) this procedure certifies at this delta on this calibration
            set: the bound of the first candidate tested.
        needed_calibration_size: estimated n at which the first candidate, at its observed
            calibration figures, would be certified for the target; None when no n would
            (its observed figure misses the target) or when something was certified.
    """

    kind: str
    target: float
    delta: float
    n_calibration: int
    order: np.ndarray
    p_values: np.ndarray
    rejected: np.ndarray
    chosen: int | None
    calibration_accuracy: np.ndarray
    accuracy_lcb: np.ndarray
    drop_ucb: np.ndarray | None
    best_certifiable: float
    needed_calibration_size: int | None

    @property
    def certified(self) -> bool:
        return self.chosen is not None


def _check_candidates(correct, cost, search_accuracy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    correct = np.asarray(correct)
    if correct.ndim != 2 or correct.dtype != bool:
        raise ValueError(f"correct must be a (F, n) bool matrix (candidate x calibration sample); got {correct.dtype} {correct.shape}")
    F, n = correct.shape
    if F == 0 or n == 0:
        raise ValueError(f"correct must have at least one candidate and one calibration sample; got shape {correct.shape}")
    cost = np.asarray(cost, dtype=np.float64)
    search_accuracy = np.asarray(search_accuracy, dtype=np.float64)
    if cost.shape != (F,) or search_accuracy.shape != (F,):
        raise ValueError(f"cost and search_accuracy must be ({F},), one per candidate; got {cost.shape} and {search_accuracy.shape}")
    return correct, cost, search_accuracy


def _testing_order(search_accuracy: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Most accurate on the search part first; ties: cheaper first, then lower index."""
    return np.lexsort((np.arange(cost.size), cost, -search_accuracy)).astype(np.int64)


def _smallest_n(ok, start: int) -> int | None:
    """Smallest integer n >= start with ok(n) (ok monotone), or None beyond _MAX_SIZE."""
    if ok(start):
        return start
    hi = max(start, 1)
    while not ok(hi):
        hi *= 2
        if hi > _MAX_SIZE:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def _finish(kind, target, delta, n, order, p_values, cal_acc, lcb, drop_ucb, cost, best, needed) -> Certification:
    rejected = order[: fixed_sequence(p_values[order], delta)]
    chosen = None
    if rejected.size:
        chosen = int(rejected[np.lexsort((rejected, cost[rejected]))[0]])
    return Certification(
        kind=kind, target=float(target), delta=float(delta), n_calibration=int(n), order=order,
        p_values=np.asarray(p_values, np.float64), rejected=rejected, chosen=chosen,
        calibration_accuracy=cal_acc, accuracy_lcb=np.asarray(lcb, np.float64),
        drop_ucb=drop_ucb, best_certifiable=float(best), needed_calibration_size=None if chosen is not None else needed,
    )


def certify_target_accuracy(correct, cost, search_accuracy, *, target: float, delta: float) -> Certification:
    """Learn-then-Test pick for "accuracy >= target with probability >= 1 - delta".

    Args:
        correct: (F, n) bool, candidate j right on calibration sample i.
        cost: (F,) cost of each candidate (FLOPs per sample); the pick is the cheapest rejected.
        search_accuracy: (F,) accuracy on the search part; fixes the testing order.
        target: accuracy in (0, 1).
        delta: in (0, 1).

    Returns:
        A Certification (check `.certified`).

    Raises:
        ValueError / TypeError: malformed arrays, target outside (0, 1), delta outside (0, 1).
    """
    delta = check_delta(delta)
    target = float(target)
    if not (0.0 < target < 1.0):
        raise ValueError(f"target must be an accuracy in (0, 1) to be certified (1.0 never can be); got {target:g}")
    correct, cost, search_accuracy = _check_candidates(correct, cost, search_accuracy)
    n = correct.shape[1]
    right = np.count_nonzero(correct, axis=1)
    p_values = binomial_p_value(n - right, n, 1.0 - target)
    lcb = accuracy_lower_bound(right, n, delta)
    order = _testing_order(search_accuracy, cost)
    first_acc = right[order[0]] / n

    def ok(m: int) -> bool:
        return bool(accuracy_lower_bound(first_acc * m, m, delta) >= target)

    needed = _smallest_n(ok, n) if first_acc > target else None
    return _finish("target_acc", target, delta, n, order, p_values, right / n, lcb, None, cost,
                   lcb[order[0]], needed)


def certify_max_drop(correct, deepest_correct, cost, search_accuracy, *, drop_pp: float, delta: float) -> Certification:
    """Learn-then-Test pick for "accuracy >= deepest exit's - drop_pp points, w.p. >= 1 - delta".

    Args:
        correct: (F, n) bool, candidate j right on calibration sample i.
        deepest_correct: (n,) bool, the deepest exit alone right on sample i (paired).
        cost, search_accuracy: (F,) as in `certify_target_accuracy`.
        drop_pp: allowed drop in percentage points, >= 0 (0.5 = half a point).
        delta: in (0, 1).

    Returns:
        A Certification with `drop_ucb` in points and `best_certifiable` the smallest drop
        (points) certifiable for the first candidate.

    Raises:
        ValueError / TypeError: malformed arrays, negative drop, delta outside (0, 1).
    """
    delta = check_delta(delta)
    drop_pp = float(drop_pp)
    if not (np.isfinite(drop_pp) and 0.0 <= drop_pp <= 100.0):
        raise ValueError(f"drop_pp must be percentage points in [0, 100]; got {drop_pp:g}")
    correct, cost, search_accuracy = _check_candidates(correct, cost, search_accuracy)
    deep = np.asarray(deepest_correct, dtype=bool)
    n = correct.shape[1]
    if deep.shape != (n,):
        raise ValueError(f"deepest_correct must be ({n},), one per calibration sample; got {deep.shape}")
    worse = np.count_nonzero(deep & ~correct, axis=1)
    better = np.count_nonzero(~deep & correct, axis=1)
    d = drop_pp / 100.0
    p_values = drop_p_value(worse, better, n, d)
    # Decide rejection by the bound itself at delta (exact), not the bisected p-value.
    ucb = drop_upper_bound(worse, better, n, delta)
    p_values = np.where(ucb <= d, np.minimum(p_values, delta), np.maximum(p_values, np.nextafter(delta, 1.0)))
    right = np.count_nonzero(correct, axis=1)
    order = _testing_order(search_accuracy, cost)
    f = order[0]
    rate_b, rate_c = worse[f] / n, better[f] / n

    def ok(m: int) -> bool:
        return bool(drop_upper_bound(rate_b * m, rate_c * m, m, delta) <= d)

    needed = _smallest_n(ok, n) if rate_b - rate_c < d else None
    return _finish("max_drop", drop_pp, delta, n, order, p_values, right / n, accuracy_lower_bound(right, n, delta),
                   100.0 * ucb, cost, 100.0 * max(float(ucb[f]), 0.0), needed)


def minimum_calibration_size(target: float, delta: float) -> int:
    """Fewest calibration samples at which even a candidate right on every one is certified
    for `target`: the smallest n with target**n <= delta (binomial p-value at 0 errors)."""
    return int(math.ceil(math.log(delta) / math.log(target)))


def cannot_certify_message(cert: Certification, calibration_fraction: float) -> str:
    """The one line `tradeoff search` prints (exit code 3) when nothing is certified."""
    head = f"cannot certify at delta {cert.delta:g} on {cert.n_calibration} calibration samples"
    if cert.kind == "target_acc":
        what = f"accuracy >= {cert.target:g}"
        best = f"the highest accuracy certifiable here is {cert.best_certifiable:.4f}"
    else:
        what = f"a drop <= {cert.target:g} points vs the deepest exit"
        best = f"the smallest drop certifiable here is {cert.best_certifiable:.3f} points"
    if cert.needed_calibration_size is None:
        need = "no val size would do: the most accurate candidate's calibration figure already misses the target"
    else:
        val = int(math.ceil(cert.needed_calibration_size / calibration_fraction))
        need = (f"estimated val size needed: ~{val} rows ({cert.needed_calibration_size} for calibration, "
                "at the most accurate candidate's observed accuracy)")
    return f"{head} ({what}); {best}; {need} - lower the target, raise --delta or give more val data"


def certification_document(cert: Certification, *, search_size: int, seed: int) -> dict:
    """The chosen point's guarantee as the JSON block `thresholds.json` and `summary.json` carry.

    Args:
        cert: a certified Certification.
        search_size: rows of the search part of val.
        seed: the seed that drew the split.
    """
    j = cert.chosen
    target = {"target_acc": cert.target} if cert.kind == "target_acc" else {"max_drop": cert.target}
    if cert.kind == "target_acc":
        statement = f"P(accuracy on new data >= {cert.target:g}) >= {1 - cert.delta:g}"
    else:
        statement = f"P(accuracy drop vs the deepest exit on new data <= {cert.target:g} points) >= {1 - cert.delta:g}"
    doc = {
        "method": "Learn-then-Test (Angelopoulos et al. 2021): fixed-sequence testing, "
                  + ("exact binomial p-values" if cert.kind == "target_acc" else "paired Clopper-Pearson union bound"),
        "statement": statement + ", if val and deployment data are exchangeable",
        "delta": cert.delta,
        **target,
        "split": {"search": int(search_size), "calibration": cert.n_calibration, "seed": int(seed)},
        "p_value": float(cert.p_values[j]),
        "calibration_accuracy": float(cert.calibration_accuracy[j]),
        "accuracy_lower_bound": float(cert.accuracy_lcb[j]),
        "candidates": int(cert.order.size),
        "candidates_certified": int(cert.rejected.size),
    }
    if cert.drop_ucb is not None:
        doc["drop_upper_bound_points"] = float(cert.drop_ucb[j])
    return doc
