"""Models sized from the input shape: scan_cnn (SCAN exits on a CPU-friendly CNN), and the
input_size of mainnet_small / adjoined_small; trained end to end on a tiny MNIST-layout folder."""

from __future__ import annotations

import copy
import gzip

import numpy as np
import pytest
import torch

from tradeoff.checkpoint import load_checkpoint
from tradeoff.data import load_data
from tradeoff.flops import exit_costs
from tradeoff.models import create_model
from tradeoff.models.compact import ScanCNN
from tradeoff.models.sidenet import small_strides
from tradeoff.training.loop import TrainConfig, default_config, train_model

QUIET = dict(progress=False, log=lambda line: None)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2, 13, 11), (1, 8, 8)])
def test_scan_cnn_fits_any_input_and_stages_equal_forward(shape):
    torch.manual_seed(0)
    model = create_model("scan_cnn", num_classes=7, in_channels=shape[0], input_size=shape[1:]).eval()
    assert model.input_shape == shape
    x = torch.randn(3, *shape)
    with torch.no_grad():
        outputs = model(x)
        logits, features = model.forward_with_features(x)
        walked = x
        for k, (section, head) in enumerate(model.stages()):
            walked = section(walked)
            torch.testing.assert_close(head(walked), outputs[k])
    assert [tuple(o.shape) for o in outputs] == [(3, 7)] * 3
    for a, b in zip(outputs, logits):
        torch.testing.assert_close(a, b)
    assert {tuple(f.shape) for f in features} == {(3, 64)}  # every exit's feature has the deepest width


def test_scan_cnn_keys_and_copies():
    model = create_model("scan_cnn")
    keys = {k.split(".")[0] for k in model.state_dict()}
    assert keys == {"section1", "section2", "section3", "attention1", "attention2", "scala1", "scala2",
                    "fc1", "fc2", "fc3"}
    clone = copy.deepcopy(model)
    head = clone.stages()[0].head
    assert head.fc is clone.fc1 and head.fc is not model.fc1


def test_scan_cnn_costs_are_counted_and_the_shallow_exit_is_far_cheaper():
    costs = exit_costs(create_model("scan_cnn"), (1, 28, 28))
    assert costs.unsupported_ops == {}
    assert np.all(np.diff(costs.flops) > 0)
    assert costs.flops[0] < 0.1 * costs.flops[-1]  # exit 1: one conv + a head at 7x7
    # section 1 is one 3x3 conv 1 -> 16 at 28x28 (bias-free) plus eval batch norm (2 per element)
    assert costs.section_flops[0] == 28 * 28 * 16 * 9 + 2 * 28 * 28 * 16
    assert costs.baseline_flops == pytest.approx(costs.section_flops.sum() + costs.head_flops[-1])


def test_scan_cnn_bad_arguments():
    with pytest.raises(ValueError, match=r"input 3x3 is too small for 3 sections.*at least 4 pixels"):
        ScanCNN((1, 3, 3))
    with pytest.raises(ValueError, match=r"ScanCNN needs K >= 2 widths"):
        ScanCNN((1, 28, 28), widths=(16,), convs=(1,))
    with pytest.raises(ValueError, match=r"head_pool\[0\] must be in 1..28"):
        ScanCNN((1, 28, 28), head_pool=(30, 1))
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\)"):
        ScanCNN((28, 28))


def test_small_resnets_are_strided_for_their_input():
    assert small_strides((8, 8)) == (1, 1, 2) and small_strides((28, 28)) == (1, 2, 2)
    assert create_model("mainnet_small").input_shape == (1, 8, 8)  # the digits default is unchanged
    main = create_model("mainnet_small", input_size=[28, 28]).eval()
    adjoined = create_model("adjoined_small", in_channels=3, input_size=(28, 28)).eval()
    assert main.input_shape == (1, 28, 28) and adjoined.input_shape == (3, 28, 28)
    with torch.no_grad():
        assert main(torch.randn(2, 1, 28, 28))[0].shape == (2, 10)
        assert [o.shape for o in adjoined(torch.randn(2, 3, 28, 28))] == [(2, 10), (2, 10)]
    side = create_model("sidenet", main_kwargs={"input_size": [28, 28]}, num_classes=10)
    assert side.input_shape == (1, 28, 28)
    with pytest.raises(ValueError, match=r"input_size must be \(H, W\)"):
        create_model("mainnet_small", input_size=(28,))


# --------------------------------------------------------------------------- training on IDX files


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    """A 12x12 MNIST-layout folder (160 train, 80 test images) whose class shows in the pixels."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)

    def images(labels):
        x = rng.integers(0, 60, (len(labels), 12, 12))
        for i, c in enumerate(labels):  # a bright bar whose row is the class
            x[i, c + 1, 2:10] = 250
        return x.astype(np.uint8)

    for prefix, n in (("train", 160), ("t10k", 80)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, array, magic in (("images-idx3", images(labels), 0x0803), ("labels-idx1", labels, 0x0801)):
            header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            (root / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))
    return f"mnist:{root}"


def test_mnist_data_gets_the_one_cycle_recipe():
    config = default_config("fashion-mnist")
    assert (config.schedule, config.optimizer, config.batch_size, config.channels_last) == ("onecycle", "adam", 256, True)
    assert default_config("mnist", epochs=1).epochs == 1 and default_config("digits").schedule == "cosine"


def test_scan_cnn_trains_on_idx_files_and_the_checkpoint_rebuilds_it(tmp_path, tiny_mnist):
    config = TrainConfig(epochs=4, batch_size=32, optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="onecycle",
                         channels_last=True)
    runs = [train_model("scan_cnn", tiny_mnist, tmp_path / f"m{i}.pt", config=config, **QUIET) for i in range(2)]
    assert runs[0].loss_history[-1] < runs[0].loss_history[0]
    assert runs[0].best_val_accuracy[-1] > 0.5  # chance is 0.1
    loaded = [load_checkpoint(r.path) for r in runs]
    assert loaded[0].arch_kwargs == {"in_channels": 1, "input_size": [12, 12]}
    assert loaded[0].model.input_shape == (1, 12, 12)
    # seeded: the same seed gives the same weights, bit for bit
    for key, value in loaded[0].model.state_dict().items():
        assert torch.equal(value, loaded[1].model.state_dict()[key]), key
    data = load_data(tiny_mnist, splits=("test",))
    with torch.no_grad():
        out = loaded[0].model.eval()(torch.as_tensor(data.x))
    assert len(out) == 3 and out[0].shape == (40, 10)


@pytest.mark.skipif(
    not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist (Debian package dataset-fashion-mnist)",
)
def test_scan_cnn_learns_real_fashion_mnist_quickly(tmp_path):
    import dataclasses

    ds = load_data("fashion-mnist", splits=("train", "val"))
    rows = np.concatenate([np.flatnonzero(ds.split == "train")[:3000], np.flatnonzero(ds.split == "val")[:1000]])
    small = dataclasses.replace(ds, x=ds.x[rows], y=ds.y[rows], split=ds.split[rows])
    config = default_config(ds.name, epochs=2, batch_size=128)
    result = train_model("scan_cnn", out=tmp_path / "m.pt", config=config, dataset=small, **QUIET)
    assert min(result.best_val_accuracy) > 0.6  # chance is 0.1; 3,000 images, two epochs
    assert load_checkpoint(tmp_path / "m.pt").model.input_shape == (1, 28, 28)
