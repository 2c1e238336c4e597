"""SideNet (frozen MainNet + side head) and Adjoined Networks (weight-shared small path)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tradeoff.checkpoint import load_checkpoint
from tradeoff.data import load_data
from tradeoff.flops import exit_costs
from tradeoff.models import create_model
from tradeoff.models.adjoined import small_width
from tradeoff.models.sidenet import SideNet
from tradeoff.training.build import build_model
from tradeoff.training.loop import TrainConfig, train_model

QUIET = dict(progress=False, log=lambda line: None)


@pytest.fixture(scope="module")
def tiny_digits():
    ds = load_data("digits", splits=("train", "val"))
    rows = np.concatenate([np.flatnonzero(ds.split == "train")[:240], np.flatnonzero(ds.split == "val")[:120]])
    return dataclasses.replace(ds, x=ds.x[rows], y=ds.y[rows], split=ds.split[rows])


def _config(**kw):
    base = dict(epochs=3, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="cosine", augment="none")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def main_ckpt(tmp_path_factory, tiny_digits):
    path = tmp_path_factory.mktemp("main") / "main.pt"
    train_model("mainnet_small", out=path, config=_config(epochs=2), dataset=tiny_digits, **QUIET)
    return path


# --------------------------------------------------------------------------- SideNet
def test_sidenet_trains_only_the_side_head(tmp_path, tiny_digits, main_ckpt):
    before = load_checkpoint(main_ckpt).model.state_dict()
    initial, _ = build_model("sidenet", tiny_digits, main=main_ckpt, seed=0)  # exactly what training starts from
    side_init = {k: v.clone() for k, v in initial.side.state_dict().items()}
    result = train_model("sidenet", out=tmp_path / "side.pt", main=main_ckpt, config=_config(epochs=3),
                         dataset=tiny_digits, **QUIET)
    assert result.loss_history[-1] < result.loss_history[0]
    # Mean over exits: the frozen MainNet exit is constant, so this ranks epochs by the side head.
    assert result.selected_by == "mean val accuracy over exits"
    assert len({acc[1] for acc in result.val_history}) == 1
    side = load_checkpoint(tmp_path / "side.pt").model
    assert isinstance(side, SideNet)
    after = side.main.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics untouched
    assert result.trainable_params == sum(p.numel() for p in side.side.parameters())
    assert all(not torch.equal(v, side.side.state_dict()[k]) for k, v in side_init.items())  # every side tensor moved
    # the MainNet exit is the MainNet itself
    x = torch.as_tensor(tiny_digits.x[:5])
    main = load_checkpoint(main_ckpt).model
    with torch.no_grad():
        assert torch.equal(side(x)[1], main(x)[0])


def test_sidenet_checkpoint_is_self_contained(tmp_path, tiny_digits, main_ckpt):
    main_copy = tmp_path / "main.pt"
    main_copy.write_bytes(main_ckpt.read_bytes())
    train_model("sidenet", out=tmp_path / "side.pt", main=main_copy, arch_kwargs={"tap": 2}, config=_config(epochs=1),
                dataset=tiny_digits, **QUIET)
    x = torch.as_tensor(tiny_digits.x[:4])
    first = load_checkpoint(tmp_path / "side.pt")
    main_copy.unlink()  # the SideNet file alone must rebuild everything
    again = load_checkpoint(tmp_path / "side.pt")
    assert again.arch == "sidenet" and again.arch_kwargs["main_arch"] == "mainnet_small" and again.model.tap == 2
    with torch.no_grad():
        for a, b in zip(first.model(x), again.model(x)):
            assert torch.equal(a, b)


def test_sidenet_stays_frozen_in_train_mode_and_costs_follow_the_cascade():
    model = create_model("sidenet", num_classes=10, tap=1)
    model.train()
    assert model.side.training and not model.main.training
    assert not any(p.requires_grad for p in model.main.parameters())
    costs = exit_costs(model, (1, 8, 8))
    main_costs = exit_costs(model.main, (1, 8, 8))
    side_head = costs.head_flops[0]
    assert side_head > 0
    assert costs.baseline_flops == pytest.approx(main_costs.baseline_flops)  # the MainNet alone
    assert costs.flops[1] == pytest.approx(main_costs.flops[0] + side_head)  # all of it + the side head
    assert costs.flops[0] < 0.25 * costs.flops[1]


def test_sidenet_bad_options(tmp_path, tiny_digits):
    with pytest.raises(ValueError, match=r"tap must be an integer in 1..2 .*; got 3"):
        create_model("sidenet", num_classes=10, tap=3)
    scan = tmp_path / "scan.pt"
    train_model("scan_small", out=scan, config=_config(epochs=1), dataset=tiny_digits, **QUIET)
    with pytest.raises(ValueError, match=r"--main .*scan.pt holds a 'scan_small' model; SideNet needs a single-exit MainNet"):
        train_model("sidenet", out=tmp_path / "s.pt", main=scan, config=_config(), dataset=tiny_digits, **QUIET)


def test_sidenet_main_with_other_classes_than_the_data_says_both(tmp_path, tiny_digits, main_ckpt):
    x = tiny_digits.x[:60]
    y = np.arange(60) % 3
    split = np.array(["train"] * 40 + ["val"] * 20)
    three = dataclasses.replace(tiny_digits, spec="npz:three.npz", x=x, y=y, split=split, num_classes=3)
    with pytest.raises(ValueError, match=r"model 'sidenet' has \[10\] output classes but --data npz:three.npz has 3 classes"):
        train_model("sidenet", out=tmp_path / "s.pt", main=main_ckpt, config=_config(), dataset=three, **QUIET)


# --------------------------------------------------------------------------- Adjoined
def test_adjoined_small_network_owns_no_parameters_and_shares_the_slices():
    torch.manual_seed(0)
    model = create_model("adjoined_small", num_classes=10)
    assert list(model.small.parameters()) == []
    assert {id(p) for p in model.parameters()} == {id(p) for p in model.large.parameters()}
    x = torch.randn(6, 1, 8, 8)
    model.small_logits(x).sum().backward()
    conv, block_conv = model.large.conv1.weight, model.large.layer2[0].conv1.weight  # (32, 1, 3, 3), (64, 32, 3, 3)
    assert conv.grad[:16].abs().sum() > 0 and conv.grad[16:].abs().sum() == 0
    assert block_conv.grad[:32, :16].abs().sum() > 0
    assert block_conv.grad[32:].abs().sum() == 0 and block_conv.grad[:, 16:].abs().sum() == 0
    before = block_conv.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(block_conv[:32, :16], before[:32, :16])
    assert torch.equal(block_conv[32:], before[32:])


def test_adjoined_small_path_equals_an_independent_half_width_network():
    torch.manual_seed(1)
    model = create_model("adjoined_small", num_classes=10)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 8, 8))  # give both paths non-trivial running statistics
    model.eval()
    half = create_model("mainnet_small", num_classes=10)  # 16/32/64 = half of 32/64/128
    state = {}
    for name, value in half.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            module, stat = name.rsplit(".", 1)
            state[name] = getattr(model.small, module.replace(".", "_") + ("_mean" if stat == "running_mean" else "_var"))
        elif name.endswith("num_batches_tracked"):
            state[name] = value
        else:
            big = model.large.state_dict()[name]
            state[name] = big[tuple(slice(0, n) for n in value.shape)]
    half.load_state_dict(state)
    half.eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], half(x)[0], atol=1e-5)
        assert torch.equal(model(x)[1], model.large(x)[0])


def test_adjoined_costs_count_both_networks_on_the_large_exit():
    model = create_model("adjoined_small", num_classes=10, width_fraction=0.5)
    costs = exit_costs(model, (1, 8, 8))
    small = exit_costs(create_model("mainnet_small", num_classes=10), (1, 8, 8)).flops[0]
    large = exit_costs(model.large, (1, 8, 8)).flops[0]
    assert costs.flops[0] == pytest.approx(small)
    assert costs.flops[1] == pytest.approx(small + large)
    assert costs.baseline_flops == pytest.approx(large)
    assert costs.flops[0] < 0.3 * large
    assert small_width(64, 0.25) == 16 and small_width(3, 0.5) == 2 and small_width(1, 0.1) == 1


def test_adjoined_training_lowers_the_loss_and_honours_width_fraction(tmp_path, tiny_digits):
    result = train_model("adjoined_small", out=tmp_path / "adj.pt", arch_kwargs={"width_fraction": 0.25},
                         config=_config(epochs=3), dataset=tiny_digits, **QUIET)
    assert result.loss_history[-1] < result.loss_history[0]
    loaded = load_checkpoint(tmp_path / "adj.pt")
    assert loaded.arch_kwargs["width_fraction"] == 0.25 and loaded.model.width_fraction == 0.25
    assert loaded.model.small.layer1_0_bn1_mean.shape == (8,)  # a quarter of 32
    with pytest.raises(ValueError, match=r"width_fraction must be in \(0, 1\); got 1.0"):
        create_model("adjoined_small", num_classes=10, width_fraction=1.0)
