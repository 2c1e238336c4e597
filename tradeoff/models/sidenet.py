"""SideNet (Morisot 2020): a small side classifier on a frozen MainNet's intermediate feature.

Two parts:
- `PlainResNet`, registered as `mainnet_small` (8x8 digits, or any `input_size`) and `mainnet_resnet18` (32x32
  CIFAR): an ordinary single-exit ResNet built from SCAN's `BasicBlock`, trained with
  `tradeoff train` like any model (its `forward` returns a one-element list).
- `SideNet`, registered as `sidenet`: the MainNet (frozen: no gradients, BatchNorm kept in
  eval mode) plus a one-hidden-layer head on the output of `layer{tap}`. It is a two-exit
  cascade: exit 1 = MainNet up to the tap + side head; exit 2 = the rest of the MainNet +
  its classifier, so the MainNet exit's cumulative cost includes the side head a sample
  ran first, and `baseline_flops` is the MainNet alone.

A SideNet checkpoint is self-contained: its state_dict holds the MainNet's weights
(`main.*`) beside the side head's (`side.*`), and its arch_kwargs name the MainNet's arch.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from tradeoff.models.base import MultiExitNet, Stage
from tradeoff.models.registry import create_model, register_model
from tradeoff.models.scan import BasicBlock, ResNetStem

__all__ = ["PlainResNet", "SideNet", "mainnet_small", "mainnet_resnet18", "sidenet", "sidenet_from_main",
           "small_strides"]


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


@register_model
def mainnet_small(num_classes: int = 10, in_channels: int = 1, input_size: Sequence[int] = (8, 8)) -> PlainResNet:
    """Single-exit MainNet (16/32/64 channels) + fc, strided for `input_size` (8x8 digits by default)."""
    return PlainResNet((1, 1, 1), num_classes=num_classes, in_channels=in_channels, widths=(16, 32, 64),
                       strides=small_strides(input_size), input_shape=(in_channels, *(int(s) for s in input_size)))


@register_model
def mainnet_resnet18(num_classes: int = 100, in_channels: int = 3) -> PlainResNet:
    """Single-exit MainNet for 32x32 CIFAR: a plain ResNet18 (the backbone of scan_resnet18)."""
    return PlainResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, widths=(64, 128, 256, 512),
                       strides=(1, 2, 2, 2), input_shape=(in_channels, 32, 32))


class SideNet(MultiExitNet):
    """A frozen MainNet with a one-hidden-layer side classifier after `layer{tap}`.

    Side head: adaptive average pool to `pool` x `pool` -> flatten -> Linear(hidden) ->
    ReLU -> Linear(num_classes). Pooling keeps the head small on wide feature maps.

    Args:
        main: the MainNet (a `PlainResNet`); its parameters are frozen here.
        tap: the side head reads the output of `layer{tap}`, 1 <= tap < L.
        hidden: hidden units of the side head.
        pool: spatial size the tapped feature is pooled to.
    """

    def __init__(self, main: PlainResNet, *, tap: int, hidden: int = 64, pool: int = 2) -> None:
        super().__init__()
        if not isinstance(main, PlainResNet):
            raise ValueError(f"SideNet needs a single-exit MainNet (mainnet_small, mainnet_resnet18); got {type(main).__name__}")
        if not (isinstance(tap, int) and 1 <= tap < main.num_layers):
            raise ValueError(f"tap must be an integer in 1..{main.num_layers - 1} (the MainNet's layer1..layer"
                             f"{main.num_layers - 1}); got {tap!r}")
        if hidden < 1 or pool < 1:
            raise ValueError(f"hidden and pool must be >= 1; got hidden={hidden}, pool={pool}")
        self.main = main
        self.tap = tap
        self.input_shape = main.input_shape
        for p in self.main.parameters():
            p.requires_grad_(False)
        channels = main.widths[tap - 1]
        num_classes = main.fc.out_features
        self.side = nn.Sequential(
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
            nn.Linear(channels * pool * pool, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        sections = main.sections()
        self.__dict__["_stage_list"] = [
            Stage(nn.Sequential(*sections[:tap]), self.side),
            Stage(nn.Sequential(*sections[tap:]), main.classifier),
        ]
        self.main.eval()

    def train(self, mode: bool = True) -> "SideNet":
        """Only the side head ever trains; the MainNet keeps its BatchNorm statistics."""
        super().train(mode)
        self.main.eval()
        return self

    def stages(self) -> list[Stage]:
        return list(self._stage_list)

    def side_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Exit 1 only; the frozen MainNet part runs without building a graph."""
        section, head = self._stage_list[0]
        with torch.no_grad():
            feature = section(x)
        return head(feature)


@register_model
def sidenet(
    main_arch: str = "mainnet_small",
    main_kwargs: dict | None = None,
    tap: int | None = None,
    hidden: int = 64,
    pool: int = 2,
    num_classes: int | None = None,
) -> SideNet:
    """A SideNet over a freshly built (untrained) MainNet; weights come from a checkpoint.

    `tradeoff train --arch sidenet --main main.pt` uses `sidenet_from_main` instead, which
    loads the trained MainNet. `tap` defaults to the middle layer (L // 2).
    """
    kwargs = dict(main_kwargs or {})
    if num_classes is not None:
        if "num_classes" in kwargs and int(kwargs["num_classes"]) != int(num_classes):
            raise ValueError(f"sidenet: num_classes={num_classes} disagrees with main_kwargs num_classes={kwargs['num_classes']}")
        kwargs["num_classes"] = int(num_classes)
    main = create_model(main_arch, **kwargs)
    return SideNet(main, tap=main.num_layers // 2 if tap is None else int(tap), hidden=hidden, pool=pool)


def sidenet_from_main(
    path: str | os.PathLike, *, trust: bool = False, tap: int | None = None, hidden: int = 64, pool: int = 2
) -> tuple[SideNet, dict]:
    """A SideNet around the trained MainNet in checkpoint `path`.

    Returns:
        (model, arch_kwargs): `create_model("sidenet", **arch_kwargs)` rebuilds the same
        network, so a saved SideNet checkpoint is self-contained.

    Raises:
        ValueError: the checkpoint does not hold a single-exit MainNet.
    """
    from tradeoff.checkpoint import load_checkpoint

    loaded = load_checkpoint(path, trust=trust)
    if not isinstance(loaded.model, PlainResNet):
        raise ValueError(
            f"--main {path} holds a {loaded.arch!r} model; SideNet needs a single-exit MainNet "
            "(train one with: tradeoff train --arch mainnet_small --out main.pt)"
        )
    main_kwargs = {k: v for k, v in dict(loaded.arch_kwargs or {}).items() if k != "num_classes"}
    model = SideNet(loaded.model, tap=loaded.model.num_layers // 2 if tap is None else int(tap), hidden=hidden, pool=pool)
    arch_kwargs = {"main_arch": loaded.arch, "main_kwargs": main_kwargs, "tap": model.tap, "hidden": hidden,
                   "pool": pool, "num_classes": int(loaded.model.fc.out_features)}
    return model, arch_kwargs
