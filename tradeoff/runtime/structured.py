"""Batches that are not one tensor: what flows between sections may be a list, tuple or dict.

MSDNet-style networks pass several tensors from one section to the next (one feature
map per scale), and a section may return a dict of named features. Wherever the runtime
shrinks a batch to the samples still in flight, every tensor of such a structure must
lose the same rows in the same order, or a sample would meet another sample's features.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["batch_size_of", "select_rows"]


def select_rows(value, index: torch.Tensor):
    """`value` with only the rows `index` (1-D int64) along dim 0 of every tensor in it.

    Args:
        value: a tensor, or lists / tuples (named tuples too) / dicts of them, nested; other
            leaves (ints, None, strings) are passed through unchanged.
        index: (n,) int64 rows to keep, in that order; moved to each tensor's device.

    Returns:
        The same structure, each tensor (B, ...) replaced by (n, ...).
    """
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index.to(value.device))
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(select_rows(v, index) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(select_rows(v, index) for v in value)
    if isinstance(value, Mapping):
        return type(value)((k, select_rows(v, index)) for k, v in value.items())
    return value


def batch_size_of(value) -> int | None:
    """Rows of the first tensor found in `value` (depth first), or None if it holds none."""
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.ndim else None
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        size = batch_size_of(item)
        if size is not None:
            return size
    return None
