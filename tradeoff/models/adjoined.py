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

Per-layer widths (DAN, the paper's second half, `models/dan.py`): instead of one
`width_fraction`, `small_widths` gives the small network's channels per WIDTH SLOT
(`width_slots`): one slot per residual stage (the stem, every block output and every
shortcut of the stage must agree, or the residual sums would not line up) and one per
BasicBlock's inner convolution. The uniform default is the same network as before.

As a cascade (training: `adjoined_loss`; CE on both + distillation of the small one
from the detached large one) there are two exits: exit 1 = the small network, exit 2 =
the large network. Both sections are identities, so exit 2's cumulative cost is small +
large (the cascade ran both) and `baseline_flops` is the large network alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from tradeoff.models.base import MultiExitNet, Stage
from tradeoff.models.registry import register_model
from tradeoff.models.resnet import BasicBlock, PlainResNet, small_strides
from tradeoff.models.scan import DEFAULT_TEMPERATURE

__all__ = ["AdjoinedNet", "WidthSlot", "adjoined_loss", "adjoined_small", "adjoined_resnet18", "conv_plan", "small_width", "width_slots"]

def adjoined_loss(
    logits: list[torch.Tensor],
    labels: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    distill_weight: float = 1.0,
) -> torch.Tensor:
    """Adjoined Networks' joint objective: CE(large) + CE(small) + w T^2 KL(large || small).

    Args:
        logits: [small (B, C), large (B, C)], the two exits of an adjoined network.
        labels: (B,) int64.
        temperature: T of the distillation.
        distill_weight: w; the large network's logits are detached (it is the teacher).
    """
    small, large = logits
    teacher = F.log_softmax(large.detach() / temperature, dim=1)
    student = F.log_softmax(small / temperature, dim=1)
    kl = F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return F.cross_entropy(large, labels) + F.cross_entropy(small, labels) + distill_weight * temperature**2 * kl


def small_width(channels: int, fraction: float) -> int:
    """Channels the small network keeps of a `channels`-wide layer (round half up, >= 1)."""
    return max(1, int(math.floor(fraction * channels + 0.5)))


@dataclass(frozen=True)
class WidthSlot:
    """One per-layer width decision of the small network.

    Attributes:
        name: "layer{i}" (stage i's output channels; stage 1 includes the stem) or
            "layer{i}.{j}.conv1" (block j's inner width).
        channels: the large network's channels there (the widest choice).
    """

    name: str
    channels: int


def conv_plan(large: PlainResNet) -> list[tuple[str, str, str | None, str]]:
    """Every conv of `large` in forward order as (conv name, its BN's name, input slot, output slot).

    The input slot is None for the stem (it reads the image). A stage whose first block has
    an identity shortcut shares its predecessor's slot (the residual sum needs equal widths).
    """
    plan = []
    stage_slot = "layer1"
    first = large.layer1[0]
    if first.downsample is not None:  # stem and layer1 may differ only across a projection
        stage_slot = "stem"
    plan.append(("conv1", "bn1", None, stage_slot))
    for i in range(1, large.num_layers + 1):
        for j, block in enumerate(getattr(large, f"layer{i}")):
            prefix = f"layer{i}.{j}"
            in_slot = stage_slot
            if block.downsample is not None:
                stage_slot = f"layer{i}"
            plan.append((f"{prefix}.conv1", f"{prefix}.bn1", in_slot, f"{prefix}.conv1"))
            plan.append((f"{prefix}.conv2", f"{prefix}.bn2", f"{prefix}.conv1", stage_slot))
            if block.downsample is not None:
                plan.append((f"{prefix}.downsample.0", f"{prefix}.downsample.1", in_slot, stage_slot))
    return plan


def width_slots(large: PlainResNet) -> list[WidthSlot]:
    """The small network's width decisions, in forward order (see `conv_plan`)."""
    if not isinstance(large, PlainResNet):
        raise ValueError(f"per-layer widths need a PlainResNet (channel prefixes); got {type(large).__name__}")
    modules = dict(large.named_modules())
    slots: dict[str, int] = {}
    for conv, _, _, out_slot in conv_plan(large):
        slots.setdefault(out_slot, modules[conv].out_channels)
    return [WidthSlot(name, channels) for name, channels in slots.items()]


def _check_small_widths(large: PlainResNet, small_widths: Mapping) -> dict[str, int]:
    slots = width_slots(large)
    names = [s.name for s in slots]
    if not isinstance(small_widths, Mapping) or sorted(small_widths) != sorted(names):
        given = sorted(small_widths) if isinstance(small_widths, Mapping) else type(small_widths).__name__
        raise ValueError(f"small_widths must map every width slot {names} to a channel count; got {given}")
    widths = {}
    for slot in slots:
        w = small_widths[slot.name]
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= slot.channels:
            raise ValueError(f"small_widths[{slot.name!r}] must be an integer in 1..{slot.channels}; got {w!r}")
        widths[slot.name] = int(w)
    return widths


class _SmallPath(nn.Module):
    """The small network's own state (BN running statistics only) and its sliced forward.

    Registers no parameters: `run(large, x)` applies the large `PlainResNet`'s layers with
    their parameters sliced inside the call, so gradients reach the shared slices and
    fvcore's tracer counts the small network's true (narrower) convolutions.
    """

    def __init__(self, large: PlainResNet, fraction: float | None, small_widths: dict[str, int] | None = None) -> None:
        super().__init__()
        if not isinstance(large, PlainResNet):
            raise ValueError(f"AdjoinedNet needs a PlainResNet as the large network; got {type(large).__name__}")
        self.fraction = fraction
        modules = dict(large.named_modules())
        widths: dict[int, tuple[int, int]] = {}  # id(conv) -> (in, out) channels of the small network
        for conv_name, _, in_slot, out_slot in conv_plan(large):
            conv = modules[conv_name]
            if small_widths is None:  # one fraction everywhere (AN)
                in_c = conv.in_channels if in_slot is None else small_width(conv.in_channels, fraction)
                widths[id(conv)] = (in_c, small_width(conv.out_channels, fraction))
            else:
                in_c = conv.in_channels if in_slot is None else small_widths[in_slot]
                widths[id(conv)] = (in_c, small_widths[out_slot])
        bn_width = {bn: widths[id(modules[conv])][1] for conv, bn, _, _ in conv_plan(large)}
        self._bn_keys: dict[str, str] = {}
        for name, m in large.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                key = name.replace(".", "_")
                width = bn_width[name]
                self.register_buffer(f"{key}_mean", torch.zeros(width))
                self.register_buffer(f"{key}_var", torch.ones(width))
                self._bn_keys[name] = key
        self.__dict__["_bn_of"] = {id(m): name for name, m in large.named_modules() if isinstance(m, nn.BatchNorm2d)}
        self.__dict__["_widths"] = widths

    def _conv(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        in_c, out_c = self._widths[id(conv)]
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
        x = F.relu(self._bn(self._conv(x, large.conv1), large.bn1))
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
        width_fraction: share of each layer's channels the small network uses, in (0, 1)
            (default 0.5 when `small_widths` is not given).
        small_widths: per-layer widths instead, {slot name: channels} for every slot of
            `width_slots(large)` (DAN's derived network, `models/dan.py`).

    Raises:
        ValueError: both or a malformed one of `width_fraction` / `small_widths`.
    """

    def __init__(self, large: PlainResNet, *, width_fraction: float | None = None,
                 small_widths: Mapping[str, int] | None = None) -> None:
        super().__init__()
        if small_widths is not None:
            if width_fraction is not None:
                raise ValueError("give width_fraction or small_widths, not both")
            self.width_fraction = None
            self.small_widths = _check_small_widths(large, small_widths) if isinstance(large, PlainResNet) else None
        else:
            width_fraction = 0.5 if width_fraction is None else width_fraction
            if not (isinstance(width_fraction, (int, float)) and 0.0 < width_fraction < 1.0):
                raise ValueError(f"width_fraction must be in (0, 1); got {width_fraction!r}")
            self.width_fraction = float(width_fraction)
            self.small_widths = None
        self.large = large
        self.small = _SmallPath(large, self.width_fraction, self.small_widths)
        self.input_shape = getattr(large, "input_shape", None)
        # Head wrappers hold this network, so they stay out of its module tree (no cycle,
        # no duplicate state_dict keys).
        self.__dict__["_stage_list"] = [
            Stage(nn.Identity(), _Exit(self, "small_logits")),
            Stage(nn.Identity(), _Exit(self, "large_logits")),
        ]

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, *, temperature: float = DEFAULT_TEMPERATURE,
                      **_) -> torch.Tensor:
        """AN's joint objective on one batch (`adjoined_loss`)."""
        return adjoined_loss(self(x), y, temperature=temperature)

    def small_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.small.run(self.large, x)

    def large_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.large.logits(x)

    def stages(self) -> list[Stage]:
        """Exit 1 = small network, exit 2 = large network; sections are identities."""
        return list(self._stage_list)


@register_model
def adjoined_small(num_classes: int = 10, in_channels: int = 1, width_fraction: float | None = None,
                   small_widths: dict | None = None, input_size: Sequence[int] = (8, 8)) -> AdjoinedNet:
    """Adjoined pair: a 32/64/128-channel ResNet strided for `input_size` like `mainnet_small`
    (8x8 digits by default) and its first `width_fraction` (default 0.5) of every layer, or
    per-layer `small_widths` (DAN)."""
    large = PlainResNet((1, 1, 1), num_classes=num_classes, in_channels=in_channels, widths=(32, 64, 128),
                        strides=small_strides(input_size), input_shape=(in_channels, *(int(s) for s in input_size)))
    return AdjoinedNet(large, width_fraction=width_fraction, small_widths=small_widths)


@register_model
def adjoined_resnet18(num_classes: int = 100, in_channels: int = 3, width_fraction: float | None = None,
                      small_widths: dict | None = None) -> AdjoinedNet:
    """Adjoined pair for 32x32 CIFAR: a plain ResNet18 and its first `width_fraction` channels
    (default 0.5), or per-layer `small_widths` (DAN)."""
    large = PlainResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels,
                        widths=(64, 128, 256, 512), strides=(1, 2, 2, 2), input_shape=(in_channels, 32, 32))
    return AdjoinedNet(large, width_fraction=width_fraction, small_widths=small_widths)
