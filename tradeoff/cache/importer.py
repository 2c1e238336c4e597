"""`tradeoff import`: an exit cache from the user's own arrays, from any framework.

Logits come as one (K, N, C) file or one (N, C) file per exit (shallow -> deep), as
`.npy` (read with `allow_pickle=False`) or `.pt` (read with `torch.load(weights_only=True)`;
tensors only unless the user trusts the file). Costs are given, not counted: the user's
framework knows its network. Everything is validated by `tradeoff.cache.format.validate_cache`.
torch is imported only to read `.pt` files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tradeoff.cache.format import ExitCache, make_meta, validate_cache
from tradeoff.errors import UnsafeCheckpointError
from tradeoff.fileio import sha256_file

ARRAY_SUFFIXES = (".npy", ".pt", ".pth")


INPUT_KINDS = ("auto", "logits", "probabilities")


def import_cache(
    logits: "np.ndarray | str | os.PathLike | Sequence[np.ndarray | str | os.PathLike]",
    labels: "np.ndarray | str | os.PathLike",
    *,
    split: "np.ndarray | str | os.PathLike | None" = None,
    split_path: str | os.PathLike | None = None,
    flops: Sequence[float],
    baseline_flops: float | None = None,
    trust: bool = False,
    kind: str = "auto",
    log: Callable[[str], None] | None = None,
) -> ExitCache:
    """A validated cache from logits (or probabilities), labels and an optional split.

    Each input may be an array or a file (`.npy`, `.pt`), so a Python user hands over
    `model.predict_proba(X)` outputs directly.

    Args:
        logits: one (K, N, C) array/file, or K (N, C) arrays/files shallow -> deep. Either
            unnormalised logits (anything softmax turns into the model's probabilities,
            log-probabilities included) or probabilities (rows non-negative, summing to 1,
            e.g. scikit-learn's `predict_proba`); see `kind`.
        labels: (N,) integer labels, array or file.
        split: (N,) strings "val"/"test"/"train", array or `.npy` file; default a fixed
            seeded half/half val/test split (the same rule as `npz:` data).
        split_path: the older name of `split` (a file).
        flops: (K,) cumulative cost of leaving at each exit (fvcore convention: one
            multiply-add = one FLOP).
        baseline_flops: cost of the original single-exit network; default the last exit's.
        trust: allow `.pt` files that need unpickling of arbitrary objects.
        kind: "logits" (taken as they are), "probabilities" (converted with `log`, so the
            cache's softmax gives back exactly these probabilities and the thresholds found
            apply to `predict_proba(...).max(1)`) or "auto" (probabilities when every row of
            every exit is non-negative and sums to 1 within float tolerance, said through `log`).
        log: callable taking one line (the auto-detection notice); default silent.

    Raises:
        FileNotFoundError: a missing file. ValueError / UnsafeCheckpointError: bad input,
            each naming the file or argument and the fix (e.g. some exits probabilities and
            others not, or `kind="probabilities"` for rows that do not sum to 1).
    """
    if kind not in INPUT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(INPUT_KINDS)}; got {kind!r}")
    if split is not None and split_path is not None:
        raise ValueError("give split or split_path, not both")
    split = split if split is not None else split_path
    sources = [logits] if isinstance(logits, (str, os.PathLike, np.ndarray)) else list(logits)
    if not sources:
        raise ValueError("give at least one logits file: one (K, N, C) array or one (N, C) array per exit")
    names = [_name(src, f"logits[{i}]") for i, src in enumerate(sources)]
    stacked = _stack_logits(sources, names, trust=trust)
    stacked, input_kind = _as_log_probabilities(stacked, kind, log=log)
    K, N, C = stacked.shape
    labels_name = _name(labels, "labels")
    label_values = _read_any(labels, trust=trust, what="labels")
    if label_values.ndim == 2 and 1 in label_values.shape:
        label_values = label_values.reshape(-1)
    if label_values.shape != (N,):
        raise ValueError(f"--labels {labels_name}: expected shape ({N},) to match the logits' N = {N}; got {label_values.shape}")
    if split is None:
        split_values, split_rule = default_split(N), "seeded half/half val/test (numpy default_rng(0) permutation)"
    elif isinstance(split, np.ndarray):
        split_values, split_rule = _check_split(split, N, "split array"), "array given"
    else:
        split_values, split_rule = _read_split(Path(split), N), f"file {split}"
    try:
        costs = np.asarray(flops, dtype=np.float64).reshape(-1)
        baseline = None if baseline_flops is None else float(baseline_flops)
    except (TypeError, ValueError):
        raise ValueError(f"flops and baseline_flops must be numbers; got {flops!r} and {baseline_flops!r}") from None
    flops, baseline_flops = costs, baseline
    if flops.shape != (K,):
        raise ValueError(
            f"--flops gives {flops.size} costs but the logits have K = {K} exits; give one cumulative cost per exit"
        )
    if baseline_flops is not None and not (np.isfinite(baseline_flops) and baseline_flops > 0):
        raise ValueError(f"--baseline-flops must be a positive number; got {baseline_flops!r}")
    meta = make_meta(
        arch="imported",
        num_classes=int(C),
        exit_names=[f"exit{k + 1}" for k in range(K)],
        logits_files=names,
        logits_sha256=[_sha256(src) for src in sources],
        labels_file=labels_name,
        split_rule=split_rule,
        input_kind=input_kind,
        flop_counter="given",
        baseline_flops=float(baseline_flops if baseline_flops is not None else flops[-1]),
        baseline_flops_source="given" if baseline_flops is not None else "last exit (not given)",
        logits_dtype=str(stacked.dtype),
    )
    cache = ExitCache(logits=stacked, labels=label_values, split=split_values, flops=flops, meta=meta)
    return validate_cache(cache, source="imported arrays")


def probability_rows(array: np.ndarray) -> bool:
    """Whether every row of an (..., C) array is a probability vector: no negative entry,
    each row summing to 1 within the dtype's rounding (1e-3 for float16, else 1e-4)."""
    values = np.asarray(array, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all() or (values < 0).any():
        return False
    tol = 1e-3 if np.asarray(array).dtype == np.float16 else 1e-4
    return bool(np.all(np.abs(values.sum(axis=-1) - 1.0) <= tol * values.shape[-1]))


def _as_log_probabilities(logits: np.ndarray, kind: str, *, log) -> tuple[np.ndarray, str]:
    """Apply the `kind` rule of `import_cache`; returns the logits to cache and what they were."""
    if kind == "logits":
        return logits, "logits (as given)"
    per_exit = [probability_rows(logits[k]) for k in range(logits.shape[0])]
    if kind == "auto" and not any(per_exit):
        return logits, "logits (detected)"
    if kind == "auto" and not all(per_exit):
        which = ", ".join(f"exit {k + 1}" for k, p in enumerate(per_exit) if p)
        raise ValueError(
            f"{which} of the logits hold probabilities (rows non-negative, summing to 1) but the other exits do "
            "not; give every exit in one form, or pass --logits (import_cache(kind='logits')) to take them as they are"
        )
    if kind == "probabilities" and not all(per_exit):
        which = ", ".join(f"exit {k + 1}" for k, p in enumerate(per_exit) if not p)
        raise ValueError(
            f"--probabilities given but {which} has rows that are negative or do not sum to 1; "
            "pass the model's probabilities (e.g. predict_proba), or drop --probabilities for logits"
        )
    tiny = np.finfo(np.float32).tiny  # log(0) would be -inf; exp(log(tiny)) is still 0 in every softmax
    converted = np.log(np.maximum(logits.astype(np.float64), tiny)).astype(np.float32)
    if kind == "auto" and log is not None:
        log("note: every row of the logits is non-negative and sums to 1, so they were read as probabilities and "
            "converted with log (softmax then gives back these probabilities; thresholds apply to "
            "predict_proba(...).max(1)); pass --logits to take them as they are")
    return converted, "probabilities (converted with log)"


def default_split(num_samples: int) -> np.ndarray:
    """The fixed val/test split used when none is given, the same rule as `npz:` data:
    the first N // 2 rows of `default_rng(0).permutation(N)` are val, the rest test. (N,) str."""
    from tradeoff.data import val_test_halves  # the one home of the rule

    return val_test_halves(num_samples)


def read_array(path: str | os.PathLike, *, trust: bool = False, what: str = "array") -> np.ndarray:
    """One array from `.npy` (no pickles) or `.pt` (a tensor, weights_only unless trusted).

    Raises:
        FileNotFoundError, ValueError, UnsafeCheckpointError: naming `path`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise ValueError(
                    f"{what} file {path} holds Python objects, not numbers; save a numeric array with numpy.save"
                ) from None
            raise ValueError(f"{what} file {path} is not a readable .npy array ({exc})") from None
        except (OSError, EOFError) as exc:
            raise ValueError(f"{what} file {path} is not a readable .npy array ({exc}); is it truncated?") from None
    if suffix in (".pt", ".pth"):
        return _read_torch(path, trust=trust, what=what)
    raise ValueError(f"{what} file {path}: expected a .npy or .pt file; got {suffix or 'no extension'!r}")


def _read_torch(path: Path, *, trust: bool, what: str) -> np.ndarray:
    import torch

    from tradeoff.checkpoint_file import unsafe_globals  # one place that tells unsafe pickles from bad bytes

    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # torch raises many types (KeyError, RuntimeError, ...) for bad bytes
        if not trust and unsafe_globals(path, exc):
            raise UnsafeCheckpointError(
                f"{what} file {path} needs unpickling of arbitrary objects, which could run code; "
                "pass --trust-checkpoint only if you trust this file, or save a plain tensor with torch.save"
            ) from None
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:120]
        raise ValueError(
            f"{what} file {path} is not a readable torch file ({reason}); expected a tensor saved with "
            "torch.save - is it truncated?"
        ) from None
    if isinstance(obj, np.ndarray):
        return obj
    if not isinstance(obj, torch.Tensor):
        kind = f"dict with keys {list(obj)[:5]}" if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{what} file {path} holds a {kind}; expected one tensor - save it with torch.save(tensor)")
    obj = obj.detach().cpu()
    if obj.dtype == torch.bfloat16:
        obj = obj.float()
    return obj.numpy()


def _name(source, fallback: str) -> str:
    return fallback if isinstance(source, np.ndarray) or not isinstance(source, (str, os.PathLike)) else str(source)


def _sha256(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return sha256_file(source)
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(np.asarray(source)).tobytes()).hexdigest()


def _read_any(source, *, trust: bool, what: str) -> np.ndarray:
    """An array as given, or read from its file (`read_array`)."""
    if isinstance(source, (str, os.PathLike)):
        return read_array(source, trust=trust, what=what)
    if hasattr(source, "detach") and hasattr(source, "cpu"):  # a torch tensor, without importing torch
        source = source.detach().cpu().float().numpy() if str(source.dtype) == "torch.bfloat16" else source.detach().cpu().numpy()
    return np.asarray(source)


def _stack_logits(sources: list, names: list[str], *, trust: bool) -> np.ndarray:
    """(K, N, C) float32/float16 from one 3-D array/file or K 2-D ones."""
    paths = names
    arrays = [_as_logits(_read_any(src, trust=trust, what="logits"), name) for src, name in zip(sources, names)]
    if len(paths) == 1:
        (logits,) = arrays
        if logits.ndim == 2:
            raise ValueError(
                f"logits file {paths[0]} has shape {logits.shape}, one exit's (N, C); give one (N, C) file per "
                "exit (shallow -> deep) or one (K, N, C) array of all exits"
            )
        if logits.ndim != 3:
            raise ValueError(f"logits file {paths[0]} has shape {logits.shape}; expected (K, N, C)")
        return logits
    for p, a in zip(paths, arrays):
        if a.ndim != 2:
            raise ValueError(
                f"logits file {p} has shape {a.shape}; with one file per exit each must be (N, C) - "
                "pass a (K, N, C) array alone"
            )
    (p0, a0) = paths[0], arrays[0]
    for p, a in zip(paths[1:], arrays[1:]):
        if a.shape[0] != a0.shape[0]:
            raise ValueError(f"mismatched N: {p0} has {a0.shape[0]} rows but {p} has {a.shape[0]}; every exit needs the same samples")
        if a.shape[1] != a0.shape[1]:
            raise ValueError(f"mismatched C: {p0} has {a0.shape[1]} classes but {p} has {a.shape[1]}")
    dtype = np.float16 if all(a.dtype == np.float16 for a in arrays) else np.float32
    return np.stack([a.astype(dtype, copy=False) for a in arrays])


def _as_logits(array: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"logits file {path} has dtype {array.dtype}; logits must be floating point")
    if array.dtype not in (np.float32, np.float16):
        array = array.astype(np.float32)
    return array


def _read_split(path: Path, N: int) -> np.ndarray:
    if path.suffix.lower() != ".npy":
        raise ValueError(f"--split {path}: expected a .npy array of strings; got {path.suffix or 'no extension'!r}")
    return _check_split(read_array(path, what="split"), N, f"--split {path}")


def _check_split(split: np.ndarray, N: int, where: str) -> np.ndarray:
    if split.dtype.kind == "S":
        split = split.astype(str)
    if split.dtype.kind != "U":
        raise ValueError(
            f"{where} has dtype {split.dtype}; expected strings 'val'/'test' - "
            "save numpy.array(['val', 'test', ...]) with numpy.save"
        )
    if split.shape != (N,):
        raise ValueError(f"{where}: expected shape ({N},) to match the logits' N = {N}; got {split.shape}")
    return split


def parse_flops(text: str) -> tuple[list[float], float | None]:
    """Per-exit costs from "1e8,2e8,3e8" or a JSON file (a list, or {"flops": [...],
    "baseline_flops": x}). Returns (flops, baseline_flops or None).

    Raises:
        ValueError: a non-numeric value or a malformed file.
    """
    path = Path(text)
    if text.lower().endswith(".json") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"--flops file {path} does not exist")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"--flops file {path} is not valid JSON ({exc})") from None
        baseline = None
        if isinstance(obj, dict):
            if "flops" not in obj:
                raise ValueError(f'--flops file {path}: expected a list or {{"flops": [...], "baseline_flops": x}}; got keys {sorted(obj)}')
            baseline = obj.get("baseline_flops")
            if baseline is not None:
                baseline = _number(baseline, f"--flops file {path}: baseline_flops")
            obj = obj["flops"]
        if not isinstance(obj, list):
            raise ValueError(f"--flops file {path}: expected a list of numbers; got {type(obj).__name__}")
        return [_number(v, f"--flops file {path}") for v in obj], baseline
    parts = [p.strip() for p in text.split(",")]
    return [_number(p, f"--flops {text!r}") for p in parts], None


def _number(value, where: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a number; give costs like 1e8,2e8,3e8")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {value!r} is not a number; give costs like 1e8,2e8,3e8") from None
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{where}: {value!r} is not a positive finite cost")
    return number


def exit_summary_table(cache: ExitCache) -> str:
    """Each exit's val and test accuracy and cost (MFLOPs, % of the baseline network)."""
    from tradeoff.report.tables import mflops_text  # the one cost formatter

    splits = [s for s in ("val", "test") if (cache.split == s).any()]
    correct = cache.logits.argmax(axis=2) == cache.labels[None, :]  # (K, N)
    baseline = cache.baseline_flops
    header = f"{'exit':<10}" + "".join(f"{s + ' acc':>10}" for s in splits) + f"{'MFLOPs':>12}{'% base':>9}"
    lines = [header, "-" * len(header)]
    for k, name in enumerate(cache.exit_names):
        accs = "".join(f"{correct[k, cache.split == s].mean():>10.4f}" for s in splits)
        lines.append(f"{name:<10}{accs}{mflops_text(cache.flops[k]):>12}{100 * cache.flops[k] / baseline:>8.1f}%")
    counts = ", ".join(f"{n} {s}" for s, n in cache.split_counts().items())
    lines.append(f"baseline (single-exit network): {mflops_text(baseline)} MFLOPs; {cache.num_samples} samples ({counts})")
    return "\n".join(lines)


def is_cache_file(path: Path) -> bool:
    """Whether `path` is an .npz holding the cache keys (read lazily: no array is loaded)."""
    import zipfile

    from tradeoff.cache.format import REQUIRED_KEYS

    try:
        with np.load(path, allow_pickle=False) as archive:
            return hasattr(archive, "files") and all(key in archive.files for key in REQUIRED_KEYS)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False
