"""The multi-exit contract shared by every family.

A multi-exit model returns K logit tensors, shallow -> deep. Families also expose
`stages()`: K pairs (section, head) such that x_k = section_k(x_{k-1}) with x_0 the
input, and exit k's logits = head_k(x_k). Cost counting (flops.py) and real early-exit
inference (runtime.py) both walk this list, so they cannot disagree with `forward`.

Each family also owns its training objective: `training_loss(x, y, **settings)` returns
the scalar loss of one batch (SCAN's self-distillation, AN's joint loss, SideNet's side-head
cross-entropy); the trainer (`tradeoff.training.loop`) only calls it. `summed_cross_entropy`
is the family-free alternative (`tradeoff train --loss ce`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


class Stage(NamedTuple):
    section: nn.Module
    head: nn.Module


def summed_cross_entropy(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Sum over exits of the mean cross-entropy: the plain multi-exit objective.

    BranchyNet's (Teerapittayanon et al., 2016) and SDN's (Kaya et al., 2019) starting point,
    with equal exit weights; no distillation.

    Args:
        logits: K tensors (B, C), shallow -> deep.
        labels: (B,) int64.

    Returns:
        Scalar tensor.
    """
    return sum(F.cross_entropy(z, labels) for z in logits)


class MultiExitNet(nn.Module):
    """Base class: `forward` is derived from `stages()`, so the two never drift apart."""

    def stages(self) -> list[Stage]:  # pragma: no cover - each family defines it
        raise NotImplementedError(f"{type(self).__name__} must define stages()")

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, **settings) -> torch.Tensor:
        """The family's objective on one batch; the base class sums every exit's cross-entropy.

        `settings` are the trainer's loss settings (temperature, alpha, hint_weight); a
        family reads the ones it uses and ignores the rest.
        """
        return summed_cross_entropy(self(x), y)

    def forward(self, x):
        outputs = []
        for section, head in self.stages():
            x = section(x)
            outputs.append(head(x))
        return outputs
