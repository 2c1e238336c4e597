"""Untrusted input never runs code: every command that reads a file, fed one that would.

The payload is a pickle whose loading touches a marker file (`__reduce__` ->
`pathlib.Path.touch`). A control test proves the payload is live (plain
`torch.load(weights_only=False)` and `--trust-checkpoint` do run it); every other test
feeds it, through `tradeoff.commands.main`, to a command that must refuse it in one stderr
line, exit non-zero, write nothing, and leave the marker absent.
"""

import json
import pathlib
import pickle

import numpy as np
import pytest
import torch

from tradeoff.cache.format import write_cache
from tradeoff.commands import main
from tradeoff.models import create_model
from tradeoff.cache.synthetic import synthetic_cache


class _Payload:
    """Unpickling this creates `marker`: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _refused(capsys, argv, marker, *, mention="--trust-checkpoint"):
    """Run the CLI; assert a non-zero exit, one stderr line naming `mention`, no marker."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert mention in err, err
    assert "Traceback" not in err
    assert not marker.exists(), "the payload ran"
    return err


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


@pytest.fixture
def evil_ckpt(tmp_path, marker):
    """A tradeoff-looking checkpoint (real scan_small weights) with one poisoned entry."""
    model = create_model("scan_small", num_classes=10)
    doc = {"format": "tradeoff-ckpt", "version": 1, "arch": "scan_small", "arch_kwargs": {}, "num_classes": 10,
           "data": "digits", "state_dict": model.state_dict(), "note": _Payload(marker)}
    path = tmp_path / "evil.pt"
    torch.save(doc, path)
    return path


def _thresholds_doc(k=4):
    return {"thresholds": [0.9] * (k - 1), "confidence": "maxprob", "ensemble": False, "calibration": None,
            "num_exits": k}


def test_the_payload_is_live(evil_ckpt, marker, tmp_path, capsys):
    """Control: without the safe loader the file does run code, so the other tests mean something."""
    torch.load(evil_ckpt, weights_only=False)
    assert marker.exists()
    marker.unlink()
    # --trust-checkpoint is the one gate: with it the payload runs (and, its return value being
    # a plain extra entry, the cache is even built).
    main(["cache", "--ckpt", str(evil_ckpt), "--out", str(tmp_path / "c.npz"), "--trust-checkpoint"])
    capsys.readouterr()
    assert marker.exists()


def test_cache_refuses_a_poisoned_checkpoint(evil_ckpt, marker, tmp_path, capsys):
    out = tmp_path / "c.npz"
    _refused(capsys, ["cache", "--ckpt", str(evil_ckpt), "--out", str(out)], marker)
    assert not out.exists()


def test_cache_refuses_a_bare_poisoned_pickle(marker, tmp_path, capsys):
    path = tmp_path / "bare.pth"
    torch.save(_Payload(marker), path)
    _refused(capsys, ["cache", "--ckpt", str(path), "--arch", "scan_small", "--num-classes", "10",
                      "--out", str(tmp_path / "c.npz")], marker)
    assert not (tmp_path / "c.npz").exists()


def test_run_refuses_a_poisoned_checkpoint(evil_ckpt, marker, tmp_path, capsys):
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps(_thresholds_doc()))
    out = tmp_path / "run.json"
    _refused(capsys, ["run", "--ckpt", str(evil_ckpt), "--thresholds", str(thresholds), "--out", str(out),
                      "--repeats", "1"], marker)
    assert not out.exists()


def test_train_sidenet_refuses_a_poisoned_main(evil_ckpt, marker, tmp_path, capsys):
    out = tmp_path / "side.pt"
    _refused(capsys, ["train", "--arch", "sidenet", "--main", str(evil_ckpt), "--out", str(out),
                      "--epochs", "1"], marker)
    assert not out.exists()


@pytest.mark.parametrize("poisoned", ["logits", "labels"])
def test_import_refuses_poisoned_pt_arrays(poisoned, marker, tmp_path, capsys):
    logits, labels = tmp_path / "logits.npy", tmp_path / "labels.npy"
    np.save(logits, np.zeros((2, 6, 3), np.float32))
    np.save(labels, np.zeros(6, np.int64))
    if poisoned == "logits":
        logits = tmp_path / "logits.pt"
        torch.save(_Payload(marker), logits)
    else:
        labels = tmp_path / "labels.pt"
        torch.save({"y": _Payload(marker)}, labels)
    out = tmp_path / "c.npz"
    _refused(capsys, ["import", str(logits), "--labels", str(labels), "--flops", "1,2", "--out", str(out)], marker)
    assert not out.exists()


# ------------------------------------------------------------------ files that are never pickles
def _object_array(marker):
    return np.array([_Payload(marker), 1], dtype=object)


def test_search_refuses_a_cache_with_pickled_objects(marker, tmp_path, capsys):
    good = synthetic_cache(40, 3, (0.6, 0.8), seed=0)
    for key in ("logits", "labels", "split", "meta"):
        arrays = {"logits": good.logits, "labels": good.labels, "split": good.split, "flops": good.flops,
                  "meta": np.array(json.dumps(good.meta))}
        arrays[key] = _object_array(marker)
        path = tmp_path / f"evil-{key}.npz"
        np.savez(path, **arrays)  # numpy pickles object arrays when writing
        err = _refused(capsys, ["search", "--cache", str(path), "--out", str(tmp_path / "run")], marker,
                       mention="never unpickled")
        assert f"{key}.npy" in err
    assert not (tmp_path / "run").exists()


def test_import_refuses_npy_object_arrays(marker, tmp_path, capsys):
    logits, labels = tmp_path / "logits.npy", tmp_path / "labels.npy"
    np.save(logits, _object_array(marker), allow_pickle=True)
    np.save(labels, np.zeros(2, np.int64))
    _refused(capsys, ["import", str(logits), "--labels", str(labels), "--flops", "1,2",
                      "--out", str(tmp_path / "c.npz")], marker, mention="Python objects")


def test_run_refuses_a_pickle_posing_as_thresholds(scan_small_ckpt, marker, tmp_path, capsys):
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_bytes(pickle.dumps(_Payload(marker)))
    _refused(capsys, ["run", "--ckpt", str(scan_small_ckpt), "--thresholds", str(thresholds),
                      "--out", str(tmp_path / "run.json"), "--repeats", "1"], marker, mention="thresholds")
    assert not (tmp_path / "run.json").exists()


def test_cache_refuses_npz_data_with_pickled_objects(scan_small_ckpt, marker, tmp_path, capsys):
    data = tmp_path / "data.npz"
    np.savez(data, x=_object_array(marker), y=np.zeros(2, np.int64))
    _refused(capsys, ["cache", "--ckpt", str(scan_small_ckpt), "--data", f"npz:{data}",
                      "--out", str(tmp_path / "c.npz")], marker, mention="objects")
    assert not (tmp_path / "c.npz").exists()


def test_cache_refuses_a_poisoned_cifar_batch(scan_small_ckpt, marker, tmp_path, capsys):
    root = tmp_path / "cifar" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps({b"data": _Payload(marker), b"labels": [0]}, protocol=2))
    _refused(capsys, ["cache", "--ckpt", str(scan_small_ckpt), "--data", f"cifar10:{tmp_path / 'cifar'}",
                      "--out", str(tmp_path / "c.npz")], marker, mention="not allowed")


def test_plot_refuses_a_pickle_posing_as_a_run(marker, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("thresholds.json", "summary.json", "pareto.csv"):
        (run / name).write_bytes(pickle.dumps(_Payload(marker)))
    _refused(capsys, ["plot", str(run)], marker, mention=str(run))
    assert not (run / "pareto.png").exists()


def test_a_valid_cache_still_loads(tmp_path, capsys):
    """The refusals above are not a blanket refusal: a plain cache searches fine."""
    path = tmp_path / "ok.npz"
    write_cache(path, synthetic_cache(400, 5, (0.6, 0.8), seed=1))
    assert main(["search", "--cache", str(path), "--out", str(tmp_path / "run"), "--pop", "8", "--gens", "2",
                 "--no-plots"]) == 0
