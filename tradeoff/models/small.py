"""`scan_small`: the embedded default model, SCAN's design sized for 8x8 digits.

Same parts as `scan_resnet*` (attention-gated shallow classifiers on a ResNet, the last
exit on the full backbone), built by the same `ScanResNet` constructor: layers of 1, 1
and 2 basic blocks with 6, 24 and 64 channels (8x8, 8x8, then 4x4). Widths grow steeply
so early exits are both cheaper and clearly weaker, which is what makes a threshold
search worth running: exit 1 costs about 3% of exit 3 and exit 2 about 28%; the heads
(`scala_width=8`) cost about an eighth of the backbone. Trained with cross-entropy on
every exit for ~12 epochs of Adam, exit 3 reaches ~99% on the digits test split, exits
1 and 2 about 95% and 98.5%. Input: (N, 1, 8, 8) with pixels scaled to [0, 1] (data.py).
"""

from __future__ import annotations

from tradeoff.models.registry import register_model
from tradeoff.models.scan import BasicBlock, ScanResNet

__all__ = ["scan_small"]


@register_model
def scan_small(num_classes: int = 10, in_channels: int = 1) -> ScanResNet:
    """Three-exit SCAN network for scikit-learn's 8x8 digits (input (N, in_channels, 8, 8))."""
    return ScanResNet(
        BasicBlock,
        (1, 1, 2),
        num_classes=num_classes,
        in_channels=in_channels,
        widths=(6, 24, 64),
        strides=(1, 1, 2),
        scala_width=8,
        scala_kernels=(2, 2),
        pool=4,
    )
