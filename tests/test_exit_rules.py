"""Issue 11: fallbacks (deepest / ensemble / most-confident), switched-off exits, patience,
per-class thresholds, MSDNet's published rule, `tradeoff evaluate`, and `tradeoff run`
making the cache rule's decisions for every rule."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradeoff.commands import main
from tradeoff.cache.format import write_cache
from tradeoff.policy.bitset import make_scorer
from tradeoff.policy.rule import OFF_THRESHOLD, ExitRule
from tradeoff.policy.rule_file import read_rule, write_rule
from tradeoff.policy.scoring import exit_table, rule_decisions, rule_table, score_rule, score_thresholds_reference
from tradeoff.search.baselines import msdnet_thresholds
from tradeoff.search.run import run_search
from tradeoff.search.settings import Pick

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saturated_case import saturated_cache  # noqa: E402


# --------------------------------------------------------------------------- a plain per-sample loop
def _softmax(row, T):
    z = [v / T for v in row]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def _loop(logits, labels, flops, rule: ExitRule):
    """Accuracy, mean cost, per-exit counts and fallback count, sample by sample in Python."""
    K, N, C = logits.shape
    temps = [1.0] * K if rule.temperatures is None else list(rule.temperatures)
    right = cost = fallback = 0
    counts = [0] * K
    for n in range(N):
        confs, preds, run, running = [], [], 0, [0.0] * C
        for k in range(K):
            p = _softmax([float(v) for v in logits[k, n]], temps[k])
            if rule.ensemble:
                running = [a + b for a, b in zip(running, p)]
                p = [v / (k + 1) for v in running]
            pred = max(range(C), key=lambda c: (p[c], -c))  # first maximum
            run = run + 1 if k and pred == preds[-1] else 1
            if rule.confidence == "patience":
                conf = run / K
            elif rule.confidence == "margin":
                top = sorted(p, reverse=True)
                conf = min(max(top[0] - top[1], 0.0), 1.0)
            else:
                conf = p[pred]
            confs.append(conf)
            preds.append(pred)
        answer = exit_ = None
        for k in range(len(rule.thresholds)):
            t = rule.thresholds[k]
            t = t[preds[k]] if isinstance(t, tuple) else t
            if t is not None and confs[k] >= t:
                answer, exit_ = preds[k], k
                break
        if answer is None:
            exit_ = K - 1
            fallback += 1
            if rule.fallback == "deepest":
                answer = preds[-1]
            elif rule.fallback == "most-confident":
                best = max(range(K), key=lambda k: (confs[k], -k))  # shallowest on ties
                answer = preds[best]
            else:
                z = [sum(float(logits[k, n, c]) / temps[k] for k in range(K)) / K for c in range(C)]
                answer = max(range(C), key=lambda c: (z[c], -c))
        counts[exit_] += 1
        right += answer == labels[n]
        cost += flops[exit_]
    return right / N, cost / N, counts, fallback


@st.composite
def _case(draw):
    K = draw(st.integers(2, 4))
    C = draw(st.integers(2, 4))
    N = draw(st.integers(1, 40))
    # Small integer logits: many exact ties in confidence and in argmax.
    logits = np.array(draw(st.lists(st.integers(-2, 2), min_size=K * N * C, max_size=K * N * C)),
                      dtype=np.float32).reshape(K, N, C)
    labels = np.array(draw(st.lists(st.integers(0, C - 1), min_size=N, max_size=N)), dtype=np.int64)
    fallback = draw(st.sampled_from(["deepest", "ensemble", "most-confident"]))
    confidence = draw(st.sampled_from(["maxprob", "margin", "patience"]))
    ensemble = draw(st.booleans())
    M = K - 1 if fallback == "deepest" else K
    per_class = draw(st.booleans())
    # Thresholds drawn from the values the confidences take (ties at the threshold), plus off.
    levels = st.sampled_from([None, 0.0, 0.25, 0.5, 1 / 3, 2 / 3, 1.0, 0.2, 0.6])
    if per_class:
        thresholds = [tuple(draw(levels) for _ in range(C)) for _ in range(M)]
    else:
        thresholds = [draw(levels) for _ in range(M)]
    rule = ExitRule(thresholds, confidence=confidence, ensemble=ensemble, fallback=fallback)
    return logits, labels, rule


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(_case())
def test_every_rule_equals_a_plain_per_sample_loop(case):
    logits, labels, rule = case
    K = logits.shape[0]
    flops = np.arange(1.0, K + 1) * 1e6
    acc, cost, counts, fallback = _loop(logits, labels, flops, rule)
    table = rule_table(logits, labels, flops, rule)
    for scores in (score_rule(table, rule), score_thresholds_reference(table, rule.threshold_array()[None]),
                   make_scorer(table)(rule.threshold_array()[None])):
        assert scores.accuracy[0] == pytest.approx(acc, abs=1e-12)
        assert scores.flops[0] == pytest.approx(cost, rel=1e-12)
        assert (scores.exit_fractions[0] * labels.size).round().astype(int).tolist() == counts
        assert round(scores.fallback_fractions[0] * labels.size) == fallback
    exits, answers = rule_decisions(logits, rule)
    assert np.bincount(exits, minlength=K).tolist() == counts
    assert (answers == labels).mean() == pytest.approx(acc, abs=1e-12)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(_case(), st.integers(0, 2**31))
def test_bitset_scorer_equals_reference_on_many_rows(case, seed):
    logits, labels, rule = case
    table = exit_table(logits, labels, np.arange(1.0, logits.shape[0] + 1), confidence=rule.confidence,
                       ensemble=rule.ensemble, fallback=rule.fallback)
    rng = np.random.default_rng(seed)
    t = rng.choice([0.0, 0.25, 1 / 3, 0.5, 2 / 3, 1.0, OFF_THRESHOLD], size=(17, table.num_thresholds))
    a, b = make_scorer(table)(t), score_thresholds_reference(table, t)
    for x, y in ((a.accuracy, b.accuracy), (a.flops, b.flops), (a.exit_fractions, b.exit_fractions),
                 (a.fallback_fractions, b.fallback_fractions)):
        np.testing.assert_array_equal(x, y)


def test_patience_maps_to_pabee_and_refuses_calibration():
    # predictions 3, 3, 3, 1 over K = 4 exits -> runs 1, 2, 3, 1
    logits = np.zeros((4, 1, 5), dtype=np.float32)
    for k, c in enumerate((3, 3, 3, 1)):
        logits[k, 0, c] = 5.0
    from tradeoff.policy.confidence import exit_outputs

    conf, _ = exit_outputs(logits, confidence="patience")
    assert conf[:, 0].tolist() == [0.25, 0.5, 0.75, 0.25]
    with pytest.raises(ValueError, match="'patience' takes no calibration"):
        ExitRule([0.5, 0.5, 0.5], confidence="patience", temperatures=[1, 1, 1, 1])


# --------------------------------------------------------------------------- MSDNet
def _msdnet_transcription(conf, p):
    """The published rule written out sample by sample (floor; ties; unreached = +inf)."""
    K, N = conf.shape
    probs = [math.exp(math.log(p) * (k + 1)) for k in range(K)]
    total = sum(probs)
    probs = [q / total for q in probs]
    T = [math.inf] * K
    filtered = [False] * N
    for k in range(K - 1):
        out_n = math.floor(N * probs[k])
        order = sorted(range(N), key=lambda n: -conf[k, n])
        count = 0
        for n in order:
            if not filtered[n]:
                count += 1
                if count == out_n:
                    T[k] = conf[k, n]
                    break
        for n in range(N):
            if conf[k, n] >= T[k]:
                filtered[n] = True
    T[K - 1] = -math.inf
    return T


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(2, 5), st.integers(1, 60), st.floats(0.05, 3.0), st.integers(0, 2**31))
def test_msdnet_thresholds_equal_the_published_rule(K, N, p, seed):
    rng = np.random.default_rng(seed)
    conf = rng.choice([0.1, 0.5, 0.7, 0.9, 1.0], size=(K, N))  # ties on purpose
    from tradeoff.policy.table import ExitTable

    table = ExitTable(conf, np.ones((K, N), bool), np.arange(1.0, K + 1))
    got = msdnet_thresholds(table, p)
    want = _msdnet_transcription(conf, p)[: K - 1]
    assert [math.inf if g >= OFF_THRESHOLD else g for g in got] == want


# --------------------------------------------------------------------------- the saturated case
def test_saturated_shallow_exit_is_switched_off_and_target_met():
    cache = saturated_cache()
    result = run_search(cache, pop=40, gens=30, seed=0)
    assert result.chosen.val.accuracy == 1.0
    assert result.rule.thresholds[0] is None  # exit 1 off
    assert result.chosen.val.flops < 3e6
    met = run_search(cache, pick=Pick("target_acc", 0.99), pop=40, gens=30, seed=0)
    assert met.chosen.val.accuracy >= 0.99 and met.rule.thresholds[0] is None


def test_per_class_front_beside_the_per_exit_one_with_a_paired_comparison():
    from tradeoff.cache.synthetic import synthetic_cache

    cache = synthetic_cache(600, 5, (0.6, 0.8, 0.9), seed=4)
    result = run_search(cache, per_class=True, pop=24, gens=6, seed=1)
    methods = [f.method for f in result.fronts]
    assert "nsga" in methods and "nsga-per-class" in methods
    assert result.chosen.method == "nsga-per-class"
    assert result.rule.per_class and result.rule.num_classes == 5
    comp = result.per_class_comparison
    lo, hi = comp["test_accuracy_gain_ci95"]
    assert lo <= comp["test_accuracy_gain"] <= hi
    assert set(comp["test_hypervolume"]) == {"per_exit", "per_class"}


# --------------------------------------------------------------------------- thresholds.json
def test_file_round_trip_with_off_per_class_and_fallback(tmp_path):
    rule = ExitRule([(0.5, None, 0.9), None, (0.1, 0.2, 0.3)], fallback="ensemble", confidence="margin")
    path = write_rule(tmp_path / "t.json", rule)
    doc = json.loads(path.read_text())
    assert doc["thresholds"] == [[0.5, None, 0.9], [None, None, None], [0.1, 0.2, 0.3]] and doc["fallback"] == "ensemble"
    assert read_rule(path, num_exits=3).rule == rule
    old = {"thresholds": [0.5, 0.4], "confidence": "maxprob", "ensemble": False, "calibration": None}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_rule(tmp_path / "old.json").rule.fallback == "deepest"
    assert "fallback" not in ExitRule([0.5]).document()  # default files keep their bytes


# --------------------------------------------------------------------------- bad input: one line each
@pytest.fixture(scope="module")
def sat_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sat") / "sat.npz"
    write_cache(path, saturated_cache())
    return path


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--thresholds", "0.5"], r"fallback 'deepest' needs K-1 = 2 thresholds .* got 1"),
    (["evaluate", "--thresholds", "0.5,0.5", "--fallback", "ensemble"], r"fallback 'ensemble' needs K = 3 thresholds .* got 2"),
    (["evaluate", "--thresholds", "0.5,0.5,off"], r"off on the last exit under fallback 'deepest'"),
    (["evaluate", "--thresholds", "0.5,1.5"], r"got 1.5 - .*switch it off \(`off` on the command line"),
    (["evaluate", "--thresholds", "0.5,maybe"], r"numbers in \[0, 1\] or off, separated by commas"),
    (["search", "--confidence", "patience", "--calibrate"], r"patience cannot be combined with --calibrate"),
])
def test_bad_input_gives_one_line(sat_path, tmp_path, capsys, argv, message):
    out = ["--out", str(tmp_path / "run")] if argv[0] == "search" else []
    assert main([argv[0], "--cache", str(sat_path), *argv[1:], *out]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_per_class_table_of_the_wrong_shape_is_refused(sat_path, tmp_path, capsys):
    path = write_rule(tmp_path / "t.json", ExitRule([(0.5, 0.5, 0.5), (0.5, 0.5, 0.5)]))  # 3 classes, cache has 10
    assert main(["evaluate", "--cache", str(sat_path), "--thresholds", str(path)]) == 1
    assert "per-class thresholds must be a (2, C) = (2, 10) table for 10 classes; got (2, 3)" in capsys.readouterr().err


# --------------------------------------------------------------------------- tradeoff evaluate
def test_evaluate_rows_and_scan_formula(sat_path, tmp_path):
    out = tmp_path / "e.json"
    assert main(["evaluate", "--cache", str(sat_path), "--thresholds", "off,0.9,off", "--fallback", "ensemble",
                 "--speedup-convention", "scan", "--scan-ratios", "0.3,0.6,1.0,1.1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = {r["split"]: r for r in doc["rows"]}
    assert set(rows) == {"val", "test", "all"} and rows["all"]["samples"] == 400
    cache = saturated_cache()
    rule = ExitRule([None, 0.9, None], fallback="ensemble")
    acc, cost, counts, fallback = _loop(cache.logits, cache.labels, cache.flops, rule)
    r = rows["all"]
    assert r["accuracy"] == pytest.approx(acc) and r["flops"] == pytest.approx(cost)
    assert r["fallback_fraction"] == pytest.approx(fallback / 400)
    f = r["exit_fractions"]
    scan = 1.0 / (f[0] * 0.3 + f[1] * 0.6 + (f[2] - r["fallback_fraction"]) * 1.0 + r["fallback_fraction"] * 1.1)
    assert r["speedup_scan_formula"] == pytest.approx(scan)
