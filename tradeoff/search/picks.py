"""The chosen point of a front and its statistics.

Picking a row of a front on val (`pick_index`), or certifying one with Learn-then-Test
(`certify_front`); the chosen point's figures, per-sample correctness and cost; the
bootstrap interval of its test accuracy and the paired per-class vs per-exit comparison.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tradeoff.policy.scoring import ExitTable, Scores, exit_indices
from tradeoff.search.result import MethodFront, PointFigures
from tradeoff.search.settings import BOOTSTRAP_RESAMPLES, Pick, SearchSettings


def guarantee_split(num_val: int, settings: SearchSettings):
    """The seeded search/calibration split of val, or CannotCertify when val is too small."""
    from tradeoff.search import guarantee

    split = guarantee.split_val(num_val, seed=settings.seed)
    if split.search.size == 0 or split.calibration.size == 0:
        target = settings.pick.value if settings.pick.kind == "target_acc" else None
        need = "" if target is None or target >= 1 else (
            f"; even a perfect candidate needs >= {guarantee.minimum_calibration_size(target, settings.delta)} "
            f"calibration rows (~{int(np.ceil(guarantee.minimum_calibration_size(target, settings.delta) / split.calibration_fraction))} val rows)")
        raise guarantee.CannotCertify(
            f"cannot certify: val has {num_val} rows, too few to split into a search part and a calibration part "
            f"({split.sizes['search']} / {split.sizes['calibration']}){need} - give more val data"
        )
    return split


def certify_front(front: MethodFront, cal_table: ExitTable, pick: Pick, delta: float, val_split):
    """Learn-then-Test on the calibration part over `front` (found on the search part)."""
    from tradeoff.search import guarantee

    correct = np.stack([correct_at(cal_table, t) for t in front.thresholds])
    if pick.kind == "target_acc":
        if pick.value >= 1.0:
            raise ValueError("--target-acc 1 cannot be certified with --delta (no finite sample proves zero error); give a target below 1")
        cert = guarantee.certify_target_accuracy(correct, front.val.flops, front.val.accuracy, target=pick.value, delta=delta)
    else:
        cert = guarantee.certify_max_drop(correct, cal_table.correct[-1], front.val.flops, front.val.accuracy,
                                          drop_pp=pick.value, delta=delta)
    if not cert.certified:
        raise guarantee.CannotCertify(guarantee.cannot_certify_message(cert, val_split.calibration_fraction), cert)
    return cert


def pick_index(front: MethodFront, pick: Pick, deepest_val_acc: float, baseline: float, *, unit: str = "flops") -> int:
    if unit == "ms":
        # pareto's messages show cost / 1e6 as MFLOPs: costs in ns read as ms there.
        from tradeoff.errors import TargetUnreachable

        scaled = Scores(front.val.accuracy, front.val.flops * 1e6, front.val.exit_fractions)
        try:
            return pick_index(replace(front, val=scaled), replace(pick, value=pick.value * 1e6) if pick.kind == "budget_ms" else pick,
                         deepest_val_acc, baseline * 1e6)
        except TargetUnreachable as exc:
            raise TargetUnreachable(str(exc).replace("MFLOPs", "ms")) from None
    from tradeoff.search import pareto

    acc, cost = front.val.accuracy, front.val.flops
    if pick.kind == "target_acc":
        return pareto.pick_target_accuracy(acc, cost, pick.value, baseline_flops=baseline)
    if pick.kind == "max_drop":
        return pareto.pick_max_drop(acc, cost, deepest_val_acc, pick.value, baseline_flops=baseline)
    return pareto.pick_budget(acc, cost, pick.value, baseline_flops=baseline)


def point_figures(scores: Scores, i: int, baseline: float, flops: np.ndarray) -> PointFigures:
    cost = float(scores.flops[i])
    return PointFigures(
        accuracy=float(scores.accuracy[i]),
        flops=cost,
        speedup=baseline / cost,
        speedup_all_exits=float(flops[-1]) / cost,
        exit_fractions=tuple(float(f) for f in scores.exit_fractions[i]),
    )


def correct_at(table, thresholds: np.ndarray) -> np.ndarray:
    """(N,) bool: whether each sample is answered correctly under one threshold vector (or table)."""
    leave, by_fallback = exit_indices(table, thresholds, with_fallback=True)
    correct = table.correct[leave, np.arange(table.num_samples)]
    if table.fallback_correct is not None:
        correct[by_fallback] = table.fallback_correct[by_fallback]
    return correct


def cost_at(table, thresholds: np.ndarray) -> np.ndarray:
    """(N,) float64: what each sample pays under one threshold vector (or table)."""
    return table.flops[exit_indices(table, thresholds)]


def paired_comparison(table, base: MethodFront, i: int, other: MethodFront, j: int, *, resamples: int, seed: int) -> dict:
    """Per-class pick (other[j]) minus per-exit pick (base[i]) on test, with a paired percentile
    bootstrap over the test samples (both rules on the same resampled samples): accuracy gain and
    cost saving, each with its 95% interval. "wins" needs the accuracy gain's interval above 0
    at no extra cost, or the saving's interval above 0 at no accuracy loss."""
    a_ok, b_ok = correct_at(table, base.thresholds[i]), correct_at(table, other.thresholds[j])
    a_cost, b_cost = cost_at(table, base.thresholds[i]), cost_at(table, other.thresholds[j])
    n = a_ok.size
    rng = np.random.default_rng(seed)
    gain = np.empty(resamples)
    saving = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, n, n)
        gain[r] = (b_ok[idx].mean() - a_ok[idx].mean())
        saving[r] = (a_cost[idx].mean() - b_cost[idx].mean())
    acc_ci = tuple(float(v) for v in np.quantile(gain, [0.025, 0.975]))
    cost_ci = tuple(float(v) for v in np.quantile(saving, [0.025, 0.975]))
    acc_gain, cost_saving = float(b_ok.mean() - a_ok.mean()), float(a_cost.mean() - b_cost.mean())
    wins = (acc_ci[0] > 0 and cost_saving >= 0) or (cost_ci[0] > 0 and acc_gain >= 0)
    return {
        "per_exit": {"index": int(i), "test_accuracy": float(a_ok.mean()), "test_flops": float(a_cost.mean()),
                     "val_accuracy": float(base.val.accuracy[i]), "val_flops": float(base.val.flops[i])},
        "per_class": {"index": int(j), "test_accuracy": float(b_ok.mean()), "test_flops": float(b_cost.mean()),
                      "val_accuracy": float(other.val.accuracy[j]), "val_flops": float(other.val.flops[j])},
        "test_accuracy_gain": acc_gain, "test_accuracy_gain_ci95": acc_ci,
        "test_flops_saving": cost_saving, "test_flops_saving_ci95": cost_ci,
        "test_hypervolume": {"per_exit": test_hypervolume(base, table.flops), "per_class": test_hypervolume(other, table.flops)},
        "per_class_wins": bool(wins),
        "resamples": int(resamples),
    }


def test_hypervolume(front: MethodFront, flops: np.ndarray) -> float:
    """Hypervolume of a front's test points, with the same reference as the val ones."""
    from tradeoff.search import pareto

    return float(pareto.hypervolume_2d(1.0 - front.test.accuracy, front.test.flops, reference=pareto.reference_point(flops)))


def bootstrap_accuracy_ci(
    correct: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of an accuracy, seeded and O(resamples).

    Resampling N rows with replacement from N right/wrong answers and counting the right
    ones is exactly a Binomial(N, k/N) draw (each pick is right with probability k/N,
    independently), so the bootstrap distribution is drawn directly, with no
    (resamples, N) index matrix: the same distribution, for any N, in microseconds.

    Args:
        correct: (N,) bool, whether each test sample is answered correctly.
        resamples: bootstrap resamples.
        seed: for `numpy.random.default_rng(seed)`.
        level: coverage of the interval.

    Returns:
        (lo, hi) accuracies.
    """
    correct = np.asarray(correct, dtype=bool)
    n = correct.size
    if n == 0:
        raise ValueError("cannot bootstrap an accuracy over 0 samples; the split is empty")
    rng = np.random.default_rng(seed)
    draws = rng.binomial(n, np.count_nonzero(correct) / n, size=resamples) / n
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
