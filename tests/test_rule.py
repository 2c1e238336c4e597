"""ExitRule: validation, its thresholds.json (write_rule / read_rule), and the parts that take it."""

import json

import numpy as np
import pytest

from tradeoff.cache.synthetic import synthetic_cache
from tradeoff.policy.rule import ExitRule
from tradeoff.policy.rule_file import read_rule, write_rule
from tradeoff.policy.scoring import score_rule
from tradeoff.policy.table import exit_table, rule_table
from tradeoff.search.run import run_search
from tradeoff.search.settings import Pick


def test_rule_is_validated_once_at_construction():
    rule = ExitRule(np.array([0.5, 0.25]), confidence="margin", ensemble=True, temperatures=[1.0, 2.0, 1.5])
    assert rule.thresholds == (0.5, 0.25) and rule.num_exits == 3
    assert rule.temperatures == (1.0, 2.0, 1.5) and rule.fallback == "deepest"
    assert ExitRule([None, 0.3]).threshold_array().tolist() == [2.0, 0.3]
    with pytest.raises(ValueError, match=r"thresholds must lie in \[0, 1\]"):
        ExitRule([0.5, 1.2])
    with pytest.raises(ValueError, match=r"thresholds must lie in \[0, 1\]"):
        ExitRule([float("nan")])
    with pytest.raises(TypeError, match="thresholds must be numbers in"):
        ExitRule([True])
    with pytest.raises(ValueError, match="must hold at least one value"):
        ExitRule([])
    with pytest.raises(ValueError, match="confidence must be one of maxprob, margin, entropy, patience; got 'top1'"):
        ExitRule([0.5], confidence="top1")
    with pytest.raises(ValueError, match="temperatures must be 2 positive numbers"):
        ExitRule([0.5], temperatures=[1.0, -1.0])
    with pytest.raises(ValueError, match="fallback must be one of deepest, ensemble, most-confident; got 'scan'"):
        ExitRule([0.5], fallback="scan")
    with pytest.raises(Exception):
        rule.confidence = "maxprob"  # frozen


def test_write_then_read_gives_the_same_rule_and_checks_format_and_version(tmp_path):
    rule = ExitRule([0.9, None, 0.7], confidence="entropy", temperatures=[1.0, 1.1, 1.2, 1.3])
    path = write_rule(tmp_path / "thresholds.json", rule, cache_sha256="ab" * 32)
    doc = json.loads(path.read_text())
    assert doc["format"] == "tradeoff-thresholds" and doc["version"] == 1
    assert doc["thresholds"] == [0.9, None, 0.7]
    with pytest.raises(ValueError, match="must not redefine the rule's keys; got confidence"):
        write_rule(tmp_path / "x.json", rule, confidence="maxprob")
    for key, value, match in (("format", "other", "has format 'other'"), ("version", 2, "has version 2")):
        bad = dict(doc, **{key: value})
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            read_rule(tmp_path / "bad.json")


def test_search_result_carries_its_rule_and_the_file_holds_the_same(tmp_path):
    from tradeoff.report.documents import thresholds_document

    cache = synthetic_cache(600, 6, (0.6, 0.8, 0.9), seed=2)
    result = run_search(cache, pick=Pick("target_acc", 0.8), confidence="margin", calibrate=True, pop=12, gens=4)
    rule = result.rule
    assert rule.thresholds == result.chosen.thresholds and rule.confidence == "margin"
    assert rule.temperatures == result.temperatures
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(thresholds_document(result)))
    assert read_rule(path).rule == rule
    # score_rule on the val table reproduces the chosen point's val figures.
    val = cache.select("val")
    scores = score_rule(rule_table(val.logits, val.labels, val.flops, rule), rule)
    assert scores.accuracy[0] == result.chosen.val.accuracy and scores.flops[0] == result.chosen.val.flops


def test_a_switched_off_exit_is_never_taken():
    cache = synthetic_cache(400, 5, (0.6, 0.8, 0.9), seed=1).select("val")
    table = exit_table(cache.logits, cache.labels, cache.flops)
    scores = score_rule(table, ExitRule([None, 0.0]))
    assert scores.exit_fractions[0].tolist() == [0.0, 1.0, 0.0]
    assert scores.accuracy[0] == float(table.correct[1].mean())
    with pytest.raises(ValueError, match="rule has 2 exits but the table has 3"):
        score_rule(table, ExitRule([0.5]))


def test_the_val_scorer_is_built_once_per_search(monkeypatch):
    import tradeoff.search.scoring as adapter

    built = []
    original = adapter.make_scorer

    def counting(table, **kw):
        built.append(table.num_samples)
        return original(table, **kw)

    monkeypatch.setattr(adapter, "make_scorer", counting)
    cache = synthetic_cache(500, 5, (0.6, 0.8, 0.9), seed=4)
    run_search(cache, pop=8, gens=2)
    assert len(built) == 2, built  # val once (every method and the fronts), test once
