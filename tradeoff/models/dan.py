"""Differentiable Adjoined Networks (DAN): a supernet that learns the small network's widths.

Source: U. Nath, S. Kushagra, Y. Yang, "Adjoined Networks: A Training Paradigm with
Applications to Network Compression" (AAAI-MAKE 2022, arXiv:2006.05624). AN fixes the small
network at the first `width_fraction` channels of every layer; DAN learns the width of each
layer by differentiable neural architecture search, jointly with the weights.

The paper publishes no code, so the pieces below are ours, named with NAS's terms:

- Search space: per width slot (`adjoined.width_slots`: one per residual stage, one per
  BasicBlock's inner convolution) the candidate widths `small_width(C, f)` for each
  `f` in `width_choices`, i.e. channel PREFIXES of the large layer, so every candidate
  shares the large network's weights exactly as AN's small network does.
- Architecture parameters: one logit vector alpha_s per slot (`DANSupernet.arch_params`).
- Relaxation: p_s = softmax(alpha_s / tau) (or Gumbel-softmax, `relaxation="gumbel"`).
  The relaxed small network runs the large layers at full width and multiplies every
  BatchNorm output by the soft prefix mask m_s = sum_k p_s,k * 1[c < w_s,k] (channel
  masking with shared weights, as FBNetV2, Wan et al. 2020, does for width search). With a
  one-hot p it IS the sliced AN small network (zero channels contribute nothing downstream).
- Cost: `SmallNetCost` writes the small network's fvcore FLOPs as a constant plus terms
  linear and bilinear in the slot widths; with independent slot choices its expectation
  under p is exact: E[w_a w_b] = E[w_a] E[w_b] for a != b (and E[w_a^2] when a == b).
- Derivation: the most likely width per slot (`derive_widths`), then an ordinary
  `AdjoinedNet` with those `small_widths` (`derived_network`), whose weights are the
  supernet's own and whose small path's BN statistics are prefixes of the supernet's.

The search and fine-tune procedure is `tradeoff.training.dan`.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from tradeoff.models.adjoined import AdjoinedNet, conv_plan, small_width, width_slots
from tradeoff.models.resnet import PlainResNet

__all__ = ["DANSupernet", "SmallNetCost", "check_width_choices", "derive_widths", "derived_network"]

RELAXATIONS = ("softmax", "gumbel")


def check_width_choices(width_choices: Sequence[float]) -> tuple[float, ...]:
    """Sorted, de-duplicated candidate width fractions, each in (0, 1].

    Raises:
        ValueError: empty, or a value outside (0, 1].
    """
    try:
        values = [float(f) for f in width_choices]
    except (TypeError, ValueError):
        raise ValueError(f"width choices must be numbers in (0, 1] such as 0.25,0.5,0.75,1.0; got {width_choices!r}") from None
    bad = [f for f in values if not 0.0 < f <= 1.0]
    if not values or bad:
        raise ValueError(
            f"width choices (--width-choices) must be fractions of each layer's channels in (0, 1], such as 0.25,0.5,0.75,1.0; "
            f"got {', '.join(f'{f:g}' for f in values) or 'none'}"
        )
    return tuple(sorted(set(values)))


class SmallNetCost:
    """fvcore FLOPs of the small network of a `PlainResNet` as a function of its slot widths.

    Convention as `tradeoff.flops` (fvcore, eval mode, one multiply-add = one FLOP): conv
    k*k*H_out*W_out*in*out (no bias), BatchNorm 2 per element, residual add 1 per element,
    ReLU 0, global average pool 1 per input element, fc in*classes (no bias).

    Args:
        large: the large network; its spatial sizes come from one traced sample of
            `large.input_shape`.
        slot_names: the slots, in the order widths and probabilities are given.
    """

    def __init__(self, large: PlainResNet, slot_names: Sequence[str]) -> None:
        self.slot_names = list(slot_names)
        index = {name: i for i, name in enumerate(self.slot_names)}
        modules = dict(large.named_modules())
        sizes: dict[str, int] = {}  # conv name -> output positions H*W
        hooks = [modules[conv].register_forward_hook(
            lambda m, i, o, conv=conv: sizes.__setitem__(conv, int(o.shape[-1] * o.shape[-2])))
            for conv, _, _, _ in conv_plan(large)]
        was_training = large.training
        try:
            large.eval()
            with torch.no_grad():
                large.logits(torch.zeros((1, *large.input_shape)))
        finally:
            large.train(was_training)
            for h in hooks:
                h.remove()
        self.constant = 0.0
        self.linear: list[tuple[float, int]] = []           # coef * w_a
        self.bilinear: list[tuple[float, int, int]] = []    # coef * w_a * w_b
        for conv_name, _, in_slot, out_slot in conv_plan(large):
            conv = modules[conv_name]
            kk_hw = conv.kernel_size[0] * conv.kernel_size[1] * sizes[conv_name] / conv.groups
            out = index[out_slot]
            if in_slot is None:
                self.linear.append((kk_hw * conv.in_channels, out))
            else:
                self.bilinear.append((kk_hw, index[in_slot], out))
            self.linear.append((2.0 * sizes[conv_name], out))  # its BatchNorm
            if conv_name.endswith(".conv2"):  # the residual sum after the block
                self.linear.append((float(sizes[conv_name]), out))
        last_conv, _, _, last_slot = next(step for step in reversed(conv_plan(large)) if step[0].endswith(".conv2"))
        self.linear.append((float(sizes[last_conv]), index[last_slot]))  # global average pool
        self.linear.append((float(large.fc.out_features), index[last_slot]))  # fc

    def expected(self, probs: Sequence[torch.Tensor], candidates: Sequence[torch.Tensor]) -> torch.Tensor:
        """E[FLOPs] when slot s takes width candidates[s][k] with probability probs[s][k] (independently).

        Args:
            probs: per slot a (K_s,) tensor summing to 1.
            candidates: per slot a (K_s,) float tensor of widths (channels).

        Returns:
            Scalar tensor (differentiable in `probs`).
        """
        mean = [p @ c for p, c in zip(probs, candidates)]
        total = torch.zeros((), dtype=mean[0].dtype) + self.constant
        for coef, a in self.linear:
            total = total + coef * mean[a]
        for coef, a, b in self.bilinear:
            pair = probs[a] @ candidates[a].pow(2) if a == b else mean[a] * mean[b]
            total = total + coef * pair
        return total

    def exact(self, widths: dict[str, int]) -> float:
        """FLOPs of the small network with the given width per slot."""
        w = [float(widths[name]) for name in self.slot_names]
        total = self.constant + sum(coef * w[a] for coef, a in self.linear)
        return float(total + sum(coef * w[a] * w[b] for coef, a, b in self.bilinear))


class DANSupernet(nn.Module):
    """The large network plus the relaxed small network over every candidate width per slot.

    Args:
        large: the base network (a `PlainResNet`; other families have no channel prefixes).
        width_choices: candidate fractions of each layer's channels, each in (0, 1].

    Attributes:
        large: the shared weights (the large network; its own forward is exit 2).
        slots: the `WidthSlot`s searched, in forward order.
        candidates: per slot the candidate widths in channels, increasing (duplicates merged).
        arch_params: per slot the architecture parameters alpha_s, shape (K_s,), zeros at start.
        cost: the `SmallNetCost` of the small network.

    Raises:
        ValueError: a non-`PlainResNet` large network, or bad width choices.
    """

    def __init__(self, large: nn.Module, width_choices: Sequence[float] = (0.25, 0.5, 0.75, 1.0)) -> None:
        super().__init__()
        if not isinstance(large, PlainResNet):
            raise ValueError(
                f"DAN needs a large network whose small network is a channel prefix of every layer (a PlainResNet, "
                f"as in adjoined_*); got {type(large).__name__}"
            )
        self.width_choices = check_width_choices(width_choices)
        self.large = large
        self.slots = width_slots(large)
        self.candidates = [tuple(sorted({small_width(s.channels, f) for f in self.width_choices})) for s in self.slots]
        self.arch_params = nn.ParameterList([nn.Parameter(torch.zeros(len(c))) for c in self.candidates])
        for i, (slot, cands) in enumerate(zip(self.slots, self.candidates)):
            masks = (torch.arange(slot.channels)[None, :] < torch.tensor(cands)[:, None]).float()  # (K_s, C)
            self.register_buffer(f"_mask{i}", masks, persistent=False)
            self.register_buffer(f"_cand{i}", torch.tensor(cands, dtype=torch.float32), persistent=False)
        self._slot_index = {s.name: i for i, s in enumerate(self.slots)}
        modules = dict(large.named_modules())
        self._bn_plan: dict[int, tuple[str, int]] = {}  # id(bn) -> (buffer key, slot index)
        for _, bn_name, _, out_slot in conv_plan(large):
            key = bn_name.replace(".", "_")
            bn = modules[bn_name]
            self.register_buffer(f"{key}_mean", torch.zeros(bn.num_features))  # the small path's own statistics
            self.register_buffer(f"{key}_var", torch.ones(bn.num_features))
            self._bn_plan[id(bn)] = (key, self._slot_index[out_slot])
        self.cost = SmallNetCost(large, [s.name for s in self.slots])

    # ------------------------------------------------------------------ relaxation
    def architecture_parameters(self) -> list[nn.Parameter]:
        return list(self.arch_params)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.large.parameters())

    def probabilities(self, tau: float = 1.0, *, relaxation: str = "softmax",
                      generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Per slot the relaxed choice p_s, shape (K_s,): softmax(alpha_s / tau), or with Gumbel noise.

        Raises:
            ValueError: unknown `relaxation` or tau <= 0.
        """
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}; got {relaxation!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0; got {tau}")
        probs = []
        for alpha in self.arch_params:
            logits = alpha
            if relaxation == "gumbel":
                u = torch.rand(alpha.shape, generator=generator).clamp_(1e-10, 1.0 - 1e-7)
                logits = alpha - torch.log(-torch.log(u))
            probs.append(F.softmax(logits / tau, dim=0))
        return probs

    def candidate_tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f"_cand{i}") for i in range(len(self.slots))]

    def expected_flops(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Expected FLOPs of the relaxed small network (scalar tensor, differentiable in `probs`)."""
        return self.cost.expected(probs, self.candidate_tensors())

    # ------------------------------------------------------------------ forward
    def relaxed_small_logits(self, x: torch.Tensor, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits (B, classes) of the relaxed small network: every BN output times its slot's soft mask."""
        masks = [(p @ getattr(self, f"_mask{i}"))[None, :, None, None] for i, p in enumerate(probs)]

        def conv_bn(h, conv, bn):
            key, slot = self._bn_plan[id(bn)]
            h = F.batch_norm(conv(h), getattr(self, f"{key}_mean"), getattr(self, f"{key}_var"), bn.weight, bn.bias,
                             self.training, bn.momentum, bn.eps)
            return h * masks[slot]

        large = self.large
        x = F.relu(conv_bn(x, large.conv1, large.bn1))
        for i in range(1, large.num_layers + 1):
            for block in getattr(large, f"layer{i}"):
                out = F.relu(conv_bn(x, block.conv1, block.bn1))
                out = conv_bn(out, block.conv2, block.bn2)
                if block.downsample is not None:
                    x = conv_bn(x, block.downsample[0], block.downsample[1])
                x = F.relu(out + x)
        return large.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: torch.Tensor, probs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """[relaxed small logits, large logits], the two exits AN's objective trains."""
        return [self.relaxed_small_logits(x, probs), self.large.logits(x)]


def derive_widths(supernet: DANSupernet) -> dict[str, int]:
    """Derivation: the most likely candidate width of every slot (argmax of alpha_s; ties -> narrower)."""
    return {slot.name: supernet.candidates[i][int(torch.argmax(alpha.detach()))]
            for i, (slot, alpha) in enumerate(zip(supernet.slots, supernet.arch_params))}


def derived_network(supernet: DANSupernet, widths: dict[str, int]) -> AdjoinedNet:
    """An ordinary `AdjoinedNet` with per-layer `widths`, carrying the supernet's weights.

    The large network is a copy of the supernet's (so the small network's weights are its
    prefixes, as in AN); the small path's BN running statistics are the prefixes of the
    supernet's small-path statistics.
    """
    net = AdjoinedNet(copy.deepcopy(supernet.large), small_widths=widths)
    small_state = net.small.state_dict()
    with torch.no_grad():
        for key, value in small_state.items():
            value.copy_(getattr(supernet, key)[: value.shape[0]])
    return net
