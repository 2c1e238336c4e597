"""Checkpoints people save: a wrapper's key prefix, NumPy metrics, mismatch hints."""

import numpy as np
import pytest
import torch

from tradeoff.checkpoint import load_checkpoint
from tradeoff.models import create_model
from tradeoff.state_keys import mismatch_cause, strip_common_prefix


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return create_model("mainnet_small", num_classes=10).state_dict()


def test_lightning_style_model_prefix_is_stripped(tmp_path, state):
    """Before: refused with 'check --arch and --num-classes' though every key fits without 'model.'."""
    path = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    loaded = load_checkpoint(path, arch="mainnet_small")
    assert loaded.stripped_prefix == "model."
    assert loaded.extra["epoch"] == 3
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key])


def test_prefix_kept_when_it_is_not_the_whole_cause(tmp_path, state):
    partial = {f"net.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    path = tmp_path / "partial.pt"
    torch.save(partial, path)
    with pytest.raises(ValueError, match=r"every key of the file starts with 'net\.' and the model's do not "
                                         r"\(then 2 key\(s\) still differ\)"):
        load_checkpoint(path, arch="mainnet_small", num_classes=10)


def test_numpy_scalar_metric_loads_without_trust(tmp_path, state):
    """Before: a `best_acc` stored as np.float64 needed --trust-checkpoint."""
    path = tmp_path / "np.pt"
    torch.save({"state_dict": state, "best_acc": np.float64(0.912), "dtype": np.dtype("float32"),
                "epoch": np.int64(7)}, path)
    loaded = load_checkpoint(path, arch="mainnet_small")
    assert loaded.extra["best_acc"] == pytest.approx(0.912) and type(loaded.extra["best_acc"]) is float
    assert loaded.extra["epoch"] == 7


def test_numpy_array_still_needs_trust(tmp_path, state):
    path = tmp_path / "arr.pt"
    torch.save({"state_dict": state, "history": np.zeros(3)}, path)
    with pytest.raises(Exception, match=r"numpy\.ndarray|_reconstruct") as info:
        load_checkpoint(path, arch="mainnet_small")
    assert "numpy.dtype" not in str(info.value)


def test_missing_whole_modules_named(tmp_path, state):
    path = tmp_path / "backbone.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, path)
    with pytest.raises(ValueError, match=r"the file has no weights at all for module\(s\) fc"):
        load_checkpoint(path, arch="mainnet_small", num_classes=10)


def test_strip_common_prefix_unit():
    t = torch.zeros(1)
    assert strip_common_prefix({"a.w": t}, ["a.w"]) == ({"a.w": t}, None)
    assert strip_common_prefix({"m.a.w": t}, ["a.w"])[1] == "m."
    assert strip_common_prefix({"m.a.w": t, "n.b": t}, ["a.w", "b"])[1] is None
    assert mismatch_cause(["main.x"], ["x"], ["main.x"], ["x"]).startswith("every key of the model starts with 'main.'")
