"""Per-exit cumulative cost of a multi-exit network, counted with fvcore.

Convention (fvcore's): one multiply-add = one FLOP; counts are raw, never scaled. Each
section and head of `model.stages()` is traced separately on a batch of one, in eval
mode, so a sample leaving at exit k is charged exactly what it ran: sections 1..k and
heads 1..k.

Per-op convention (fvcore's defaults plus the handles below, so that no op the models
here run is silently counted as zero):

| op | FLOPs | source |
|---|---|---|
| `_convolution` (conv, transposed conv) | weight numel x output (input for transposed) positions; bias not counted | fvcore |
| `linear`, `addmm`, `matmul`, ... | in x out per row; bias not counted | fvcore |
| `batch_norm` | eval: 2 per element (scale and shift), 1 without affine | fvcore |
| `adaptive_avg_pool2d` | 1 per input element | fvcore |
| `add`, `add_`, `sub`, `mul`, `mul_`, `div` | 1 per output element (residual sums, attention product) | here |
| `sigmoid` | 1 per output element (the attention mask) | here |
| `avg_pool2d` | kernel area per output element (the additions of each window) | here |
| `mean` | 1 per input element, like adaptive pooling | here |
| `scaled_dot_product_attention` | B·H·L·S·(E + Ev) for QKᵀ and AV, + B·H·L·S for the softmax over the scores | here |
| `matmul` (any rank, broadcast) | batch x M x K x N; a 1-D operand counts as a matrix of one row/column | here |
| `bmm`, `mm`, `einsum`, `linear` | in x out per row (einsum: numpy's optimal contraction path) | fvcore |
| `softmax`, `log_softmax` | 1 per element, like `sigmoid` | here |
| `gelu`, `silu`, `tanh`, `hardswish`, `hardsigmoid`, `exp` | 1 per output element, like `sigmoid` | here |
| `layer_norm`, `group_norm` | 5 per element with affine, 4 without (fvcore's estimate) | fvcore |
| `relu`, `relu_`, `max_pool2d`, `flatten`, `view`, `reshape`, `transpose`, `unflatten` | 0: comparisons or a shape change, no multiply-add | explicit zero |

`scaled_dot_product_attention`'s two matrix products equal `torch.utils.flop_counter`'s
count halved (it counts a multiply-add as two FLOPs); tests/test_flops.py checks that.
Any other op fvcore meets without a handle is listed in `ExitCosts.unsupported_ops`
(op name -> times seen), stored in the cache meta, printed by `tradeoff cache` and
carried into `search`'s summary.json and the plots' titles, never hidden.
"""

from __future__ import annotations

import importlib.metadata
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from tradeoff.errors import first_line

with warnings.catch_warnings():
    # fvcore.nn's package import scripts a loss function with the deprecated torch.jit.script.
    warnings.simplefilter("ignore", DeprecationWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

__all__ = ["ExitCosts", "describe_costs", "exit_costs", "EXTRA_OP_HANDLES"]

COUNTER = "fvcore"


def _per_output_element(inputs: list[Any], outputs: list[Any]) -> int:
    return math.prod(get_shape(outputs[0]))


def _per_input_element(inputs: list[Any], outputs: list[Any]) -> int:
    return math.prod(get_shape(inputs[0]))


def _int_list(value: Any) -> list[int]:
    """The ints of a traced `int[]` argument (a list built from constants, or one constant)."""
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        return [int(v.toIValue()) for v in node.inputs()]
    constant = value.toIValue()
    return [int(v) for v in constant] if isinstance(constant, (list, tuple)) else [int(constant)]


def _avg_pool2d(inputs: list[Any], outputs: list[Any]) -> int:
    kernel = _int_list(inputs[1])
    return math.prod(get_shape(outputs[0])) * kernel[0] * kernel[-1]


def _zero(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


def _scaled_dot_product_attention(inputs: list[Any], outputs: list[Any]) -> int:
    """q (..., L, E), k (..., S, E), v (..., S, Ev): QKᵀ, softmax over (L, S), then AV."""
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    batch = math.prod(q[:-2])
    L, E, S, Ev = q[-2], q[-1], k[-2], v[-1]
    return batch * L * S * (E + Ev + 1)


def _matmul(inputs: list[Any], outputs: list[Any]) -> int:
    """torch.matmul of any ranks: each output element is one dot product of length K."""
    return math.prod(get_shape(outputs[0])) * get_shape(inputs[0])[-1]


_ELEMENTWISE_OPS = (
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "sigmoid", "sigmoid_",
    "gelu", "gelu_", "silu", "silu_", "tanh", "tanh_", "hardswish", "hardswish_", "hardsigmoid", "exp",
    "softmax", "log_softmax",
)
_ZERO_COST_OPS = ("relu", "relu_", "max_pool2d", "flatten", "view", "reshape", "transpose", "unflatten", "squeeze", "unsqueeze")

#: Handles added to fvcore's defaults (see the module docstring for the convention).
EXTRA_OP_HANDLES: dict[str, Callable] = {
    **{f"aten::{op}": _per_output_element for op in _ELEMENTWISE_OPS},
    "aten::avg_pool2d": _avg_pool2d,
    "aten::mean": _per_input_element,
    "aten::scaled_dot_product_attention": _scaled_dot_product_attention,
    "aten::matmul": _matmul,
    **{f"aten::{op}": _zero for op in _ZERO_COST_OPS},
}


@dataclass(frozen=True)
class ExitCosts:
    """What a sample pays at each exit, and what the original single-exit network costs.

    Attributes:
        flops: (K,) float64, cumulative cost of leaving at exit k: sections 1..k + heads 1..k.
        baseline_flops: all K sections + head K only (the network without early exits).
        section_flops: (K,) float64, cost of each section alone.
        head_flops: (K,) float64, cost of each head alone.
        params_per_exit: K ints, distinct parameters of sections 1..k + heads 1..k.
        unsupported_ops: op name -> count of ops fvcore met but could not count (empty when
            every op was counted).
        counter: "fvcore".
        counter_version: the installed fvcore version.
    """

    flops: np.ndarray
    baseline_flops: float
    section_flops: np.ndarray
    head_flops: np.ndarray
    params_per_exit: list[int]
    unsupported_ops: dict[str, int] = field(default_factory=dict)
    counter: str = COUNTER
    counter_version: str = ""


def _fvcore_version() -> str:
    try:
        return importlib.metadata.version("fvcore")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - fvcore imported above
        return "unknown"


def _stages_of(model: nn.Module) -> list:
    name = type(model).__name__
    hint = "implement stages() or give per-exit costs with `tradeoff import --flops`"
    stages = getattr(model, "stages", None)
    if not callable(stages):
        raise ValueError(f"model {name} has no stages(); {hint}")
    try:
        result = list(stages())
    except NotImplementedError:
        raise ValueError(f"model {name} has no stages(); {hint}") from None
    if not result:
        raise ValueError(f"model {name}'s stages() returned no stages; {hint}")
    return result


def _count(module: nn.Module, x: torch.Tensor, unsupported: Counter) -> float:
    """fvcore's total for `module(x)`, quietly: uncounted ops go to `unsupported`, not the log."""
    analysis = (
        FlopCountAnalysis(module, (x,))
        .set_op_handle(**EXTRA_OP_HANDLES)
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .tracer_warnings("none")
    )
    total = analysis.total()
    unsupported.update(analysis.unsupported_ops())
    return float(total)


def _validate_input_shape(input_shape: Any) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else None
    if not shape or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(
            f"input_shape must be one sample's shape without the batch dimension, positive ints such as "
            f"(3, 32, 32); got {input_shape!r}"
        )
    return tuple(int(d) for d in shape)


def exit_costs(model: nn.Module, input_shape: tuple[int, ...], *, device: str | torch.device = "cpu") -> ExitCosts:
    """Count every section and head of `model.stages()` with fvcore, on one sample.

    The model is counted in eval mode (batch norm as at inference) and each module's
    train/eval flag is restored afterwards.

    Args:
        model: a multi-exit network with `stages()` (see models/base.py).
        input_shape: one sample's shape without the batch dimension, e.g. (3, 32, 32).
        device: where the model's parameters live; the probe input is made there.

    Returns:
        ExitCosts with raw fvcore counts (one multiply-add = one FLOP).

    Raises:
        ValueError: the model has no `stages()`, `device` is not a device, or `input_shape`
            does not fit the model.
    """
    stages = _stages_of(model)
    shape = _validate_input_shape(input_shape)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0'; got {device!r} ({exc})") from None
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros((1, *shape), dtype=dtype, device=device)
    modules = [model] + [m for stage in stages for m in stage]
    modes = {m: m.training for root in modules for m in root.modules()}
    unsupported: Counter = Counter()
    section_flops, head_flops, params_per_exit = [], [], []
    seen: set[int] = set()
    params = 0
    for root in modules:
        root.eval()
    try:
        with torch.no_grad():
            for k, (section, head) in enumerate(stages, start=1):
                try:
                    section_flops.append(_count(section, x, unsupported))
                    x = section(x)
                    head_flops.append(_count(head, x, unsupported))
                except RuntimeError as exc:
                                        raise ValueError(
                        f"cannot count exit {k} of {type(model).__name__} on input_shape {shape} "
                        f"(device {device}): {first_line(exc)}; give one sample's shape as the model expects it"
                    ) from None
                for module in (section, head):
                    for p in module.parameters():
                        if id(p) not in seen:
                            seen.add(id(p))
                            params += p.numel()
                params_per_exit.append(params)
    finally:
        for m, training in modes.items():
            m.training = training
    sections = np.asarray(section_flops, dtype=np.float64)
    heads = np.asarray(head_flops, dtype=np.float64)
    flops = np.cumsum(sections) + np.cumsum(heads)
    for array in (sections, heads, flops):
        array.flags.writeable = False
    return ExitCosts(
        flops=flops,
        baseline_flops=float(sections.sum() + heads[-1]),
        section_flops=sections,
        head_flops=heads,
        params_per_exit=params_per_exit,
        unsupported_ops=dict(sorted(unsupported.items())),
        counter=COUNTER,
        counter_version=_fvcore_version(),
    )


def describe_costs(costs: ExitCosts) -> dict:
    """The JSON-safe fields of `costs` that the cache stores in its meta."""
    return {
        "baseline_flops": float(costs.baseline_flops),
        "params_per_exit": [int(p) for p in costs.params_per_exit],
        "flop_counter": costs.counter,
        "flop_counter_version": costs.counter_version,
        "unsupported_ops": {str(k): int(v) for k, v in costs.unsupported_ops.items()},
        "section_flops": [float(f) for f in costs.section_flops],
        "head_flops": [float(f) for f in costs.head_flops],
    }
