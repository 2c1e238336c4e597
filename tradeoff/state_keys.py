"""Fitting a file's state_dict keys to a model's: one common prefix, and why keys do not fit.

Training frameworks wrap the network they train and save the wrapper's keys: PyTorch
Lightning's `LightningModule` holding `self.model` writes `model.conv1.weight`, many
training scripts write `net.…` or `backbone.…`. When every key of the file carries one
common first component and dropping it alone makes the key set equal to the model's,
that prefix is removed (and the loader says so); anything short of an exact fit is left
to the strict check, with `mismatch_cause` pointing at what actually differs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

__all__ = ["mismatch_cause", "strip_common_prefix"]

_TRIVIAL = ("num_batches_tracked",)


def _fits(keys: Iterable[str], expected: set[str]) -> bool:
    keys = set(keys)
    missing = {k for k in expected - keys if not k.endswith(_TRIVIAL)}
    return not missing and keys <= expected


def _common_prefix(keys: Iterable[str]) -> str | None:
    """`first.` when every key has a dot and the same first component, else None."""
    firsts = {k.split(".", 1)[0] if "." in k else None for k in keys}
    if len(firsts) != 1 or None in firsts:
        return None
    return f"{firsts.pop()}."


def strip_common_prefix(state: Mapping, expected: Iterable[str]) -> tuple[dict, str | None]:
    """`state` without the one prefix all its keys share, when that alone makes them fit.

    Args:
        state: the file's state_dict (key -> tensor).
        expected: the model's state_dict keys.

    Returns:
        (state, prefix): the prefix removed (e.g. "model."), or the state unchanged and None
        when the keys already fit, share no prefix, or would still not fit without it.
    """
    expected = set(expected)
    if not state or _fits(state, expected):
        return dict(state), None
    prefix = _common_prefix(state)
    if prefix is None:
        return dict(state), None
    stripped = {k[len(prefix):]: v for k, v in state.items()}
    if not _fits(stripped, expected):
        return dict(state), None
    return stripped, prefix


def mismatch_cause(missing: list[str], unexpected: list[str], expected: Iterable[str], found: Iterable[str]) -> str | None:
    """A short clause naming the likely cause of a key mismatch, or None when none stands out.

    Recognised causes, checked in this order:
      * the file's keys carry a prefix the model's lack (or the reverse), with the counts
        that remain after removing it;
      * the file lacks whole top-level modules of the model (a backbone-only file, say),
        or holds whole modules the model does not have.
    """
    expected, found = list(expected), list(found)
    file_prefix, model_prefix = _common_prefix(found), _common_prefix(expected)
    for prefix, side, other in ((file_prefix, "file", "model"), (model_prefix, "model", "file")):
        if prefix is None or (file_prefix == model_prefix):
            continue
        mine = found if side == "file" else expected
        theirs = set(expected if side == "file" else found)
        remaining = {k[len(prefix):] for k in mine}
        left = len(theirs ^ remaining)
        after = "then every key fits" if left == 0 else f"then {left} key(s) still differ"
        return f"every key of the {side} starts with {prefix!r} and the {other}'s do not ({after})"
    top = lambda keys: Counter(k.split(".", 1)[0] for k in keys)  # noqa: E731
    lacking = sorted(name for name, n in top(missing).items() if n == top(expected)[name])
    extra = sorted(name for name, n in top(unexpected).items() if n == top(found)[name])
    parts = []
    if lacking:
        parts.append(f"the file has no weights at all for module(s) {', '.join(lacking[:5])}")
    if extra:
        parts.append(f"the file holds module(s) {', '.join(extra[:5])} the model does not have")
    return "; ".join(parts) or None
