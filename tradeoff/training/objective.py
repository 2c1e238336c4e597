"""The loss a training step minimises, chosen by `TrainConfig.loss` (see there).

The family's own objective is the model's `training_loss` (models/); this module only
picks between it, SCAN's self-distillation and the summed cross-entropy, and wraps model +
objective into one module so that DistributedDataParallel's forward runs the whole loss.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tradeoff.training.schedules import TrainConfig


def objective_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The loss of one batch under `config.loss` (see `TrainConfig`)."""
    from tradeoff.models.base import summed_cross_entropy
    from tradeoff.models.scan import scan_loss

    settings = {"temperature": config.temperature, "alpha": config.alpha, "hint_weight": config.hint_weight}
    if config.loss == "family" and hasattr(model, "training_loss"):
        return model.training_loss(x, y, **settings)
    if config.loss == "ce":
        return summed_cross_entropy(list(model(x)), y)
    # "scan", and a user's own model without a training_loss: SCAN's self-distillation.
    if config.hint_weight > 0 and hasattr(model, "forward_with_features"):
        logits, features = model.forward_with_features(x)
    else:
        logits, features = model(x), None
    return scan_loss(list(logits), features, y, **settings)


def objective_name(model: nn.Module, config: TrainConfig) -> str:
    if config.loss == "ce":
        return "summed cross-entropy"
    if config.loss == "family" and hasattr(model, "training_loss"):
        return f"{type(model).__name__}.training_loss"
    return "SCAN self-distillation"


class Objective(nn.Module):
    """The model and its objective as one module, so DDP's forward runs the whole loss."""

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        amp = torch.autocast("cuda", dtype=torch.float16) if self.config.amp else contextlib.nullcontext()
        with amp:
            return objective_loss(self.model, x, y, self.config)
