"""Learn-then-Test (`tradeoff.search.guarantee`, `--delta`): exact small cases, the
fixed-sequence stop, the split, validity by simulation, and the search integration."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from tradeoff.cache.format import ExitCache, validate_cache, write_cache
from tradeoff.commands import main
from tradeoff.policy.table import exit_indices, exit_table
from tradeoff.search import guarantee as g
from tradeoff.search.run import run_search
from tradeoff.search.settings import Pick
from tradeoff.cache.synthetic import synthetic_cache

FAST = dict(pop=16, gens=8, bootstrap=200)
FAST_CLI = ["--pop", "16", "--gens", "8", "--no-plots"]


# --------------------------------------------------------------------------- p-values and bounds
def test_binomial_p_value_against_hand_values():
    # H0: risk > 0.2; 0 or 1 errors in 10: P(Bin(10, 0.2) <= k)
    assert g.binomial_p_value(0, 10, 0.2) == pytest.approx(0.8**10, rel=1e-12)  # 0.1073741824
    assert g.binomial_p_value(1, 10, 0.2) == pytest.approx(0.8**10 + 10 * 0.2 * 0.8**9, rel=1e-12)  # 0.3758096384
    assert g.binomial_p_value(10, 10, 0.2) == pytest.approx(1.0)
    np.testing.assert_allclose(g.binomial_p_value(np.array([0, 1]), 10, 0.2), [0.1073741824, 0.3758096384], rtol=1e-10)


def test_clopper_pearson_hand_values_and_duality_with_the_p_value():
    # all n right: the Beta(n, 1) delta-quantile is delta ** (1 / n)
    assert g.accuracy_lower_bound(10, 10, 0.1) == pytest.approx(0.1**0.1, rel=1e-10)
    assert g.accuracy_lower_bound(0, 10, 0.1) == 0.0
    n, delta = 200, 0.1
    for right in (150, 170, 190):
        lcb = float(g.accuracy_lower_bound(right, n, delta))
        # p-value of the target at the bound is exactly delta; just below it rejects, just above it does not
        assert g.binomial_p_value(n - right, n, 1 - lcb) == pytest.approx(delta, rel=1e-6)
        assert g.binomial_p_value(n - right, n, 1 - (lcb - 1e-4)) <= delta
        assert g.binomial_p_value(n - right, n, 1 - (lcb + 1e-4)) > delta


def test_drop_bound_hand_value_and_p_value_duality():
    # no discordant pair: UCB of p_B at delta/2 is 1 - (delta/2) ** (1/n), LCB of p_C is 0
    assert g.drop_upper_bound(0, 0, 100, 0.1) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-10)
    p = float(g.drop_p_value(70, 35, 3500, 0.02))
    assert 0 < p < 1
    assert float(g.drop_upper_bound(70, 35, 3500, p * 1.001)) <= 0.02 < float(g.drop_upper_bound(70, 35, 3500, p * 0.999))
    assert float(g.drop_p_value(70, 35, 3500, 0.01)) == 1.0  # observed drop is exactly 1 point: never rejected


def test_the_tests_are_valid_by_simulation():
    """Rejection rate at a null just past the boundary must not exceed delta (up to sampling noise)."""
    rng = np.random.default_rng(0)
    n, delta, draws = 400, 0.1, 4000
    # accuracy: true risk 0.21 > alpha 0.2
    errors = rng.binomial(n, 0.21, draws)
    assert np.mean(g.binomial_p_value(errors, n, 0.2) <= delta) <= delta + 3 * math.sqrt(delta * 0.9 / draws)
    # paired drop: p_B - p_C = 0.03 - 0.01 = 0.02 > d = 0.019
    counts = rng.multinomial(n, [0.03, 0.01, 0.96], draws)
    rate = np.mean(g.drop_upper_bound(counts[:, 0], counts[:, 1], n, delta) <= 0.019)
    assert rate <= delta + 3 * math.sqrt(delta * 0.9 / draws)


# --------------------------------------------------------------------------- fixed-sequence testing
def test_fixed_sequence_stops_at_the_first_failure():
    assert g.fixed_sequence([0.01, 0.02, 0.5, 0.01], 0.1) == 2
    assert g.fixed_sequence([0.2, 0.01], 0.1) == 0
    assert g.fixed_sequence([0.1, 0.1], 0.1) == 2  # p <= delta rejects
    assert g.fixed_sequence([], 0.1) == 0


def _rows(n: int, wrong: list[int]) -> np.ndarray:
    out = np.ones((len(wrong), n), dtype=bool)
    for j, w in enumerate(wrong):
        out[j, :w] = False
    return out


def test_certification_stops_at_the_third_candidate_even_if_the_fourth_would_pass():
    n, target, delta = 100, 0.8, 0.1
    # in testing order (search accuracy descending): 5, 8, 30, 5 errors out of 100
    correct = _rows(n, [5, 8, 30, 5])
    cost = np.array([4.0, 3.0, 2.0, 1.0])
    search_acc = np.array([0.95, 0.9, 0.85, 0.8])
    cert = g.certify_target_accuracy(correct, cost, search_acc, target=target, delta=delta)
    p = [stats.binom.cdf(k, n, 1 - target) for k in (5, 8, 30, 5)]
    np.testing.assert_allclose(cert.p_values, p)
    assert p[3] <= delta  # the fourth would pass on its own ...
    assert cert.rejected.tolist() == [0, 1]  # ... but testing stopped at the third
    assert cert.chosen == 1 and cert.certified  # the cheapest rejected
    assert cert.order.tolist() == [0, 1, 2, 3]
    assert cert.accuracy_lcb[1] >= target and cert.needed_calibration_size is None


def test_order_is_by_search_accuracy_not_by_calibration():
    # candidate 1 is the most accurate on the search part, so it is tested first and fails: nothing certified
    correct = _rows(100, [2, 40])
    cert = g.certify_target_accuracy(correct, [2.0, 1.0], [0.9, 0.95], target=0.8, delta=0.1)
    assert cert.order.tolist() == [1, 0] and cert.chosen is None and cert.rejected.size == 0


def test_cannot_certify_gives_the_best_bound_and_the_needed_size():
    n, target, delta = 100, 0.86, 0.1
    correct = _rows(n, [10, 20])  # observed 0.90 and 0.80
    cert = g.certify_target_accuracy(correct, [2.0, 1.0], [0.9, 0.8], target=target, delta=delta)
    assert not cert.certified
    assert cert.best_certifiable == pytest.approx(float(g.accuracy_lower_bound(90, n, delta)))
    assert cert.best_certifiable < target
    m = cert.needed_calibration_size
    assert g.accuracy_lower_bound(0.9 * m, m, delta) >= target > g.accuracy_lower_bound(0.9 * (m - 1), m - 1, delta)
    msg = g.cannot_certify_message(cert, 0.7)
    assert msg == (
        f"cannot certify at delta 0.1 on 100 calibration samples (accuracy >= 0.86); the highest accuracy certifiable "
        f"here is {cert.best_certifiable:.4f}; estimated val size needed: ~{math.ceil(m / 0.7)} rows ({m} for "
        "calibration, at the most accurate candidate's observed accuracy) - lower the target, raise --delta or give "
        "more val data"
    )
    # the first candidate's observed accuracy misses the target: no size would do
    cert = g.certify_target_accuracy(_rows(n, [20]), [1.0], [0.9], target=target, delta=delta)
    assert cert.needed_calibration_size is None and "no val size would do" in g.cannot_certify_message(cert, 0.7)


def test_max_drop_certification():
    rng = np.random.default_rng(1)
    n = 2000
    deep = rng.random(n) < 0.8
    cand = np.stack([deep.copy(), deep.copy(), deep.copy()])
    cand[1, np.flatnonzero(deep)[:20]] = False  # 1 point worse
    cand[2, np.flatnonzero(deep)[:120]] = False  # 6 points worse
    cert = g.certify_max_drop(cand, deep, [3.0, 2.0, 1.0], [0.8, 0.79, 0.74], drop_pp=2.0, delta=0.1)
    assert cert.rejected.tolist() == [0, 1] and cert.chosen == 1
    assert cert.drop_ucb[1] == pytest.approx(100 * float(g.drop_upper_bound(20, 0, n, 0.1)))
    assert cert.drop_ucb[1] <= 2.0 < cert.drop_ucb[2]
    assert cert.p_values[1] <= 0.1 < cert.p_values[2]
    assert cert.best_certifiable == pytest.approx(max(0.0, cert.drop_ucb[0]))


# --------------------------------------------------------------------------- the split and bad input
def test_split_is_disjoint_complete_seeded_and_deterministic():
    s = g.split_val(1000, seed=7)
    assert s.sizes == {"search": 300, "calibration": 700}
    assert np.intersect1d(s.search, s.calibration).size == 0
    assert np.array_equal(np.union1d(s.search, s.calibration), np.arange(1000))
    again = g.split_val(1000, seed=7)
    assert np.array_equal(s.search, again.search) and np.array_equal(s.calibration, again.calibration)
    assert not np.array_equal(s.calibration, g.split_val(1000, seed=8).calibration)
    assert g.split_val(10, calibration_fraction=0.5).sizes == {"search": 5, "calibration": 5}


@pytest.mark.parametrize("delta", [0, 1, -0.1, 1.5, float("nan")])
def test_delta_outside_the_unit_interval_is_refused(delta):
    with pytest.raises(ValueError, match=r"^--delta must be in \(0, 1\) \(the allowed probability that the pick misses the target, e\.g\. 0\.1\); got "):
        g.check_delta(delta)
    with pytest.raises(TypeError, match=r"--delta must be a number in \(0, 1\); got '0.1'"):
        g.check_delta("0.1")


# --------------------------------------------------------------------------- the search
@pytest.fixture(scope="module")
def cache():
    return synthetic_cache(4000, 10, (0.6, 0.75, 0.85), seed=3)


def _calibration_rows(cache, seed=0):
    val_rows = np.flatnonzero(cache.split == "val")
    return val_rows[g.split_val(val_rows.size, seed=seed).calibration]


def test_the_calibration_part_never_touches_the_search(cache):
    result = run_search(cache, pick=Pick("target_acc", 0.8), delta=0.1, calibrate=True, **FAST)
    rows = _calibration_rows(cache)
    logits, labels = cache.logits.copy(), cache.labels.copy()
    rng = np.random.default_rng(99)
    logits[:, rows] = rng.normal(size=logits[:, rows].shape).astype(logits.dtype)
    labels[rows] = rng.integers(0, 10, rows.size)
    scrambled = validate_cache(ExitCache(logits, labels, cache.split, cache.flops, cache.meta))
    try:
        other = run_search(scrambled, pick=Pick("target_acc", 0.8), delta=0.1, calibrate=True, **FAST)
        other_fronts = other.fronts
    except g.CannotCertify:  # scrambled calibration data may certify nothing; rerun the search part alone
        other = None
        other_fronts = run_search(scrambled, pick=Pick("target_acc", 0.02), delta=0.1, calibrate=True, **FAST).fronts
    for a, b in zip(result.fronts, other_fronts):
        assert np.array_equal(a.thresholds, b.thresholds) and np.array_equal(a.val.accuracy, b.val.accuracy)
    assert result.split_sizes == {"val": 2000, "val_search": 600, "val_calibration": 1400, "test": 2000}
    assert result.exits[-1].val_accuracy != run_search(cache, pick=Pick("target_acc", 0.8), **FAST).exits[-1].val_accuracy


def test_the_recorded_p_value_is_recomputed_independently(cache):
    result = run_search(cache, pick=Pick("target_acc", 0.8), delta=0.1, **FAST)
    cert = result.guarantee
    rows = _calibration_rows(cache)
    table = exit_table(cache.logits[:, rows], cache.labels[rows], cache.flops)
    leave = exit_indices(table, np.array(result.chosen.thresholds))
    right = int(np.count_nonzero(table.correct[leave, np.arange(rows.size)]))
    assert cert.p_values[cert.chosen] == pytest.approx(stats.binom.cdf(rows.size - right, rows.size, 0.2), rel=1e-12)
    assert cert.p_values[cert.chosen] <= 0.1
    assert cert.accuracy_lcb[cert.chosen] >= 0.8
    assert result.chosen.index == cert.chosen and cert.chosen in cert.rejected


def test_cli_records_the_guarantee(cache, tmp_path, capsys):
    path = tmp_path / "c.npz"
    write_cache(path, cache)
    out = tmp_path / "run"
    assert main(["search", "--cache", str(path), "--target-acc", "0.8", "--delta", "0.1", "--out", str(out), *FAST_CLI]) == 0
    text = capsys.readouterr().out
    assert "CERTIFIED: P(accuracy on new data >= 0.8) >= 0.9" in text and "val estimate" not in text
    doc = json.loads((out / "thresholds.json").read_text())["guarantee"]
    assert doc["delta"] == 0.1 and doc["target_acc"] == 0.8
    assert doc["split"] == {"search": 600, "calibration": 1400, "seed": 0}
    assert doc["p_value"] <= 0.1 and doc["accuracy_lower_bound"] >= 0.8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chosen"]["guarantee"] == doc and summary["settings"]["delta"] == 0.1
    assert main(["search", "--cache", str(path), "--target-acc", "0.8", "--out", str(tmp_path / "plain"), *FAST_CLI]) == 0
    assert "NOTE: the pick is a val estimate" in capsys.readouterr().out
    assert "guarantee" not in json.loads((tmp_path / "plain" / "thresholds.json").read_text())


def test_cli_cannot_certify_exits_3_in_one_line(cache, tmp_path, capsys):
    path = tmp_path / "c.npz"
    write_cache(path, cache)
    out = tmp_path / "never"
    assert main(["search", "--cache", str(path), "--target-acc", "0.87", "--delta", "0.1", "--out", str(out), *FAST_CLI]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not out.exists()
    assert err.startswith("tradeoff search: cannot certify at delta 0.1 on 1400 calibration samples (accuracy >= 0.87); "
                          "the highest accuracy certifiable here is 0.")


def test_val_too_small_to_split_is_the_cannot_certify_line():
    tiny = synthetic_cache(40, 10, (0.6, 0.75, 0.85), seed=3, val_fraction=0.025)  # one val row
    with pytest.raises(g.CannotCertify, match=r"^cannot certify: val has 1 rows, too few to split .* even a perfect "
                                              r"candidate needs >= 22 calibration rows \(~32 val rows\)"):
        run_search(tiny, pick=Pick("target_acc", 0.9), delta=0.1, **FAST)


@pytest.mark.parametrize("args, match", [
    (["--delta", "0.1"], "--delta certifies an accuracy, so it needs --target-acc or --max-drop; no pick was given"),
    (["--delta", "0.1", "--budget-flops", "1e9"], "--budget-flops is a cost constraint, not a risk"),
    (["--delta", "1.5", "--target-acc", "0.8"], r"--delta must be in \(0, 1\)"),
    (["--delta", "0", "--max-drop", "1"], r"--delta must be in \(0, 1\)"),
])
def test_cli_refuses_bad_delta_in_one_line(cache, tmp_path, capsys, args, match):
    out = tmp_path / "o"
    assert main(["search", "--cache", str(tmp_path / "missing.npz"), "--out", str(out), *args, *FAST_CLI]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re

    assert re.search(match, err) and not out.exists()


def test_max_drop_with_delta_runs_the_paired_test(cache):
    result = run_search(cache, pick=Pick("max_drop", 3.0), delta=0.1, **FAST)
    cert = result.guarantee
    assert cert.kind == "max_drop" and cert.drop_ucb[cert.chosen] <= 3.0
    assert cert.p_values[cert.chosen] <= 0.1


def test_benchmark_runs_tiny_and_reports_the_promised_rows():
    from benchmarks import bench_guarantee

    rows = bench_guarantee.run(quick=True, draws=1)
    metrics = [r["metric"] for r in rows]
    synthetic = [m for m in metrics if "Fashion-MNIST" not in m]
    assert len(synthetic) == 9 and synthetic[-1] == "violation rate, pooled over targets, delta=0.1"
    assert sum("no delta (val estimate)" in m for m in synthetic) == 4
    # the Fashion-MNIST populations (held-out and resampled) repeat the same 9 rows, or say why they are skipped
    for population in ("Fashion-MNIST", "Fashion-MNIST resampled"):
        own = [m for m in metrics if m.endswith(", " + population)]
        assert len(own) in (0, 9) and (not own or own[-1].startswith("violation rate, pooled over targets"))
    assert all(r["passed"] is None for r in rows)  # quick runs judge nothing
    for r in rows:
        if r["metric"].startswith("violation"):
            assert 0.0 <= r["value"] <= 1.0
