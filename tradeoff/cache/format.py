"""The exit cache: every exit's logits, the labels, the split and each exit's cost.

One file (`.npz`, schema 1, see DESIGN.md) that `numpy.load(path, allow_pickle=False)`
reads. This half of the module (the dataclass, validation, reading and writing) is
NumPy only, so `tradeoff search` starts without importing torch; building a cache from a
model lives in `tradeoff.cache.build`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import weakref
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tradeoff import __version__
from tradeoff.errors import first_line, is_integer
from tradeoff.fileio import ANY, atomic_open

SCHEMA = 1
SPLIT_NAMES = ("train", "val", "test")
REQUIRED_KEYS = ("logits", "labels", "split", "flops", "meta")
LOGIT_DTYPES = (np.float32, np.float16)
# A cache larger than this in any dimension is taken for corruption, not ambition.
_MAX_DIM = 1 << 31
# Caches returned by validate_cache (frozen, so still valid): written without a second check.
# Keyed by id; an entry dies with its cache, so a reused id never matches a stale one.
_VALIDATED: "weakref.WeakValueDictionary[int, ExitCache]" = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class ExitCache:
    """Everything a threshold search needs, with no model in sight.

    Attributes:
        logits: (K, N, C) float32 or float16, exits shallow -> deep.
        labels: (N,) int64 true classes in [0, C).
        split: (N,) str, each "train", "val" or "test".
        flops: (K,) float64, cost of a sample leaving at exit k (fvcore count: one
            multiply-add = one flop), backbone up to k plus the heads of exits 1..k.
        meta: provenance (arch, checkpoint sha256, data fingerprint, baseline_flops, ...).
    """

    logits: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    flops: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def num_exits(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.logits.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[2])

    @property
    def baseline_flops(self) -> float:
        """Cost of the original single-exit network; falls back to the deepest exit's cost."""
        value = self.meta.get("baseline_flops")
        return float(value) if value is not None else float(self.flops[-1])

    @property
    def exit_names(self) -> list[str]:
        names = self.meta.get("exit_names")
        if isinstance(names, list) and len(names) == self.num_exits:
            return [str(n) for n in names]
        return [f"exit{k + 1}" for k in range(self.num_exits)]

    def split_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.split, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}

    def select(self, split_name: str) -> "ExitCache":
        """The rows of one split, as a cache of its own (logits copied, contiguous).

        Raises:
            ValueError: if the split has no rows.
        """
        mask = self.split == split_name
        if not mask.any():
            have = ", ".join(f"{k} ({v})" for k, v in self.split_counts().items()) or "none"
            raise ValueError(
                f"the cache has no {split_name!r} rows (splits present: {have}); "
                f"rebuild it with `tradeoff cache` or give `tradeoff import --split`"
            )
        return replace(
            self,
            logits=np.ascontiguousarray(self.logits[:, mask]),
            labels=self.labels[mask],
            split=self.split[mask],
        )


def make_meta(**fields) -> dict:
    """The standard meta dict, with schema, tool version and creation time filled in."""
    meta = {
        "schema": SCHEMA,
        "tool_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(fields)
    return meta


def uncounted_ops_note(meta: dict) -> str | None:
    """One line naming each op the FLOP counter could not count and how often it ran, or None.

    The per-exit costs of such a cache leave those ops out (they are lower bounds), so
    `tradeoff cache` prints this, search's summary.json keeps the ops and the plots'
    titles repeat it.
    """
    ops = meta.get("unsupported_ops") if isinstance(meta, dict) else None
    if not isinstance(ops, dict) or not ops:
        return None
    listed = ", ".join(f"{name} x{count}" for name, count in sorted(ops.items()))
    return f"FLOPs exclude {len(ops)} uncounted op(s): {listed}"


def validate_cache(cache: ExitCache, *, source: str = "cache") -> ExitCache:
    """Check every invariant of the format once, at the entry point.

    Returns the cache with arrays in their canonical dtypes (labels int64, flops
    float64, split str).

    Raises:
        ValueError: naming `source`, what was expected, what arrived and the fix.
    """
    logits, labels, split, flops, meta = cache.logits, cache.labels, cache.split, cache.flops, cache.meta
    where = f"{source}: "
    if not isinstance(logits, np.ndarray) or logits.ndim != 3:
        shape = getattr(logits, "shape", None)
        hint = " - did you pass one exit?" if shape is not None and len(shape) == 2 else ""
        raise ValueError(f"{where}logits must have shape (K, N, C); got {shape}{hint}")
    if logits.dtype not in LOGIT_DTYPES:
        raise ValueError(f"{where}logits must be float32 or float16; got {logits.dtype}")
    K, N, C = logits.shape
    if min(K, N, C) < 1 or max(K, N, C) >= _MAX_DIM:
        raise ValueError(f"{where}logits shape (K, N, C) = {logits.shape} is empty or implausibly large")
    if C < 2:
        raise ValueError(f"{where}logits have C = {C} classes; a classifier needs at least 2")
    labels = np.asarray(labels)
    if labels.shape != (N,):
        raise ValueError(f"{where}labels must have shape (N,) = ({N},) to match logits; got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}labels must be integers; got dtype {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    if N and (labels.min() < 0 or labels.max() >= C):
        raise ValueError(
            f"{where}labels must lie in [0, {C}) for C = {C} classes; got range "
            f"[{labels.min()}, {labels.max()}] - are the logits from a model with another number of classes?"
        )
    split = np.asarray(split)
    if split.shape != (N,):
        raise ValueError(f"{where}split must have shape (N,) = ({N},); got {split.shape}")
    if split.dtype.kind != "U":
        raise ValueError(f"{where}split must be an array of strings; got dtype {split.dtype}")
    unknown = sorted(set(np.unique(split).tolist()) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(f"{where}split holds unknown names {unknown[:5]}; allowed: {', '.join(SPLIT_NAMES)}")
    flops = np.asarray(flops)
    if flops.shape != (K,):
        raise ValueError(f"{where}flops must have one cost per exit, shape ({K},); got {flops.shape}")
    if not np.issubdtype(flops.dtype, np.number) or np.issubdtype(flops.dtype, np.complexfloating):
        raise ValueError(f"{where}flops must be numbers; got dtype {flops.dtype}")
    flops = flops.astype(np.float64, copy=False)
    if not np.all(np.isfinite(flops)) or np.any(flops <= 0):
        raise ValueError(f"{where}flops must be finite and positive; got {flops.tolist()}")
    if np.any(np.diff(flops) < 0):
        k = int(np.argmax(np.diff(flops) < 0))
        raise ValueError(
            f"{where}flops must not decrease with depth (a deeper exit has run everything before it); "
            f"exit {k + 2} costs {flops[k + 1]:.6g} < exit {k + 1}'s {flops[k]:.6g} - give cumulative costs"
        )
    if not isinstance(meta, dict):
        raise ValueError(f"{where}meta must be a JSON object; got {type(meta).__name__}")
    if meta.get("schema", SCHEMA) != SCHEMA:
        raise ValueError(
            f"{where}cache schema {meta.get('schema')!r} is not supported (this tradeoff reads schema {SCHEMA}); "
            "rebuild the cache with this version"
        )
    baseline = meta.get("baseline_flops")
    if baseline is not None and not _positive_number(baseline):
        raise ValueError(f"{where}meta.baseline_flops must be a positive number; got {_clip(baseline)}")
    # Provenance the search copies into thresholds.json, whose reader insists on these types.
    for key in ("arch", "checkpoint_sha256"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise ValueError(f"{where}meta.{key} must be a string; got {_clip(meta[key])}")
    classes = meta.get("num_classes")
    if classes is not None and not is_integer(classes):
        raise ValueError(f"{where}meta.num_classes must be an integer; got {_clip(classes)}")
    _check_finite(logits, where)
    valid = replace(cache, labels=labels, split=split, flops=flops)
    _VALIDATED[id(valid)] = valid
    return valid


def _positive_number(value) -> bool:
    """A finite number > 0 (a JSON integer too large for a float is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        value = float(value)
    except OverflowError:
        return False
    return bool(np.isfinite(value) and value > 0)


def _clip(value, limit: int = 80) -> str:
    """repr of a value from a file, cut short so an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_finite(logits: np.ndarray, where: str) -> None:
    """Name the first exit with a NaN or inf, checking in chunks so memory stays flat."""
    K, N, _ = logits.shape
    step = max(1, (1 << 24) // max(1, logits.shape[2]))
    for k in range(K):
        for start in range(0, N, step):
            block = logits[k, start : start + step]
            if not np.isfinite(block).all():
                bad = int(np.count_nonzero(~np.isfinite(logits[k])))
                raise ValueError(
                    f"{where}exit {k + 1} has {bad} NaN/inf logits; the model diverged or the export is broken - "
                    "fix the model (or its float16 overflow) and rebuild the cache"
                )


def write_cache(path: str | os.PathLike, cache: ExitCache, *, expect=ANY) -> Path:
    """Validate (unless `cache` came from `validate_cache`), then write atomically (temp file +
    rename). Returns the path written.

    Args:
        expect: `tradeoff.fileio.output_stamp(path)` from when the writer started; the file is
            not replaced if another process wrote `path` since (FileExistsError).
    """
    if _VALIDATED.get(id(cache)) is not cache:
        cache = validate_cache(cache)
    path = Path(path)
    meta = dict(cache.meta)
    meta.setdefault("schema", SCHEMA)
    arrays = {
        "logits": cache.logits,
        "labels": cache.labels,
        "split": cache.split.astype(str),
        "flops": cache.flops,
        "meta": np.array(json.dumps(meta, sort_keys=True, allow_nan=False)),
    }
    with atomic_open(path, "wb", expect=expect) as handle:
        np.savez(handle, **arrays)
    return path


def load_cache(path: str | os.PathLike) -> ExitCache:
    """Read and validate a cache file; never unpickles, never trusts a declared size.

    The archive is read member by member: each `.npy` header is parsed first and its
    declared shape x item size must equal the bytes the zip member really holds before
    a single array byte is allocated, so a corrupted or hostile header (say a shape of
    (2**40,)) is refused instead of exhausting memory.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if it is not a cache, is truncated, or breaks an invariant (one line
            naming the file, what is wrong and the fix).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cache file {path} does not exist; build one with `tradeoff cache --ckpt MODEL`")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; pass the cache file (.npz) itself")
    try:
        arrays = _read_members(path)
    except MemoryError:
        raise ValueError(
            f"{path}: its arrays do not fit in this machine's memory; use a machine with more memory "
            "or store the logits as float16 (`tradeoff cache --logits-dtype float16`)"
        ) from None
    except _BadCache as exc:
        raise ValueError(f"{path}: {exc}; rebuild it with `tradeoff cache` or `tradeoff import`") from None
    except Exception as exc:  # zipfile/zlib/numpy raise many types for damaged bytes; all mean "unreadable"
        raise ValueError(
            f"{path} is not a readable tradeoff cache ({first_line(exc, 160)}); "
            "it may be truncated or another file - rebuild it with `tradeoff cache` or `tradeoff import`"
        ) from None
    meta_raw = arrays["meta"]
    try:
        meta = json.loads(str(meta_raw[()]) if meta_raw.shape == () else "")
    except (json.JSONDecodeError, TypeError, ValueError, RecursionError):
        raise ValueError(f"{path}: meta is not a JSON string; rebuild the cache with `tradeoff cache`") from None
    cache = ExitCache(arrays["logits"], arrays["labels"], arrays["split"], arrays["flops"], meta)
    return validate_cache(cache, source=str(path))


class _BadCache(ValueError):
    """A structural fault found while reading, already phrased for the user."""


# A deflate stream expands at most ~1032-fold; a member claiming more is lying.
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 24  # bytes read per step, so no second full-size buffer is ever made


def _read_members(path: Path) -> dict[str, np.ndarray]:
    """The REQUIRED_KEYS arrays of the `.npz` at `path`, each checked before it is allocated."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        missing = [key for key in REQUIRED_KEYS if f"{key}.npy" not in names]
        if missing:
            raise _BadCache(f"missing keys {missing} (a cache holds {', '.join(REQUIRED_KEYS)})")
        return {key: _read_member(archive, archive.getinfo(f"{key}.npy"), size) for key in REQUIRED_KEYS}


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, archive_size: int) -> np.ndarray:
    """One `.npy` member: header parsed and checked against the member's real size, then read."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise _BadCache(f"member {name} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _BadCache(f"member {name} uses zip compression method {info.compress_type}; expected stored or deflated")
    if info.header_offset + info.compress_size > archive_size:
        raise _BadCache(f"member {name} extends past the end of the file (truncated)")
    limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else _MAX_DEFLATE_RATIO * info.compress_size + 64
    if info.file_size > limit:
        raise _BadCache(f"member {name} claims {info.file_size} bytes from {info.compress_size} stored")
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise _BadCache(f"member {name} is .npy format version {version[0]}.{version[1]}; expected 1.0 or 2.0")
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufcUS":
            raise _BadCache(
                f"member {name} holds dtype {dtype.str} (Python objects or records); a cache holds plain numbers and "
                "strings and is never unpickled"
            )
        if dtype.itemsize == 0:
            raise _BadCache(f"member {name} holds dtype {dtype.str} of zero item size")
        if any(int(dim) < 0 for dim in shape):
            raise _BadCache(f"member {name} declares a negative dimension in shape {tuple(shape)}")
        count = 1
        for dim in shape:
            count *= int(dim)
        declared = count * dtype.itemsize
        held = info.file_size - stream.tell()
        if declared != held:
            raise _BadCache(
                f"member {name} declares shape {tuple(shape)} of {dtype.str} = {declared} bytes but holds {held}; "
                "the file is truncated or corrupted"
            )
        flat = np.empty(count, dtype=dtype)
        buffer = flat.view(np.uint8)
        done = 0
        while done < declared:
            block = stream.read(min(_CHUNK, declared - done))
            if not block:
                raise _BadCache(f"member {name} ends after {done} of {declared} bytes (truncated)")
            buffer[done : done + len(block)] = np.frombuffer(block, dtype=np.uint8)
            done += len(block)
    if fortran:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)



