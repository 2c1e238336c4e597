import json
import os

import numpy as np
import pytest

from tradeoff.cache.format import ExitCache, load_cache, validate_cache, write_cache
from tradeoff.cache.synthetic import synthetic_cache


def test_round_trip_is_plain_numpy(tmp_path):
    cache = synthetic_cache(200, 10, (0.6, 0.8, 0.9), seed=1)
    path = write_cache(tmp_path / "c.npz", cache)
    with np.load(path, allow_pickle=False) as raw:
        assert raw["logits"].shape == (3, 200, 10)
        assert raw["labels"].dtype == np.int64
        assert set(raw["split"].tolist()) == {"val", "test"}
        assert json.loads(str(raw["meta"][()]))["schema"] == 1
    back = load_cache(path)
    np.testing.assert_array_equal(back.logits, cache.logits)
    np.testing.assert_array_equal(back.labels, cache.labels)
    assert back.meta == cache.meta
    assert [f.name for f in tmp_path.iterdir()] == ["c.npz"]  # no temp file left


def test_synthetic_accuracies_are_close_to_requested():
    cache = synthetic_cache(4000, 20, (0.6, 0.7, 0.8), seed=0)
    acc = (cache.logits.argmax(-1) == cache.labels).mean(axis=1)
    np.testing.assert_allclose(acc, [0.6, 0.7, 0.8], atol=0.03)


def _cache(**over):
    base = dict(
        logits=np.zeros((2, 4, 3), np.float32),
        labels=np.array([0, 1, 2, 0]),
        split=np.array(["val", "val", "test", "test"]),
        flops=np.array([1.0, 2.0]),
        meta={},
    )
    base.update(over)
    return ExitCache(**base)


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(logits=np.zeros((4, 3), np.float32)), r"shape \(K, N, C\).*one exit"),
        (dict(labels=np.array([0, 1, 3, 0])), r"labels must lie in \[0, 3\)"),
        (dict(flops=np.array([2.0, 1.0])), "must not decrease with depth"),
        (dict(split=np.array(["val", "x", "test", "test"])), "unknown names"),
        (dict(logits=np.full((2, 4, 3), np.nan, np.float32)), "exit 1 has 12 NaN/inf"),
        (dict(flops=np.array([1.0])), r"one cost per exit, shape \(2,\)"),
        (dict(meta={"schema": 7}), "schema 7 is not supported"),
    ],
)
def test_invalid_caches_are_named(over, match):
    with pytest.raises(ValueError, match=match):
        validate_cache(_cache(**over))


def test_truncated_file_is_rejected_and_old_file_kept(tmp_path):
    path = write_cache(tmp_path / "c.npz", synthetic_cache(100, 5, (0.5, 0.9)))
    data = path.read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable tradeoff cache"):
        load_cache(bad)
    with pytest.raises(FileNotFoundError, match="tradeoff cache --ckpt"):
        load_cache(tmp_path / "missing.npz")
    with pytest.raises(ValueError):
        write_cache(path, _cache(flops=np.array([2.0, 1.0])))
    assert path.read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["bad.npz", "c.npz"]
