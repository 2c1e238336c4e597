"""`scan_small`: the embedded default model, SCAN's design sized for 8x8 digits.

Same parts as `scan_resnet*` (attention-gated shallow classifiers on a ResNet, the last
exit on the full backbone), built by the same `ScanResNet` constructor: layers of 1, 1
and 2 basic blocks with 6, 96 and 192 channels (8x8, 8x8, then 4x4). Widths grow steeply
so early exits are both cheaper and clearly weaker, which is what makes a threshold
search worth running: exit 1 costs under 1% of the original network (0.11 of 24.7
MFLOPs, fvcore count), exit 2 about 39%; the heads (`scala_width=8`) cost about a sixth
of the backbone.

Why these widths (issue 5, `benchmarks/bench_runtime.py`): at batch 1 on a CPU every
exit path pays a fixed ~0.1 ms of per-operator dispatch and exit decision, whatever its
FLOPs. With the earlier 6/24/64 widths (2.5 MFLOPs) the original network took ~0.23 ms,
so the early exit realised under a quarter of its FLOPs-predicted speed-up; at 6/96/192
the deep layers' arithmetic dominates that fixed cost (measured ~4x of ~9x predicted),
while the demo still trains in about a minute on one core. Trained with cross-entropy
on every exit plus self-distillation (30 epochs of Adam), exit 3 reaches ~99% on the
digits test split, exit 1 ~95%. Input: (N, 1, 8, 8) with pixels scaled to [0, 1] (data.py).
"""

from __future__ import annotations

from tradeoff.models.registry import register_model
from tradeoff.models.resnet import BasicBlock
from tradeoff.models.scan import ScanResNet

__all__ = ["scan_small"]


@register_model
def scan_small(num_classes: int = 10, in_channels: int = 1) -> ScanResNet:
    """Three-exit SCAN network for scikit-learn's 8x8 digits (input (N, in_channels, 8, 8))."""
    return ScanResNet(
        BasicBlock,
        (1, 1, 2),
        num_classes=num_classes,
        in_channels=in_channels,
        widths=(6, 96, 192),
        strides=(1, 1, 2),
        scala_width=8,
        scala_kernels=(2, 2),
        pool=4,
    )
