"""Networks written the way users write them (no tradeoff base classes), for tests/test_own_model.py."""

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class TinyResNet(nn.Module):
    """A plain single-exit ResNet for 8x8 digits, torchvision-style names."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16))
        self.layer3 = nn.Sequential(Block(16, 32, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_resnet(num_classes=10):
    return TinyResNet(num_classes)


class ThreeExits(nn.Module):
    """A user's 3-exit model without stages(): forward returns [exit1, exit2, fc] shallow -> deep."""

    def __init__(self, num_classes=10, deepest_first=False):
        super().__init__()
        self.deepest_first = deepest_first
        self.b1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2))
        self.b3 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.exit1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
        self.exit2 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x):
        x1 = self.b1(x)
        x2 = self.b2(x1)
        x3 = self.b3(x2)
        return [self.exit1(x1), self.exit2(x2), self.fc(x3)]


def three_exits(num_classes=10):
    return ThreeExits(num_classes)


class DeepestFirst(nn.Module):
    """SCAN's official order: forward returns deep -> shallow while stages() is shallow -> deep."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.net = ThreeExits(num_classes)

    def stages(self):
        from tradeoff.models.attach import NamedExits

        if "_named" not in self.__dict__:
            self.__dict__["_named"] = NamedExits(self.net, ["exit1", "exit2", "fc"])
        return self._named.stages()

    def forward(self, x):
        return self.net(x)[::-1]


def deepest_first(num_classes=10):
    return DeepestFirst(num_classes)


class _Section(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.fine = nn.Conv2d(cin, cout, 3, padding=1)
        self.coarse = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, scales):
        fine, coarse = scales
        return [F.relu(self.fine(fine)), F.relu(self.coarse(coarse) + F.avg_pool2d(self.fine(fine), 2))]


class _ScaleHead(nn.Module):
    def __init__(self, c, num_classes):
        super().__init__()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, scales):
        return self.fc(scales[1].mean(dim=(2, 3)))


class MultiScale(nn.Module):
    """MSDNet-style: every section passes a list [fine map, coarse map] to the next."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.sections = nn.ModuleList([_Section(1, 8), _Section(8, 8), _Section(8, 8)])
        self.heads = nn.ModuleList([_ScaleHead(8, num_classes) for _ in range(3)])

    def stages(self):
        first = _Split()
        return [(nn.Sequential(first, self.sections[0]), self.heads[0])] + [
            (self.sections[k], self.heads[k]) for k in (1, 2)]

    def forward(self, x):
        out, state = [], _Split()(x)
        for section, head in zip(self.sections, self.heads):
            state = section(state)
            out.append(head(state))
        return out


class _Split(nn.Module):
    def forward(self, x):
        return [x, F.avg_pool2d(x, 2)]


def multi_scale(num_classes=10):
    return MultiScale(num_classes)


def softplus_exits(num_classes=10):
    """ThreeExits with a Softplus, an op the FLOP counter has no handle for."""
    net = ThreeExits(num_classes)
    net.b1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Softplus())
    return net
