"""Byte-identity of `tradeoff search` against outputs written before the restructuring (issue 9).

tests/data/golden/ holds a fixed synthetic cache and the pareto.csv / thresholds.json that the
code of commit f9f4cc5 wrote from it for three searches (a target accuracy; margin confidence
with ensemble and calibration under a max-drop pick; entropy confidence, restarts and a budget
pick on the random-search front). A refactoring must reproduce them byte for byte.
"""

import importlib.util
import shutil
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"


def _maker():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    maker = _maker()
    work = tmp_path_factory.mktemp("golden")
    shutil.copy(GOLDEN / maker.CACHE, work / maker.CACHE)
    return maker, maker.run_all(work)


@pytest.mark.parametrize("name", ["acc", "drop", "budget"])
@pytest.mark.parametrize("file", ["pareto.csv", "thresholds.json"])
def test_search_outputs_are_byte_identical_to_the_golden_ones(regenerated, name, file):
    maker, runs = regenerated
    assert set(runs) == set(maker.RUNS)
    expected = (GOLDEN / name / file).read_bytes()
    assert runs[name][file] == expected, f"{name}/{file} differs from the golden output"


def test_golden_cache_is_still_what_the_synthetic_generator_makes():
    """The committed input is the generator's output (apart from its creation time)."""
    import numpy as np

    from tradeoff.cache.format import load_cache
    from tradeoff.cache.synthetic import synthetic_cache

    stored = load_cache(GOLDEN / "cache.npz")
    fresh = synthetic_cache(num_samples=1200, num_classes=10, seed=3)
    assert np.array_equal(stored.logits, fresh.logits) and np.array_equal(stored.labels, fresh.labels)
    assert np.array_equal(stored.split, fresh.split) and np.array_equal(stored.flops, fresh.flops)
