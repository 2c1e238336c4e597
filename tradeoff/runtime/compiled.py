"""Compiled stages: each section and head as a frozen TorchScript graph (`EarlyExitModel(compiled=True)`)."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from tradeoff.errors import first_line


def compile_stages(stages: list, example: torch.Tensor) -> list:
    """Each (section, head) as a frozen TorchScript graph, traced on `example`.

    `torch.jit.freeze` inlines the weights as constants and folds each batch norm into
    the convolution before it (`fold_transposed_batch_norms` does it first for transposed
    convolutions, which freeze leaves alone); calling the graph skips Python's per-module
    `__call__`.
    Both matter at batch 1, where an 8x8 network's time is per-operator overhead. The
    graphs accept any batch size (the networks here have no shape-dependent Python).
    TorchScript is deprecated in recent torch releases; its warnings are silenced here.

    Args:
        stages: K (section, head) modules in eval mode.
        example: (1, ...) one input sample; only its shape, dtype and device matter.

    Returns:
        K (section, head) pairs of frozen `torch.jit.ScriptModule`s.

    Raises:
        ValueError: a section or head TorchScript cannot trace (say which).
    """
    compiled = []
    # Tracing needs ordinary tensors: not inside inference mode, no autograd.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = example.clone()
        for k, (section, head) in enumerate(stages):
            pair = []
            for part, name in ((section, "section"), (head, "head")):
                try:
                    folded = fold_transposed_batch_norms(part)
                    graph = torch.jit.freeze(torch.jit.trace(folded, x, check_trace=False))
                except Exception as exc:  # TorchScript raises many kinds; report which part failed
                    raise ValueError(
                        f"cannot compile {name} {k + 1} ({type(part).__name__}) with TorchScript: "
                        f"{first_line(exc)}; run without compiled=True"
                    ) from None
                pair.append(graph)
                if name == "section":
                    x = part(x)
            compiled.append(tuple(pair))
    return compiled


def fold_transposed_batch_norms(module: nn.Module) -> nn.Module:
    """An eval-mode copy of `module` with each `ConvTranspose2d -> BatchNorm2d` of a
    `Sequential` merged into one transposed convolution (the BN replaced by Identity).

    y = (convT(x) - mean) / sqrt(var + eps) * gamma + beta is a transposed convolution
    with weights scaled per output channel (dim 1 of its (in, out, kh, kw) weight) and
    a shifted bias. The original module is left untouched.
    """
    folded = copy.deepcopy(module).eval()
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if not (isinstance(conv, nn.ConvTranspose2d) and isinstance(bn, nn.BatchNorm2d) and conv.groups == 1
                    and bn.running_mean is not None and bn.num_features == conv.out_channels):
                continue
            with torch.no_grad():
                scale = torch.rsqrt(bn.running_var + bn.eps)
                if bn.weight is not None:
                    scale = scale * bn.weight
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                shift = (bias - bn.running_mean) * scale + (bn.bias if bn.bias is not None else 0.0)
                conv.weight.mul_(scale.reshape(1, -1, 1, 1))
                conv.bias = nn.Parameter(shift)
            seq._modules[second] = nn.Identity()
    return folded
