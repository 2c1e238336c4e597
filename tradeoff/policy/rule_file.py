"""`thresholds.json`, the file of an `ExitRule`: the one place that reads and writes it.

`write_rule` writes a `thresholds.json`; `read_rule` reads one and checks it against what
the caller is about to apply it to, so a file made for another model, another cache or
another confidence measure is caught once, with a message that says which. NumPy and the
standard library only.

The file (DESIGN.md, issue 3): `{"format": "tradeoff-thresholds", "version": 1,
"thresholds": [t_1..t_{K-1}] (null = off; per class a list of lists; K entries under the
ensemble / most-confident fallbacks), "fallback" (absent = "deepest"), "confidence":
"maxprob", "ensemble": false, "calibration":
null | {"temperatures": [T_1..T_K]}, "cache", "cache_sha256", "num_exits", "arch",
"checkpoint_sha256", "pick", "val": {...}, "test": {...}}`. The four keys that decide where
a sample leaves are required; the provenance keys are checked when present and when the
caller has something to check them against.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tradeoff.errors import is_integer
from tradeoff.fileio import write_json_atomic
from tradeoff.policy.confidence import CONFIDENCE_MEASURES
from tradeoff.policy.rule import FALLBACKS, ExitRule

FORMAT = "tradeoff-thresholds"
VERSION = 1


def rule_document(rule: ExitRule, **provenance) -> dict:
    """The whole `thresholds.json` object: format, version, the rule's keys, then `provenance`
    (cache, checkpoint, figures...; see the module docstring)."""
    clash = sorted(set(provenance) & {"format", "version", "thresholds", "confidence", "ensemble", "calibration", "fallback"})
    if clash:
        raise ValueError(f"provenance must not redefine the rule's keys; got {', '.join(clash)}")
    return {"format": FORMAT, "version": VERSION, **rule.document(), **provenance}


def write_rule(path: str | os.PathLike, rule: ExitRule, **provenance) -> Path:
    """Write `rule` (and `provenance`) as a thresholds.json, atomically, sorted keys. Returns the path."""
    path = Path(path)
    write_json_atomic(path, rule_document(rule, **provenance))
    return path


REQUIRED_KEYS = ("thresholds", "confidence", "ensemble", "calibration")


@dataclass(frozen=True)
class ThresholdsFile:
    """A validated thresholds file: its `rule` and where it came from.

    Attributes:
        path: where it was read from.
        rule: the `ExitRule` it holds.
        thresholds: (M,) float64 in [0, 1] (per class (M, C)), exits shallow -> deep, a
            switched-off exit as `OFF_THRESHOLD`; M = K-1 under "deepest", else K.
        fallback: who answers a sample no exit accepted (a file without the key: "deepest").
        confidence: one of `policy.CONFIDENCE_MEASURES`.
        ensemble: whether exit k answers with the mean softmax of exits 1..k.
        temperatures: (K,) float64 > 0 per-exit calibration temperatures, or None.
        num_exits: K (from the file, or len(thresholds) + 1 when the file omits it).
        cache: path of the cache the thresholds were searched on, or None.
        cache_sha256: that cache's sha256, or None.
        arch: model name recorded in the cache, or None.
        checkpoint_sha256: sha256 of the checkpoint the cache was built from, or None.
        pick: how the point was chosen (e.g. {"target_acc": 0.97}), or None.
        val: the chosen point's figures on the validation split (dict, may be empty).
        test: the same on the test split (dict, may be empty).
    """

    path: Path
    rule: ExitRule
    thresholds: np.ndarray
    fallback: str
    confidence: str
    ensemble: bool
    temperatures: np.ndarray | None
    num_exits: int
    cache: str | None
    cache_sha256: str | None
    arch: str | None
    checkpoint_sha256: str | None
    pick: object
    val: dict
    test: dict


def read_rule(
    path: str | os.PathLike,
    *,
    cache_sha256: str | None = None,
    num_exits: int | None = None,
    confidence: str | None = None,
    checkpoint_sha256: str | None = None,
) -> ThresholdsFile:
    """Read `path` and check it against what the caller is about to apply it to.

    Args:
        path: a `thresholds.json` written by `tradeoff search`.
        cache_sha256: if given, the file's `cache_sha256` must equal it.
        num_exits: if given (the model's K), the file must hold K-1 thresholds (K under
            the ensemble / most-confident fallbacks), K temperatures, and `num_exits` = K
            when it records one.
        confidence: if given, the file's confidence measure must equal it.
        checkpoint_sha256: if given (the checkpoint about to run), the file's
            `checkpoint_sha256` must equal it when the file records one.

    Returns:
        The validated `ThresholdsFile`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: malformed JSON, a missing key, a bad value, or a mismatch; one line
            naming the file, what was expected, what arrived and the fix.
    """
    path = Path(path)
    where = f"thresholds file {path}"
    if not path.exists():
        raise FileNotFoundError(f"{where} does not exist; run `tradeoff search` first, it writes results/<run>/thresholds.json")
    if path.is_dir():
        raise ValueError(f"{where} is a directory; pass the thresholds.json inside it")
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text)
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not a text JSON file; pass the thresholds.json written by `tradeoff search`") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "it may be truncated - rerun `tradeoff search` to rewrite it"
        ) from None
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nesting too deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(":")[0]
        raise ValueError(
            f"{where} is not a thresholds JSON file ({reason}); pass the thresholds.json written by `tradeoff search`"
        ) from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where} must hold a JSON object; got a JSON {type(doc).__name__}")
    if "format" in doc and doc["format"] != FORMAT:
        raise ValueError(f"{where} has format {_clip(doc['format'])}, not {FORMAT!r}; pass a thresholds.json written by "
                         "`tradeoff search`")
    if "version" in doc and doc["version"] != VERSION:
        raise ValueError(f"{where} has version {_clip(doc['version'])}; this tradeoff reads version {VERSION} - "
                         "rerun `tradeoff search` to rewrite it")
    missing = [key for key in REQUIRED_KEYS if key not in doc]
    if missing:
        raise ValueError(
            f"{where} lacks the key(s) {', '.join(missing)} (required: {', '.join(REQUIRED_KEYS)}); "
            "is it a thresholds.json written by `tradeoff search`?"
        )

    values = _thresholds(doc["thresholds"], where)
    fallback = doc.get("fallback", "deepest")
    if fallback not in FALLBACKS:
        raise ValueError(f"{where}: fallback must be one of {', '.join(FALLBACKS)}; got {_clip(fallback)}")
    measure = doc["confidence"]
    if measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"{where}: confidence must be one of {', '.join(CONFIDENCE_MEASURES)}; got {_clip(measure)}")
    if not isinstance(doc["ensemble"], bool):
        raise ValueError(f"{where}: ensemble must be true or false; got {_clip(doc['ensemble'])}")
    K = len(values) + (fallback == "deepest")
    file_k = doc.get("num_exits")
    if file_k is not None and (not is_integer(file_k) or file_k < 2):
        raise ValueError(f"{where}: num_exits must be an integer >= 2; got {_clip(file_k)}")
    if file_k is not None and file_k != K:
        need = file_k - 1 if fallback == "deepest" else file_k
        raise ValueError(
            f"{where} is inconsistent: num_exits = {file_k} needs {need} thresholds but it holds {len(values)} "
            f"(fallback {fallback!r}); rerun `tradeoff search`"
        )
    temperatures = _temperatures(doc["calibration"], K, where)
    try:
        rule = ExitRule(tuple(values), confidence=measure, ensemble=doc["ensemble"], fallback=fallback,
                        temperatures=None if temperatures is None else tuple(temperatures))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    if num_exits is not None and num_exits != K:
        raise ValueError(
            f"{where} holds {len(values)} thresholds (a {K}-exit model) but the model has {num_exits} exits, so it "
            f"needs {num_exits - 1 if fallback == 'deepest' else num_exits} (fallback {fallback!r}); it was made for "
            "another model - search thresholds on this model's cache"
        )
    if confidence is not None and confidence != measure:
        raise ValueError(
            f"{where} was searched with confidence {measure!r}, not {confidence!r}; "
            f"use --confidence {measure} or search again with --confidence {confidence}"
        )
    file_cache_sha = _optional_str(doc, "cache_sha256", where)
    if cache_sha256 is not None and file_cache_sha is not None and file_cache_sha != cache_sha256:
        raise ValueError(
            f"{where} was searched on another cache: its cache_sha256 is {file_cache_sha[:12]}... but the "
            f"given cache's is {cache_sha256[:12]}...; pass the cache it came from ({doc.get('cache')}) "
            "or search again on this one"
        )
    file_ckpt_sha = _optional_str(doc, "checkpoint_sha256", where)
    if checkpoint_sha256 is not None and file_ckpt_sha is not None and file_ckpt_sha != checkpoint_sha256:
        raise ValueError(
            f"{where} was searched for another model: its checkpoint_sha256 is {file_ckpt_sha[:12]}... but the "
            f"checkpoint's is {checkpoint_sha256[:12]}... (arch {_clip(doc.get('arch'))}); pass the checkpoint the "
            "cache was built from, or cache and search this one"
        )
    for split in ("val", "test"):
        if not isinstance(doc.get(split, {}), dict):
            raise ValueError(f"{where}: {split} must be a JSON object of figures; got {_clip(doc[split])}")
    return ThresholdsFile(
        path=path,
        rule=rule,
        thresholds=rule.threshold_array(),
        fallback=fallback,
        confidence=measure,
        ensemble=doc["ensemble"],
        temperatures=temperatures,
        num_exits=K,
        cache=_optional_str(doc, "cache", where),
        cache_sha256=file_cache_sha,
        arch=_optional_str(doc, "arch", where),
        checkpoint_sha256=file_ckpt_sha,
        pick=doc.get("pick"),
        val=dict(doc.get("val") or {}),
        test=dict(doc.get("test") or {}),
    )


def _thresholds(value, where: str) -> list:
    """The file's thresholds: a non-empty list of numbers in [0, 1] or null (off), or of such lists (per class)."""
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"{where}: thresholds must be a non-empty list of numbers (null = off) or of per-class lists; got {_clip(value)}"
        )
    flat = [x for v in value for x in (v if isinstance(v, list) else [v])]
    bad = [v for v in flat if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))]
    if bad:
        raise ValueError(f"{where}: thresholds must be numbers; got {_clip(bad[0])} in a list of {len(value)} (null = off)")
    outside = [v for v in flat if v is not None and not (0 <= v <= 1 and math.isfinite(v))]  # exact for huge integers
    if outside:
        raise ValueError(
            f"{where}: thresholds must lie in [0, 1] (they are confidences); got {_clip(outside[0])} in a list of "
            f"{len(value)} - to keep every sample from leaving at an exit, switch it off with null"
        )
    return [tuple(v) if isinstance(v, list) else v for v in value]


def _temperatures(calibration, K: int, where: str) -> np.ndarray | None:
    """(K,) positive temperatures from `calibration`, or None when it is null."""
    if calibration is None:
        return None
    if not isinstance(calibration, dict) or "temperatures" not in calibration:
        raise ValueError(f"{where}: calibration must be null or {{\"temperatures\": [...]}}; got {_clip(calibration)}")
    temps = calibration["temperatures"]
    if (
        not isinstance(temps, list)
        or len(temps) != K
        or any(isinstance(t, bool) or not isinstance(t, (int, float)) for t in temps)
        or not all(0 < t < 1e300 and math.isfinite(t) for t in temps)
    ):
        raise ValueError(
            f"{where}: calibration.temperatures must be {K} positive numbers, one per exit; got {_clip(temps)}"
        )
    return np.asarray(temps, dtype=np.float64)


def _optional_str(doc: dict, key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be a string or null; got {_clip(value)}")
    return value


def _clip(value, limit: int = 80) -> str:
    """repr of a value read from the file, cut short so the error stays one readable line."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**60 else f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= limit else text[:limit] + "..."
