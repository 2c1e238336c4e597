"""Per-exit costs: fvcore's counts against independent hand counts, and the cost relations."""

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from tradeoff.flops import ExitCosts, describe_costs, exit_costs
from tradeoff.models import create_model
from tradeoff.models.base import MultiExitNet, Stage


# --- hand counts, plain arithmetic from the architecture (one multiply-add = one FLOP) ---


def _conv(cin, cout, k, out_hw):
    return cout * cin * k * k * out_hw * out_hw


def _deconv(cin, cout, k, in_hw):  # every input pixel meets every weight once
    return cin * cout * k * k * in_hw * in_hw


def _bn(c, hw):  # eval-mode batch norm: scale and shift per element
    return 2 * c * hw * hw


def _basic_block(cin, cout, stride, in_hw):
    hw = in_hw // stride
    total = _conv(cin, cout, 3, hw) + _bn(cout, hw) + _conv(cout, cout, 3, hw) + _bn(cout, hw)
    if stride != 1 or cin != cout:
        total += _conv(cin, cout, 1, hw) + _bn(cout, hw)
    return total + cout * hw * hw  # residual add; ReLU costs 0


def _scan18_hand_count(num_classes=100):
    """(section_flops, head_flops) of SCAN ResNet18 at 32x32, from the layer shapes alone."""
    widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
    sections, heads = [], []
    cin, hw = 64, 32
    stem = _conv(3, 64, 3, 32) + _bn(64, 32)
    for i, (w, s) in enumerate(zip(widths, strides)):
        sec = _basic_block(cin, w, s, hw) + _basic_block(w, w, 1, hw // s)
        cin, hw = w, hw // s
        sections.append(sec + (stem if i == 0 else 0))
        fc = 512 * num_classes
        if i == 3:
            heads.append(512 * 4 * 4 + fc)  # AvgPool2d(4): 16 additions per output, then fc4
            continue
        k = (8, 4, 2)[i]
        half = hw // 2
        attention = _conv(w, w, 3, half) + _bn(w, half) + _deconv(w, w, 4, half) + _bn(w, hw)
        gate = w * hw * hw + w * hw * hw  # sigmoid + the product with the features
        small = hw // k
        scala = (_conv(w, 128, 1, hw) + _bn(128, hw) + _conv(128, 128, k, small) + _bn(128, small)
                 + _conv(128, 512, 1, small) + _bn(512, small) + 512 * 16)
        heads.append(attention + gate + scala + fc)
    return np.array(sections, float), np.array(heads, float)


@pytest.fixture(scope="module")
def resnet18_costs():
    torch.manual_seed(0)
    return exit_costs(create_model("scan_resnet18"), (3, 32, 32))


def test_scan_resnet18_matches_hand_count(resnet18_costs):
    sections, heads = _scan18_hand_count()
    np.testing.assert_array_equal(resnet18_costs.section_flops, sections)
    np.testing.assert_array_equal(resnet18_costs.head_flops, heads)
    np.testing.assert_array_equal(resnet18_costs.flops, np.cumsum(sections) + np.cumsum(heads))
    assert resnet18_costs.baseline_flops == sections.sum() + heads[-1]
    assert resnet18_costs.unsupported_ops == {}
    # the plain ResNet18 for CIFAR (convs + fc only) is the well-known ~0.56 GFLOPs
    assert 0.55e9 < resnet18_costs.baseline_flops < 0.56e9


def test_relations_and_params(resnet18_costs):
    c = resnet18_costs
    assert c.flops.dtype == np.float64 and c.flops.shape == (4,)
    assert np.all(np.diff(c.flops) > 0)
    assert c.flops[-1] == c.section_flops.sum() + c.head_flops.sum()
    assert c.baseline_flops < c.flops[-1]  # early-exit heads are extra work for a sample that goes deep
    assert c.counter == "fvcore" and c.counter_version
    model = create_model("scan_resnet18")
    assert c.params_per_exit[-1] == sum(p.numel() for p in model.parameters())
    stem_and_layer1 = sum(p.numel() for m in (model.conv1, model.bn1, model.layer1) for p in m.parameters())
    head1 = sum(p.numel() for m in (model.attention1, model.scala1, model.fc1) for p in m.parameters())
    assert c.params_per_exit[0] == stem_and_layer1 + head1
    assert c.params_per_exit == sorted(c.params_per_exit)
    with pytest.raises(ValueError):
        c.flops[0] = 1.0  # read-only: a frozen result stays frozen


class _Toy(MultiExitNet):
    """Two exits on a (1, 4, 4) input; every count below is done by hand in the test."""

    def __init__(self, extra=None):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)  # 2*1*9 weights x 16 positions = 288
        self.bn = nn.BatchNorm2d(2)  # 2 * 32 elements = 64
        self.fc1 = nn.Linear(32, 3)  # 96
        self.down = nn.Conv2d(2, 4, 1, stride=2)  # 4*2 weights x 4 positions = 32
        self.fc2 = nn.Linear(4, 3)  # 12
        self.extra = extra

    def stages(self):
        section1 = nn.Sequential(self.conv, self.bn, nn.ReLU())
        head1 = _Gate(self.fc1)  # sigmoid 32 + mul 32 + fc 96
        section2 = nn.Sequential(self.down, self.extra or nn.Identity())
        head2 = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), self.fc2)  # 4 outputs x 4 = 16, + 12
        return [Stage(section1, head1), Stage(section2, head2)]


class _Gate(nn.Module):
    def __init__(self, fc):
        super().__init__()
        self.fc = fc

    def forward(self, x):
        return self.fc(torch.flatten(torch.sigmoid(x) * x, 1))


def test_toy_network_by_hand():
    toy = _Toy()
    costs = exit_costs(toy, (1, 4, 4))
    np.testing.assert_array_equal(costs.section_flops, [288 + 64, 32])
    np.testing.assert_array_equal(costs.head_flops, [32 + 32 + 96, 16 + 12])
    np.testing.assert_array_equal(costs.flops, [512, 572])
    assert costs.baseline_flops == 352 + 32 + 28
    assert costs.params_per_exit == [20 + 4 + 99, 123 + 12 + 15]
    assert costs.unsupported_ops == {}
    meta = describe_costs(costs)
    assert json.loads(json.dumps(meta)) == {
        "baseline_flops": 412.0,
        "params_per_exit": [123, 150],
        "flop_counter": "fvcore",
        "flop_counter_version": costs.counter_version,
        "unsupported_ops": {},
        "section_flops": [352.0, 32.0],
        "head_flops": [160.0, 28.0],
    }


def test_unsupported_ops_are_reported_not_hidden(caplog, capfd, recwarn):
    with caplog.at_level(logging.DEBUG):
        costs = exit_costs(_Toy(extra=nn.Softplus()), (1, 4, 4))
    assert costs.unsupported_ops == {"aten::softplus": 1}
    assert describe_costs(costs)["unsupported_ops"] == {"aten::softplus": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert len(recwarn) == 0


def test_shared_parameters_counted_once():
    class Shared(MultiExitNet):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(6, 6)
            self.fc = nn.Linear(6, 2)

        def stages(self):
            return [Stage(self.body, self.fc), Stage(self.body, self.fc)]

    costs = exit_costs(Shared(), (6,))
    assert costs.params_per_exit == [42 + 14, 42 + 14]
    np.testing.assert_array_equal(costs.flops, [36 + 12, 2 * (36 + 12)])


def test_scan_small_costs_rise_with_depth():
    costs = exit_costs(create_model("scan_small"), (1, 8, 8))
    assert costs.flops.shape == (3,) and costs.unsupported_ops == {}
    # section 1 by hand: stem conv 1*6*9*64 + BN 2*6*64 + two 6->6 convs 2*6*6*9*64 + two BNs + residual add 6*64
    assert costs.section_flops[0] == 3456 + 768 + 41472 + 1536 + 384
    assert costs.flops.tolist() == [107904.0, 9632256.0, 28548480.0]
    assert costs.baseline_flops == 24683904.0
    assert costs.flops[0] <= 0.01 * costs.baseline_flops  # exit 1: under 1% of the original network
    assert costs.flops[1] <= 0.4 * costs.baseline_flops
    assert costs.head_flops.sum() <= 0.25 * costs.section_flops.sum()  # heads stay cheap
    assert costs.baseline_flops < costs.flops[-1]


def test_training_flags_are_restored():
    model = create_model("scan_small").train()
    model.layer1.eval()  # e.g. a frozen part
    exit_costs(model, (1, 8, 8))
    assert model.training and model.layer2.training and model.attention1.training
    assert not model.layer1.training and not model.layer1[0].bn1.training


def test_batchnorm_counted_in_eval_mode_even_when_training():
    model = create_model("scan_small").train()
    assert exit_costs(model, (1, 8, 8)).flops.tolist() == exit_costs(model.eval(), (1, 8, 8)).flops.tolist()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"model Linear has no stages\(\); implement stages\(\) or give .*tradeoff import --flops"):
        exit_costs(nn.Linear(2, 2), (2,))
    with pytest.raises(ValueError, match=r"model MultiExitNet has no stages\(\)"):
        exit_costs(MultiExitNet(), (2,))
    with pytest.raises(ValueError, match=r"input_shape must be one sample's shape .* got \(1, 0, 8\)"):
        exit_costs(create_model("scan_small"), (1, 0, 8))
    with pytest.raises(ValueError, match=r"input_shape must be .* got 64"):
        exit_costs(create_model("scan_small"), 64)
    with pytest.raises(ValueError, match=r"cannot count exit 1 of ScanResNet on input_shape \(3, 8, 8\)"):
        exit_costs(create_model("scan_small"), (3, 8, 8))
    with pytest.raises(ValueError, match=r"device must be a torch device .* got 'gpu'"):
        exit_costs(create_model("scan_small"), (1, 8, 8), device="gpu")


def test_exit_costs_is_frozen(resnet18_costs):
    assert isinstance(resnet18_costs, ExitCosts)
    with pytest.raises(AttributeError):
        resnet18_costs.baseline_flops = 1.0
