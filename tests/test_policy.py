"""The fast scorer equals the reference and a per-sample loop exactly; confidence measures by hand."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradeoff.policy.scoring import (
    ExitTable,
    check_thresholds,
    confidence_of,
    exit_indices,
    exit_outputs,
    exit_table,
    make_scorer,
    score_thresholds,
    score_thresholds_reference,
    softmax,
)

DISCRETE = np.array([0.0, 0.2, 0.5, 0.7, 0.9, 1.0])


def loop_scores(conf, correct, flops, thresholds):
    """The exit rule sample by sample in plain Python: (accuracy, flops, fractions) lists."""
    K, N = len(conf), len(conf[0])
    out = []
    for t in thresholds:
        counts, right = [0] * K, 0
        for n in range(N):
            e = K - 1
            for k in range(K - 1):
                if conf[k][n] >= t[k]:
                    e = k
                    break
            counts[e] += 1
            right += bool(correct[e][n])
        cost = 0.0
        for k in range(K):
            cost += counts[k] * flops[k]
        out.append((right / N, cost / N, [c / N for c in counts]))
    return out


def assert_identical(a, b):
    for name in ("accuracy", "flops", "exit_fractions"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


@st.composite
def scoring_cases(draw):
    K = draw(st.integers(2, 6))
    N = draw(st.integers(1, 300))
    P = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    discrete = draw(st.booleans())
    block = draw(st.one_of(st.none(), st.integers(1, N)))
    rng = np.random.default_rng(seed)
    conf = rng.choice(DISCRETE, size=(K, N)) if discrete else rng.random((K, N))
    correct = rng.random((K, N)) < rng.random()
    flops = np.cumsum(rng.random(K) * 1e8 + 1.0)
    # thresholds: confidences themselves (exact ties), the discrete levels (0 and 1 included), random
    pool = np.concatenate([DISCRETE, conf.ravel()[: 3 * N], rng.random(4)])
    thresholds = rng.choice(pool, size=(P, K - 1))
    return ExitTable(conf, correct, flops), thresholds, block


@settings(derandomize=True, max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scoring_cases())
def test_fast_scorer_equals_reference_and_loop(case):
    table, thresholds, block = case
    reference = score_thresholds_reference(table, thresholds)
    fast = make_scorer(table, block=block)(thresholds)
    assert_identical(fast, reference)
    assert_identical(score_thresholds(table, thresholds), reference)
    for p, (acc, cost, fractions) in enumerate(loop_scores(table.confidence.tolist(), table.correct.tolist(),
                                                            table.flops.tolist(), thresholds.tolist())):
        assert fast.accuracy[p] == acc and fast.flops[p] == cost
        assert fast.exit_fractions[p].tolist() == fractions


@pytest.mark.parametrize("block", [1, 2, 37, 1000, 4999, 5000])
def test_remainders_exact_on_a_larger_table(block):
    """Levels every B places plus flipped remainders; thresholds at, between and beyond the levels."""
    rng = np.random.default_rng(3)
    N, K = 5000, 4
    conf = np.round(rng.random((K, N)), 3)  # many ties
    table = ExitTable(conf, rng.random((K, N)) < 0.7, np.array([1.0, 2.5, 4.0, 7.0]))
    levels = np.sort(conf[0])[:: max(1, block)]
    thresholds = np.column_stack([
        np.concatenate([np.resize(levels, 40), rng.random(60)]),
        rng.choice(conf[1], 100),
        rng.choice(np.array([0.0, 1.0, 0.5, 1.5, -0.5]), 100),
    ])
    scorer = make_scorer(table, block=block)
    assert scorer.block == block
    assert_identical(scorer(thresholds), score_thresholds_reference(table, thresholds))


def test_memory_budget_thins_the_levels_and_stays_exact():
    rng = np.random.default_rng(4)
    table = ExitTable(rng.random((3, 20_000)), rng.random((3, 20_000)) < 0.5, np.array([1.0, 2.0, 3.0]))
    scorer = make_scorer(table, max_level_bytes=2**20)
    assert scorer.block > 1 and scorer.level_bytes <= 2**20
    assert make_scorer(table).block == 20_000 // 1024 + 1  # ~1,024 levels once B = 1 would exceed 64 MiB
    small = ExitTable(table.confidence[:, :5000], table.correct[:, :5000], table.flops)
    assert make_scorer(small).block == 1  # a level at every place
    t = rng.random((50, 2))
    assert_identical(scorer(t), score_thresholds_reference(table, t))


def test_many_rows_are_scored_in_chunks(monkeypatch):
    import tradeoff.policy.bitset as bitset

    monkeypatch.setattr(bitset, "_CALL_BYTES", 1)  # one row per chunk
    rng = np.random.default_rng(5)
    table = ExitTable(rng.random((5, 700)), rng.random((5, 700)) < 0.5, np.arange(1.0, 6.0))
    t = rng.random((13, 4))
    assert_identical(make_scorer(table, block=9)(t), score_thresholds_reference(table, t))


def test_edge_shapes():
    rng = np.random.default_rng(6)
    table = ExitTable(rng.random((3, 10)), rng.random((3, 10)) < 0.5, np.array([1.0, 2.0, 3.0]))
    scorer = make_scorer(table)
    empty = scorer(np.zeros((0, 2)))
    assert empty.accuracy.shape == (0,) and empty.exit_fractions.shape == (0, 3)
    one = scorer(np.array([0.5, 0.5]))  # a vector is one row
    assert_identical(one, score_thresholds_reference(table, np.array([[0.5, 0.5]])))
    # thresholds 0: everyone leaves at exit 1; above 1: everyone reaches the deepest exit
    assert scorer(np.array([[0.0, 0.0]])).exit_fractions.tolist() == [[1.0, 0.0, 0.0]]
    s = scorer(np.array([[1.5, 1.5]]))
    assert s.exit_fractions.tolist() == [[0.0, 0.0, 1.0]] and s.flops[0] == 3.0
    assert s.accuracy[0] == table.correct[2].mean()
    single = ExitTable(rng.random((1, 4)), np.array([[True, False, True, True]]), np.array([5.0]))
    assert make_scorer(single)(np.zeros((2, 0))).accuracy.tolist() == [0.75, 0.75]


def test_tie_at_threshold_leaves():
    table = ExitTable(np.array([[0.5, 0.49999999999999994, 0.5], [0.1, 0.1, 0.1]]),
                      np.array([[True, True, False], [False, False, True]]), np.array([1.0, 2.0]))
    s = make_scorer(table)(np.array([[0.5]]))
    assert s.exit_fractions.tolist() == [[2 / 3, 1 / 3]]
    assert s.accuracy[0] == 1 / 3  # sample 0 right at exit 1, sample 2 wrong there, sample 1 wrong at exit 2
    assert exit_indices(table, np.array([0.5])).tolist() == [0, 1, 0]


# --------------------------------------------------------------------------- measures
def test_margin_and_entropy_by_hand():
    probs = np.array([[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(confidence_of(probs, "margin"), [0.2, 0.0, 1.0], atol=1e-15)
    h = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    np.testing.assert_allclose(confidence_of(probs, "entropy"), [1 - h / math.log(3), 0.0, 1.0], atol=1e-12)
    np.testing.assert_array_equal(confidence_of(probs), [0.5, 1 / 3, 1.0])
    # the same through logits: softmax of log-probabilities gives the probabilities back
    table = exit_table(np.log(np.array([[[0.5, 0.3, 0.2]], [[0.1, 0.1, 0.8]]])).astype(np.float32),
                       np.array([0]), np.array([1.0, 2.0]), confidence="margin")
    np.testing.assert_allclose(table.confidence[:, 0], [0.2, 0.7], atol=1e-6)
    assert table.correct[:, 0].tolist() == [True, False]


def test_ensemble_by_hand():
    p1 = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    p2 = np.array([[0.3, 0.7], [0.8, 0.2], [0.6, 0.4]])
    logits = np.log(np.stack([p1, p2])).astype(np.float32)
    labels = np.array([0, 1, 0])
    plain = exit_table(logits, labels, np.array([1.0, 2.0]))
    ens = exit_table(logits, labels, np.array([1.0, 2.0]), ensemble=True)
    # exit 2 alone predicts 1, 0, 0; the mean of exits 1-2 is (0.6, 0.4), (0.6, 0.4), (0.4, 0.6)
    assert plain.correct[1].tolist() == [False, False, True]
    assert ens.correct[1].tolist() == [True, False, False]
    np.testing.assert_allclose(ens.confidence[1], [0.6, 0.6, 0.6], atol=1e-6)
    np.testing.assert_array_equal(ens.confidence[0], plain.confidence[0])  # exit 1 is its own mean
    # temperatures act on each exit before averaging: T = 2 on exit 1 only
    warm = exit_table(logits, labels, np.array([1.0, 2.0]), ensemble=True, temperatures=np.array([2.0, 1.0]))
    q1 = softmax(logits[0], 2.0)
    np.testing.assert_allclose(warm.confidence[1], ((q1 + softmax(logits[1])) / 2).max(axis=1), atol=1e-12)


def test_exit_table_is_chunk_and_batch_invariant():
    """Chunking, and the runtime's batches of one, give the same bits (decisions must match)."""
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=(3, 600, 10)) * 4).astype(np.float32)
    logits[:, :5] = logits[:, :5].round()  # exact logit ties
    labels = rng.integers(0, 10, 600)
    for measure in ("maxprob", "margin", "entropy"):
        for ensemble in (False, True):
            kw = dict(confidence=measure, ensemble=ensemble, temperatures=np.array([1.5, 1.0, 0.7]))
            whole = exit_table(logits, labels, np.ones(3), **kw)
            pieces = exit_table(logits, labels, np.ones(3), chunk=7, **kw)
            np.testing.assert_array_equal(whole.confidence, pieces.confidence)
            np.testing.assert_array_equal(whole.correct, pieces.correct)
            for n in (0, 3, 599):
                conf, pred = exit_outputs(logits[:, n : n + 1], **kw)
                np.testing.assert_array_equal(conf[:, 0], whole.confidence[:, n])
                np.testing.assert_array_equal(pred[:, 0] == labels[n], whole.correct[:, n])
            if measure == "maxprob" and not ensemble:
                np.testing.assert_array_equal(whole.confidence[1], confidence_of(softmax(logits[1]), "maxprob"))


def test_softmax_row_max_paths_agree():
    rng = np.random.default_rng(8)
    z = rng.normal(size=(300, 10)) * 30
    many = softmax(z)  # column-loop max (many short rows)
    one_by_one = np.concatenate([softmax(z[i : i + 1]) for i in range(300)])
    np.testing.assert_array_equal(many, one_by_one)
    np.testing.assert_allclose(many.sum(axis=1), 1.0, rtol=1e-12)


# --------------------------------------------------------------------------- errors
def test_error_messages():
    rng = np.random.default_rng(9)
    table = ExitTable(rng.random((4, 20)), rng.random((4, 20)) < 0.5, np.arange(1.0, 5.0))
    with pytest.raises(ValueError, match=r"thresholds must have shape \(P, K-1\) = \(P, 3\) for K = 4 exits; got \(5, 2\)"):
        make_scorer(table)(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"thresholds must have shape .* got \(\)"):
        score_thresholds(table, 0.5)
    with pytest.raises(ValueError, match="thresholds must be finite numbers in \\[0, 1\\]; got NaN or inf"):
        make_scorer(table)(np.array([[0.1, np.nan, 0.2]]))
    with pytest.raises(ValueError, match="thresholds must be finite"):
        score_thresholds_reference(table, np.array([[0.1, np.inf, 0.2]]))
    with pytest.raises(TypeError, match="thresholds must be numbers"):
        check_thresholds([["a", "b", "c"]], 4)
    with pytest.raises(ValueError, match="confidence must be one of maxprob, margin, entropy, patience; got 'softmax'"):
        exit_table(np.zeros((2, 3, 4), np.float32), np.zeros(3, int), np.ones(2), confidence="softmax")
    with pytest.raises(ValueError, match="confidence must be one of maxprob, margin, entropy, patience; got 'energy'"):
        confidence_of(np.ones((2, 3)) / 3, "energy")
    with pytest.raises(ValueError, match=r"logits must have shape \(K, N, C\); got \(3, 4\)"):
        exit_table(np.zeros((3, 4), np.float32), np.zeros(3, int), np.ones(1))
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(3,\)"):
        exit_table(np.zeros((2, 3, 4), np.float32), np.zeros(4, int), np.ones(2))
    with pytest.raises(ValueError, match=r"flops must have shape \(K,\) = \(2,\)"):
        exit_table(np.zeros((2, 3, 4), np.float32), np.zeros(3, int), np.ones(3))
    with pytest.raises(ValueError, match="temperatures must be 2 positive finite numbers, one per exit; got \\[1.0, 0.0\\]"):
        exit_table(np.zeros((2, 3, 4), np.float32), np.zeros(3, int), np.ones(2), temperatures=[1.0, 0.0])
    with pytest.raises(ValueError, match="the exit table has NaN confidences"):
        make_scorer(ExitTable(np.array([[np.nan, 0.5], [0.1, 0.2]]), np.ones((2, 2), bool), np.ones(2)))
    with pytest.raises(ValueError, match="the exit table has no samples"):
        make_scorer(ExitTable(np.zeros((2, 0)), np.zeros((2, 0), bool), np.ones(2)))
    with pytest.raises(ValueError, match="block must be a positive integer number of places; got 0"):
        make_scorer(table, block=0)


def test_score_thresholds_one_shot_paths_agree():
    """Few rows go through the reference, many build a scorer: the same bits either way."""
    rng = np.random.default_rng(10)
    table = ExitTable(np.round(rng.random((3, 5000)), 2), rng.random((3, 5000)) < 0.6, np.array([1.0, 2.0, 4.0]))
    t = rng.choice(np.linspace(0, 1, 101), (500, 2))  # 500 * 5000 cells: the scorer path
    many = score_thresholds(table, t)
    assert_identical(many, score_thresholds_reference(table, t))
    assert_identical(score_thresholds(table, t[:3]), make_scorer(table)(t[:3]))


def test_popcount_fallback_without_numpy2(monkeypatch):
    """setup.cfg allows NumPy 1.24 (no np.bitwise_count): the lookup-table popcount agrees."""
    rng = np.random.default_rng(11)
    table = ExitTable(rng.random((4, 300)), rng.random((4, 300)) < 0.5, np.arange(1.0, 5.0))
    t = rng.random((20, 3))
    expected = score_thresholds_reference(table, t)
    monkeypatch.delattr(np, "bitwise_count")
    assert_identical(make_scorer(table, block=7)(t), expected)
