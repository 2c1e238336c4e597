"""The SCAN family: official key layout, official checkpoints, stages() and features; scan_small."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tradeoff.models import create_model, list_models
from tradeoff.models.base import MultiExitNet
from tradeoff.models.resnet import BasicBlock
from tradeoff.models.scan import ScanResNet


# --- an independent network written from DESIGN.md's description of the official code ---


class _OfficialBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _OfficialResNet18(nn.Module):
    """Official SCAN ResNet18: forward returns [out4, out3, out2, out1], feature_loss."""

    def __init__(self, num_classes=100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (w, s) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            setattr(self, f"layer{i}", nn.Sequential(_OfficialBlock(cin, w, s), _OfficialBlock(w, w, 1)))
            cin = w
        for i, (c, k) in enumerate(zip((64, 128, 256), (8, 4, 2)), start=1):
            setattr(self, f"attention{i}", nn.Sequential(
                nn.Conv2d(c, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
                nn.ConvTranspose2d(c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.Sigmoid()))
            setattr(self, f"scala{i}", nn.Sequential(
                nn.Conv2d(c, 128, 1), nn.BatchNorm2d(128), nn.ReLU(),
                nn.Conv2d(128, 128, k, k), nn.BatchNorm2d(128), nn.ReLU(),
                nn.Conv2d(128, 512, 1), nn.BatchNorm2d(512), nn.ReLU(), nn.AvgPool2d(4, 4)))
        self.scala4 = nn.AvgPool2d(4, 4)
        for i in range(1, 5):
            setattr(self, f"fc{i}", nn.Linear(512, num_classes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        feats = []
        for i in range(1, 5):
            out = getattr(self, f"layer{i}")(out)
            gated = getattr(self, f"attention{i}")(out) * out if i < 4 else out
            feats.append(getattr(self, f"scala{i}")(gated).view(x.size(0), -1))
        logits = [getattr(self, f"fc{i}")(f) for i, f in enumerate(feats, start=1)]
        feature_loss = sum(((f - feats[3].detach()) ** 2).mean() for f in feats[:3])
        return logits[::-1], feature_loss


def _randomise(model, seed):
    """Non-trivial BN statistics, so a wrongly wired load cannot match by luck."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return create_model("scan_resnet18").eval()


def test_all_builders_registered():
    names = set(list_models())
    assert {"scan_resnet18", "scan_resnet34", "scan_resnet50", "scan_resnet101", "scan_resnet152", "scan_small"} <= names


def test_resnet18_official_state_dict_layout(resnet18):
    sd = resnet18.state_dict()
    assert len(sd) == 233
    expected = {
        "conv1.weight": (64, 3, 3, 3),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_var": (128,),
        "layer4.1.bn2.num_batches_tracked": (),
        "attention1.0.weight": (64, 64, 3, 3),
        "attention1.0.bias": (64,),
        "attention1.3.weight": (64, 64, 4, 4),
        "attention3.4.running_mean": (256,),
        "scala1.0.weight": (128, 64, 1, 1),
        "scala1.3.weight": (128, 128, 8, 8),
        "scala2.3.weight": (128, 128, 4, 4),
        "scala3.3.weight": (128, 128, 2, 2),
        "scala1.6.weight": (512, 128, 1, 1),
        "scala3.7.num_batches_tracked": (),
        "fc1.weight": (100, 512),
        "fc4.weight": (100, 512),
        "fc4.bias": (100,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert isinstance(resnet18.attention1[3], nn.ConvTranspose2d)
    assert not any(k.startswith(("scala4", "attention4", "layer1.0.downsample")) for k in sd)
    tops = {k.split(".")[0] for k in sd}
    assert tops == {"conv1", "bn1", *(f"layer{i}" for i in range(1, 5)), *(f"attention{i}" for i in range(1, 4)),
                    *(f"scala{i}" for i in range(1, 4)), *(f"fc{i}" for i in range(1, 5))}


def test_resnet50_official_state_dict_layout():
    sd = create_model("scan_resnet50", num_classes=10).state_dict()
    assert len(sd) == 431
    assert tuple(sd["layer1.0.conv3.weight"].shape) == (256, 64, 1, 1)
    assert tuple(sd["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert tuple(sd["layer3.5.conv2.weight"].shape) == (256, 256, 3, 3)
    assert tuple(sd["attention3.3.weight"].shape) == (1024, 1024, 4, 4)
    assert tuple(sd["scala1.6.weight"].shape) == (2048, 128, 1, 1)
    assert tuple(sd["fc4.weight"].shape) == (10, 2048)


def test_official_checkpoint_loads_strict_and_gives_same_logits(resnet18, tmp_path):
    torch.manual_seed(1)
    official = _randomise(_OfficialResNet18(), seed=1).eval()
    path = tmp_path / "bestmodel.pth"
    torch.save(official.state_dict(), path)
    ours = create_model("scan_resnet18")
    result = ours.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs, _ = official(x)
        mine = ours(x)
    assert len(mine) == 4
    for a, b in zip(mine, theirs[::-1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # and a model that is not the same network does not match
    with torch.no_grad():
        other = resnet18(x)
    assert not torch.allclose(other[0], theirs[3], atol=1e-3)


def test_stages_walk_equals_forward_and_features(resnet18):
    stages = resnet18.stages()
    assert len(stages) == 4
    assert stages[1].section is resnet18.layer2 and stages[3].section is resnet18.layer4
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outs = resnet18(x)
        h = x
        walked = []
        for section, head in stages:
            h = section(h)
            walked.append(head(h))
        logits, feats = resnet18.forward_with_features(x)
        x4 = resnet18.layer4(resnet18.layer3(resnet18.layer2(resnet18.layer1(F.relu(resnet18.bn1(resnet18.conv1(x)))))))
        x1 = resnet18.layer1(F.relu(resnet18.bn1(resnet18.conv1(x))))
        exit1 = resnet18.fc1(resnet18.scala1(resnet18.attention1(x1) * x1).flatten(1))
    assert [tuple(o.shape) for o in outs] == [(2, 100)] * 4
    for a, b, c in zip(outs, walked, logits):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
    assert [tuple(f.shape) for f in feats] == [(2, 512)] * 4
    torch.testing.assert_close(feats[3], F.avg_pool2d(x4, 4).flatten(1))
    torch.testing.assert_close(outs[0], exit1)


def test_wrappers_are_not_registered_but_follow_conversions():
    torch.manual_seed(4)
    model = create_model("scan_small").eval()
    keys = list(model.state_dict())
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    model.to(torch.float64)  # a conversion must reach the modules the stages call
    with torch.no_grad():
        outs = model(x)
    assert all(o.dtype == torch.float64 for o in outs)
    assert list(model.state_dict()) == keys
    assert all(not k.startswith("_") for k in keys)


def test_deepcopy_has_its_own_stages():
    torch.manual_seed(6)
    model = create_model("scan_small").eval()
    clone = copy.deepcopy(model)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        before = model(x)[0].clone()
        for p in clone.parameters():
            p.add_(1.0)
        assert torch.equal(model(x)[0], before)
        assert not torch.allclose(clone(x)[0], before)
    assert clone.stages()[0].section.conv1 is clone.conv1


@pytest.mark.parametrize("name, blocks", [("scan_resnet34", (3, 4, 6, 3)), ("scan_resnet101", (3, 4, 23, 3)),
                                          ("scan_resnet152", (3, 8, 36, 3))])
def test_deeper_builders(name, blocks):
    model = create_model(name, num_classes=10)
    assert tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5)) == blocks
    assert model.fc4.out_features == 10 and len(model.stages()) == 4


def test_scan_small_shapes_and_training_mode_outputs():
    torch.manual_seed(8)
    model = create_model("scan_small")
    assert isinstance(model, MultiExitNet) and len(model.stages()) == 3
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    logits, feats = model.forward_with_features(x)
    assert [tuple(o.shape) for o in logits] == [(5, 10)] * 3
    assert [tuple(f.shape) for f in feats] == [(5, 192)] * 3  # every feature has the deepest width
    sum(o.sum() for o in logits).backward()  # every exit is trainable
    assert model.attention1[0].weight.grad is not None and model.fc3.weight.grad is not None
    rgb = create_model("scan_small", num_classes=4, in_channels=3)
    assert [tuple(o.shape) for o in rgb(torch.rand(2, 3, 8, 8))] == [(2, 4)] * 3


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_classes must be a positive integer; got 0"):
        create_model("scan_resnet18", num_classes=0)
    with pytest.raises(ValueError, match="K >= 2 layers with K widths"):
        ScanResNet(BasicBlock, (1, 1), widths=(8, 16, 32), strides=(1, 2), scala_kernels=(2,))
    with pytest.raises(ValueError, match="cannot build 'scan_small'"):
        create_model("scan_small", depth=3)
