import numpy as np
import pytest

from tradeoff.policy.rule import OFF_THRESHOLD

from tradeoff.policy.scoring import ExitTable, exit_indices, exit_table, score_thresholds
from tradeoff.search.baselines import (
    global_threshold_search,
    grid_levels,
    grid_search,
    msdnet_budget_search,
    msdnet_thresholds,
    random_search,
)
from tradeoff.search.pareto import pareto_mask
from tradeoff.cache.synthetic import synthetic_cache


@pytest.fixture(scope="module")
def table():
    val = synthetic_cache(1200, 10, seed=2).select("val")
    return exit_table(val.logits, val.labels, val.flops)


def _check_front(front, table, method):
    """A valid front: right shapes, sorted by cost, non-dominated, figures reproducible."""
    F = front.size
    assert front.method == method and F >= 1
    assert front.thresholds.shape == (F, table.num_exits - 1)
    assert np.all((front.thresholds >= 0) & ((front.thresholds <= 1) | (front.thresholds == OFF_THRESHOLD)))
    assert np.all(np.diff(front.flops) > 0) and np.all(np.diff(front.accuracy) > 0)
    assert pareto_mask(1.0 - front.accuracy, front.flops).all()
    s = score_thresholds(table, front.thresholds)
    np.testing.assert_array_equal(s.accuracy, front.accuracy)
    np.testing.assert_array_equal(s.flops, front.flops)


def test_global_threshold_is_shared_by_all_exits(table):
    front = global_threshold_search(table, levels=201)
    _check_front(front, table, "global")
    assert np.all(front.thresholds == front.thresholds[:, :1])
    assert front.evaluations > 201  # even grid plus pooled quantiles
    explicit = global_threshold_search(table, levels=np.array([0.0, 0.5, 1.0, 0.5]))
    assert explicit.evaluations == 3
    with pytest.raises(ValueError, match=r"levels must be a count \(int >= 2\) or a 1-D array of thresholds in \[0, 1\]"):
        global_threshold_search(table, levels=np.array([0.2, 1.5]))


def test_msdnet_thresholds_by_hand():
    # 3 exits, 9 samples, distinct confidences; p = 1 -> q = (1/3, 1/3, 1/3): 3 leave at
    # exit 1 (the three most confident there), then 3 of the remaining 6 at exit 2.
    conf = np.array([
        [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5],
        [0.99, 0.9, 0.2, 0.8, 0.3, 0.7, 0.95, 0.6, 0.5],
        np.zeros(9),
    ])
    t = ExitTable(conf, np.ones((3, 9), bool), np.array([1.0, 2.0, 3.0]))
    th = msdnet_thresholds(t, 1.0)
    # exit 2 ranks only the six still present: sample 0 (0.99 there) already left
    np.testing.assert_array_equal(th, [0.7, 0.8])
    np.testing.assert_array_equal(np.bincount(exit_indices(t, th), minlength=3), [3, 3, 3])
    # tiny p: q_1 = 1 / (1 + 1e-6 + 1e-12), so floor(9 q_1) = 8 (MSDNet rounds down): the 8th most
    # confident sample sets T_1 = 0.2; floor(9 q_2) = 0, so nobody leaves at exit 2 (off)
    np.testing.assert_array_equal(msdnet_thresholds(t, 1e-6), [0.2, OFF_THRESHOLD])
    # ties: the threshold is the confidence of the last sample wanted; all tied samples leave
    tied = ExitTable(np.array([[0.5] * 6, [0.0] * 6]), np.ones((2, 6), bool), np.array([1.0, 2.0]))
    assert np.all(exit_indices(tied, msdnet_thresholds(tied, 1.0)) == 0)


def test_msdnet_front(table):
    front = msdnet_budget_search(table)
    _check_front(front, table, "msdnet")
    assert front.evaluations == 241
    with pytest.raises(ValueError, match="p_values must be a 1-D array of positive ratios"):
        msdnet_budget_search(table, p_values=np.array([0.5, -1.0]))


def test_random_search_budget_and_seed(table):
    a = random_search(table, 500, seed=3)
    _check_front(a, table, "random")
    assert a.evaluations == 500 and a.seed == 3
    b = random_search(table, 500, seed=3)
    c = random_search(table, 500, seed=4)
    assert a.thresholds.tobytes() == b.thresholds.tobytes()
    assert a.thresholds.tobytes() != c.thresholds.tobytes()
    with pytest.raises(ValueError, match="evaluations must be an integer >= 1; got 0"):
        random_search(table, 0)


def test_grid_front_and_levels(table):
    front = grid_search(table, points_per_exit=12)
    _check_front(front, table, "grid")
    levels = grid_levels(table, 12)
    assert front.evaluations == int(np.prod([v.size for v in levels]))
    for k in range(table.num_exits - 1):
        assert levels[k][-1] == 1.0
        assert np.isin(levels[k][:-1], table.confidence[k]).all()  # real confidences
        assert np.isin(front.thresholds[:, k], levels[k]).all()


def test_grid_is_exact_for_two_exits():
    # K = 2: every policy is one threshold; a grid finer than 1/N reaches every order
    # statistic, so its front equals brute force over every distinct confidence.
    rng = np.random.default_rng(0)
    conf = np.vstack([rng.random(50), rng.random(50)])
    correct = rng.random((2, 50)) < np.array([[0.6], [0.8]])
    t = ExitTable(conf, correct, np.array([1.0, 3.0]))
    front = grid_search(t, points_per_exit=1001)
    brute = np.append(np.unique(conf[0]), 1.0)[:, None]
    s = score_thresholds(t, brute)
    keep = pareto_mask(1.0 - s.accuracy, s.flops)
    np.testing.assert_array_equal(np.sort(front.flops), np.sort(s.flops[keep]))
    np.testing.assert_array_equal(np.sort(front.accuracy), np.sort(s.accuracy[keep]))


def test_grid_chunks_match_one_batch(table):
    # more vectors than one scorer call takes: the chunked scoring must give the same front
    small = ExitTable(table.confidence[:, :600], table.correct[:, :600], table.flops)
    front = grid_search(small, points_per_exit=20)  # 8,000 vectors > 4,096 per call
    levels = grid_levels(small, 20)
    mesh = np.stack(np.meshgrid(*levels, indexing="ij"), axis=-1).reshape(-1, 3)
    s = score_thresholds(small, mesh)
    keep = np.flatnonzero(pareto_mask(1.0 - s.accuracy, s.flops))
    assert front.evaluations == mesh.shape[0] > 4096
    np.testing.assert_array_equal(np.sort(front.flops), np.sort(s.flops[keep]))


def test_grid_refuses_large_problems(table):
    six = ExitTable(np.zeros((6, 4)), np.ones((6, 4), bool), np.arange(1.0, 7.0))
    with pytest.raises(ValueError, match=r"at most 4 thresholds \(K <= 5 exits\); this table has K = 6"):
        grid_search(six)
    with pytest.raises(ValueError, match=r"a grid of 200\^3 = 8,000,000 threshold vectors exceeds 2,000,000; give points_per_exit <= 125"):
        grid_search(table, points_per_exit=200)
    with pytest.raises(ValueError, match="points_per_exit must be an integer >= 2"):
        grid_search(table, points_per_exit=1)
