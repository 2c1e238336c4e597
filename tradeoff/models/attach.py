"""Exit heads on any network: SideNet and SCAN heads at named taps, or a model's own exits.

Three ways to make a multi-exit network out of an `nn.Module` the user already has, each
split with torch.fx (`graph_split`) so that `stages()` exists for it automatically and
real early exit never recomputes a prefix:

- `AttachedNet(backbone, taps, head="side")`: SideNet (Morisot 2020) - a one-hidden-layer
  classifier on the output of module `taps[0]` of a frozen MainNet, the MainNet's own
  output as the last exit.
- `AttachedNet(backbone, taps, head="scan")`: SCAN (Zhang et al., NeurIPS 2019) - at each
  tap an attention module (Conv3x3 s2 -> BN -> ReLU -> ConvTranspose 4x4 s2 -> BN ->
  Sigmoid, multiplied into the feature; the backbone carries on un-attended) and a
  shallow classifier (Conv1x1 -> width, BN, ReLU, Conv k=s, BN, ReLU, Conv1x1 -> the
  classifier's input width, BN, ReLU, global average pool, fc); the backbone's own
  classifier (the `nn.Linear` producing its output) is the last exit.
- `NamedExits(model, exits)`: a model whose forward already returns its exits, without
  `stages()`: naming the exit heads' modules is enough.

Head shapes are inferred by running one zero sample of `input_shape` through the sections.
"""

from __future__ import annotations

import torch
from torch import nn

from tradeoff.models.base import MultiExitNet, Stage
from tradeoff.models.graph_split import find_module, split_graph, tap_node, trace
from tradeoff.models.registry import create_model, register_model

__all__ = ["AttachedNet", "NamedExits", "ScanHead", "scan", "side_head"]


def _feature_shape(feature, tap: str) -> tuple[int, ...]:
    if not isinstance(feature, torch.Tensor):
        raise ValueError(
            f"tap {tap!r} outputs a {type(feature).__name__}, not a tensor; choose a module whose output is one "
            "feature tensor (e.g. a block rather than the layer returning several)"
        )
    return tuple(feature.shape[1:])


class _TokenMean(nn.Module):
    """(B, L, D) tokens -> (B, D): the mean over tokens (a transformer block's output)."""

    def forward(self, x):
        return x.mean(dim=1)


def side_head(shape: tuple[int, ...], num_classes: int, *, hidden: int = 64, pool: int = 2) -> nn.Module:
    """SideNet's head: pool -> flatten -> Linear(hidden) -> ReLU -> Linear(num_classes).

    Args:
        shape: one sample's feature shape: (C, H, W) maps are average-pooled to pool x pool,
            (L, D) tokens averaged over L, (D,) used as they are.
    """
    if len(shape) == 3:
        reduce, width = [nn.AdaptiveAvgPool2d(pool), nn.Flatten()], shape[0] * pool * pool
    elif len(shape) == 2:
        reduce, width = [_TokenMean()], shape[1]
    elif len(shape) == 1:
        reduce, width = [], shape[0]
    else:
        raise ValueError(f"a side head reads a (C, H, W), (L, D) or (D,) feature; the tap gives {shape}")
    return nn.Sequential(*reduce, nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class _Attention(nn.Module):
    """SCAN's attention: a mask from a down-up convolution pair, multiplied into x."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.BatchNorm2d(c), nn.Sigmoid(),
        )

    def forward(self, x):
        mask = self.body(x)[..., : x.shape[-2], : x.shape[-1]]  # odd sizes come back one larger
        return x * mask


class ScanHead(nn.Module):
    """SCAN's attention + shallow classifier for a (C, H, W) feature, at reduced resolution.

    The strided convolution (kernel = stride = max(1, H // 4)) brings the map to about 4x4
    before the 1x1 convolution to `out_width` channels, as SCAN's k = 8/4/2 do on CIFAR.
    """

    def __init__(self, shape: tuple[int, ...], num_classes: int, *, out_width: int, width: int = 128):
        super().__init__()
        if len(shape) != 3:
            raise ValueError(f"a SCAN head reads a (C, H, W) feature map; the tap gives shape {shape}")
        c, h, _ = shape
        s = max(1, h // 4)
        self.attention = _Attention(c)
        self.scala = nn.Sequential(
            nn.Conv2d(c, width, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, s, stride=s), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, out_width, 1), nn.BatchNorm2d(out_width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(out_width, num_classes)

    def forward(self, x):
        return self.fc(self.scala(self.attention(x)))


def _classifier(gm, backbone: nn.Module):
    """The graph's last node if it is a call of an nn.Linear (the backbone's classifier)."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    last = output.args[0]
    if isinstance(last, (list, tuple)) and len(last) == 1:  # a one-exit list, as tradeoff's MainNets return
        last = last[0]
    module = gm.get_submodule(last.target) if getattr(last, "op", None) == "call_module" else None
    if not isinstance(module, nn.Linear):
        what = getattr(last, "target", type(last).__name__)
        raise ValueError(
            f"cannot find the classifier of {type(backbone).__name__}: its forward's result comes from {what!s}, "
            "not from an nn.Linear; the backbone must end in its classifier and return one logits tensor"
        )
    return last, module


class AttachedNet(MultiExitNet):
    """A backbone with new exit heads at named taps and its own classifier as the last exit.

    Args:
        backbone: any single-exit `nn.Module` returning (B, num_classes) logits.
        taps: module names, shallow -> deep, e.g. ["layer2", "layer3.1"].
        input_shape: one sample's shape, to infer the heads' input shapes.
        head: "side" (SideNet) or "scan" (SCAN attention + shallow classifier).
        freeze_backbone: SideNet keeps the MainNet frozen (no gradients, BatchNorm in eval).
        hidden, pool: SideNet head sizes; width: SCAN's shallow-classifier width.

    Raises:
        ValueError: an unknown tap (nearest names listed), a tap whose output is not a tensor,
            a backbone torch.fx cannot split or whose classifier cannot be found.
    """

    def __init__(self, backbone: nn.Module, taps: list[str], *, input_shape: tuple[int, ...], head: str = "side",
                 freeze_backbone: bool = False, hidden: int = 64, pool: int = 2, width: int = 128):
        super().__init__()
        if head not in ("side", "scan"):
            raise ValueError(f"head must be 'side' or 'scan'; got {head!r}")
        taps = [taps] if isinstance(taps, str) else list(taps)
        if not taps:
            raise ValueError("give at least one tap (a module name such as layer3.1)")
        self.backbone = backbone
        self.taps = taps
        self.input_shape = tuple(input_shape)
        self.head_kind = head
        self.freeze_backbone = bool(freeze_backbone)
        gm = trace(backbone, taps, what="backbone")
        cls_node, classifier = _classifier(gm, backbone)
        num_classes = classifier.out_features
        exits = [tap_node(gm, t) for t in taps] + [cls_node.args[0]]
        sections, picks, graph_heads = split_graph(gm, exits, {len(taps): cls_node})
        self.heads = nn.ModuleList()
        x = torch.zeros((2, *self.input_shape), dtype=next(backbone.parameters()).dtype)
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            for k, tap in enumerate(taps):
                x = sections[k](x)
                shape = _feature_shape(picks[k](x), tap)
                if head == "side":
                    self.heads.append(side_head(shape, num_classes, hidden=hidden, pool=pool))
                else:
                    self.heads.append(ScanHead(shape, num_classes, out_width=classifier.in_features, width=width))
        backbone.train(was)
        stages = [Stage(sections[k], nn.Sequential(picks[k], self.heads[k])) for k in range(len(taps))]
        stages.append(Stage(sections[-1], nn.Sequential(picks[-1], graph_heads[-1])))
        self.__dict__["_stage_list"] = stages  # the modules are registered under backbone / heads
        self.exit_names = [*taps, "backbone"]
        if self.freeze_backbone:
            for p in backbone.parameters():
                p.requires_grad_(False)
            backbone.eval()

    def train(self, mode: bool = True) -> "AttachedNet":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def stages(self) -> list[Stage]:
        return list(self._stage_list)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, **settings) -> torch.Tensor:
        """The family's objective: SideNet's (cross-entropy of the side head, the MainNet frozen)
        with a frozen backbone; SCAN's self-distillation (`models.scan.scan_loss`, no feature
        hint: a foreign backbone has no SCAN features) with SCAN heads; else every exit's
        cross-entropy, summed."""
        if self.freeze_backbone:
            return nn.functional.cross_entropy(self.side_logits(x), y)
        if self.head_kind == "scan":
            from tradeoff.models.scan import scan_loss

            return scan_loss(list(self(x)), None, y, **settings)
        return super().training_loss(x, y, **settings)

    def side_logits(self, x: torch.Tensor) -> torch.Tensor:
        """SideNet training: exit 1 only; the frozen MainNet prefix runs without a graph."""
        section, head = self._stage_list[0]
        with torch.no_grad():
            feature = section(x)
        return head(feature)


class NamedExits(MultiExitNet):
    """A model that returns its exits itself, given `stages()` from the names of its heads.

    Args:
        model: its forward returns the K heads' outputs (a list, shallow -> deep).
        exits: the K head modules' names, e.g. ["exit1", "exit2", "fc"]; each is called once
            on one feature.

    Raises:
        ValueError: an unknown name (nearest listed), a head torch.fx cannot separate.
    """

    def __init__(self, model: nn.Module, exits: list[str]):
        super().__init__()
        exits = [exits] if isinstance(exits, str) else list(exits)
        for name in exits:
            find_module(model, name, what="exit")
        self.net = model
        gm = trace(model, exits, what="model")
        calls = [tap_node(gm, name) for name in exits]
        inputs = [c.args[0] if c.args else None for c in calls]
        if any(not hasattr(i, "op") for i in inputs):
            raise ValueError(f"exit heads {exits} must each be called on one feature computed by forward()")
        sections, picks, heads = split_graph(gm, inputs, dict(enumerate(calls)))
        self.__dict__["_stage_list"] = [Stage(s, nn.Sequential(p, h)) for s, p, h in zip(sections, picks, heads)]
        self.exit_names = list(exits)
        self.input_shape = getattr(model, "input_shape", None)

    def stages(self) -> list[Stage]:
        return list(self._stage_list)

    def forward(self, x):
        return self.net(x)


@register_model
def scan(backbone: str, taps: list | str, input_shape: list | tuple, num_classes: int | None = None,
         backbone_kwargs: dict | None = None, width: int = 128) -> AttachedNet:
    """SCAN heads at `taps` of the backbone `backbone` builds (`pkg.module:builder` or a name).

    `num_classes` is passed to the backbone's builder when it takes it (the classifier keeps
    the backbone's class count); the backbone's weights come from the checkpoint.
    """
    import inspect

    from tradeoff.models.registry import resolve_builder

    builder = resolve_builder(backbone)
    kwargs = dict(backbone_kwargs or {})
    accepts = inspect.signature(builder).parameters
    if num_classes is not None and ("num_classes" in accepts or any(p.kind == p.VAR_KEYWORD for p in accepts.values())):
        kwargs.setdefault("num_classes", int(num_classes))
    net = create_model(backbone, **kwargs)
    taps = [t for t in taps.split(",")] if isinstance(taps, str) else list(taps)
    return AttachedNet(net, taps, input_shape=tuple(input_shape), head="scan", width=width)
