"""`scan_cnn`: SCAN's exits on a plain, CPU-friendly CNN sized from the input shape.

SCAN (Zhang et al., NeurIPS 2019) puts an attention module and a shallow classifier on each
section of a ResNet (models/scan.py). At full resolution on a 28x28 input those heads cost
more than the sections they read and train several times slower on a CPU, so here:

- sections are conv3x3-BN-ReLU stacks (widths 16 -> 32 -> 64 by default) with a 2x2
  max-pool at the start of every section after the first; the input's H x W and channels
  set the geometry, so any image size of at least 2^(K-1) pixels a side fits;
- exit k < K first average-pools its section's output by `head_pool[k]` (reduced
  resolution, 7x7 by default), then SCAN's attention (conv3x3 s2 -> BN -> ReLU -> deconv
  s2 back to the pooled size -> BN -> sigmoid) gates it, and SCAN's shallow classifier
  (1x1 conv -> BN -> ReLU -> conv3x3 s2 -> BN -> ReLU -> 1x1 conv to the deepest width ->
  BN -> ReLU -> global average pool) feeds `fc_k`;
- exit K is global average pooling of the last section -> `fc_K`.

Every exit's feature (the pooled vector fed to its `fc`) has the deepest width, so the
trainer's feature-hint loss applies as for `scan_resnet*`. Costs are counted by fvcore via
`stages()` like every family (max-pool counted as 0: comparisons, no multiply-add).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from tradeoff.models.base import MultiExitNet, Stage
from tradeoff.models.registry import register_model
from tradeoff.models.scan import ScanResNet, _ExitHead

__all__ = ["ScanCNN", "scan_cnn"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


class _Attention(nn.Module):
    """SCAN's mask, multiplied in: x * sigmoid(BN(deconv(ReLU(BN(conv3x3_s2(x)))))).

    SCAN's deconvolution is 4x4 stride 2, which only restores even sizes; a 3x3 stride-2
    deconvolution with `output_padding` set from the (fixed) input size restores any size
    (7x7 included), so the mask always matches the feature it gates.

    Args:
        channels: channels of the gated feature.
        size: (H, W) of the gated feature.
    """

    def __init__(self, channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        # conv3x3 s2 p1 maps n -> ceil(n / 2); deconv3x3 s2 p1 maps m -> 2m - 1 + output_padding.
        padding = tuple(1 - n % 2 for n in size)
        self.deconv = nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=padding)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = F.relu(self.bn1(self.conv(x)))
        return x * torch.sigmoid(self.bn2(self.deconv(mask)))


def _scala(in_channels: int, width: int, out_channels: int) -> nn.Sequential:
    """SCAN's shallow-classifier body at reduced resolution, ending in a global average pool."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
    )


class ScanCNN(MultiExitNet):
    """A K-section plain CNN with SCAN exit heads, sized from `input_shape`.

    Args:
        input_shape: (C, H, W) of one sample.
        num_classes: classes of every `fc_k`.
        widths: (K,) output channels of each section.
        convs: (K,) conv3x3-BN-ReLU layers per section.
        head_pool: (K-1,) average-pool factor applied before exit k's attention (1 = none);
            default: down to at most 7 pixels a side (4x and 2x for a 28x28 input).
        scala_width: hidden channels of the shallow classifiers.

    Raises:
        ValueError: inconsistent lengths, or an input too small for K - 1 max-pools.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        convs: Sequence[int] = (1, 2, 2),
        head_pool: Sequence[int] | None = None,
        scala_width: int = 32,
    ) -> None:
        super().__init__()
        shape = tuple(int(d) for d in input_shape)
        k = len(widths)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) of positive ints; got {tuple(input_shape)}")
        if k < 2 or len(convs) != k or min(convs) < 1 or (head_pool is not None and len(head_pool) != k - 1):
            raise ValueError(
                f"ScanCNN needs K >= 2 widths, K conv counts >= 1 and K-1 head pools; got widths={list(widths)}, "
                f"convs={list(convs)}, head_pool={head_pool}"
            )
        if min(shape[1:]) < 2 ** (k - 1):
            raise ValueError(f"input {shape[1]}x{shape[2]} is too small for {k} sections (each after the first "
                             f"halves it); need at least {2 ** (k - 1)} pixels a side")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
        self.input_shape = shape
        self.num_exits = k
        # (H, W) of each section's output: every section after the first starts with a 2x2 max-pool.
        sizes = [(shape[1] // 2**i, shape[2] // 2**i) for i in range(k)]
        if head_pool is None:
            head_pool = [max(1, -(-min(size) // 7)) for size in sizes[:-1]]
        in_channels = shape[0]
        for i, (width, count) in enumerate(zip(widths, convs), start=1):
            layers = [] if i == 1 else [nn.MaxPool2d(2)]
            for _ in range(count):
                layers += _conv_bn_relu(in_channels, width)
                in_channels = width
            setattr(self, f"section{i}", nn.Sequential(*layers))
        for i in range(1, k):
            pool = int(head_pool[i - 1])
            pooled = tuple(n // pool for n in sizes[i - 1])
            if pool < 1 or min(pooled) < 1:
                raise ValueError(f"head_pool[{i - 1}] must be in 1..{min(sizes[i - 1])} for a {sizes[i - 1]} feature; "
                                 f"got {pool}")
            setattr(self, f"attention{i}", nn.Sequential(
                *([nn.AvgPool2d(pool)] if pool > 1 else []), _Attention(widths[i - 1], pooled)))
            setattr(self, f"scala{i}", _scala(widths[i - 1], scala_width, widths[-1]))
        setattr(self, f"scala{k}", nn.AdaptiveAvgPool2d(1))
        for i in range(1, k + 1):
            setattr(self, f"fc{i}", nn.Linear(widths[-1], num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # The attention Sequential already multiplies its mask in, so each head is
        # fc(flatten(scala(attention(x)))); kept in a plain list so state_dict keys stay flat.
        self._stage_list = [
            Stage(getattr(self, f"section{i}"), _ExitHead(None, nn.Sequential(
                *([getattr(self, f"attention{i}")] if i < k else []), getattr(self, f"scala{i}")), getattr(self, f"fc{i}")))
            for i in range(1, k + 1)
        ]

    def stages(self) -> list[Stage]:
        """K `Stage(section_k, head_k)`; head k < K = pool -> attention -> scala -> fc."""
        return list(self._stage_list)

    # Same walk as SCAN's ResNet: logits and the pooled feature of every exit, for the hint loss.
    forward_with_features = ScanResNet.forward_with_features


@register_model
def scan_cnn(num_classes: int = 10, in_channels: int = 1, input_size: Sequence[int] = (28, 28)) -> ScanCNN:
    """Three-exit SCAN CNN (16/32/64 channels) for (in_channels, H, W) inputs; 28x28 by default."""
    height, width = (int(s) for s in input_size)
    return ScanCNN((in_channels, height, width), num_classes=num_classes)
