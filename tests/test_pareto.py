import numpy as np
import pytest

from tradeoff.errors import TargetUnreachable
from tradeoff.search.pareto import (
    front_result,
    hypervolume_2d,
    pareto_mask,
    pick_budget,
    pick_max_drop,
    pick_target_accuracy,
    reference_point,
)


def test_pareto_mask_hand_case():
    error = [0.10, 0.20, 0.10, 0.30, 0.05, 0.20, 0.25]
    cost = [5.0, 3.0, 6.0, 1.0, 9.0, 4.0, 3.0]
    # 2 is dominated by 0 (same error, dearer); 5 by 1 (same error, dearer); 6 by 1 (same cost, worse)
    np.testing.assert_array_equal(pareto_mask(error, cost), [True, True, False, True, True, False, False])


def test_pareto_mask_keeps_duplicates_once_lowest_index():
    mask = pareto_mask([0.2, 0.1, 0.2, 0.1], [1.0, 2.0, 1.0, 2.0])
    np.testing.assert_array_equal(mask, [True, True, False, False])
    assert pareto_mask([], []).shape == (0,)


def test_pareto_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        pareto_mask([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="finite"):
        pareto_mask([0.1, np.nan], [1.0, 2.0])


def test_pareto_mask_agrees_with_pairwise_definition():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        e, c = rng.integers(0, 5, n).astype(float), rng.integers(0, 5, n).astype(float)
        expected = np.ones(n, dtype=bool)
        for i in range(n):
            for j in range(n):
                dominates = e[j] <= e[i] and c[j] <= c[i] and (e[j] < e[i] or c[j] < c[i])
                duplicate_before = j < i and e[j] == e[i] and c[j] == c[i]
                if dominates or duplicate_before:
                    expected[i] = False
        np.testing.assert_array_equal(pareto_mask(e, c), expected)


def test_hypervolume_hand_cases():
    ref = (1.0, 1.0)
    assert hypervolume_2d([0.5], [0.5], reference=ref) == pytest.approx(0.25)
    # two boxes overlapping in [0.6, 1] x [0.6, 1]: 0.32 + 0.32 - 0.16
    assert hypervolume_2d([0.2, 0.6], [0.6, 0.2], reference=ref) == pytest.approx(0.48)
    # a dominated point and a point outside the box add nothing
    assert hypervolume_2d([0.2, 0.6, 0.7, 0.1], [0.6, 0.2, 0.7, 1.5], reference=ref) == pytest.approx(0.48)
    assert hypervolume_2d([], [], reference=ref) == 0.0


def test_hypervolume_is_normalised_by_the_reference_cost():
    flops = np.array([1e8, 2e8, 4e8])
    ref = reference_point(flops)
    assert ref == (1.0, 4e8)
    assert hypervolume_2d([0.2, 0.6], [2.4e8, 0.8e8], reference=ref) == pytest.approx(0.48)
    # the deepest exit alone (cost = flops[K-1]) adds no area; a free perfect point fills the box
    assert hypervolume_2d([0.1], [4e8], reference=ref) == 0.0
    assert hypervolume_2d([0.0], [0.0], reference=ref) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reference must be two positive"):
        hypervolume_2d([0.1], [1.0], reference=(1.0, 0.0))


ACC = np.array([0.70, 0.80, 0.60, 0.78, 0.80])
COST = np.array([2e8, 4e8, 1e8, 3e8, 5e8])


def test_pick_target_accuracy():
    assert pick_target_accuracy(ACC, COST, 0.78) == 3
    assert pick_target_accuracy(ACC, COST, 0.79) == 1  # index 4 is as accurate but dearer
    assert pick_target_accuracy(ACC, COST, 0.5) == 2
    # float rounding of a target equal to an accuracy still counts as reached
    assert pick_target_accuracy([3886 / 5000], [1.0], 0.7822 - 0.005) == 0


def test_pick_target_unreachable_names_best_point():
    with pytest.raises(TargetUnreachable, match=r"val accuracy 0\.9900; the best reachable is 0\.8000 at 400 MFLOPs"):
        pick_target_accuracy(ACC, COST, 0.99)
    with pytest.raises(TargetUnreachable, match=r"\(1\.40x speed-up\)"):
        pick_target_accuracy(ACC, COST, 0.99, baseline_flops=5.6e8)
    assert TargetUnreachable.exit_code == 3


@pytest.mark.parametrize("target", [0.0, 1.2, 78, -0.1])
def test_pick_target_validates(target):
    with pytest.raises(ValueError, match=r"target accuracy must be in \(0, 1\]"):
        pick_target_accuracy(ACC, COST, target)


def test_pick_max_drop():
    assert pick_max_drop(ACC, COST, 0.80, 0.0) == 1
    assert pick_max_drop(ACC, COST, 0.80, 2.0) == 3
    assert pick_max_drop(ACC, COST, 0.80, 20.0) == 2
    assert pick_max_drop([0.7772, 0.7822], [1.0, 2.0], 0.7822, 0.5) == 0
    with pytest.raises(ValueError, match="max drop must be >= 0"):
        pick_max_drop(ACC, COST, 0.80, -1.0)
    with pytest.raises(TargetUnreachable, match=r"0\.8500 \(0\.9000 - 5 points\); the best reachable is 0\.8000"):
        pick_max_drop(ACC, COST, 0.90, 5.0)


def test_pick_budget():
    assert pick_budget(ACC, COST, 3.5e8) == 3
    assert pick_budget(ACC, COST, 1e9) == 1  # 0.80 at 4e8 beats 0.80 at 5e8: ties go cheaper
    assert pick_budget(ACC, COST, 1e8) == 2  # exactly on budget is within it
    with pytest.raises(TargetUnreachable, match=r"at most 50 MFLOPs per sample; the cheapest reachable is 0\.6000 at 100 MFLOPs"):
        pick_budget(ACC, COST, 5e7)
    for bad in (0.0, -3e8, np.inf):
        with pytest.raises(ValueError, match="budget must be a positive number"):
            pick_budget(ACC, COST, bad)
    with pytest.raises(ValueError, match="empty"):
        pick_budget([], [], 1e8)


def test_front_result_sorted_read_only_and_non_dominated():
    t = np.arange(10, dtype=float).reshape(5, 2) / 10
    r = front_result(t, ACC, COST, evaluations=5, seconds=0.1, method="test")
    np.testing.assert_array_equal(r.flops, [1e8, 2e8, 3e8, 4e8])
    np.testing.assert_array_equal(r.accuracy, [0.60, 0.70, 0.78, 0.80])
    np.testing.assert_array_equal(r.thresholds, t[[2, 0, 3, 1]])
    assert r.size == 4 and r.evaluations == 5 and r.seed is None
    with pytest.raises(ValueError):
        r.accuracy[0] = 1.0
