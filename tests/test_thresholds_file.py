"""`read_rule`: the one reader of thresholds.json, and every way a file can be wrong."""

import json

import numpy as np
import pytest

from tradeoff.policy.rule_file import ThresholdsFile, read_rule

GOOD = {
    "thresholds": [0.9, 0.75],
    "confidence": "maxprob",
    "ensemble": False,
    "calibration": None,
    "cache": "results/cache/demo.npz",
    "cache_sha256": "a" * 64,
    "num_exits": 3,
    "arch": "scan_small",
    "checkpoint_sha256": "b" * 64,
    "pick": {"kind": "target_acc", "value": 0.95},
    "val": {"accuracy": 0.96, "flops": 1.0e6, "speedup": 2.5, "exit_fractions": [0.6, 0.3, 0.1]},
    "test": {"accuracy": 0.95, "flops": 1.1e6, "speedup": 2.3, "exit_fractions": [0.5, 0.4, 0.1],
             "accuracy_ci95": [0.93, 0.97]},
}


def _write(tmp_path, doc, name="thresholds.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_good_file_round_trip(tmp_path):
    path = _write(tmp_path, GOOD)
    tf = read_rule(path, cache_sha256="a" * 64, num_exits=3, confidence="maxprob", checkpoint_sha256="b" * 64)
    assert isinstance(tf, ThresholdsFile)
    np.testing.assert_array_equal(tf.thresholds, [0.9, 0.75])
    assert tf.thresholds.dtype == np.float64
    assert tf.num_exits == 3 and tf.confidence == "maxprob" and tf.ensemble is False and tf.temperatures is None
    assert tf.cache_sha256 == "a" * 64 and tf.checkpoint_sha256 == "b" * 64 and tf.arch == "scan_small"
    assert tf.test["accuracy_ci95"] == [0.93, 0.97] and tf.val["speedup"] == 2.5 and tf.path == path


def test_minimal_file_and_calibration(tmp_path):
    doc = {"thresholds": [0, 1, 0.5], "confidence": "entropy", "ensemble": True,
           "calibration": {"temperatures": [1.5, 1.0, 0.8, 1.2]}}
    tf = read_rule(_write(tmp_path, doc), num_exits=4)
    assert tf.num_exits == 4 and tf.ensemble is True and tf.cache_sha256 is None and tf.val == {}
    np.testing.assert_array_equal(tf.temperatures, [1.5, 1.0, 0.8, 1.2])
    # nothing recorded to check against: the checks that need it pass
    read_rule(_write(tmp_path, doc), cache_sha256="c" * 64, checkpoint_sha256="d" * 64)


def test_search_writer_output_is_readable(tmp_path):
    """The file `tradeoff.report.documents` writes is what this module reads."""
    from tradeoff.search.run import run_search
    from tradeoff.report.documents import thresholds_document
    from tradeoff.cache.synthetic import synthetic_cache

    cache = synthetic_cache(num_samples=400, num_classes=10, exit_accuracies=(0.6, 0.8, 0.9), seed=1)
    result = run_search(cache, pop=8, gens=2, seed=0, bootstrap=100)
    path = _write(tmp_path, thresholds_document(result))
    tf = read_rule(path, num_exits=3, confidence="maxprob")
    np.testing.assert_allclose(tf.thresholds, result.chosen.thresholds)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"is not valid JSON \(Expecting property name enclosed in double quotes at line 1 column 2\)"),
        ('{"thresholds": [0.5, 0.5], "confidence": "maxprob"', r"is not valid JSON .*may be truncated"),
        ("[0.5, 0.5]", r"must hold a JSON object; got a JSON list"),
        ({"thresholds": [0.5]}, r"lacks the key\(s\) confidence, ensemble, calibration"),
        ({**GOOD, "thresholds": []}, r"thresholds must be a non-empty list of numbers"),
        ({**GOOD, "thresholds": 0.5}, r"thresholds must be a non-empty list of numbers"),
        ({**GOOD, "thresholds": [0.5, "0.7"]}, r"thresholds must be numbers; got '0.7'"),
        ({**GOOD, "thresholds": [0.5, True]}, r"thresholds must be numbers; got True"),
        ({**GOOD, "thresholds": [0.5, 1.2]}, r"thresholds must lie in \[0, 1\] \(they are confidences\); got 1.2"),
        ({**GOOD, "thresholds": [-0.1, 0.5]}, r"thresholds must lie in \[0, 1\].*got -0.1"),
        ('{"thresholds": [NaN, 0.5], "confidence": "maxprob", "ensemble": false, "calibration": null}',
         r"thresholds must lie in \[0, 1\].*got nan"),
        ({**GOOD, "confidence": "top1"}, r"confidence must be one of maxprob, margin, entropy, patience; got 'top1'"),
        ({**GOOD, "ensemble": "no"}, r"ensemble must be true or false; got 'no'"),
        ({**GOOD, "num_exits": 4}, r"inconsistent: num_exits = 4 needs 3 thresholds but it holds 2"),
        ({**GOOD, "num_exits": 1.5}, r"num_exits must be an integer >= 2; got 1.5"),
        ({**GOOD, "calibration": {"temperatures": [1.0, 1.0]}}, r"calibration.temperatures must be 3 positive numbers"),
        ({**GOOD, "calibration": {"temperatures": [1.0, 0.0, 1.0]}}, r"calibration.temperatures must be 3 positive"),
        ({**GOOD, "calibration": [1.0]}, r"calibration must be null or \{\"temperatures\": \[...\]\}"),
        ({**GOOD, "cache_sha256": 5}, r"cache_sha256 must be a string or null; got 5"),
        ({**GOOD, "test": [0.9]}, r"test must be a JSON object of figures"),
    ],
)
def test_malformed_files(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(ValueError, match=message) as info:
        read_rule(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_mismatches_say_which(tmp_path):
    path = _write(tmp_path, GOOD)
    with pytest.raises(ValueError, match=r"holds 2 thresholds \(a 3-exit model\) but the model has 4 exits, so it needs 3"):
        read_rule(path, num_exits=4)
    with pytest.raises(ValueError, match=r"searched with confidence 'maxprob', not 'margin'"):
        read_rule(path, confidence="margin")
    with pytest.raises(ValueError, match=r"another cache: its cache_sha256 is aaaaaaaaaaaa\.\.\. but the given cache's "
                                         r"is cccccccccccc\.\.\.; pass the cache it came from \(results/cache/demo.npz\)"):
        read_rule(path, cache_sha256="c" * 64)
    with pytest.raises(ValueError, match=r"another model: its checkpoint_sha256 is bbbbbbbbbbbb\.\.\. but the "
                                         r"checkpoint's is dddddddddddd\.\.\. \(arch 'scan_small'\)"):
        read_rule(path, checkpoint_sha256="d" * 64)


def test_missing_file_directory_and_binary(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"thresholds file .*nope.json does not exist; run `tradeoff search` first"):
        read_rule(tmp_path / "nope.json")
    with pytest.raises(ValueError, match=r"is a directory; pass the thresholds.json inside it"):
        read_rule(tmp_path)
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"\x80\x02\xff\xfe")
    with pytest.raises(ValueError, match=r"is not a text JSON file"):
        read_rule(binary)
