"""The multi-exit contract shared by every family.

A multi-exit model returns K logit tensors, shallow -> deep. Families also expose
`stages()`: K pairs (section, head) such that x_k = section_k(x_{k-1}) with x_0 the
input, and exit k's logits = head_k(x_k). Cost counting (flops.py) and real early-exit
inference (runtime.py) both walk this list, so they cannot disagree with `forward`.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn


class Stage(NamedTuple):
    section: nn.Module
    head: nn.Module


class MultiExitNet(nn.Module):
    """Base class: `forward` is derived from `stages()`, so the two never drift apart."""

    def stages(self) -> list[Stage]:  # pragma: no cover - each family defines it
        raise NotImplementedError(f"{type(self).__name__} must define stages()")

    def forward(self, x):
        outputs = []
        for section, head in self.stages():
            x = section(x)
            outputs.append(head(x))
        return outputs
