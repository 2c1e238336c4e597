"""The CIFAR-style ResNet pieces the families share: torchvision's `BasicBlock` and
`Bottleneck` parameter layout (He et al., 2016), the stem without max-pool, and a plain
single-exit ResNet (SideNet's MainNet, Adjoined Networks' large network).

Parameter names follow torchvision's (`conv1, bn1, conv2, bn2, downsample.0/1`), which
the official SCAN checkpoints use too.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from tradeoff.models.base import MultiExitNet, Stage

__all__ = ["BasicBlock", "Bottleneck", "ResNetStem", "PlainResNet", "downsample_path"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual; torchvision's key names (`downsample.0/1`)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample_path(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 with expansion 4, as in the CIFAR ResNets."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample_path(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def downsample_path(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class ResNetStem(nn.Module):
    """Section 1: conv1 -> bn1 -> ReLU -> layer1 (no max-pool, as in the CIFAR ResNets)."""

    def __init__(self, conv1: nn.Module, bn1: nn.Module, layer1: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.layer1 = conv1, bn1, layer1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(F.relu(self.bn1(self.conv1(x))))


class _Classifier(nn.Module):
    """Global average pool -> flatten -> fc."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class PlainResNet(MultiExitNet):
    """A single-exit CIFAR-style ResNet (3x3 stem, no max-pool, `layer1..L`, pool, `fc`).

    Args:
        num_blocks: BasicBlocks per layer (L layers).
        num_classes: classes of `fc`.
        in_channels: input channels.
        widths: (L,) channels of each layer.
        strides: (L,) stride of each layer's first block.
        input_shape: (C, H, W) the network is made for (used in error messages only).
    """

    def __init__(
        self,
        num_blocks: Sequence[int],
        *,
        num_classes: int,
        in_channels: int,
        widths: Sequence[int],
        strides: Sequence[int],
        input_shape: tuple[int, int, int],
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
        self.num_layers = len(num_blocks)
        self.widths = tuple(widths)
        self.input_shape = tuple(input_shape)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (planes, count, stride) in enumerate(zip(widths, num_blocks, strides), start=1):
            blocks = []
            for s in [stride] + [1] * (count - 1):
                blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Wrappers kept out of the module tree so state_dict keys stay conv1, bn1, layerN, fc.
        self.__dict__["_sections"] = [ResNetStem(self.conv1, self.bn1, self.layer1)] + [
            getattr(self, f"layer{i}") for i in range(2, self.num_layers + 1)
        ]
        self.__dict__["_classifier"] = _Classifier(self.fc)

    def sections(self) -> list[nn.Module]:
        """The L backbone sections: (conv1, bn1, ReLU, layer1), layer2, ..., layerL."""
        return list(self._sections)

    @property
    def classifier(self) -> nn.Module:
        return self._classifier

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        for section in self._sections:
            x = section(x)
        return self._classifier(x)

    def stages(self) -> list[Stage]:
        """One stage: the whole backbone, then the classifier."""
        return [Stage(nn.Sequential(*self._sections), self._classifier)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.logits(x)]


def small_strides(input_size: Sequence[int]) -> tuple[int, int, int]:
    """Strides of a 3-layer small ResNet for an H x W input: layer 3 always halves it, layer 2
    too while that leaves more than 8 pixels a side (8x8 -> 8, 8, 4; 28x28 -> 28, 14, 7).

    Raises:
        ValueError: `input_size` is not two positive ints of at least 2.
    """
    size = tuple(int(s) for s in input_size)
    if len(size) != 2 or min(size) < 2:
        raise ValueError(f"input_size must be (H, W) with both >= 2; got {tuple(input_size)}")
    return (1, 2 if min(size) // 2 > 8 else 1, 2)
