"""Reading a checkpoint's bytes without running code from them (for `tradeoff.checkpoint`).

Pickled files are read with `torch.load(weights_only=True)` and NumPy scalars/dtypes allowed
(data, not code: torch's documented recipe); `.safetensors` files with safetensors. A pickle
that asks for other globals is named, found without executing it, and refused unless trusted.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from tradeoff.errors import UnsafeCheckpointError


def _numpy_safe_globals() -> list:
    """NumPy scalars and dtypes: data, not code, so `weights_only` may rebuild them (torch's
    documented recipe); the scalar's numpy-1 module path is listed too for older files."""
    from numpy._core.multiarray import scalar

    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


_NUMPY_SAFE = _numpy_safe_globals()
_NUMPY_SAFE_NAMES = {"numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype"}


def read_file(path: Path, trust: bool, map_location):
    """The file's object (tensors and plain containers unless trusted) and format extras."""
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return _read_safetensors(path, map_location)
    try:
        with warnings.catch_warnings():  # our one-line error says more than torch's protocol note
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            with torch.serialization.safe_globals(_NUMPY_SAFE):
                return torch.load(path, map_location=map_location, weights_only=not trust), {}
    except Exception as exc:  # torch raises many types for bad bytes; all mean "not loadable"
        if not trust:
            unsafe = unsafe_globals(path, exc)
            if unsafe:
                raise UnsafeCheckpointError(
                    f"{path} asks to unpickle arbitrary Python objects ({', '.join(unsafe)}), which can run code "
                    "on this machine, so it was not loaded; pass --trust-checkpoint (trust=True) only if you trust "
                    "its source, or re-save it as a plain state_dict or .safetensors file"
                ) from None
        raise ValueError(_not_a_checkpoint(path, exc)) from None


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def _read_safetensors(path: Path, map_location):
    from safetensors import SafetensorError, safe_open

    device = map_location if isinstance(map_location, str) else "cpu"
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(
            f"{path} is not a readable safetensors file ({_first_line(exc)}); is it truncated or the wrong file?"
        ) from None
    return state, ({"safetensors_metadata": metadata} if metadata else {})


def unsafe_globals(path: Path, exc: Exception) -> list[str]:
    """Globals the pickle asks for beyond torch's safe set, found without executing it."""
    message = str(exc)
    try:
        found = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) files cannot be inspected that way; torch's message tells
        found = []
    found = found or re.findall(r"Unsupported global: GLOBAL (\S+)", message)
    found = [name for name in found if name not in _NUMPY_SAFE_NAMES and not name.startswith("numpy.dtypes.")]
    if not found and isinstance(exc, pickle.UnpicklingError) and "was not an allowed global" in message:
        found = ["an unknown global"]
    return found


def _not_a_checkpoint(path: Path, exc: Exception) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4)
    detail = re.search(r"WeightsUnpickler error: \s*(.+)", str(exc))
    if not head:
        reason = "the file is empty"
    elif not head.startswith((b"PK\x03\x04", b"\x80")):
        reason = "it is neither a zip archive nor a pickle"
    elif detail:
        reason = f"a pickle torch cannot read: {detail.group(1)}"
    else:
        reason = _first_line(exc)
    return (
        f"{path} is not a PyTorch checkpoint ({reason}); expected a file written by torch.save "
        "(a state_dict or a tradeoff checkpoint) or a .safetensors file; is it truncated or the wrong file?"
    )


def _first_line(exc: Exception) -> str:
    """The gist of a library error: first sentence, no C++ source locations."""
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(exc).strip())
    text = re.split(r"\.\s|\n", text, maxsplit=1)[0].strip()
    return text[:160] if text else type(exc).__name__
