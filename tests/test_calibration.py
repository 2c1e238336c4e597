"""Per-exit temperature scaling: recovers known temperatures, lowers NLL, deterministic, clear errors."""

import math

import numpy as np
import pytest

from tradeoff.policy.calibration import T_BOUNDS, Calibration, calibrate, fit_temperatures, nll
from tradeoff.policy.scoring import exit_table


def calibrated_logits(n=20_000, c=10, seed=0):
    """Logits z and labels drawn from softmax(z): temperature 1 is the truth."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 2.0
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, labels


def test_recovers_overconfidence_and_lowers_nll():
    z, y = calibrated_logits()
    logits = np.stack([3.0 * z, z, 0.5 * z]).astype(np.float32)  # over-, well-, under-confident
    cal = calibrate(logits, y)
    assert isinstance(cal, Calibration)
    np.testing.assert_allclose(cal.temperatures, [3.0, 1.0, 0.5], rtol=0.04)
    assert np.all(cal.nll_after <= cal.nll_before + 1e-12)
    assert cal.nll_after[0] < cal.nll_before[0] - 0.5  # x3 is badly overconfident
    # the three exits are the same model up to scale: calibrated, they agree
    np.testing.assert_allclose(cal.nll_after, cal.nll_after[1], rtol=1e-6)
    assert cal.to_json()["temperatures"] == [float(t) for t in cal.temperatures]


def test_optimum_matches_a_fine_grid_and_is_deterministic():
    z, y = calibrated_logits(n=3000, c=5, seed=1)
    logits = (2.2 * z)[None].astype(np.float32)
    t = fit_temperatures(logits, y)
    grid = np.linspace(1.9, 2.6, 701)
    best = grid[np.argmin([nll(logits[0], y, g) for g in grid])]
    assert abs(t[0] - best) <= 1e-3 + 1e-12
    assert nll(logits[0], y, t[0]) <= nll(logits[0], y, best) + 1e-12
    np.testing.assert_array_equal(fit_temperatures(logits, y), t)


def test_nll_by_hand():
    logits = np.array([[0.0, 0.0], [2.0, 0.0]])
    labels = np.array([0, 1])
    expected = (math.log(2) + (math.log(math.exp(2) + 1) - 0.0)) / 2
    assert nll(logits, labels) == pytest.approx(expected, rel=1e-12)
    at_two = (math.log(2) + math.log(math.exp(1) + 1)) / 2
    assert nll(logits, labels, 2.0) == pytest.approx(at_two, rel=1e-12)


def test_fit_stops_at_the_bounds():
    z, y = calibrated_logits(n=2000, c=4, seed=2)
    t = fit_temperatures(np.stack([100.0 * z, 1e-3 * z]).astype(np.float32), y)
    assert t[0] == T_BOUNDS[1] and t[1] == T_BOUNDS[0]
    t = fit_temperatures((100.0 * z)[None], y, bounds=(0.5, 200.0))
    assert 80 < t[0] < 120


def test_flat_logits_keep_temperature_one():
    logits = np.zeros((1, 30, 4), np.float32)  # NLL = log 4 whatever T is
    assert fit_temperatures(logits, np.arange(30) % 4).tolist() == [1.0]


def test_temperatures_keep_predictions_and_change_confidence():
    z, y = calibrated_logits(n=500, c=6, seed=3)
    logits = np.stack([3.0 * z, z]).astype(np.float32)
    temps = fit_temperatures(logits, y)
    plain = exit_table(logits, y, np.array([1.0, 2.0]))
    warm = exit_table(logits, y, np.array([1.0, 2.0]), temperatures=temps)
    np.testing.assert_array_equal(plain.correct, warm.correct)
    assert warm.confidence[0].mean() < plain.confidence[0].mean() - 0.05  # x3 exit no longer overconfident


def test_errors():
    z, y = calibrated_logits(n=50, c=3, seed=4)
    with pytest.raises(ValueError, match=r"logits must have shape \(K, N, C\); got \(50, 3\) - for one exit use logits\[None\]"):
        fit_temperatures(z, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); got range \[0, 7\]"):
        fit_temperatures(z[None], np.where(np.arange(50) == 0, 7, y))
    with pytest.raises(ValueError, match=r"labels must be \(50,\) integers"):
        fit_temperatures(z[None], y[:10])
    bad = z.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="logits of exit 2 hold NaN or inf"):
        fit_temperatures(np.stack([z, bad]), y)
    with pytest.raises(ValueError, match=r"bounds must be \(T_min, T_max\) with 0 < T_min < T_max < inf; got \(2.0, 1.0\)"):
        fit_temperatures(z[None], y, bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="temperature must be positive; got 0"):
        nll(z, y, 0)
