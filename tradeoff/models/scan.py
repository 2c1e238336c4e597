"""SCAN (Zhang et al., NeurIPS 2019): a ResNet with attention-gated shallow classifiers.

The parameter layout is the official code's, key for key (top-level `conv1, bn1,
layer1..4, attention1..3, scala1..3, fc1..fc4`, Sequential indices included), so an
official `bestmodel.pth` state_dict loads with `strict=True`. The official `forward`
returns `[out4, out3, out2, out1], feature_loss`; ours returns the exits shallow -> deep
(the contract of `MultiExitNet`) and computes the feature-hint loss in its training
objective (`scan_loss`, `ScanResNet.training_loss`) from `forward_with_features`.

`ScanResNet` is also the shared constructor of `scan_small` (models/small.py): the same
design sized by `widths`, `strides`, `scala_kernels` and `pool`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from tradeoff.models.base import MultiExitNet, Stage
from tradeoff.models.registry import register_model
from tradeoff.models.resnet import BasicBlock, Bottleneck, ResNetStem

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ScanResNet",
    "scan_resnet18",
    "scan_resnet34",
    "scan_resnet50",
    "scan_resnet101",
    "scan_resnet152",
    "scan_loss",
]

# Feature-hint weight. DESIGN.md: squared distance of each shallow feature to the detached
# deepest one. We take the per-sample squared L2 distance, averaged over the batch and summed
# over the shallow exits. SCAN's code weights an (unsquared) batch-level distance by 0.03;
# with squared distances of post-ReLU features (hundreds for 512-d ResNet features) a much
# smaller weight keeps the hint a small fraction of the loss, as in the paper.
DEFAULT_HINT_WEIGHT = 1e-4
DEFAULT_TEMPERATURE = 3.0
DEFAULT_ALPHA = 0.5


def scan_loss(
    logits: list[torch.Tensor],
    features: list[torch.Tensor] | None,
    labels: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    alpha: float = DEFAULT_ALPHA,
    hint_weight: float = DEFAULT_HINT_WEIGHT,
) -> torch.Tensor:
    """SCAN's self-distillation objective for one batch.

    loss = CE(z_K, y) + sum_{k<K} [(1 - alpha) CE(z_k, y)
                                   + alpha T^2 * mean_n(-sum_c p_K,T log p_k,T)]
           + hint_weight * sum_{k<K} mean_n ||f_k - f_K||^2
    where p_{k,T} = softmax(z_k / T) and the deepest exit's z_K and f_K are detached
    (the teacher learns only from the labels).

    Args:
        logits: K tensors (B, C), shallow -> deep.
        features: K tensors (B, D) (flattened pre-fc features) or None to skip the hint.
        labels: (B,) int64.
        temperature: T of the soft targets.
        alpha: lambda, the weight of distillation against CE on shallow exits.
        hint_weight: weight of the feature-hint term (0 disables it).

    Returns:
        Scalar tensor.
    """
    deepest = logits[-1]
    loss = F.cross_entropy(deepest, labels)
    if len(logits) == 1:
        return loss
    teacher = F.softmax(deepest.detach() / temperature, dim=1)
    for student in logits[:-1]:
        soft_ce = -(teacher * F.log_softmax(student / temperature, dim=1)).sum(dim=1).mean()
        loss = loss + (1.0 - alpha) * F.cross_entropy(student, labels) + alpha * temperature**2 * soft_ce
    if features is not None and hint_weight > 0:
        target = features[-1].detach()
        for feat in features[:-1]:
            loss = loss + hint_weight * (feat - target).pow(2).sum(dim=1).mean()
    return loss


def _attention(channels: int) -> nn.Sequential:
    """Half-resolution mask in (0, 1): conv 3x3 s2 -> BN -> ReLU -> deconv 4x4 s2 -> BN -> sigmoid."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1),
        nn.BatchNorm2d(channels),
        nn.Sigmoid(),
    )


def _scala(in_channels: int, width: int, out_channels: int, kernel: int, pool: int) -> nn.Sequential:
    """Shallow classifier body: 1x1 -> k x k stride k -> 1x1 to the deepest feature width, pooled."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, kernel, stride=kernel),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, out_channels, 1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.AvgPool2d(pool, pool),
    )


class _ExitHead(nn.Module):
    """Exit head: `fc(flatten(scala(attention(x) * x)))`, or `fc(flatten(scala(x)))` without attention.

    `feature(x)` is the flattened `scala` output that the feature-hint loss compares.
    """

    def __init__(self, attention: nn.Module | None, scala: nn.Module, fc: nn.Module) -> None:
        super().__init__()
        self.attention, self.scala, self.fc = attention, scala, fc

    def feature(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention is not None:
            x = self.attention(x) * x
        return torch.flatten(self.scala(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feature(x))


class ScanResNet(MultiExitNet):
    """A CIFAR ResNet cut into K sections after `layer1..K`, one exit per section.

    Exits 1..K-1: `fc_i(flatten(scala_i(attention_i(x_i) * x_i)))`; exit K:
    `fc_K(flatten(scala_K(x_K)))` with `scala_K` a parameter-free average pool. With the
    defaults this is the official SCAN network for 32x32 inputs.

    Args:
        block: `BasicBlock` or `Bottleneck`.
        num_blocks: blocks per layer; its length K is the number of exits.
        num_classes: classes of every `fc_i`.
        in_channels: input channels (3 for CIFAR).
        widths: (K,) planes of each layer (times `block.expansion` channels out).
        strides: (K,) stride of each layer's first block.
        scala_width: hidden channels of the shallow classifiers (128 in SCAN).
        scala_kernels: (K-1,) kernel = stride of each shallow classifier's middle conv,
            chosen so that its output is `pool` x `pool`.
        pool: average-pool size at the end of every `scala_i` (4 in SCAN).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        *,
        num_classes: int = 100,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        strides: Sequence[int] = (1, 2, 2, 2),
        scala_width: int = 128,
        scala_kernels: Sequence[int] = (8, 4, 2),
        pool: int = 4,
    ) -> None:
        super().__init__()
        num_exits = len(num_blocks)
        if num_exits < 2 or len(widths) != num_exits or len(strides) != num_exits or len(scala_kernels) != num_exits - 1:
            raise ValueError(
                f"ScanResNet needs K >= 2 layers with K widths, K strides and K-1 scala kernels; got "
                f"num_blocks={list(num_blocks)}, widths={list(widths)}, strides={list(strides)}, "
                f"scala_kernels={list(scala_kernels)}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
        self.num_exits = num_exits
        stem_width = widths[0]
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_planes = stem_width
        for i, (planes, count, stride) in enumerate(zip(widths, num_blocks, strides), start=1):
            blocks = []
            for s in [stride] + [1] * (count - 1):
                blocks.append(block(in_planes, planes, s))
                in_planes = planes * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        feature_dim = widths[-1] * block.expansion
        for i in range(1, num_exits):
            setattr(self, f"attention{i}", _attention(widths[i - 1] * block.expansion))
        for i in range(1, num_exits):
            channels = widths[i - 1] * block.expansion
            setattr(self, f"scala{i}", _scala(channels, scala_width, feature_dim, scala_kernels[i - 1], pool))
        setattr(self, f"scala{num_exits}", nn.AvgPool2d(pool, pool))
        for i in range(1, num_exits + 1):
            setattr(self, f"fc{i}", nn.Linear(feature_dim, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Built once and kept in a plain list (not registered), so state_dict keys stay the
        # official ones while forward does not rebuild wrappers on every call.
        self._stage_list = [Stage(ResNetStem(self.conv1, self.bn1, self.layer1), self._head(1))]
        self._stage_list += [Stage(getattr(self, f"layer{i}"), self._head(i)) for i in range(2, num_exits + 1)]

    def _head(self, i: int) -> _ExitHead:
        attention = getattr(self, f"attention{i}", None)
        return _ExitHead(attention, getattr(self, f"scala{i}"), getattr(self, f"fc{i}"))

    def stages(self) -> list[Stage]:
        """K `Stage(section, head)`: section 1 = conv1, bn1, ReLU, layer1; section i = layer_i."""
        return list(self._stage_list)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, *, temperature: float = DEFAULT_TEMPERATURE,
                      alpha: float = DEFAULT_ALPHA, hint_weight: float = DEFAULT_HINT_WEIGHT, **_) -> torch.Tensor:
        """SCAN's objective on one batch (`scan_loss`, with the feature hint when hint_weight > 0)."""
        if hint_weight > 0:
            logits, features = self.forward_with_features(x)
        else:
            logits, features = self(x), None
        return scan_loss(logits, features, y, temperature=temperature, alpha=alpha, hint_weight=hint_weight)

    def forward_with_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every exit's logits and the feature each was computed from, both shallow -> deep.

        For the trainer's feature-hint loss: feature k is the flattened `scala_k` output,
        (N, feature_dim) for every k, so the shallow ones can be pulled toward the (detached)
        deepest one. `forward` returns the same logits.

        Returns:
            (logits, features): two lists of K tensors, (N, num_classes) and (N, feature_dim).
        """
        logits, features = [], []
        for section, head in self._stage_list:
            x = section(x)
            feature = head.feature(x)
            features.append(feature)
            logits.append(head.fc(feature))
        return logits, features


# Block counts of layer1..4 and whether the block is a Bottleneck -> depth (He et al., 2016, table 1).
SCAN_DEPTHS = {
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), False): 34,
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
    ((3, 8, 36, 3), True): 152,
}


def infer_scan_arch(state) -> str | None:
    """`scan_resnetD` from the block counts of layer1..4 in a state_dict (SCAN key layout), else None."""
    import re

    if "fc4.weight" not in state or "scala1.0.weight" not in state:
        return None
    counts = []
    for layer in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{layer}\.(\d+)\.conv1\.weight$", k))}
        counts.append(max(blocks) + 1 if blocks else 0)
    depth = SCAN_DEPTHS.get((tuple(counts), "layer1.0.conv3.weight" in state))
    return f"scan_resnet{depth}" if depth else None


def _scan_resnet(block, num_blocks: Sequence[int], num_classes: int) -> ScanResNet:
    return ScanResNet(block, num_blocks, num_classes=num_classes)


@register_model
def scan_resnet18(num_classes: int = 100) -> ScanResNet:
    """SCAN ResNet18 for 32x32 inputs (233 state_dict entries)."""
    return _scan_resnet(BasicBlock, (2, 2, 2, 2), num_classes)


@register_model
def scan_resnet34(num_classes: int = 100) -> ScanResNet:
    """SCAN ResNet34 for 32x32 inputs."""
    return _scan_resnet(BasicBlock, (3, 4, 6, 3), num_classes)


@register_model
def scan_resnet50(num_classes: int = 100) -> ScanResNet:
    """SCAN ResNet50 for 32x32 inputs (431 state_dict entries)."""
    return _scan_resnet(Bottleneck, (3, 4, 6, 3), num_classes)


@register_model
def scan_resnet101(num_classes: int = 100) -> ScanResNet:
    """SCAN ResNet101 for 32x32 inputs."""
    return _scan_resnet(Bottleneck, (3, 4, 23, 3), num_classes)


@register_model
def scan_resnet152(num_classes: int = 100) -> ScanResNet:
    """SCAN ResNet152 for 32x32 inputs."""
    return _scan_resnet(Bottleneck, (3, 8, 36, 3), num_classes)
