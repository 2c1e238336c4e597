"""Saving and loading model checkpoints without ever running code from the file.

Three kinds of file load:
  * a tradeoff checkpoint: `{"format": "tradeoff-ckpt", "version": 1, "arch", "arch_kwargs",
    "num_classes", "data", "state_dict", ...extra}`, which records how to rebuild its model;
  * a bare `state_dict` (the official SCAN `bestmodel.pth`, BYOT checkpoints with extra
    `adaptation_layers.*`, DataParallel `module.` or `torch.compile` `_orig_mod.` prefixes,
    training wrappers such as `{"epoch": 9, "state_dict": {...}}`), which needs `arch`;
  * a `.safetensors` file, likewise.

Pickled files are always read with `torch.load(weights_only=True)` (timm's habit): only
tensors, plain containers and NumPy scalars/dtypes (a `best_acc` stored as `np.float64`)
come back. A file that asks for arbitrary Python objects is
refused with `UnsafeCheckpointError` unless the caller passes `trust=True`
(`--trust-checkpoint`). Key and shape mismatches become one line that names the first
offending keys, the likely cause (`tradeoff.state_keys.mismatch_cause`) and the `--arch` /
`--num-classes` the file seems to fit. One key prefix common to the whole file (`model.`,
`net.`: training wrappers such as Lightning's) is removed when that alone makes every key
fit, and `LoadedCheckpoint.stripped_prefix` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tradeoff.checkpoint_file import read_file
from tradeoff.fileio import atomic_open, sha256_file
from tradeoff.models import create_model, list_models
from tradeoff.models.scan import infer_scan_arch
from tradeoff.state_keys import mismatch_cause, strip_common_prefix

FORMAT = "tradeoff-ckpt"
VERSION = 1
_RESERVED = ("format", "version", "arch", "arch_kwargs", "num_classes", "data", "state_dict")
_WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")
_IGNORED_PREFIXES = ("adaptation_layers.",)  # BYOT's training-only feature adapters
_SHOW = 3  # keys named per kind of mismatch


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A ready model and where it came from.

    Attributes:
        model: built with `create_model`, weights loaded strictly, in `eval()` mode.
        arch, arch_kwargs, num_classes: what built it (recorded in the file or given).
        data: the data spec recorded at training (tradeoff checkpoints), else None.
        sha256: hex digest of the file's bytes, the cache's provenance key.
        path: the file read.
        ignored_keys: file entries deliberately dropped (BYOT `adaptation_layers.*`).
        extra: the file's other plain entries (tradeoff extras, wrapper fields such as epoch).
        stripped_prefix: the key prefix common to the whole file that was removed to fit the
            model (e.g. "model." of a Lightning checkpoint), else None.
    """

    model: nn.Module
    arch: str
    arch_kwargs: dict
    num_classes: int
    data: str | None
    sha256: str
    path: Path
    ignored_keys: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    stripped_prefix: str | None = None


def save_checkpoint(
    path,
    model: nn.Module,
    *,
    arch: str,
    arch_kwargs: dict,
    num_classes: int,
    data: str | None,
    extra: dict | None = None,
) -> Path:
    """Write a tradeoff checkpoint atomically; it loads back with `weights_only=True`.

    Args:
        path: destination file (parents are created).
        model: the network; its `state_dict()` is copied to CPU.
        arch: registered name or `pkg.module:builder` that rebuilds it.
        arch_kwargs: builder keyword arguments other than `num_classes` (plain values).
        num_classes: classes of every exit.
        data: the data spec it was trained on (e.g. "digits"), so `tradeoff cache`
            can default to it.
        extra: further plain entries (epochs, accuracies, seed ...).

    Returns:
        The path written.

    Raises:
        TypeError: a value torch's safe loader could not read back (e.g. a numpy array).
        ValueError: empty arch, bad num_classes, or an `extra` key that shadows a field.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_checkpoint: model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"save_checkpoint: arch must be a non-empty model name; got {arch!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"save_checkpoint: num_classes must be a positive int; got {num_classes!r}")
    if not isinstance(arch_kwargs, dict) or "num_classes" in arch_kwargs:
        raise ValueError(
            "save_checkpoint: arch_kwargs must be a dict without 'num_classes' (pass that on its own); "
            f"got {arch_kwargs!r}"
        )
    if data is not None and not isinstance(data, str):
        raise TypeError(f"save_checkpoint: data must be a data spec string or None; got {type(data).__name__}")
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_checkpoint: extra keys {clash} would overwrite checkpoint fields; rename them")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "num_classes": int(num_classes),
        "data": data,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        **extra,
    }
    _check_plain(payload, "checkpoint")
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)
    return path


def _check_plain(value, where: str) -> None:
    """Refuse values `torch.load(weights_only=True)` would reject, before writing anything."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}, which a safe loader cannot read; "
        "store plain values (str, int, float, list, dict) or torch tensors"
    )


def load_checkpoint(
    path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    arch_kwargs: dict | None = None,
    trust: bool = False,
    map_location="cpu",
) -> LoadedCheckpoint:
    """Build the model a checkpoint describes and load its weights strictly.

    Args:
        path: a tradeoff checkpoint, a bare (possibly wrapped/prefixed) state_dict, or a
            `.safetensors` file.
        arch: model name; required for bare state_dicts, checked against a tradeoff file.
        num_classes: required for bare state_dicts unless the final linear layer tells;
            checked against a tradeoff file.
        arch_kwargs: further builder arguments for bare state_dicts.
        trust: allow unpickling arbitrary objects (`--trust-checkpoint`); this can run
            code from the file, so only for sources you trust.
        map_location: device for the tensors and the model.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file wants arbitrary objects and `trust` is False.
        ValueError: not a checkpoint, or it does not fit the architecture (with a hint).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the file written by training (--ckpt)")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is a directory; pass the checkpoint file inside it (--ckpt)")
    if arch_kwargs is not None and not isinstance(arch_kwargs, dict):
        raise TypeError(f"arch_kwargs must be a dict; got {type(arch_kwargs).__name__}")
    digest = sha256_file(path)
    raw, extra = read_file(path, trust, map_location)

    if isinstance(raw, Mapping) and raw.get("format") == FORMAT:
        spec = _tradeoff_spec(raw, path, arch, num_classes, arch_kwargs)
        state, data = _clean_keys(spec.pop("state_dict"), path), spec.pop("data")
        extra = {**extra, **{k: v for k, v in raw.items() if k not in _RESERVED}}
    else:
        state, wrapper_extra = _unwrap(raw, path)
        state, data = _clean_keys(state, path), None
        extra = {**extra, **wrapper_extra}
        spec = _bare_spec(state, path, arch, num_classes, arch_kwargs)

    model = create_model(spec["arch"], num_classes=spec["num_classes"], **spec["arch_kwargs"])
    ignored, prefix = _load_strict(model, state, path, spec)
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    model.eval()
    return LoadedCheckpoint(
        model=model, sha256=digest, path=path, data=data, ignored_keys=ignored, extra=extra, stripped_prefix=prefix,
        **spec,
    )


# ---------------------------------------------------------------- what the file holds


def _tradeoff_spec(raw: Mapping, path: Path, arch, num_classes, arch_kwargs) -> dict:
    """Checked fields of a tradeoff checkpoint; the caller's flags may only agree with it."""
    if raw.get("version") != VERSION:
        raise ValueError(
            f"{path} is a tradeoff checkpoint of version {raw.get('version')!r}; this tradeoff reads version "
            f"{VERSION}; use the tradeoff release that wrote it"
        )
    file_arch, file_n, file_kw = raw.get("arch"), raw.get("num_classes"), raw.get("arch_kwargs")
    data, state = raw.get("data"), raw.get("state_dict")
    if (
        not isinstance(file_arch, str)
        or not isinstance(file_n, int)
        or not isinstance(file_kw, dict)
        or not (data is None or isinstance(data, str))
        or not isinstance(state, Mapping)
    ):
        raise ValueError(
            f"{path} is a damaged tradeoff checkpoint: expected arch (str), num_classes (int), arch_kwargs (dict), "
            "data (str) and state_dict (dict); retrain or re-save it"
        )
    if arch is not None and arch != file_arch:
        raise ValueError(
            f"--arch {arch} disagrees with {path}, which records arch {file_arch}; drop --arch "
            "(a tradeoff checkpoint knows its architecture)"
        )
    if num_classes is not None and num_classes != file_n:
        raise ValueError(
            f"--num-classes {num_classes} disagrees with {path}, which records {file_n} classes; drop --num-classes"
        )
    if arch_kwargs is not None and dict(arch_kwargs) != file_kw:
        raise ValueError(f"arch_kwargs {arch_kwargs} disagree with {path}, which records {file_kw}; drop them")
    # The model is built from these fields before any weight is checked: a damaged or hostile
    # num_classes (say 2**33) would otherwise allocate a gigantic head first.
    rows = infer_num_classes(_clean_keys(state, path))
    if isinstance(file_n, bool) or file_n < 1 or (rows is not None and rows != file_n):
        raise ValueError(
            f"{path} is a damaged tradeoff checkpoint: it records num_classes {file_n!r} but its final layer has "
            f"{rows} outputs; retrain or re-save it"
        )
    return {"arch": file_arch, "num_classes": file_n, "arch_kwargs": dict(file_kw), "state_dict": state, "data": data}


def _unwrap(raw, path: Path) -> tuple[dict, dict]:
    """The state_dict inside a bare file, and the wrapper's other plain fields (epoch, acc)."""
    if isinstance(raw, nn.Module):  # a whole pickled model, only reachable with trust=True
        return raw.state_dict(), {}
    extra: dict = {}
    for _ in range(3):  # wrappers nest at most a couple of levels in practice
        if not isinstance(raw, Mapping):
            break
        if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
            return dict(raw), extra
        inner = next((k for k in _WRAPPER_KEYS if k in raw), None)
        if inner is None:
            break
        extra.update({k: (v.item() if isinstance(v, np.generic) else v) for k, v in raw.items()
                      if k != inner and isinstance(v, (bool, int, float, str, np.bool_, np.number))})
        raw = raw[inner]
        if isinstance(raw, nn.Module):
            return raw.state_dict(), extra
    if isinstance(raw, Mapping):
        keys = ", ".join(map(str, list(raw)[:6])) or "none"
        what = f"a dict with keys {keys} but no tensors under {'/'.join(_WRAPPER_KEYS)}"
    else:
        what = f"a {type(raw).__name__}"
    raise ValueError(
        f"{path} holds {what}, not a state_dict or tradeoff checkpoint; "
        "save it with torch.save(model.state_dict(), ...)"
    )


def _clean_keys(state: Mapping, path: Path) -> dict:
    """Strip `module.`/`_orig_mod.` prefixes, however nested (DataParallel, torch.compile)."""
    cleaned: dict = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor; it is not a state_dict"
            )
        name = key
        while name.startswith(_PREFIXES):
            name = name.split(".", 1)[1]
        if name in cleaned:
            raise ValueError(f"{path}: keys {key!r} and another both become {name!r} after removing module. prefixes")
        cleaned[name] = value
    return cleaned


def _bare_spec(state: Mapping, path: Path, arch, num_classes, arch_kwargs) -> dict:
    """arch / num_classes for a file that does not record them: given, else inferred."""
    if arch is None:
        raise ValueError(
            f"{path} is a bare state_dict that does not record its architecture; pass --arch NAME [--num-classes N]"
            + _suggestion(state, "")
        )
    if num_classes is None:
        num_classes = infer_num_classes(state)
        if num_classes is None:
            raise ValueError(
                f"{path}: cannot tell the number of classes from its layers; pass --num-classes N"
            )
    return {"arch": arch, "num_classes": int(num_classes), "arch_kwargs": dict(arch_kwargs or {})}


# ---------------------------------------------------------------- fitting the model


def _load_strict(model: nn.Module, state: dict, path: Path, spec: dict) -> tuple[list[str], str | None]:
    """Load every weight or explain in one line what does not fit.

    Returns:
        (dropped keys, the common key prefix removed to fit or None).
    """
    expected = model.state_dict()
    state, prefix = strip_common_prefix(state, expected)
    ignored = [k for k in state if k not in expected and k.startswith(_IGNORED_PREFIXES)]
    for key in ignored:
        del state[key]
    # Files from before BatchNorm counted batches lack these; torch fills them in.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} in file vs {tuple(expected[k].shape)} in model"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes)):
            if keys:
                more = f", … {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:_SHOW])}{more})")
        cause = mismatch_cause(missing, unexpected, expected, state) if (missing or unexpected) else None
        raise ValueError(
            f"{path} does not fit --arch {spec['arch']} with {spec['num_classes']} classes: {'; '.join(parts)}"
            + (f" - {cause}" if cause else "")
            + _suggestion(state, spec["arch"], spec["num_classes"], keys_fit=not (missing or unexpected))
        )
    model.load_state_dict(state, strict=True)
    return sorted(ignored), prefix


def infer_num_classes(state: Mapping) -> int | None:
    """Rows of `fc4.weight` (SCAN's deepest head), else of the linear layers if they agree."""
    if "fc4.weight" in state and state["fc4.weight"].ndim == 2:
        return int(state["fc4.weight"].shape[0])
    rows = {int(v.shape[0]) for k, v in state.items() if k.endswith("weight") and v.ndim == 2}
    return rows.pop() if len(rows) == 1 else None


def suggest_arch(state: Mapping, *, search_registry: bool = True) -> tuple[str | None, int | None]:
    """The registered architecture and class count a state_dict fits, as far as it tells.

    SCAN layouts are recognised from their block counts; otherwise (if `search_registry`)
    every registered model is built on the meta device (no weight memory) and compared key
    for key and shape for shape. That costs a second or more (the first meta-device init
    imports torch's compiler stack), so it is kept to error paths.
    """
    num_classes = infer_num_classes(state)
    arch = infer_scan_arch(state)
    if arch is None and search_registry:
        arch = _matching_registered(state, num_classes)
    return arch, num_classes


def _matching_registered(state: Mapping, num_classes: int | None) -> str | None:
    wanted = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    wanted = {k: s for k, s in wanted.items() if not k.endswith("num_batches_tracked")}
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    for name in list_models():
        try:
            with torch.device("meta"):
                model = create_model(name, **kwargs)
            have = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        except Exception:  # a builder that needs other arguments simply is not a candidate
            continue
        if have == wanted:
            return name
    return None


def _suggestion(state: Mapping, arch: str, num_classes: int | None = None, *, keys_fit: bool = False) -> str:
    """'; try --arch A --num-classes N' for a mismatch; with `keys_fit` only the class count is off."""
    guess_arch, guess_n = suggest_arch(state, search_registry=not keys_fit)
    if keys_fit and guess_arch is None and guess_n is not None:
        guess_arch = arch
    if guess_arch and guess_n:
        if (guess_arch, guess_n) == (arch, num_classes):
            return "; check that the file belongs to this model"
        return f"; it looks like {guess_arch} with {guess_n} classes: try --arch {guess_arch} --num-classes {guess_n}"
    if guess_arch:
        return f"; it looks like {guess_arch}: try --arch {guess_arch}"
    if guess_n and guess_n != num_classes:
        return f"; its final layer has {guess_n} outputs: try --num-classes {guess_n}"
    return "; check --arch and --num-classes"
