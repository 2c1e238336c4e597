"""Differentiable Adjoined Networks: relaxation cost, derivation, target, seeding, bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from tradeoff.checkpoint import load_checkpoint
from tradeoff.commands import main
from tradeoff.data import load_data
from tradeoff.training.dan import DANConfig, repair_widths, target_bounds, train_dan
from tradeoff.flops import exit_costs
from tradeoff.models import create_model
from tradeoff.models.adjoined import AdjoinedNet, small_width, width_slots
from tradeoff.models.dan import DANSupernet, derive_widths, derived_network
from tradeoff.models.resnet import PlainResNet
from tradeoff.training.loop import TrainConfig

QUIET = dict(progress=False, log=lambda line: None)


def _tiny_resnet() -> PlainResNet:
    return PlainResNet((1,), num_classes=2, in_channels=1, widths=(4,), strides=(1,), input_shape=(1, 4, 4))


@pytest.fixture(scope="module")
def tiny_digits():
    ds = load_data("digits", splits=("train", "val"))
    rows = np.concatenate([np.flatnonzero(ds.split == "train")[:200], np.flatnonzero(ds.split == "val")[:100]])
    return dataclasses.replace(ds, x=ds.x[rows], y=ds.y[rows], split=ds.split[rows])


def _config(**kw):
    base = dict(epochs=3, batch_size=50, optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="cosine", augment="none")
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- cost of the relaxation
def test_expected_flops_of_the_relaxation_equal_a_hand_computation():
    torch.manual_seed(0)
    net = DANSupernet(_tiny_resnet(), (0.5, 1.0))
    assert [s.name for s in net.slots] == ["layer1", "layer1.0.conv1"]
    assert net.candidates == [(2, 4), (2, 4)]
    with torch.no_grad():
        net.arch_params[0].copy_(torch.tensor([0.0, math.log(3.0)]))  # p = (1/4, 3/4): E[w] = 3.5
        net.arch_params[1].zero_()  # p = (1/2, 1/2): E[w] = 3
    # 4x4 maps (HW = 16). Stage slot s: stem conv 9*16*1*s, BNs after the stem and conv2 2*16*s each,
    # residual add 16*s, global pool 16*s, fc 2*s -> 242 s. Inner slot i: its BN 32 i.
    # conv1 (s -> i) and conv2 (i -> s): 144 s i each, and E[s i] = E[s] E[i] (independent slots).
    hand = 242 * 3.5 + 32 * 3.0 + 288 * 3.5 * 3.0
    assert hand == 3967.0
    assert float(net.expected_flops(net.probabilities(1.0)).detach()) == pytest.approx(hand, rel=1e-6)
    # one-hot choices: the analytic count is fvcore's count of the derived network, for every combination
    for s in (2, 4):
        for i in (2, 4):
            widths = {"layer1": s, "layer1.0.conv1": i}
            fvcore = exit_costs(derived_network(net, widths), (1, 4, 4)).flops[0]
            assert net.cost.exact(widths) == fvcore == 242 * s + 32 * i + 288 * s * i


def test_cost_model_matches_fvcore_on_the_digits_family():
    net = DANSupernet(create_model("adjoined_small", num_classes=10).large)
    rng = np.random.default_rng(0)
    for _ in range(3):
        widths = {s.name: int(rng.choice(c)) for s, c in zip(net.slots, net.candidates)}
        assert net.cost.exact(widths) == exit_costs(derived_network(net, widths), (1, 8, 8)).flops[0]
    smallest, widest, large = target_bounds(net)
    assert large == widest == exit_costs(net.large, (1, 8, 8)).flops[0]
    assert smallest < exit_costs(create_model("adjoined_small", num_classes=10), (1, 8, 8)).flops[0] < large


# --------------------------------------------------------------------------- derivation
def test_derived_network_is_the_supernets_prefixes():
    torch.manual_seed(1)
    net = DANSupernet(create_model("adjoined_small", num_classes=10).large)
    with torch.no_grad():
        for alpha in net.arch_params:
            alpha.copy_(torch.randn(alpha.shape))
        net.train()
        net(torch.randn(32, 1, 8, 8), net.probabilities(1.0))  # non-trivial small-path BN statistics
    widths = derive_widths(net)
    assert widths == {s.name: c[int(a.argmax())] for s, c, a in zip(net.slots, net.candidates, net.arch_params)}
    derived = derived_network(net, widths)
    assert isinstance(derived, AdjoinedNet) and derived.small_widths == widths
    large_state, derived_state = net.large.state_dict(), derived.large.state_dict()
    assert all(torch.equal(large_state[k], derived_state[k]) for k in large_state)
    for key, value in derived.small.state_dict().items():  # BN statistics: prefixes of the supernet's
        assert torch.equal(value, getattr(net, key)[: value.shape[0]])
    assert derived.large.layer2[0].conv1.weight is not net.large.layer2[0].conv1.weight  # a copy, not an alias
    # the hard (one-hot) relaxation IS the sliced small network
    net.eval()
    derived.eval()
    one_hot = [torch.nn.functional.one_hot(a.argmax(), len(a)).float() for a in net.arch_params]
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net.relaxed_small_logits(x, one_hot), derived.small_logits(x), atol=1e-5)


def test_uniform_small_widths_are_the_width_fraction_network():
    torch.manual_seed(2)
    uniform = create_model("adjoined_small", num_classes=10)
    widths = {s.name: small_width(s.channels, 0.5) for s in width_slots(uniform.large)}
    per_layer = AdjoinedNet(uniform.large, small_widths=widths)
    per_layer.small.load_state_dict(uniform.small.state_dict())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(per_layer.small_logits(x), uniform.small_logits(x))
    with pytest.raises(ValueError, match=r"give width_fraction or small_widths, not both"):
        AdjoinedNet(uniform.large, width_fraction=0.5, small_widths=widths)
    with pytest.raises(ValueError, match=r"small_widths\['layer2'\] must be an integer in 1..64; got 65"):
        AdjoinedNet(uniform.large, small_widths={**widths, "layer2": 65})


def test_repair_meets_a_target_the_argmax_misses():
    net = DANSupernet(create_model("adjoined_small", num_classes=10).large)
    widest = {s.name: c[-1] for s, c in zip(net.slots, net.candidates)}
    _, _, large = target_bounds(net)
    for fraction in (0.2, 0.35, 0.6):
        widths, repaired = repair_widths(net, widest, fraction * large, 0.05)
        assert repaired and abs(net.cost.exact(widths) / (fraction * large) - 1) <= 0.05


# --------------------------------------------------------------------------- the procedure
def test_dan_meets_the_flops_target_and_saves_an_ordinary_adjoined_checkpoint(tmp_path, tiny_digits):
    target = 1.6e6
    dan = DANConfig(flops_target=target, finetune_epochs=1, warmup_epochs=1)
    result = train_dan("dan_small", out=tmp_path / "dan.pt", config=_config(), dan=dan, dataset=tiny_digits, **QUIET)
    assert abs(result.derived_flops / target - 1) <= 0.05
    loaded = load_checkpoint(tmp_path / "dan.pt")
    assert loaded.arch == "adjoined_small" and loaded.arch_kwargs["small_widths"] == result.small_widths
    assert loaded.extra["dan"]["flops_target"] == target
    costs = exit_costs(loaded.model, (1, 8, 8))
    assert costs.flops[0] == result.derived_flops
    assert abs(costs.flops[0] / target - 1) <= 0.05
    assert costs.baseline_flops == result.large_flops


def test_dan_is_seeded(tmp_path, tiny_digits):
    dan = DANConfig(finetune_epochs=1, warmup_epochs=1, relaxation="gumbel")
    runs = [train_dan("dan_small", out=tmp_path / f"{i}.pt", config=_config(seed=seed), dan=dan, dataset=tiny_digits,
                      **QUIET) for i, seed in enumerate((5, 5, 6))]
    assert runs[0].small_widths == runs[1].small_widths and runs[0].probabilities == runs[1].probabilities
    a, b = (load_checkpoint(tmp_path / f"{i}.pt").model.state_dict() for i in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[2].probabilities != runs[0].probabilities


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, message", [
    (["--arch", "dan_scan_small"], r"--arch dan_scan_small: DAN searches .* 'scan_small' is not one\. DAN families: .*dan_small"),
    (["--arch", "dan_small", "--width-choices", "0.5,1.5"], r"width choices \(--width-choices\) must be .* in \(0, 1\].* got 0.5, 1.5"),
    (["--arch", "dan_small", "--width-choices", "0,0.5"], r"in \(0, 1\].*got 0, 0.5"),
    (["--arch", "dan_small", "--flops-target", "1e4"], r"--flops-target 1e\+04 is below the smallest small network .* \(5.523e\+05 FLOPs"),
    (["--arch", "dan_small", "--flops-target", "1e8"], r"--flops-target 1e\+08 is above the large network's 8.599e\+06 FLOPs"),
    (["--arch", "adjoined_small", "--lambda-cost", "2"], r"--lambda-cost is only for dan_\* models"),
])
def test_bad_dan_input_is_one_clear_line(tmp_path, capsys, argv, message):
    out = tmp_path / "m.pt"
    assert main(["train", *argv, "--out", str(out), "--epochs", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tradeoff train: error: ")
    assert __import__("re").search(message, err), err
    assert not out.exists()


def test_supernet_refuses_a_family_without_channel_prefixes():
    with pytest.raises(ValueError, match=r"DAN needs a large network whose small network is a channel prefix .*got ScanResNet"):
        DANSupernet(create_model("scan_small", num_classes=10))


def test_dan_on_28x28_data_builds_for_the_data_and_matches_ans_flops(tmp_path, tiny_digits):
    # Fashion-MNIST's shape without its files: the builder must get input_size from the data
    # (search supernet and fine-tuned network alike), and the default target must be AN's
    # width-0.5 small network counted by fvcore at 28x28 (what bench_dan compares against).
    rng = np.random.default_rng(0)
    rows = np.concatenate([np.flatnonzero(tiny_digits.split == "train")[:64],
                           np.flatnonzero(tiny_digits.split == "val")[:32]])
    ds = dataclasses.replace(tiny_digits, x=rng.standard_normal((len(rows), 1, 28, 28)).astype(np.float32),
                             y=tiny_digits.y[rows], split=tiny_digits.split[rows], input_shape=(1, 28, 28))
    dan = DANConfig(finetune_epochs=1, warmup_epochs=0)
    result = train_dan("dan_small", out=tmp_path / "dan.pt", config=_config(epochs=1, batch_size=32), dan=dan,
                       dataset=ds, **QUIET)
    loaded = load_checkpoint(tmp_path / "dan.pt")
    assert loaded.arch_kwargs["input_size"] == [28, 28]
    assert tuple(loaded.model.input_shape) == (1, 28, 28)
    assert exit_costs(loaded.model, (1, 28, 28)).flops[0] == result.derived_flops
    an = create_model("adjoined_small", width_fraction=0.5, input_size=(28, 28))
    assert result.flops_target == exit_costs(an, (1, 28, 28)).flops[0]
    assert result.flops_target > 4 * exit_costs(create_model("adjoined_small", width_fraction=0.5), (1, 8, 8)).flops[0]
