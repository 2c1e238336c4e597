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

import inspect
from collections.abc import Sequence


import torch
from torch import nn
from torch.nn import functional as F

from tradeoff.models.attach import AttachedNet
from tradeoff.models.base import MultiExitNet, Stage
from tradeoff.models.registry import create_model, register_model, resolve_builder
from tradeoff.models.resnet import PlainResNet, small_strides

__all__ = ["SideNet", "mainnet_small", "mainnet_resnet18", "sidenet", "sidenet_from_main"]


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

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, **_) -> torch.Tensor:
        """SideNet's objective: cross-entropy of the side head alone (the MainNet is frozen)."""
        return F.cross_entropy(self.side_logits(x), y)

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
    tap: int | str | None = None,
    hidden: int = 64,
    pool: int = 2,
    num_classes: int | None = None,
    input_shape: tuple | list | None = None,
) -> SideNet | AttachedNet:
    """A SideNet over a freshly built (untrained) MainNet; weights come from a checkpoint.

    `tradeoff train --arch sidenet --main main.pt` uses `sidenet_from_main` instead, which
    loads the trained MainNet. An int `tap` reads `layer{tap}` of our own MainNets (default:
    the middle layer, L // 2); a module name (e.g. "layer3.1") taps any MainNet, split with
    torch.fx (`models.attach.AttachedNet`), which then needs `input_shape`.
    """
    kwargs = dict(main_kwargs or {})
    if num_classes is not None and not _takes(main_arch, "num_classes"):
        num_classes = None  # a user's MainNet builder that fixes its own classes
    if num_classes is not None:
        if "num_classes" in kwargs and int(kwargs["num_classes"]) != int(num_classes):
            raise ValueError(f"sidenet: num_classes={num_classes} disagrees with main_kwargs num_classes={kwargs['num_classes']}")
        kwargs["num_classes"] = int(num_classes)
    main = create_model(main_arch, **kwargs)
    if isinstance(tap, str):
        return _attached(main, tap, input_shape, hidden, pool)
    return SideNet(main, tap=main.num_layers // 2 if tap is None else int(tap), hidden=hidden, pool=pool)


def _takes(arch: str, name: str) -> bool:
    params = inspect.signature(resolve_builder(arch)).parameters
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _attached(main: nn.Module, tap: str, input_shape, hidden: int, pool: int) -> AttachedNet:
    shape = input_shape if input_shape is not None else getattr(main, "input_shape", None)
    if shape is None:
        raise ValueError("sidenet with a named tap needs input_shape (one sample's shape, e.g. [3, 32, 32])")
    return AttachedNet(main, [tap], input_shape=tuple(shape), head="side", freeze_backbone=True, hidden=hidden,
                       pool=pool)


def sidenet_from_main(
    main: nn.Module, *, main_arch: str, main_kwargs: dict | None = None, tap: int | str | None = None, hidden: int = 64,
    pool: int = 2, input_shape: tuple | None = None,
) -> tuple[SideNet | AttachedNet, dict]:
    """A SideNet around an already loaded, trained MainNet.

    The caller loads the checkpoint (`tradeoff.checkpoint.load_checkpoint`) and passes the
    model in, so the model family never reads files itself.

    Args:
        main: the trained single-exit MainNet (a `PlainResNet`).
        main_arch: its registered name, recorded so the SideNet can be rebuilt.
        main_kwargs: the builder kwargs it was made with (num_classes is taken from its head).

    Returns:
        (model, arch_kwargs): `create_model("sidenet", **arch_kwargs)` rebuilds the same
        network, so a saved SideNet checkpoint is self-contained.

        tap: `layer{tap}` of our own MainNets (int), or any module name of any MainNet (str).
        input_shape: one sample's shape, for a named tap (the data's).

    Raises:
        ValueError: `main` is not a single-exit MainNet, or a named tap that does not fit.
    """
    if isinstance(tap, str) and tap.isdigit() and isinstance(main, PlainResNet):
        tap = int(tap)
    if isinstance(tap, str):
        main_kwargs = {k: v for k, v in dict(main_kwargs or {}).items() if k != "num_classes"}
        model = _attached(main, tap, input_shape, hidden, pool)
        return model, {"main_arch": main_arch, "main_kwargs": main_kwargs, "tap": tap, "hidden": hidden, "pool": pool,
                       "input_shape": list(model.input_shape)}
    if not isinstance(main, PlainResNet):
        raise ValueError(
            f"main holds a {main_arch!r} model; SideNet needs a single-exit MainNet "
            "(train one with: tradeoff train --arch mainnet_small --out main.pt)"
        )
    main_kwargs = {k: v for k, v in dict(main_kwargs or {}).items() if k != "num_classes"}
    model = SideNet(main, tap=main.num_layers // 2 if tap is None else int(tap), hidden=hidden, pool=pool)
    arch_kwargs = {"main_arch": main_arch, "main_kwargs": main_kwargs, "tap": model.tap, "hidden": hidden,
                   "pool": pool, "num_classes": int(main.fc.out_features)}
    return model, arch_kwargs
