"""Adjoined Networks (AN/DAN): a large network and a small one made of its first channels.

The small network is not a copy: it walks the large network's layers and applies each
conv / linear / BatchNorm with its parameters sliced to the FIRST `width_fraction` output
(and input) channels. The slices are views of the
large tensors, so the two networks share their weights and a gradient on the small path
lands on the shared slice. Two exceptions keep the shapes right: the first convolution
keeps all input channels (the image's), the last linear layer all outputs (the classes).

BatchNorm: the small path uses the sliced BN scale and shift (shared parameters, as the
AN paper shares everything) but keeps its OWN running mean and variance (buffers, not
parameters): the statistics of a half-width network's activations differ from the large
one's, and sharing them would make one of the two wrong at eval time.

As a cascade (training: `train.adjoined_loss`; CE on both + distillation of the small one
from the detached large one) there are two exits: exit 1 = the small network, exit 2 =
the large network. Both sections are identities, so exit 2's cumulative cost is small +
large (the cascade ran both) and `baseline_flops` is the large network alone.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from tradeoff.models.base import MultiExitNet, Stage
from tradeoff.models.registry import register_model
from tradeoff.models.resnet import BasicBlock, PlainResNet, small_strides

__all__ = ["AdjoinedNet", "adjoined_small", "adjoined_resnet18", "small_width"]

def small_width(channels: int, fraction: float) -> int:
    """Channels the small network keeps of a `channels`-wide layer (round half up, >= 1)."""
    return max(1, int(math.floor(fraction * channels + 0.5)))


class _SmallPath(nn.Module):
    """The small network's own state (BN running statistics only) and its sliced forward.

    Registers no parameters: `run(large, x)` applies the large `PlainResNet`'s layers with
    their parameters sliced inside the call, so gradients reach the shared slices and
    fvcore's tracer counts the small network's true (narrower) convolutions.
    """

    def __init__(self, large: PlainResNet, fraction: float) -> None:
        super().__init__()
        if not isinstance(large, PlainResNet):
            raise ValueError(f"AdjoinedNet needs a PlainResNet as the large network; got {type(large).__name__}")
        self.fraction = fraction
        self._bn_keys: dict[str, str] = {}
        for name, m in large.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                key = name.replace(".", "_")
                width = small_width(m.num_features, fraction)
                self.register_buffer(f"{key}_mean", torch.zeros(width))
                self.register_buffer(f"{key}_var", torch.ones(width))
                self._bn_keys[name] = key
        self.__dict__["_bn_of"] = {id(m): name for name, m in large.named_modules() if isinstance(m, nn.BatchNorm2d)}

    def _conv(self, x: torch.Tensor, conv: nn.Conv2d, *, keep_in: bool = False) -> torch.Tensor:
        out_c = small_width(conv.out_channels, self.fraction)
        in_c = conv.in_channels if keep_in else small_width(conv.in_channels, self.fraction)
        bias = None if conv.bias is None else conv.bias[:out_c]
        return F.conv2d(x, conv.weight[:out_c, :in_c], bias, conv.stride, conv.padding, conv.dilation)

    def _bn(self, x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
        key = self._bn_keys[self._bn_of[id(bn)]]
        c = x.shape[1]
        return F.batch_norm(
            x, getattr(self, f"{key}_mean"), getattr(self, f"{key}_var"), bn.weight[:c], bn.bias[:c],
            self.training, bn.momentum, bn.eps,
        )

    def _block(self, x: torch.Tensor, block: BasicBlock) -> torch.Tensor:
        out = F.relu(self._bn(self._conv(x, block.conv1), block.bn1))
        out = self._bn(self._conv(out, block.conv2), block.bn2)
        if block.downsample is not None:
            conv, bn = block.downsample[0], block.downsample[1]
            x = self._bn(self._conv(x, conv), bn)
        return F.relu(out + x)

    def run(self, large: PlainResNet, x: torch.Tensor) -> torch.Tensor:
        """Small-network logits (B, num_classes) for input x (B, C, H, W)."""
        x = F.relu(self._bn(self._conv(x, large.conv1, keep_in=True), large.bn1))
        for i in range(1, large.num_layers + 1):
            for block in getattr(large, f"layer{i}"):
                x = self._block(x, block)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        fc = large.fc
        return F.linear(x, fc.weight[:, : x.shape[1]], fc.bias)


class _Exit(nn.Module):
    """An exit head calling one method of the adjoined network (registered, so tracers see its weights)."""

    def __init__(self, net: "AdjoinedNet", method: str) -> None:
        super().__init__()
        self.net, self.method = net, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.net, self.method)(x)


class AdjoinedNet(MultiExitNet):
    """Two exits over one set of weights: the small network, then the large one.

    Args:
        large: the base network, a `PlainResNet` (BasicBlock ResNet with one exit).
        width_fraction: share of each layer's channels the small network uses, in (0, 1).
    """

    def __init__(self, large: PlainResNet, *, width_fraction: float = 0.5) -> None:
        super().__init__()
        if not (isinstance(width_fraction, (int, float)) and 0.0 < width_fraction < 1.0):
            raise ValueError(f"width_fraction must be in (0, 1); got {width_fraction!r}")
        self.width_fraction = float(width_fraction)
        self.large = large
        self.small = _SmallPath(large, self.width_fraction)
        self.input_shape = getattr(large, "input_shape", None)
        # Head wrappers hold this network, so they stay out of its module tree (no cycle,
        # no duplicate state_dict keys).
        self.__dict__["_stage_list"] = [
            Stage(nn.Identity(), _Exit(self, "small_logits")),
            Stage(nn.Identity(), _Exit(self, "large_logits")),
        ]

    def small_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.small.run(self.large, x)

    def large_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.large.logits(x)

    def stages(self) -> list[Stage]:
        """Exit 1 = small network, exit 2 = large network; sections are identities."""
        return list(self._stage_list)


@register_model
def adjoined_small(num_classes: int = 10, in_channels: int = 1, width_fraction: float = 0.5,
                   input_size: Sequence[int] = (8, 8)) -> AdjoinedNet:
    """Adjoined pair (a 32/64/128-channel ResNet and its first `width_fraction`), strided for
    `input_size` like `mainnet_small` (8x8 digits by default)."""
    large = PlainResNet((1, 1, 1), num_classes=num_classes, in_channels=in_channels, widths=(32, 64, 128),
                        strides=small_strides(input_size), input_shape=(in_channels, *(int(s) for s in input_size)))
    return AdjoinedNet(large, width_fraction=width_fraction)


@register_model
def adjoined_resnet18(num_classes: int = 100, in_channels: int = 3, width_fraction: float = 0.5) -> AdjoinedNet:
    """Adjoined pair for 32x32 CIFAR: a plain ResNet18 and its first `width_fraction` channels."""
    large = PlainResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels,
                        widths=(64, 128, 256, 512), strides=(1, 2, 2, 2), input_shape=(in_channels, 32, 32))
    return AdjoinedNet(large, width_fraction=width_fraction)
