"""tradeoff.training.loop: the SCAN loss by hand, short real trainings, checkpoint choice, bad input."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle

import numpy as np
import pytest
import torch

from tradeoff.checkpoint import load_checkpoint
from tradeoff.commands import main
from tradeoff.data import load_data
from tradeoff.models.adjoined import adjoined_loss
from tradeoff.models.scan import scan_loss
from tradeoff.training.loop import exit_accuracies, train_model
from tradeoff.training.schedules import TrainConfig, default_config, random_crop_flip, random_shift


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ce(z, y):
    return float(np.mean(-np.log(_softmax(z)[np.arange(len(y)), y])))


@pytest.fixture(scope="module")
def tiny_digits():
    """240 train and 120 val rows of the real digits split (enough to learn, fast)."""
    ds = load_data("digits", splits=("train", "val"))
    train = np.flatnonzero(ds.split == "train")[:240]
    val = np.flatnonzero(ds.split == "val")[:120]
    rows = np.concatenate([train, val])
    return dataclasses.replace(ds, x=ds.x[rows], y=ds.y[rows], split=ds.split[rows])


def _config(**kw):
    base = dict(epochs=3, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="cosine", augment="none")
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- losses
def test_scan_loss_matches_a_hand_computation():
    z1 = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    z2 = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 1.0]])
    z3 = np.array([[3.0, 0.0, -1.0], [0.0, 0.5, 1.0]])
    f1, f2, f3 = np.array([[1.0, 2.0], [0.0, 1.0]]), np.array([[0.0, 0.0], [3.0, 1.0]]), np.array([[1.0, 1.0], [1.0, 1.0]])
    y = np.array([0, 2])
    T, lam, w = 3.0, 0.5, 0.01
    teacher = _softmax(z3 / T)
    expected = _ce(z3, y)
    for z in (z1, z2):
        soft = float(np.mean(-(teacher * np.log(_softmax(z / T))).sum(axis=1)))
        expected += (1 - lam) * _ce(z, y) + lam * T**2 * soft
    # hint: per-sample squared distance to the deepest feature, batch mean, summed over exits
    # f1 - f3 = [[0, 1], [-1, 0]] -> 1, 1; f2 - f3 = [[-1, -1], [2, 0]] -> 2, 4
    expected += w * (np.mean([1, 1]) + np.mean([2, 4]))
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    got = scan_loss([t(z1), t(z2), t(z3)], [t(f1), t(f2), t(f3)], torch.tensor(y), temperature=T, alpha=lam, hint_weight=w)
    assert math.isclose(float(got), expected, rel_tol=1e-12)
    # without features, no hint
    no_hint = scan_loss([t(z1), t(z2), t(z3)], None, torch.tensor(y), temperature=T, alpha=lam)
    assert math.isclose(float(no_hint), expected - w * 4.0, rel_tol=1e-12)


def test_scan_loss_teacher_is_detached_and_single_exit_is_plain_ce():
    z = [torch.randn(4, 5, generator=torch.Generator().manual_seed(i), requires_grad=True) for i in range(2)]
    y = torch.tensor([0, 1, 2, 3])
    scan_loss(z, None, y, alpha=1.0).backward()
    # alpha = 1: the deepest exit learns from CE only, the shallow one from the teacher only
    ce_grad = torch.autograd.grad(torch.nn.functional.cross_entropy(z[1], y), z[1])[0]
    assert torch.allclose(z[1].grad, ce_grad)
    one = torch.randn(3, 4, generator=torch.Generator().manual_seed(7))
    labels = torch.tensor([1, 0, 3])
    assert torch.equal(scan_loss([one], None, labels), torch.nn.functional.cross_entropy(one, labels))


def test_adjoined_loss_matches_a_hand_computation():
    small = np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    large = np.array([[2.0, -1.0, 0.0], [1.0, 3.0, 0.0]])
    y = np.array([2, 1])
    T = 3.0
    p, q = _softmax(large / T), _softmax(small / T)
    kl = float(np.mean((p * (np.log(p) - np.log(q))).sum(axis=1)))
    expected = _ce(large, y) + _ce(small, y) + T**2 * kl
    got = adjoined_loss([torch.tensor(small), torch.tensor(large)], torch.tensor(y), temperature=T)
    assert math.isclose(float(got), expected, rel_tol=1e-12)


# --------------------------------------------------------------------------- augmentation
def test_crop_flip_and_shift_move_pixels_without_changing_shape():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, g)
    assert out.shape == x.shape
    # every output row is a (possibly flipped, shifted) window of the input or zero padding
    values = set(x.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= values
    assert not torch.equal(out, x)
    digits = torch.ones(4, 1, 8, 8)
    shifted = random_shift(digits, torch.Generator().manual_seed(1))
    assert shifted.shape == digits.shape and shifted.sum() >= 4 * 49  # at most one row + column lost
    # same generator seed, same augmentation
    assert torch.equal(random_crop_flip(x, torch.Generator().manual_seed(0)), out)


# --------------------------------------------------------------------------- training
def test_scan_small_training_lowers_the_loss_and_keeps_the_best_val_epoch(tmp_path, tiny_digits):
    out = tmp_path / "new" / "dir" / "model.pt"  # missing directories are created
    result = train_model("scan_small", out=out, config=_config(epochs=4, select="deepest"), dataset=tiny_digits,
                         progress=False, log=lambda line: None)
    assert result.loss_history[-1] < result.loss_history[0]
    deepest = [acc[-1] for acc in result.val_history]
    assert result.best_epoch == int(np.argmax(deepest)) + 1  # first epoch with the best deepest-exit val acc
    assert result.best_val_accuracy == result.val_history[result.best_epoch - 1]
    loaded = load_checkpoint(out)
    assert loaded.arch == "scan_small" and loaded.num_classes == 10 and loaded.data == "digits"
    assert loaded.extra["epoch"] == result.best_epoch
    assert loaded.extra["selected_by"] == "deepest-exit val accuracy"
    val = tiny_digits.split == "val"
    assert exit_accuracies(loaded.model, tiny_digits.x[val], tiny_digits.y[val]) == pytest.approx(result.best_val_accuracy)
    assert not [p for p in out.parent.iterdir() if p.name != "model.pt"]  # no temporary files left


def test_training_is_seeded(tmp_path, tiny_digits):
    runs = [
        train_model("scan_small", out=tmp_path / f"m{i}.pt", config=_config(epochs=1, augment="shift", seed=s),
                    dataset=tiny_digits, progress=False, log=lambda line: None)
        for i, s in enumerate((3, 3, 4))
    ]
    assert runs[0].loss_history == runs[1].loss_history
    assert runs[0].loss_history != runs[2].loss_history


def _write_cifar10(root, n_train_per_batch=2, n_test=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (n_train_per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n_train_per_batch)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), b"labels": [int(v) for v in rng.integers(0, 10, n_test)]}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    return folder


def test_cifar_layout_directory_trains_one_step_with_the_paper_recipe(tmp_path):
    folder = _write_cifar10(tmp_path)
    config = default_config("cifar10", epochs=1, batch_size=10)
    assert (config.optimizer, config.lr, config.momentum, config.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert config.milestones == (75, 130, 180) and config.augment == "crop_flip"
    assert default_config("cifar10").epochs == 200 and default_config("cifar10").batch_size == 128
    result = train_model("scan_resnet18", f"cifar10:{folder}", tmp_path / "r18.pt", config=config, progress=False,
                         log=lambda line: None)
    assert result.epochs == 1 and len(result.best_val_accuracy) == 4  # one step, four exits
    loaded = load_checkpoint(tmp_path / "r18.pt")
    assert loaded.arch == "scan_resnet18" and loaded.num_classes == 10
    assert loaded.data == f"cifar10:{folder}"


def test_cli_train_writes_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "main.pt"
    code = main(["train", "--arch", "mainnet_small", "--out", str(out), "--epochs", "1", "--no-progress"])
    assert code == 0 and out.is_file()
    assert "val acc per exit" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad input
def test_unknown_arch_lists_the_known_ones(tmp_path, tiny_digits):
    with pytest.raises(ValueError, match=r"unknown model 'scan_tiny'; known models: .*scan_small"):
        train_model("scan_tiny", out=tmp_path / "new" / "m.pt", config=_config(), dataset=tiny_digits, progress=False)
    assert not (tmp_path / "new").exists()


def test_data_whose_input_shape_does_not_fit_says_both(tmp_path, tiny_digits):
    with pytest.raises(ValueError, match=r"model 'mainnet_resnet18' does not fit --data digits: the data's inputs have "
                                         r"shape \(1, 8, 8\) and it expects inputs of shape \(1, 32, 32\)"):
        train_model("mainnet_resnet18", out=tmp_path / "m.pt", config=_config(), dataset=tiny_digits, progress=False)
    with pytest.raises(ValueError, match=r"model 'scan_resnet18' does not fit --data digits: the data's inputs have "
                                         r"shape \(1, 8, 8\) and its first convolution takes 3 input channels"):
        train_model("scan_resnet18", out=tmp_path / "m.pt", config=_config(), dataset=tiny_digits, progress=False)
    assert not (tmp_path / "m.pt").exists()


def test_data_whose_classes_do_not_fit_says_both(tmp_path, tiny_digits):
    with pytest.raises(ValueError, match=r"model 'mainnet_small' has \[7\] output classes but --data digits has 10 classes"):
        train_model("mainnet_small", out=tmp_path / "m.pt", arch_kwargs={"num_classes": 7}, config=_config(),
                    dataset=tiny_digits, progress=False)


def test_sidenet_needs_an_existing_main(tmp_path, tiny_digits):
    with pytest.raises(ValueError, match=r"--arch sidenet needs --main MAIN.pt"):
        train_model("sidenet", out=tmp_path / "s.pt", config=_config(), dataset=tiny_digits, progress=False)
    with pytest.raises(FileNotFoundError, match=r"--main .*nothere.pt: no such file"):
        train_model("sidenet", out=tmp_path / "s.pt", main=tmp_path / "nothere.pt", config=_config(),
                    dataset=tiny_digits, progress=False)
    with pytest.raises(ValueError, match=r"--main is only for --arch sidenet"):
        train_model("scan_small", out=tmp_path / "s.pt", main=tmp_path / "x.pt", config=_config(), dataset=tiny_digits,
                    progress=False)


def _read_only_dir(tmp_path):
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    for candidate in ("/sys", "/proc/sys"):  # root ignores modes; these are read-only mounts in containers
        try:
            with open(os.path.join(candidate, ".tradeoff-probe"), "w"):
                pass
        except OSError:
            return candidate
    pytest.skip("no read-only directory available to root here")


def test_read_only_output_directory_is_refused_before_training(tmp_path, tiny_digits):
    ro = _read_only_dir(tmp_path)
    with pytest.raises(PermissionError, match=r"--out .*model.pt: directory .* is read-only .*choose a writable location"):
        train_model("scan_small", out=os.path.join(ro, "model.pt"), config=_config(), dataset=tiny_digits, progress=False)


def test_bad_settings_and_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--epochs must be >= 1; got 0"):
        default_config("digits", epochs=0)
    with pytest.raises(TypeError, match=r"unknown training setting\(s\) \['epoch'\]"):
        default_config("digits", epoch=3)
    code = main(["train", "--arch", "nope", "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "unknown model 'nope'" in err
    code = main(["train", "--arch", "scan_small", "--width-fraction", "0.5", "--out", str(tmp_path / "m.pt")])
    assert code == 1 and "--width-fraction is only for adjoined_* models" in capsys.readouterr().err
    code = main(["train", "--arch", "adjoined_small", "--width-fraction", "1.5", "--out", str(tmp_path / "m.pt")])
    assert code == 1 and "--width-fraction must be in (0, 1); got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
