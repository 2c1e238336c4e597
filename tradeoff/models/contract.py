"""The multi-exit contract, checked rather than trusted.

Caching runs `forward(x)` (every exit at once) while cost counting and real early exit
walk `stages()` (section k, then head k). If the two disagree - SCAN's official code
returns its exits deepest first, a user's `stages()` may skip a block `forward` runs -
the cache would pair exit k's logits with another exit's cost, and every speed-up after
that is wrong without any error. `check_contract` runs both on a probe batch and refuses
in one line naming the mismatch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["check_contract"]

# Float rounding between a fused forward and the same modules called one by one.
_RTOL, _ATOL = 1e-4, 1e-5


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return bool(torch.allclose(a.float(), b.float(), rtol=_RTOL, atol=_ATOL * scale))


def check_contract(model: nn.Module, probe: torch.Tensor) -> int:
    """Check that `forward(probe)[k]` equals `head_k(section_k(...))` for every exit k.

    The model runs in eval mode without gradients (its mode is restored). Values between
    sections may be tensors or lists / tuples / dicts of tensors.

    Args:
        model: a multi-exit network with `stages()` (see models/base.py).
        probe: (B, ...) a few real input samples (B >= 2 catches batch-mixing sections).

    Returns:
        K, the number of exits.

    Raises:
        ValueError: one line naming the mismatch, e.g. "forward() returns exit 1 where
            stages() gives exit 3", or a different number of exits.
    """
    stages = list(model.stages())
    name = type(model).__name__
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = list(model(probe))
            walked, x = [], probe
            for section, head in stages:
                x = section(x)
                walked.append(head(x))
    finally:
        model.train(was_training)
    fix = ("make forward() return head_k(section_k(...)) for k = 1..K, shallow -> deep, "
           "or stages() list the same exits in the same order")
    if len(outputs) != len(stages):
        raise ValueError(f"{name}: forward() returns {len(outputs)} exits where stages() gives {len(stages)}; {fix}")
    for k, out in enumerate(outputs):
        if _close(out, walked[k]):
            continue
        same = [j for j, w in enumerate(walked) if _close(out, w)]
        if same:
            raise ValueError(f"{name}: forward() returns exit {k + 1} where stages() gives exit {same[0] + 1}; {fix}")
        gap = (out.float() - walked[k].float()).abs().max() if out.shape == walked[k].shape else None
        detail = f"differs by up to {float(gap):.3g}" if gap is not None else (
            f"has shape {tuple(out.shape)} against {tuple(walked[k].shape)}")
        raise ValueError(
            f"{name}: forward()'s exit {k + 1} {detail} from head {k + 1} applied to section {k + 1} of stages() "
            f"on the same inputs; {fix}"
        )
    return len(stages)
